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
  estimates a whole run's step. Rows: SDI and SDS, each with and without Perp-Neg, and the
  speed knobs (``SpeedConfig``) toggled one at a time.

Per row: median and mean ms per part, the work bound (the row's UNet calls at the fastest
bare time measured in this run, plus one bare VAE encoder forward + backward), mean step /
bound, minutes for 10,000 steps (also with the run's previews and checkpoints), and peak
memory (allocated and reserved by torch's allocator, the model's weights included). The field
is the freshly initialised blob at every schedule position, not a trained object, so the
render part is indicative. Writes ``bench/results/<gpu>-<date>.json``.

Without CUDA it prints one line and exits 0. ``--dry-run-cpu`` runs every part of the script
on CPU with the ``tiny`` model at the ``test`` preset for 2 steps (its numbers mean nothing;
it checks the code). Run it from a checkout with the package installed (``pip install -e .``,
or ``--no-deps`` plus diffusers and nerfacc where nothing can be downloaded); the first
occupancy-grid render JIT-compiles nerfacc's CUDA extension (minutes, in the first row's warm-up).

    python bench/gpu_step.py [--steps 32] [--warmup 4] [--rows core|all] [--out PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

PAPER_STEPS = 10_000
GRID_EVERY = 16  # RendererConfig.grid_update_every


# -- the SD 2.1-base architecture with random weights ---------------------------------------
def sd21_base_configs(vocab_size: int = 49408) -> dict[str, dict]:
    """Constructor arguments of SD 2.1-base's UNet, VAE and text encoder (its config.json files)."""
    return {
        "unet": dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            use_linear_projection=True,
            norm_num_groups=32,
        ),
        "vae": dict(
            in_channels=3,
            out_channels=3,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=0.18215,
        ),
        "text_encoder": dict(
            vocab_size=vocab_size,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            projection_dim=512,
            hidden_act="gelu",
        ),
    }


def build_sd21_base(folder: Path, device: str, configs: dict[str, dict] | None = None) -> None:
    """Write an SD 2.1-base-architecture pipeline with random fp16 weights to ``folder``
    (``configs`` replaces :func:`sd21_base_configs`, for tests).

    The tokenizer is the tiny model's byte-level one (no merges): it yields token ids, which is
    all a random text encoder needs; the sequence length (77) is SD's.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.utils import logging as transformers_logging

    from sdi_blender.server.diffusion.tiny_model import SD_SCHEDULER, write_model_index, write_tiny_tokenizer

    for log in (diffusers_logging, transformers_logging):  # no casting notes or progress bars
        log.set_verbosity_error()
        log.disable_progress_bar()
    n_tokens = write_tiny_tokenizer(folder / "tokenizer")
    cfg = configs or sd21_base_configs()
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: seconds instead of minutes on the CPU
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text = CLIPTextModel(
            CLIPTextConfig(
                **cfg["text_encoder"], bos_token_id=n_tokens - 2, eos_token_id=n_tokens - 1, pad_token_id=n_tokens - 1
            )
        )
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        model.to("cpu", torch.float16).save_pretrained(folder / name)
    DDIMScheduler(**SD_SCHEDULER).save_pretrained(folder / "scheduler")
    write_model_index(folder)


# -- timing -----------------------------------------------------------------------------------
def time_ms(fn: Callable[[], object], cuda: bool, repeats: int, warmup: int = 2) -> float:
    """Median ms of ``fn`` (CUDA events around each call on CUDA, wall clock elsewhere)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bare_unet_ms(prior, batch: int, repeats: int) -> float:
    """One UNet call at ``batch`` in the prior's dtype and configuration (compiled or not)."""
    size, width = prior.latent_size, prior.unet.config.cross_attention_dim
    x = torch.randn(batch, 4, size, size, device=prior.device, dtype=prior.dtype)
    t = torch.full((batch,), 500, device=prior.device)
    text = torch.randn(batch, 77, width, device=prior.device, dtype=prior.dtype)
    with torch.no_grad():
        return time_ms(lambda: prior.unet_eps(x, t, text), prior.device.type == "cuda", repeats)


def bare_vae_ms(prior, repeats: int) -> float:
    """One VAE encoder forward + backward (to the image) at the model's native size."""
    size = prior.image_size
    rgb = torch.rand(1, 3, size, size, device=prior.device, requires_grad=True)
    gen = torch.Generator(prior.device).manual_seed(0)

    def step() -> None:
        latents = prior.encode_images(rgb, gen)
        latents.backward(torch.ones_like(latents))

    return time_ms(step, prior.device.type == "cuda", repeats)


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
]
BARE_VARIANTS = {"eager": {}, "compiled": {"compile_unet": "auto"}, "eager-channels-first": {"channels_last": False}}


