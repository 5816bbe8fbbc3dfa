"""GPU benchmark: the paper preset's training step against its work bound, and its peak memory.

Builds Stable Diffusion 2.1-base's architecture (UNet, VAE, text encoder) with random weights
from config - no download; the numbers are in ``docs/algorithm.md`` - saves it
as a diffusers folder and loads it through the product's ``StableDiffusionPrior`` in fp16. Then:

* **bare calls**, fp16, CUDA events: the UNet at the batch one step's calls use (4 prompt
  variants with Perp-Neg, 2 without), and the VAE encoder forward + backward at 512×512;
* **rows**: the real :class:`~sdi_blender.server.training.trainer.Trainer` at the ``paper`` preset,
  a warm-up and then ``--steps`` steps timed by stage (render, VAE encode + backward, SDI
  inversion, guided prediction, Adam update, other). The steps are spread over the 10,000-step
  schedule (t anneals 980 → 250, so SDI's inversion shrinks from 11 UNet calls to 4, and the
  hash grid's levels unlock), one in 16 of them with the occupancy-grid update, so their mean
  estimates a whole run's step. Rows: SDI and SDS, each with and without Perp-Neg, the
  speed knobs (``SpeedConfig``) toggled one at a time, and the torch hash grid instead of
  the Triton one;
* **hash-grid rows** (:mod:`hash_rows`): torch against Triton encoding forward + backward at
  a training-like point count, with and without the normals' double backward.

Per row: median and mean ms per part, the work bound (the row's UNet calls at the fastest
bare time measured in this run, plus one bare VAE encoder forward + backward), mean step /
bound, minutes for 10,000 steps (also with the run's previews and checkpoints), and peak
memory (allocated and reserved by torch's allocator, the model's weights included). The field
is the freshly initialised blob at every schedule position, not a trained object, so the
render part is indicative. One line per row as it finishes; then it writes
``bench/results/<gpu>-<date>.json``, whose top level has ``ratio_to_bound``, ``peak_vram_gb``
and ``minutes_per_10k`` for ``sdi``, ``sdi-perpneg``, ``sds`` and ``sds-perpneg``.

Without CUDA it prints one line and exits 0. ``--smoke`` runs every part of the script on CPU
at toy sizes with the ``tiny`` model (random weights, SD's architecture) at the ``test`` preset
for 2 steps (its numbers mean nothing; it checks the code). On a bare GPU machine,
``bench/gpu_prepare.sh`` brings the packages it lacks, and nerfacc's CUDA extension is built
once into ``bench/.cache/torch_extensions`` (minutes, in the first grid render) and reused
from there (``docs/performance.md`` has the one-line command).

    python bench/gpu_step.py [--steps 32] [--warmup 4] [--rows core|all] [--smoke] [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bare_calls import BARE_VARIANTS, measure_bare, time_ms
from hash_rows import TRAINING_POINTS, hash_rows, print_hash_rows
from sd21_random import build_sd21_base

PAPER_STEPS = 10_000
GRID_EVERY = 16  # RendererConfig.grid_update_every
SUMMARY_ROWS = ("sdi-perpneg", "sdi", "sds-perpneg", "sds")
"""The rows whose headline figures the result file carries at its top level."""


# -- schedule -----------------------------------------------------------------------------------
def unet_calls(method: str, t: int) -> int:
    """UNet calls of one step at timestep t: SDI's inversion hops plus the final prediction."""
    from sdi_blender.server.diffusion.guidance import inversion_timesteps

    return 1 + (len(inversion_timesteps(t, 100, grid_limit=t)) - 1 if method == "sdi" else 0)


