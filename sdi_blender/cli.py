"""The ``sdi-blender`` command.

Parses arguments without importing torch (so usage errors are instant), then hands
over to the server modules, which validate the settings before loading any model.
Every user-facing failure is one line on stderr and exit code 2; an interrupted run
exits 130. Nothing is written until a result is complete.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .catalog import (
    DEFAULT_METHOD,
    DEFAULT_PRESET,
    DEVICE_HELP,
    EXPORT_FORMATS,
    MAX_VARIATIONS,
    METHODS,
    MODEL_HELP,
    PRESETS,
    VARIATIONS_SHEET,
    parse_seeds,
    preset_costs,
)
from .errors import UserError, run_command

PROG = "sdi-blender"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (not usage + error) and exit code 2; abbreviated
    options are not guessed (``--step`` is not ``--steps``), a mistyped one gets the nearest."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{PROG}: error: {message}{self._hint(message)}", file=sys.stderr)
        raise SystemExit(2)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _hint(self, message: str) -> str:
        """A next step for an unrecognised argument: the nearest option, or quoting the prompt."""
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        parser = self._command_parser()
        unknown = message[len(prefix) :].split()
        for arg in unknown:
            if arg.startswith("-"):
                near = difflib.get_close_matches(arg.split("=")[0], list(parser._option_string_actions), n=1)
                if near:
                    return f"; did you mean {near[0]}?"
        if any(not arg.startswith("-") for arg in unknown) and "prompt" in [a.dest for a in parser._actions]:
            return '; quote a prompt of several words: "a ripe strawberry"'
        return ""

    def _command_parser(self) -> argparse.ArgumentParser:
        """The subcommand's parser the arguments named (the whole error is raised up here)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for arg in getattr(self, "_argv", []):
                    if arg in action.choices:
                        return action.choices[arg]
        return self


PRESET_HELP = f"quality preset (default {DEFAULT_PRESET}): " + "; ".join(
    f"{name}: {p.description} ({preset_costs(name)})" for name, p in PRESETS.items()
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Text-to-3D with Score Distillation via Reparametrized DDIM.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_distill2d(sub)
    _add_generate(sub)
    _add_export(sub)
    _add_texture(sub)
    _add_serve(sub)
    _add_eval(sub)
    _add_compare(sub)
    _add_batch(sub)
    return parser


def _add_distill2d(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill2d",
        help="the paper's 2D experiment: optimise one image by score distillation",
        description="Optimise one latent image towards PROMPT by SDI or SDS "
        "(paper defaults: 1000 Adam steps, lr 0.1, guidance 7.5, t 980 → 20).",
    )
    # Unset options (None) take Distill2DConfig's defaults, the paper's: one source of truth.
    p.add_argument("prompt", help="what the image should show")
    p.add_argument("--negative-prompt", help="CFG's unconditional prompt (default: empty)")
    p.add_argument("--method", choices=tuple(METHODS), help=f"{' or '.join(METHODS)} (default {DEFAULT_METHOD})")
    p.add_argument("--steps", type=int, help="optimisation steps (default 1000)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 0.1)")
    p.add_argument("--guidance-scale", type=float, help="CFG scale (default 7.5)")
    p.add_argument("--t-max", type=int, help="first timestep of the schedule (default 980)")
    p.add_argument("--t-min", type=int, help="last timestep of the schedule (default 20)")
    p.add_argument("--frames", type=int, help="snapshots in the strip image (default 8)")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("distill2d.png"),
        help="output image (.png/.jpg); the strip goes beside it as NAME_strip.png",
    )
    p.add_argument(
        "--compare", action="store_true", help="run SDS and SDI from the same seed and write them side by side"
    )
    p.add_argument(
        "--clip",
        help="also score the final image(s) as eval does (CLIP score, CLIP-IQA) into "
        "NAME_metrics.json with this CLIP: a hub id such as "
        "openai/clip-vit-large-patch14, a local directory, or 'tiny'",
    )
    p.set_defaults(func=_run_distill2d)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="optimise a 3D field for a prompt (text-to-3D)",
        description="Optimise a hash-grid radiance field so that its renders match PROMPT "
        "under SDI (default) or SDS; results go to RUN_DIR.",
    )
    p.add_argument("prompt", nargs="?", help="what the object should be")
    p.add_argument("--out", type=Path, help="the run folder (new, or an existing run with --resume)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--prompt", dest="prompt_option", help="a new prompt (with --resume)")
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help=PRESET_HELP,
    )
    p.add_argument("--method", choices=tuple(METHODS), help=f"{' or '.join(METHODS)} (default {DEFAULT_METHOD})")
    p.add_argument("--steps", type=int, help="steps (with --resume: steps to add)")
    p.add_argument("--resolution", type=int, help="render size in pixels, a multiple of 8")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument(
        "--seeds",
        type=_seeds,
        metavar="0-3|0,2,5",
        help=f"variations: one run per seed in OUT/seed-N, then OUT/{VARIATIONS_SHEET} (at most {MAX_VARIATIONS})",
    )
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument(
        "--init-mesh",
        type=Path,
        metavar="MESH",
        help="start the density from this closed mesh (GLB, glTF or OBJ: a blockout), centred and "
        "scaled into the scene (the fit is in config.json) instead of the default blob",
    )
    p.add_argument("--negative-prompt", help="CFG's unconditional prompt")
    p.add_argument("--guidance-scale", type=float, help="CFG scale (default 7.5)")
    p.add_argument("--batch-size", type=int, help="cameras per step (default 1)")
    p.add_argument("--no-perp-neg", dest="perp_neg", action="store_false", default=None, help="turn Perp-Neg off")
    p.add_argument(
        "--no-view-dependent",
        dest="view_dependent",
        action="store_false",
        default=None,
        help="do not append the view to the prompt",
    )
    p.add_argument("--preview-every", type=int, help="steps between previews")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from .server.commands.generate import run_generate
    from .server.training.plan import GenerateRequest

    if (args.out is None) == (args.resume is None):
        raise UserError("give exactly one of --out RUN_DIR (a new run) and --resume RUN_DIR")
    if args.prompt and args.prompt_option:
        raise UserError("give the prompt once, either as an argument or with --prompt")
    names = (
        "method",
        "steps",
        "resolution",
        "seed",
        "model",
        "negative_prompt",
        "guidance_scale",
        "batch_size",
        "perp_neg",
        "view_dependent",
        "preview_every",
        "checkpoint_every",
    )
    settings = {k: getattr(args, k) for k in names}
    if args.init_mesh is not None:
        from .server.scene.mesh_file import check_mesh_path

        check_mesh_path(args.init_mesh.expanduser())  # before anything is written
        settings["init_mesh.path"] = str(args.init_mesh.expanduser().resolve())
    req = GenerateRequest(
        out=(args.out or args.resume).expanduser(),
        resume=args.resume is not None,
        prompt=args.prompt or args.prompt_option,
        overwrite=args.overwrite,
        device=args.device,
        preset=args.preset,
        settings=settings,
    )
    if settings.get("model"):
        from .server.diffusion.model_source import check_model_name

        check_model_name(settings["model"])
    if args.seeds is not None:
        from .server.commands.generate import run_variations

        if args.seed is not None:
            raise UserError("give --seed (one run) or --seeds (variations), not both")
        results = run_variations(req, args.seeds)
        return 130 if results[-1].status == "cancelled" else 0
    result = run_generate(req)
    return 130 if result.status == "cancelled" else 0