def measure_bare(prior, repeats: int) -> dict:
    """Bare UNet (per prompt-batch size) and VAE encoder fwd + bwd ms for each speed variant."""
    from sdi_blender.server.diffusion.prior import SpeedConfig

    out: dict = {"unet_ms": {}, "vae_fwd_bwd_ms": {}}
    for name, speed in BARE_VARIANTS.items():
        config = SpeedConfig(**speed)
        if name == "compiled" and config.compile_mode(prior.device) is None:
            continue  # no compiling on this device
        prior.apply_speed(config)
        out["unet_ms"][name] = {str(k): bare_unet_ms(prior, k, repeats) for k in (4, 2)}
        out["vae_fwd_bwd_ms"][name] = bare_vae_ms(prior, repeats)
    out["unet_ms_best"] = {k: min(v[k] for v in out["unet_ms"].values()) for k in ("4", "2")}
    out["vae_fwd_bwd_ms_best"] = min(out["vae_fwd_bwd_ms"].values())
    return out


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


def print_rows(result: dict) -> None:
    bare = result["bare"]
    print(f"bare UNet ms (best): {bare['unet_ms_best']}  VAE fwd+bwd ms (best): {bare['vae_fwd_bwd_ms_best']:.2f}")
    print(
        f"{'row':34s} {'step ms':>8s} {'render':>7s} {'vae':>6s} {'inv':>7s} {'pred':>6s} {'update':>6s} "
        f"{'other':>6s} {'bound':>7s} {'ratio':>5s} {'min/10k':>7s} {'peak GiB':>8s}"
    )
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['name']:34s} failed: {r['error']}")
            continue
        m = r["mean_ms"]
        peak = f"{r['peak_reserved_gib']:.1f}" if r["peak_reserved_gib"] is not None else "-"
        print(
            f"{r['name']:34s} {m['step']:8.1f} {m['render']:7.1f} {m['vae']:6.1f} {m['inversion']:7.1f} "
            f"{m['prediction']:6.1f} {m['update']:6.1f} {m['other']:6.1f} {r['bound_ms_mean']:7.1f} "
            f"{r['step_over_bound']:5.2f} {r['minutes_per_10k_steps']:7.1f} {peak:>8s}"
        )


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
    ap.add_argument(
        "--dry-run-cpu",
        action="store_true",
        help="run everything on CPU with the tiny model and the test preset, 2 steps a row",
    )
    args = ap.parse_args(argv)
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print("gpu_step: no CUDA device here, nothing measured (bench/cpu_step.py is the CPU benchmark)")
        return 0
    if args.dry_run_cpu:
        args.steps, args.warmup, args.repeats = 2, 1, 1

    from sdi_blender.server.diffusion.prior import StableDiffusionPrior

    device = "cpu" if args.dry_run_cpu else "cuda"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = "tiny"
        if not args.dry_run_cpu:
            model_dir = args.model_dir or Path(tmp) / "sd21-base-random"
            if not (model_dir / "model_index.json").is_file():
                build_sd21_base(model_dir, device)
            model = str(model_dir)
        prior = StableDiffusionPrior(model, device=device)
        bare = measure_bare(prior, args.repeats)
        rows = CORE_ROWS + (KNOB_ROWS if args.rows == "all" else [])
        preset = "test" if args.dry_run_cpu else "paper"
        # The dry run only checks the code: the smallest render that still goes through it all.
        small = {"resolution": 32, "renderer.num_samples_per_ray": 16} if args.dry_run_cpu else {}
        results = []
        for row in rows:
            try:
                results.append(run_row(prior, row, preset, args.steps, args.warmup, bare, Path(tmp) / "run", **small))
            except Exception as exc:
                results.append({"name": row.name, "error": f"{type(exc).__name__}: {exc}"})
    env = environment(prior.device)
    paper = next((r for r in results if r["name"] == "sdi-perpneg" and "error" not in r), None)
    result = {
        "date": f"{datetime.date.today():%Y-%m-%d}",
        **env,
        "preset": preset,
        "model": "SD 2.1-base architecture, random fp16 weights" if not args.dry_run_cpu else "tiny",
        "dry_run": args.dry_run_cpu,
        "bare": bare,
        "rows": results,
        "targets": {"step_over_bound_max": 1.3, "minutes_per_10k_steps_max": 15, "peak_gib_max": 16},
        "paper_row_meets": None
        if paper is None or paper["peak_reserved_gib"] is None
        else {
            "step_over_bound": paper["step_over_bound"] <= 1.3,
            "minutes": paper["minutes_per_10k_steps"] <= 15,
            "peak_memory": paper["peak_reserved_gib"] <= 16,
        },
        "bench_seconds": time.perf_counter() - started,
    }
    print_rows(result)
    slug = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-")
    path = args.out or Path(__file__).parent / "results" / f"{slug}-{result['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