def positions(n: int, total: int) -> list[int]:
    """``n`` steps spread evenly over the schedule; residues mod 16 cycle, so one in 16 of them
    (for n a multiple of 16) includes the occupancy-grid update, as in a real run."""
    spread = [int((i + 0.5) * total / n) // GRID_EVERY * GRID_EVERY for i in range(n)]
    return [min(p + i % GRID_EVERY, total - 1) for i, p in enumerate(spread)]


# -- rows ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    """One configuration of the trainer to time."""

    name: str
    method: str
    perp_neg: bool
    speed: dict = dataclasses.field(default_factory=dict)  # SpeedConfig settings that differ
    settings: dict = dataclasses.field(default_factory=dict)  # other settings that differ


CORE_ROWS = [
    Row("sdi-perpneg", "sdi", True),
    Row("sdi", "sdi", False),
    Row("sds-perpneg", "sds", True),
    Row("sds", "sds", False),
]
KNOB_ROWS = [
    Row("sdi-perpneg-compiled", "sdi", True, {"compile_unet": "auto"}),
    Row("sdi-perpneg-channels-first", "sdi", True, {"channels_last": False}),
    Row("sdi-perpneg-vae-checkpointing", "sdi", True, {"vae_checkpointing": True}),
    Row("sdi-perpneg-torch-grid", "sdi", True, settings={"renderer.hash_kernel": "torch"}),
]


def run_row(
    prior, row: Row, preset: str, steps: int, warmup: int, bare: dict, folder: Path, **settings: object
) -> dict:
    """Time the real trainer for ``row``: warm-up, then ``steps`` steps spread over the schedule
    (``settings`` override the preset's, as ``make_config`` takes them)."""
    from sdi_blender.server.training import run_dir
    from sdi_blender.server.training.config import make_config
    from sdi_blender.server.training.trainer import Trainer
    from sdi_blender.server.util.step_timer import StepTimer, summarise

    config = make_config(
        "a ripe strawberry",
        preset,
        model=prior.model_id,
        method=row.method,
        perp_neg=row.perp_neg,
        checkpoint_every=10**9,
        preview_every=10**9,
        **settings,
        **row.settings,
        **{f"speed.{k}": v for k, v in row.speed.items()},
    )
    run_dir.prepare_new_run(folder, overwrite=True)
    cuda = prior.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timer = StepTimer(prior.device)
    trainer = Trainer(config, folder, prior=prior, timer=timer)
    total = config.schedule_steps
    ts = []
    for i, step in enumerate([0, *positions(warmup - 1, total)] + positions(steps, total)):
        if i == warmup:
            timer.reset()  # the timed steps start here
        trainer.step = step
        ts.append(trainer.optimise_step())
        trainer.report_progress()
    trainer.report_progress(wait=True)
    ts = ts[warmup:]
    per_step = timer.results()
    io_ms = run_overheads(trainer, config)
    batch = "4" if row.perp_neg else "2"
    unet_ms, vae_ms = bare["unet_ms_best"][batch], bare["vae_fwd_bwd_ms_best"]
    bound = [unet_calls(row.method, t) * unet_ms + vae_ms for t in ts]
    summary = summarise(per_step)
    mean_step = summary["mean_ms"]["step"]
    return {
        "name": row.name,
        "method": row.method,
        "perp_neg": row.perp_neg,
        "speed": dataclasses.asdict(config.speed),
        "hash_kernel": config.renderer.hash_kernel,
        "steps": len(ts),
        "warmup": warmup,
        **summary,
        "unet_calls_mean": statistics.fmean(unet_calls(row.method, t) for t in ts),
        "bound_ms_mean": statistics.fmean(bound),
        "step_over_bound": mean_step / statistics.fmean(bound),
        "minutes_per_10k_steps": mean_step * PAPER_STEPS / 60_000,
        **io_ms,
        "minutes_per_10k_steps_with_io": (mean_step * PAPER_STEPS + io_ms["io_ms_per_10k_steps"]) / 60_000,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
    }


def run_overheads(trainer, config) -> dict[str, float]:
    """What a real run does besides its steps: a preview image every ``preview_every`` steps
    and a checkpoint every ``checkpoint_every`` (at the preset's own intervals)."""
    from sdi_blender.server.training.config import PRESETS, make_config

    every = make_config("x", config.preset)
    cuda = trainer.device.type == "cuda"
    preview = time_ms(trainer.preview, cuda, repeats=3, warmup=1)
    checkpoint = time_ms(trainer.save_checkpoint, cuda, repeats=1, warmup=0)
    steps = PRESETS[config.preset].get("steps", PAPER_STEPS)
    per_run = steps / every.preview_every * preview + steps / every.checkpoint_every * checkpoint
    return {"preview_ms": preview, "checkpoint_ms": checkpoint, "io_ms_per_10k_steps": per_run * PAPER_STEPS / steps}


# -- main ---------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    import diffusers
    import nerfacc

    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "nerfacc": getattr(nerfacc, "__version__", "?"),
        "python": sys.version.split()[0],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            sms=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        env["gpu"] = "none (dry run on CPU)"
    return env


def print_header(bare: dict) -> None:
    print(f"bare UNet ms (best): {bare['unet_ms_best']}  VAE fwd+bwd ms (best): {bare['vae_fwd_bwd_ms_best']:.2f}")
    print(
        f"{'row':34s} {'step ms':>8s} {'render':>7s} {'vae':>6s} {'inv':>7s} {'pred':>6s} {'update':>6s} "
        f"{'other':>6s} {'bound':>7s} {'ratio':>5s} {'min/10k':>7s} {'peak GiB':>8s}"
    )


def print_row(r: dict) -> None:
    """One row's summary line (printed as soon as the row is done)."""
    if "error" in r:
        print(f"{r['name']:34s} failed: {r['error']}", flush=True)
        return
    m = r["mean_ms"]
    peak = f"{r['peak_reserved_gib']:.1f}" if r["peak_reserved_gib"] is not None else "-"
    print(
        f"{r['name']:34s} {m['step']:8.1f} {m['render']:7.1f} {m['vae']:6.1f} {m['inversion']:7.1f} "
        f"{m['prediction']:6.1f} {m['update']:6.1f} {m['other']:6.1f} {r['bound_ms_mean']:7.1f} "
        f"{r['step_over_bound']:5.2f} {r['minutes_per_10k_steps']:7.1f} {peak:>8s}",
        flush=True,
    )


def headline(rows: list[dict]) -> dict[str, dict | None]:
    """Per summary row: its step over its work bound, peak GPU memory in GB (reserved by torch's
    allocator; None on CPU) and minutes per 10,000 steps; None for a row that failed."""
    by_name = {r["name"]: r for r in rows if "error" not in r}
    out: dict[str, dict | None] = {}
    for name in SUMMARY_ROWS:
        r = by_name.get(name)
        reserved = None if r is None or r["peak_reserved_gib"] is None else r["peak_reserved_gib"] * 2**30 / 1e9
        out[name] = (
            None
            if r is None
            else {
                "ratio_to_bound": r["step_over_bound"],
                "peak_vram_gb": reserved,
                "minutes_per_10k": r["minutes_per_10k_steps"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=32, help="timed steps per row (a multiple of 16)")
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps first (compiling happens here)")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per bare measurement")
    ap.add_argument(
        "--rows",
        choices=("core", "all"),
        default="all",
        help="core: SDI/SDS with and without Perp-Neg; all: also the speed knobs",
    )
    ap.add_argument(
        "--model-dir", type=Path, help="where to build (or find) the random SD 2.1-base (default: temporary)"
    )
    ap.add_argument("--out", type=Path, help="JSON path (default bench/results/<gpu>-<date>.json)")
    ap.add_argument("--hash-points", type=int, default=TRAINING_POINTS, help="points per call of the hash-grid rows")
    ap.add_argument(
        "--smoke",
        "--dry-run-cpu",
        action="store_true",
        help="run everything on CPU at toy sizes with the tiny model and the test preset, 2 steps a row",
    )
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_step: no CUDA device here, nothing measured (bench/cpu_step.py is the CPU benchmark)")
        return 0
    if args.smoke:
        args.steps, args.warmup, args.repeats, args.hash_points = 2, 1, 1, 4096
    else:
        # nerfacc JIT-compiles its CUDA extension on first import, into this folder (set before
        # it is imported): one build serves every row, and a carried-back one later runs.
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).parent / ".cache" / "torch_extensions"))
        # ... for this GPU's architecture only, on every core.
        major, minor = torch.cuda.get_device_capability()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
        os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))

    from sdi_blender.server.diffusion.prior import StableDiffusionPrior

    device = "cpu" if args.smoke else "cuda"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = "tiny"
        if not args.smoke:
            model_dir = args.model_dir or Path(tmp) / "sd21-base-random"
            if not (model_dir / "model_index.json").is_file():
                build_sd21_base(model_dir, device)
            model = str(model_dir)
        prior = StableDiffusionPrior(model, device=device)
        # Core rows run the default (eager) settings only: no minutes spent compiling.
        bare = measure_bare(prior, args.repeats, tuple(BARE_VARIANTS) if args.rows == "all" else ("eager",))
        print_header(bare)
        # Before the trainer rows (which use the Triton grid on CUDA): a kernel that fails
        # shows up here on its own first.
        grid = hash_rows(prior.device, args.hash_points, args.repeats, time_ms)
        print_hash_rows(grid)
        rows = CORE_ROWS + (KNOB_ROWS if args.rows == "all" else [])
        preset = "test" if args.smoke else "paper"
        # The smoke run only checks the code: the smallest render that still goes through it all.
        small = {"resolution": 32, "renderer.num_samples_per_ray": 16} if args.smoke else {}
        results = []
        for row in rows:
            try:
                results.append(run_row(prior, row, preset, args.steps, args.warmup, bare, Path(tmp) / "run", **small))
            except Exception as exc:
                results.append({"name": row.name, "error": f"{type(exc).__name__}: {exc}"})
            print_row(results[-1])
    env = environment(prior.device)
    summary = headline(results)
    paper = summary["sdi-perpneg"]
    result = {
        "date": f"{datetime.date.today():%Y-%m-%d}",
        **env,
        "preset": preset,
        "model": "SD 2.1-base architecture, random fp16 weights" if not args.smoke else "tiny",
        "smoke": args.smoke,
        **summary,
        "bare": bare,
        "hash_grid": grid,
        "rows": results,
        "targets": {"ratio_to_bound_max": 1.3, "minutes_per_10k_max": 15, "peak_vram_gb_max": 16},
        "paper_row_meets": None
        if paper is None or paper["peak_vram_gb"] is None
        else {
            "ratio_to_bound": paper["ratio_to_bound"] <= 1.3,
            "minutes": paper["minutes_per_10k"] <= 15,
            "peak_memory": paper["peak_vram_gb"] <= 16,
        },
        "bench_seconds": time.perf_counter() - started,
    }
    slug = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-")
    path = args.out or Path(__file__).parent / "results" / f"{slug}-{result['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