def _seeds(text: str) -> list[int]:
    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_texture(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "texture",
        help="paint a given mesh from a prompt, keeping its geometry",
        description="Optimise only an albedo on MESH's fixed surface so that its renders match PROMPT "
        "(SDI or SDS, the trainer's cameras and guidance), then bake it into the mesh's own UVs "
        "(a new xatlas unwrap if it has none): RUN_DIR/export/mesh.glb and the texture PNG.",
    )
    p.add_argument("mesh", type=Path, metavar="MESH", help="a .glb, .gltf or .obj with one mesh (Y-up, front +Z)")
    p.add_argument("prompt", help="what the texture should show")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="the run folder (new)")
    p.add_argument("--preset", choices=tuple(PRESETS), help=PRESET_HELP)
    p.add_argument("--method", choices=tuple(METHODS), help=f"{' or '.join(METHODS)} (default {DEFAULT_METHOD})")
    p.add_argument("--steps", type=int, help="steps (default: the preset's)")
    p.add_argument("--resolution", type=int, help="render size in pixels, a multiple of 8")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--texture-size", type=int, default=1024, help="texture side, a power of two (default 1024)")
    p.add_argument(
        "--keep-placement",
        action="store_true",
        help="train on the mesh where and as large as it is (metres) instead of centring and scaling it",
    )
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.set_defaults(func=_run_texture)


def _run_texture(args: argparse.Namespace) -> int:
    from .server.commands.texture import run_texture
    from .server.scene.mesh_file import check_mesh_path
    from .server.training.texture_fit import TextureRequest

    check_mesh_path(args.mesh.expanduser())  # before torch loads
    if args.model:
        from .server.diffusion.model_source import check_model_name

        check_model_name(args.model)
    names = ("method", "steps", "resolution", "seed", "model")
    req = TextureRequest(
        mesh=args.mesh.expanduser(),
        prompt=args.prompt,
        out=args.out.expanduser(),
        overwrite=args.overwrite,
        preset=args.preset,
        keep_placement=args.keep_placement,
        settings={k: getattr(args, k) for k in names},
    )
    run_texture(req, args.texture_size, args.device)
    return 0


