"""Diffuse shading with a point light, and DreamFusion's random shading augmentation.

DreamFusion (Poole et al. 2022, Sec. 3.1) renders with Lambertian shading under a random
point light and, at random, without the albedo ("textureless"): a grey shaded render can
only look like the prompt if the geometry does, which discourages painting shape onto a
flat surface. The SDI configuration uses the same material (threestudio's
"diffuse-with-point-light") and renders albedo only for the first steps, while the
geometry is still a blob.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

SHADINGS: tuple[str, ...] = ("albedo", "textureless", "diffuse")
"""Shading modes: the albedo alone, grey Lambertian shading, albedo × Lambertian shading."""


@dataclass
class ShadingConfig:
    """The point-light material and its augmentation probabilities (official SDI values)."""

    ambient_light: float = 0.1
    """Ambient intensity, added to every shaded point."""
    diffuse_light: float = 0.9
    """Point-light intensity, scaled by max(0, n·l̂)."""
    ambient_only_steps: int = 1000
    """Steps (in paper time) rendered with the albedo only, before shading is sampled."""
    diffuse_prob: float = 0.3
    """After those steps, the probability of a shaded (textureless or diffuse) render."""
    textureless_prob: float = 0.75
    """Given a shaded render, the probability that it is textureless rather than diffuse."""


def pick_shading(cfg: ShadingConfig, step: int, generator: torch.Generator | None = None) -> str:
    """The shading mode of one training step (shared by the batch).

    Albedo before ``ambient_only_steps``; then albedo with probability 1 − diffuse_prob,
    else textureless with probability textureless_prob, else diffuse. Two draws from
    ``generator`` per step after the ambient-only phase, none before.
    """
    if step < cfg.ambient_only_steps:
        return "albedo"
    u = torch.rand(2, generator=generator).tolist()
    if u[0] >= cfg.diffuse_prob:
        return "albedo"
    return "textureless" if u[1] < cfg.textureless_prob else "diffuse"


def lambert(normal: Tensor, positions: Tensor, light_positions: Tensor, cfg: ShadingConfig) -> Tensor:
    """[N, 1] light intensity ambient + diffuse · max(0, n·l̂), l̂ toward the light."""
    to_light = F.normalize(light_positions - positions, dim=-1)
    facing = (normal * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    return cfg.ambient_light + cfg.diffuse_light * facing


def shade(
    albedo: Tensor, normal: Tensor | None, positions: Tensor, light_positions: Tensor, mode: str, cfg: ShadingConfig
) -> Tensor:
    """[N, 3] colour of N points under ``mode`` (one of :data:`SHADINGS`).

    ``normal`` (unit, world space) may be ``None`` only for "albedo".
    """
    if mode == "albedo":
        return albedo
    if mode not in SHADINGS:
        raise ValueError(f"unknown shading '{mode}', expected one of {SHADINGS}")
    if normal is None:
        raise ValueError(f"shading '{mode}' needs normals")
    light = lambert(normal, positions, light_positions, cfg)
    if mode == "textureless":
        return light.expand(*light.shape[:-1], 3).to(albedo.dtype)
    return (albedo * light).clamp(0.0, 1.0)
