"""View-dependent prompting and Perp-Neg weights (pure tensor maths, no model).

DreamFusion appends the view ("…, front view") to the prompt according to the camera
azimuth and elevation; Perp-Neg (Armandpour et al. 2023) interpolates between the view
prompts and pushes away from the other views along directions perpendicular to the
positive guidance. The thresholds and decay curves are the official SDI defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

DIRECTIONS: tuple[str, ...] = ("side", "front", "back", "overhead")
SIDE, FRONT, BACK, OVERHEAD = range(4)


@dataclass
class PromptOptions:
    """How the prompt is conditioned on the camera (the paper's defaults)."""

    view_dependent: bool = True
    """Append ", side/front/back/overhead view" to the prompt by camera direction."""
    perp_neg: bool = True
    """Perp-Neg: interpolate view prompts and use the other views as perpendicular negatives."""
    front_threshold: float = 45.0
    """Azimuths within ± this many degrees of 0 are "front"."""
    back_threshold: float = 45.0
    """Azimuths within ± this many degrees of 180 are "back"."""
    overhead_threshold: float = 60.0
    """Elevations above this many degrees are "overhead"."""
    f_sb: tuple[float, float, float] = (1.0, 0.5, -0.606)
    """Perp-Neg decay a·e^(−b·r)+c weighting the side negative between side and back."""
    f_fsb: tuple[float, float, float] = (1.0, 0.5, 0.967)
    """… weighting the front negative between side and back."""
    f_fs: tuple[float, float, float] = (4.0, 0.5, -2.426)
    """… weighting the front negative between front and side."""
    f_sf: tuple[float, float, float] = (4.0, 0.5, -2.426)
    """… weighting the side negative between front and side."""


def view_prompts(prompt: str) -> list[str]:
    """The prompt with each direction's suffix, in :data:`DIRECTIONS` order."""
    return [f"{prompt}, {d} view" for d in DIRECTIONS]


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Azimuth in degrees wrapped to [−180, 180)."""
    return (azimuth_deg + 180) % 360 - 180


def direction_index(elevation_deg: Tensor, azimuth_deg: Tensor, opts: PromptOptions) -> Tensor:
    """Index into :data:`DIRECTIONS` per camera; later rules win, as in DreamFusion."""
    azi = wrap_azimuth(azimuth_deg)
    idx = torch.full_like(azi, SIDE, dtype=torch.long)
    idx[azi.abs() < opts.front_threshold] = FRONT
    idx[azi.abs() > 180 - opts.back_threshold] = BACK
    idx[elevation_deg > opts.overhead_threshold] = OVERHEAD
    return idx


def _decay(abc: tuple[float, float, float], r: float) -> float:
    a, b, c = abc
    return a * math.exp(-b * r) + c


@dataclass
class PerpNegMix:
    """Per camera: positive mix over directions, two negative directions and their weights."""

    positive: Tensor
    """[B, 4] weights over the direction prompts forming the positive embedding."""
    negatives: Tensor
    """[B, 2] direction indices of the negative prompts (−1: the negative prompt, weight 0)."""
    weights: Tensor
    """[B, 2] guidance weights of the negatives (≤ 0: they push away)."""


def perp_neg_mix(elevation_deg: Tensor, azimuth_deg: Tensor, opts: PromptOptions) -> PerpNegMix:
    """Perp-Neg's interpolation of view prompts for each camera."""
    b = azimuth_deg.shape[0]
    positive = torch.zeros(b, 4)
    negatives = torch.full((b, 2), -1, dtype=torch.long)
    weights = torch.zeros(b, 2)
    overhead = direction_index(elevation_deg, azimuth_deg, opts) == OVERHEAD
    for i, azi in enumerate(wrap_azimuth(azimuth_deg).abs().tolist()):
        if overhead[i]:
            positive[i, OVERHEAD] = 1.0  # no negatives overhead
        elif azi < 90:  # between front (r = 1) and side (r = 0)
            r = 1 - azi / 90
            positive[i, FRONT], positive[i, SIDE] = r, 1 - r
            negatives[i] = torch.tensor([FRONT, SIDE])
            weights[i] = torch.tensor([-_decay(opts.f_fs, r), -_decay(opts.f_sf, 1 - r)])
        else:  # between side (r = 1) and back (r = 0)
            r = 2 - azi / 90
            positive[i, SIDE], positive[i, BACK] = r, 1 - r
            negatives[i] = torch.tensor([SIDE, FRONT])
            weights[i] = torch.tensor([-_decay(opts.f_sb, r), -_decay(opts.f_fsb, r)])
    return PerpNegMix(positive, negatives, weights)


def perpendicular_component(x: Tensor, y: Tensor) -> Tensor:
    """The part of each x[i] orthogonal to y[i] (flattened per sample)."""
    dims = tuple(range(1, x.dim()))
    scale = (x * y).sum(dims, keepdim=True) / (y * y).sum(dims, keepdim=True).clamp_min(1e-6)
    return x - scale * y


def guided_noise(
    eps_cond: Tensor,
    eps_uncond: Tensor,
    scale: float,
    eps_negs: list[Tensor] | None = None,
    neg_weights: Tensor | None = None,
) -> Tensor:
    """Classifier-free guidance in the official SDI implementation's two conventions.

    * Perp-Neg (``neg_weights`` [B, K] given, one ε per negative in ``eps_negs``):
      ε_u + s·(e_pos + Σₖ wₖ·⊥(ε_negₖ − ε_u, e_pos)) with e_pos = ε_c − ε_u
      (Armandpour et al. 2023, eq. 8; the diffusers convention).
    * Plain CFG: ε_c + s·(ε_c − ε_u), i.e. ε_u + (s + 1)·(ε_c − ε_u): the official 2D
      experiment and its no-Perp-Neg 3D path, so s = 7.5 acts as 8.5 and the inversion's
      −7.5 as −6.5 (``docs/algorithm.md``).

    All tensors are [B, C, H, W].
    """
    if neg_weights is None:
        return eps_cond + scale * (eps_cond - eps_uncond)
    e_pos = eps_cond - eps_uncond
    for i, eps_neg in enumerate(eps_negs or []):
        w = neg_weights[:, i].view(-1, 1, 1, 1).to(e_pos)
        e_pos = e_pos + w * perpendicular_component(eps_neg - eps_uncond, eps_cond - eps_uncond)
    return eps_uncond + scale * e_pos
