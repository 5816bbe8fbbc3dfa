"""CPU benchmark: the tiny-preset training step, and the hash grid against a reference.

1. The real :class:`~sdi_blender.server.training.trainer.Trainer` at the ``test`` preset with the
   ``tiny`` model (64×64 renders, 32 samples per ray) for SDI and SDS: median ms per step
   after a warm-up, split by stage (:class:`~sdi_blender.server.util.step_timer.StepTimer`), and
   the host-side cost of fetching and reporting the loss values.
2. :class:`~sdi_blender.server.scene.field.HashGridEncoding` at the paper's size (16 levels × 2
   features, tables of 2^19, all levels unlocked) against a straightforward implementation of
   the same grid written here (a loop over levels and the 8 voxel corners, autograd for every
   derivative): the two must agree on outputs and gradients, then points/s of each for the
   forward pass, forward + backward to the table, and forward + backward through the
   position gradient (what the field's analytic normals need).

Times on a shared 2-core machine are noisy; compare the ratios, which are measured in the
same run with the two sides taking turns (SDI and SDS step by step; the hash grids call by
call, keeping the fastest of the repeats). Writes ``bench/results/cpu-step-<date>.json``.

    python bench/cpu_step.py [--steps 20] [--warmup 3] [--points 131072] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sdi_blender.server.diffusion.prior import StableDiffusionPrior
from sdi_blender.server.scene.encoding import HashGridEncoding
from sdi_blender.server.training import run_dir
from sdi_blender.server.training.config import make_config
from sdi_blender.server.training.trainer import Trainer
from sdi_blender.server.util.step_timer import StepTimer, summarise

PRIMES = (1, 2654435761, 805459861)  # Instant-NGP's hash primes per axis


# -- the training step ----------------------------------------------------------------------
def time_trainers(prior: StableDiffusionPrior, methods: list[str], steps: int, warmup: int) -> dict:
    """Per method: median/mean ms per step part, and the µs that reporting the losses takes.

    The methods' trainers take turns step by step, so that load from other processes on a
    shared machine hits them alike.
    """
    timers = {m: StepTimer(prior.device) for m in methods}
    report_us: dict[str, list[float]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as folder:
        trainers = {}
        for m in methods:
            run = Path(folder) / m
            run_dir.prepare_new_run(run, overwrite=True)
            config = make_config(
                "a red apple",
                "test",
                model="tiny",
                method=m,
                steps=warmup + steps,
                checkpoint_every=10**6,
                preview_every=10**6,
            )
            trainers[m] = Trainer(config, run, prior=prior, timer=timers[m])
        for i in range(warmup + steps):
            for m, trainer in trainers.items():
                if i == warmup:
                    timers[m].reset()
                trainer.optimise_step()
                start = time.perf_counter()
                trainer.report_progress()
                report_us[m].append((time.perf_counter() - start) * 1e6)
    return {
        m: {
            "steps": steps,
            "warmup": warmup,
            **summarise(timers[m].results()),
            "report_us_median": statistics.median(report_us[m][warmup:]),
        }
        for m in methods
    }


# -- the hash grid ----------------------------------------------------------------------------
def reference_encoding(enc: HashGridEncoding, x01: torch.Tensor) -> torch.Tensor:
    """The same grid, written plainly: per level and corner a gather and a weight; autograd only."""
    feats = []
    for level in range(min(enc.active_levels, enc.n_levels)):
        res, size = int(enc.resolution[level]), int(enc.table_size[level])
        start = int(enc.offset[level])
        table = enc.params[:, start : start + size]  # [F, T_l]
        pos = x01 * res
        cell = pos.detach().floor().clamp(0, res - 1).long()  # [N, 3]
        frac = pos - cell
        acc = torch.zeros(x01.shape[0], enc.n_features, dtype=x01.dtype)
        for corner in range(8):
            bits = [(corner >> axis) & 1 for axis in range(3)]
            v = cell + torch.tensor(bits)
            if level < enc.n_dense:  # the whole grid fits: index it densely
                index = v[:, 0] + v[:, 1] * (res + 1) + v[:, 2] * (res + 1) ** 2
            else:  # the spatial hash, mod a power-of-two table size
                index = ((v[:, 0] * PRIMES[0]) ^ (v[:, 1] * PRIMES[1]) ^ (v[:, 2] * PRIMES[2])) & (size - 1)
            weight = torch.ones_like(frac[:, 0])
            for axis, bit in enumerate(bits):
                weight = weight * (frac[:, axis] if bit else 1 - frac[:, axis])
            acc = acc + weight[:, None] * table[:, index].T
        feats.append(acc)
    locked = enc.n_levels - len(feats)
    feats.append(x01.new_zeros(x01.shape[0], locked * enc.n_features))
    return torch.cat(feats, dim=1)


def _modes(
    encode: Callable[[torch.Tensor], torch.Tensor], params: torch.nn.Parameter, x: torch.Tensor, w: torch.Tensor
) -> dict[str, Callable[[], tuple[torch.Tensor, ...]]]:
    """The three workloads; each returns what is compared between the implementations."""

    def forward() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return (encode(x),)

    def backward() -> tuple[torch.Tensor, ...]:
        params.grad = None
        out = encode(x)
        (out @ w).square().sum().backward()
        return out.detach(), params.grad

    def normals() -> tuple[torch.Tensor, ...]:
        params.grad = None
        xg = x.clone().requires_grad_(True)
        density = encode(xg) @ w
        (grad,) = torch.autograd.grad(density.sum(), xg, create_graph=True)
        (density.sum() + grad.square().sum()).backward()
        return grad.detach(), params.grad

    return {"forward": forward, "forward_backward": backward, "forward_backward_normals": normals}


def _interleaved_s(fns: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Seconds of each call of each function, the functions taking turns (after one warm-up
    call each), so that load from other processes hits them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(repeats + 1):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            if i:
                out.append(time.perf_counter() - start)
    return times


def time_hash_grid(points: int, repeats: int) -> dict:
    """Points/s of the fast and the reference encodings, after checking that they agree."""
    torch.manual_seed(0)
    enc = HashGridEncoding(start_level=16)  # the paper's grid, every level unlocked
    with torch.no_grad():  # features of order 1, so that disagreements would show
        enc.params.uniform_(-1.0, 1.0)
    x = torch.rand(points, 3)
    w = torch.randn(enc.n_output_dims, 1)
    fast = _modes(enc, enc.params, x, w)
    ref = _modes(lambda p: reference_encoding(enc, p), enc.params, x, w)
    result = {
        "levels": enc.n_levels,
        "features": enc.n_features,
        "table": int(enc.table_size.max()),
        "points": points,
        "repeats": repeats,
        "modes": {},
    }
    for name in fast:
        for a, b in zip(fast[name](), ref[name]()):
            # fp32 sums in another order: tolerances relative to the values' scale (position
            # gradients reach ~1e4 at the finest level, where rounding alone is ~1e-3).
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
        # The fastest of the repeats: on a shared machine, load only ever adds time.
        s_fast, s_ref = (min(t) for t in _interleaved_s([fast[name], ref[name]], repeats))
        result["modes"][name] = {
            "fast_points_per_s": points / s_fast,
            "reference_points_per_s": points / s_ref,
            "speedup": s_ref / s_fast,
        }
    return result


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed trainer steps per method")
    ap.add_argument("--warmup", type=int, default=3, help="untimed trainer steps first")
    ap.add_argument(
        "--points",
        type=int,
        default=131072,
        help="points per hash-grid call (default: the samples of one test-preset render)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed hash-grid calls per mode")
    ap.add_argument("--out", type=Path, help="JSON path (default bench/results/cpu-step-<date>.json)")
    args = ap.parse_args()

    prior = StableDiffusionPrior("tiny", device="cpu")
    trainer = time_trainers(prior, ["sdi", "sds"], args.steps, args.warmup)
    for m, r in trainer.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["median_ms"].items() if k != "step")
        print(
            f"{m.upper()} tiny/test step: {r['median_ms']['step']:7.1f} ms median ({parts}); "
            f"loss report {r['report_us_median']:.0f} µs"
        )
    sdi_over_sds = trainer["sdi"]["median_ms"]["step"] / trainer["sds"]["median_ms"]["step"]
    print(f"SDI/SDS step: {sdi_over_sds:.2f}x")
    grid = time_hash_grid(args.points, args.repeats)
    for name, r in grid["modes"].items():
        print(
            f"hash grid {name:25s}: {r['fast_points_per_s'] / 1e6:6.2f} M points/s vs reference "
            f"{r['reference_points_per_s'] / 1e6:6.2f} M points/s: {r['speedup']:.2f}x"
        )
    result = {
        "date": f"{datetime.date.today():%Y-%m-%d}",
        "device": cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "preset": "test",
        "model": "tiny",
        "trainer": trainer,
        "sdi_over_sds": sdi_over_sds,
        "hash_grid": grid,
    }
    path = args.out or Path(__file__).parent / "results" / f"cpu-step-{result['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
