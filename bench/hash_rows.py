"""Benchmark rows of the hash-grid encoding: torch against Triton, forward + backward.

Each kernel is timed at the paper's grid (16 levels, all unlocked, 2^19 entries per level) on
``points`` random points, in two modes: ``forward_backward`` (features, then gradients w.r.t.
the table and the points) and ``with_normals`` (as the field uses it: the density's gradient
w.r.t. the points with ``create_graph``, then a loss on it backpropagated into the table, the
double backward). The Triton row also reports its largest difference from the torch row's
results (relative to their scale), since that is where its compiled kernels are checked.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdi_blender.server.scene.encoding import HashGridEncoding, triton_runs_on

TRAINING_POINTS = 2**21
"""About the samples of one 512 × 512 render that the occupancy grid keeps (8 per ray)."""


def _modes(enc: HashGridEncoding, x: torch.Tensor, w: torch.Tensor) -> dict[str, Callable[[], list[torch.Tensor]]]:
    def forward_backward() -> list[torch.Tensor]:
        enc.params.grad = None
        xg = x.clone().requires_grad_(True)
        out = enc(xg)
        (out @ w).sum().backward()
        return [out.detach(), xg.grad, enc.params.grad]

    def with_normals() -> list[torch.Tensor]:
        enc.params.grad = None
        xg = x.clone().requires_grad_(True)
        density = enc(xg) @ w
        (grad,) = torch.autograd.grad(density.sum(), xg, create_graph=True)
        (density.sum() + grad.square().sum()).backward()
        return [grad.detach(), enc.params.grad]

    return {"forward_backward": forward_backward, "with_normals": with_normals}


def hash_rows(device: torch.device, points: int, repeats: int, time_ms: Callable[..., float]) -> list[dict]:
    """One row per kernel (``hash-torch``, ``hash-triton``) with ms and points/s per mode;
    ``time_ms(fn, cuda, repeats)`` is the benchmark's timer."""
    torch.manual_seed(0)
    x = torch.rand(points, 3, device=device)
    rows, reference = [], {}
    for kernel in ("torch", "triton"):
        name = f"hash-{kernel}"
        if kernel == "triton" and not triton_runs_on(device):
            rows.append({"name": name, "skipped": f"triton does not run on {device.type} here"})
            continue
        enc = HashGridEncoding(start_level=16, kernel=kernel).to(device)
        with torch.no_grad():  # features of order 1, so that disagreements show
            enc.params.uniform_(-1.0, 1.0)
        w = torch.randn(enc.n_output_dims, device=device, generator=torch.Generator(device).manual_seed(1))
        row: dict = {"name": name, "points": points, "levels": enc.n_levels, "ms": {}, "points_per_s": {}}
        try:
            for mode, fn in _modes(enc, x, w).items():
                results = fn()
                if kernel == "torch":
                    reference[mode] = results
                else:
                    row.setdefault("max_rel_diff_vs_torch", {})[mode] = max(
                        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                        for a, b in zip(results, reference[mode])
                    )
                del results
                row["ms"][mode] = time_ms(fn, device.type == "cuda", repeats)
                row["points_per_s"][mode] = points / row["ms"][mode] * 1000
        except Exception as exc:  # a kernel that fails to build or run is a result too
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def print_hash_rows(rows: list[dict]) -> None:
    for r in rows:
        if "skipped" in r or "error" in r:
            print(f"{r['name']:34s} {r.get('skipped') or 'failed: ' + r['error']}")
            continue
        parts = ", ".join(f"{m} {ms:.2f} ms ({r['points_per_s'][m] / 1e6:.2f} M pts/s)" for m, ms in r["ms"].items())
        diff = r.get("max_rel_diff_vs_torch")
        print(f"{r['name']:34s} {r['points']} points: {parts}" + (f"; max rel diff vs torch {diff}" if diff else ""))
