"""End-of-run images: the loss curves and the turntable strip (PNG bytes)."""

from __future__ import annotations

import torch

from ..util.images import grid, png_bytes

# The terms worth a curve each; the total is drawn on top.
CURVES = ("total", "guidance", "orient", "sparsity", "opaque", "z_variance", "convex")


def loss_curve_png(history: list[dict[str, float]]) -> bytes:
    """One panel per loss term against the step, smoothed by a running mean."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to PNG
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    names = [n for n in CURVES if history and n in history[0]]
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 1.6 * max(len(names), 1)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        values = [h[name] for h in history]
        ax.plot(steps, values, lw=0.6, alpha=0.4)
        ax.plot(steps, _running_mean(values, max(len(values) // 50, 1)), lw=1.2)
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    png = png_bytes(fig, dpi=100)
    plt.close(fig)
    return png


def _running_mean(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def strip_png(views: list[torch.Tensor]) -> bytes:
    """Views ([3, H, W] in [0, 1]) side by side as one PNG."""
    return png_bytes(grid([views]))
