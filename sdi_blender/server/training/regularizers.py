"""The SDI system's regularisers of the rendered field, and their weight schedules.

Each loss takes per-ray render outputs ([B, H, W, C], see
:class:`~sdi_blender.server.scene.renderer.RenderOutput`) and returns a scalar. Weights follow
the official SDI configuration; schedules are threestudio-style linear ramps
``[start_step, start_value, end_value, end_step]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Schedule = float | tuple[float, float, float, float]
"""A constant, or ``(start_step, start_value, end_value, end_step)``."""


def ramp(value: float | Sequence[float], step: int) -> float:
    """The scheduled value at ``step``: a constant, or linear from start to end, clamped outside."""
    if isinstance(value, (int, float)):
        return float(value)
    if len(value) != 4:
        raise ValueError(f"a schedule is [start_step, start_value, end_value, end_step], got {value}")
    start_step, start_value, end_value, end_step = (float(v) for v in value)
    if end_step <= start_step:
        return end_value if step >= end_step else start_value
    frac = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return start_value + (end_value - start_value) * frac


@dataclass
class LossWeights:
    """Weights of the loss terms (official SDI values); each a constant or a :data:`Schedule`."""

    guidance: Schedule = 1.0
    """λ_sdi, the score-distillation loss."""
    orient: Schedule = 0.1
    """DreamFusion's orientation loss (normals facing away from the camera)."""
    sparsity: Schedule = (0, 0.15, 0.0, 3000)
    """Sparsity of the opacity, faded out by step 3000 (keeps the early blob compact)."""
    opaque: Schedule = 0.1
    """Binary entropy of the opacity (pixels fully empty or fully covered)."""
    convex: Schedule = (0, 1.0, 0.1, 4000)
    """The naive convexity prior on the normal map, 1 → 0.1 by step 4000."""
    z_variance: Schedule = 1.0
    """HiFA's depth-variance loss (thin, surface-like density along each ray)."""

    def __post_init__(self) -> None:
        # Schedules read back from JSON arrive as lists; keep them tuples so configs compare equal.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)):
                setattr(self, f.name, tuple(value))
                ramp(value, 0)  # rejects a malformed schedule now rather than mid-run

    def at(self, step: int) -> dict[str, float]:
        """Every weight's value at ``step`` (paper time), keyed by field name."""
        return {f.name: ramp(getattr(self, f.name), step) for f in dataclasses.fields(self)}


def orientation_loss(orient_map: Tensor, opacity: Tensor) -> Tensor:
    """DreamFusion's orientation loss (Poole et al. 2022, eq. 4 / App. A.3).

    ``orient_map`` holds per ray Σ wᵢ.detach() · max(0, nᵢ·d)² (from the renderer):
    visible normals that point away from the camera. Summed and divided by the number of
    rays that see the object, so the loss does not shrink with the object's screen area.
    """
    n_hit = (opacity > 0).sum().clamp_min(1)
    return orient_map.sum() / n_hit


def sparsity_loss(opacity: Tensor) -> Tensor:
    """Mean of √(opacity² + 0.01): a smooth L1 that pulls empty space to zero opacity."""
    return (opacity.square() + 0.01).sqrt().mean()


def opacity_loss(opacity: Tensor, eps: float = 1e-3) -> Tensor:
    """Mean binary entropy of the opacity: low when each pixel is fully empty or fully opaque."""
    a = opacity.clamp(eps, 1.0 - eps)
    return (-a * a.log() - (1 - a) * (1 - a).log()).mean()


def z_variance_loss(z_variance: Tensor, opacity: Tensor) -> Tensor:
    """HiFA's z-variance loss (Zhu et al. 2023): mean depth variance of opaque rays.

    ``z_variance`` is the renderer's Σ ŵᵢ (tᵢ − Σ ŵⱼ tⱼ)² per ray, with the weights normalised
    by the ray's opacity (ŵ = w / opacity, the official form); only rays with opacity > 0.5 count, and
    the loss is 0 (still differentiable) when there are none.
    """
    mask = (opacity > 0.5).to(z_variance.dtype)
    return (z_variance * mask).sum() / mask.sum().clamp_min(1.0)


def convexity_loss(comp_normal: Tensor, res: int = 8) -> Tensor:
    """The official SDI system's "naive convexity" prior on the normal map.

    ``comp_normal`` is [B, H, W, 3], (n + 1)/2 · opacity. At a coarse ``res`` × ``res``,
    the z component of the cross product of horizontally (left × right) and vertically
    (down × up) neighbouring values (≈ the sine of the angle they turn by) is averaged and
    negated, rewarding normals that turn one way across the image, as on a bulging
    surface. It is a heuristic: it acts on encoded world-space normals, so its value for a
    given shape depends on the view (a sphere scores lower from +X than from −X).
    """
    n = F.interpolate(comp_normal.permute(0, 3, 1, 2), size=(res, res), mode="bilinear", align_corners=False).permute(
        0, 2, 3, 1
    )  # [B, res, res, 3]
    left, right = n[:, :, :-1], n[:, :, 1:]
    up, down = n[:, :-1], n[:, 1:]  # row 0 is the top of the image
    horizontal = torch.linalg.cross(left, right, dim=-1)[..., 2]
    vertical = torch.linalg.cross(down, up, dim=-1)[..., 2]
    return -(horizontal.mean() + vertical.mean())