def _threshold(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold must be 'auto' or a number, got '{text}'") from None


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="turn a run's field into a textured mesh (GLB or OBJ)",
        description="Extract the surface of RUN_DIR's optimised field with marching cubes, "
        "UV-unwrap it, bake the albedo and write RUN_DIR/export/.",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a run folder made by generate")
    p.add_argument("--resolution", type=int, default=256, help="marching-cubes grid per side (default 256)")
    p.add_argument(
        "--threshold", type=_threshold, default=None, metavar="auto|VALUE", help="density iso-level (default auto)"
    )
    p.add_argument("--texture-size", type=int, default=1024, help="texture side, a power of two (default 1024)")
    p.add_argument("--faces", type=int, help="decimate to about N triangles")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="glb", help="glb (default) or obj")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument(
        "--open",
        action="store_true",
        help="then open the mesh in Blender (--blender, $BLENDER, blender on PATH, or the usual places)",
    )
    p.add_argument("--blender", metavar="PATH", help="the Blender for --open (implies --open)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from . import blender_app
    from .server.export.pipeline import ExportSettings, export_run

    settings = ExportSettings(
        resolution=args.resolution,
        threshold=args.threshold,
        texture_size=args.texture_size,
        faces=args.faces,
        format=args.format,
    )
    settings.validate()
    open_it = args.open or args.blender is not None
    if open_it and args.format != "glb":
        raise UserError("--open imports the GLB into Blender", "drop --format obj")
    # Before the export, so that a bad --blender fails at once rather than after minutes.
    blender = blender_app.find_blender(args.blender) if open_it else None
    seen: set[str] = set()

    def progress(stage: str, fraction: float) -> None:
        if stage not in seen:
            seen.add(stage)
            print(f"[export] {stage}", file=sys.stderr, flush=True)

    result = export_run(args.run.expanduser(), settings, args.device, progress)
    info = result.info
    print(
        f"wrote {result.files['mesh']} ({info['vertices']} vertices, {info['faces']} faces, "
        f"{settings.texture_size}px texture, threshold {info['threshold']:.4g})",
        file=sys.stderr,
    )
    if blender:
        blender_app.open_in_blender(blender, args.run.expanduser())
        print(f"opening it in Blender {blender}", file=sys.stderr)
    elif open_it:
        print(
            f"no Blender found (set $BLENDER or pass --blender); the mesh is at {result.files['mesh']}", file=sys.stderr
        )
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .server.service.launch import DESCRIPTION, add_arguments, run_from_args

    p = sub.add_parser(
        "serve", help="run the generation server that the Blender add-on talks to", description=DESCRIPTION
    )
    add_arguments(p)
    p.set_defaults(func=run_from_args)


_CLIP_HELP = (
    "CLIP for the metrics: hub id (default openai/clip-vit-large-patch14), local directory, "
    "or 'tiny' (a small random CLIP built locally, for tests)"
)


def _add_eval_options(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument("--views", type=int, default=8, help="evenly spaced views per run (default 8)")
    p.add_argument("--size", type=int, default=256, help="view size in pixels (default 256)")
    p.add_argument("--clip", help=_CLIP_HELP)
    if device:
        p.add_argument("--device", default="auto", help=DEVICE_HELP)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score runs: CLIP score, CLIP-IQA, divergence; HTML report",
        description="Render each RUN_DIR from evenly spaced views at the evaluation camera and "
        "score them; writes metrics.json, metrics.csv, report.html and contact.png.",
    )
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders made by generate")
    p.add_argument("--out", type=Path, help="report folder (default RUN_DIR/eval for one run, else eval-report)")
    _add_eval_options(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .server.evaluation.clip_metrics import DEFAULT_CLIP
    from .server.evaluation.evaluate import evaluate, group_summary
    from .server.evaluation.report import check_report_dir, write_report
    from .server.util.devices import resolve_device

    runs = [r.expanduser() for r in args.runs]
    out = (args.out or (runs[0] / "eval" if len(runs) == 1 else Path("eval-report"))).expanduser()
    check_report_dir(out)
    clip = args.clip or DEFAULT_CLIP
    results = evaluate(runs, clip, args.views, args.size, resolve_device(args.device))
    groups = group_summary(results)
    write_report(results, groups, out, {"clip": clip, "views": args.views, "size": args.size})
    for g in groups:
        print(
            f"{g['method'].upper()} '{g['prompt']}': CLIP {g['clip_score']:.2f}, IQA {g['clip_iqa']:.3f}, "
            f"diverged {g['diverged']}/{g['runs']}",
            file=sys.stderr,
        )
    print(f"wrote {out}/report.html", file=sys.stderr)
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="SDS vs SDI on one prompt over several seeds, then eval",
        description="Train SDS and SDI with the same seeds and settings, then evaluate them "
        "all into OUT/report (runs already complete in OUT are kept).",
    )
    p.add_argument("prompt", help="what the object should be")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method (default 3)")
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="draft",
        help="quality preset (default draft)",
    )
    p.add_argument("--out", type=Path, help="folder of the runs and the report (default compare/<prompt>)")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--steps", type=int, help="steps per run (default: the preset's)")
    p.add_argument("--resolution", type=int, help="render size in pixels (default: the preset's)")
    _add_eval_options(p)
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from .server.commands.compare import CompareRequest, default_out, run_compare
    from .server.diffusion.model_source import check_model_name
    from .server.evaluation.clip_metrics import DEFAULT_CLIP

    if args.model:
        check_model_name(args.model)
    settings = {k: getattr(args, k) for k in ("model", "steps", "resolution") if getattr(args, k) is not None}
    req = CompareRequest(
        prompt=args.prompt,
        out=(args.out or default_out(args.prompt)).expanduser(),
        seeds=args.seeds,
        preset=args.preset,
        clip=args.clip or DEFAULT_CLIP,
        views=args.views,
        size=args.size,
        device=args.device,
        settings=settings,
    )
    print(f"wrote {run_compare(req)}/report.html", file=sys.stderr)
    return 0


def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "batch",
        help="many prompts and seeds as Ray tasks (a GPU each), then eval",
        description="Train and export every (prompt, seed) of JOBS as one Ray task, on a local Ray or "
        "a cluster, then evaluate them all into OUT/report; OUT/batch.json records every run. "
        "Running it again keeps the finished runs, resumes the interrupted ones and trains the rest.",
    )
    p.add_argument(
        "jobs",
        type=Path,
        metavar="JOBS",
        help="a .txt (one prompt per line, # comments) or a .json list of jobs: "
        "prompt, and optionally name, seeds, preset, method, model, negative_prompt",
    )
    p.add_argument("--seeds", default="0", help="seeds of each job that names none: 0-3, 5 or 0,2,7-9 (default 0)")
    p.add_argument("--preset", choices=tuple(PRESETS), help=f"quality preset (default {DEFAULT_PRESET})")
    p.add_argument("--method", choices=tuple(METHODS), help=f"{' or '.join(METHODS)} (default {DEFAULT_METHOD})")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--steps", type=int, help="steps per run (default: the preset's)")
    p.add_argument("--resolution", type=int, help="render size in pixels (default: the preset's)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: the preset's)")
    p.add_argument(
        "--ray",
        default="auto",
        metavar="auto|ADDRESS",
        help="auto (default): a local Ray, or the cluster RAY_ADDRESS names; HOST:PORT: that cluster's head",
    )
    p.add_argument("--out", type=Path, help="folder of the runs, batch.json and the report (default batch/<JOBS name>)")
    p.add_argument("--mesh-resolution", type=int, default=256, help="export's marching-cubes grid (default 256)")
    p.add_argument("--texture-size", type=int, default=1024, help="export's texture side (default 1024)")
    p.add_argument(
        "--device", choices=("auto", "cpu"), default="auto", help="auto: one GPU per task where the cluster has GPUs"
    )
    _add_eval_options(p, device=False)
    p.set_defaults(func=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    from .server.commands.batch import BatchRequest, default_out, run_batch
    from .server.evaluation.clip_metrics import DEFAULT_CLIP
    from .server.export.pipeline import ExportSettings

    names = ("method", "model", "steps", "resolution", "checkpoint_every")
    req = BatchRequest(
        jobs_file=args.jobs.expanduser(),
        out=(args.out or default_out(args.jobs)).expanduser(),
        seeds=args.seeds,
        preset=args.preset,
        settings={k: getattr(args, k) for k in names if getattr(args, k) is not None},
        ray=args.ray,
        device=args.device,
        export=ExportSettings(resolution=args.mesh_resolution, texture_size=args.texture_size),
        clip=args.clip or DEFAULT_CLIP,
        views=args.views,
        size=args.size,
    )
    return 1 if run_batch(req) else 0


def _strip_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_strip{out.suffix}")


def _run_distill2d(args: argparse.Namespace) -> int:
    from .server.commands.distill2d import Distill2DConfig, run_distill2d
    from .server.diffusion.model_source import check_model_name
    from .server.util.images import check_output_path

    names = ("negative_prompt", "method", "steps", "lr", "guidance_scale", "t_max", "t_min", "seed", "model", "frames")
    config = Distill2DConfig(prompt=args.prompt, **{k: getattr(args, k) for k in names if getattr(args, k) is not None})
    config.validate()
    check_model_name(config.model)
    out = args.out.expanduser()
    check_output_path(out)
    run_distill2d(config, out, _strip_path(out), device=args.device, compare=args.compare, clip=args.clip)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sdi-blender`` console script."""
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
