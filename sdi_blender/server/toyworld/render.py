"""The toy world's ground-truth renderer: analytic ray casting of coloured primitives.

Written apart from the NeRF renderer and the camera code on purpose: it builds its own
cameras from the training-camera *settings* (:class:`~sdi_blender.server.scene.cameras.CameraConfig`
values, not its functions), its own pixel rays and its own shading, so that a camera,
image-orientation or shading bug in the pipeline cannot cancel out against the same bug here.

Its conventions are the documented ones of the project (``docs/algorithm.md``): a camera at
elevation ε, azimuth φ and distance d sits at d·(cosε cosφ, cosε sinφ, sinε) in the Z-up
world and looks at the origin; image row 0 is the top, column 0 the left; images are RGB in
[0, 1] as [3, H, W]. Pixels are supersampled (``SUPERSAMPLE``² rays each) so edges are soft
like a volume render's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..scene.cameras import CameraConfig
from ..scene.shading import ShadingConfig
from .objects import ToyObject

BACKGROUND = 0.5
"""The toy world's background: plain mid grey, the colour the environment-map background
starts at (sigmoid(0)), so a short run spends no steps repainting the sky."""
SUPERSAMPLE = 2
"""Rays per pixel side."""


@dataclass
class ToyViews:
    """Camera parameters of N ground-truth pictures, drawn like the training cameras."""

    elevation_deg: Tensor
    """[N] unperturbed elevation (selects the view prompt)."""
    azimuth_deg: Tensor
    """[N] unperturbed azimuth (0 = seen from +X, the front)."""
    position: Tensor
    """[N, 3] perturbed camera position."""
    centre: Tensor
    """[N, 3] perturbed look-at point."""
    up: Tensor
    """[N, 3] perturbed up vector (unnormalised)."""
    fovy_deg: Tensor
    """[N] vertical field of view."""
    light: Tensor
    """[N, 3] point-light position."""


def _uniform(lo_hi: tuple[float, float], n: int, gen: torch.Generator) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _elevations(cfg: CameraConfig, n: int, gen: torch.Generator) -> Tensor:
    """Half uniform in degrees, half "uniform on the sphere" as the official data module draws it:
    sin ε uniform in [ε_min/90, ε_max/90] (the range mapped linearly, not through the sine)."""
    degrees = _uniform(cfg.elevation_range, n, gen)
    lo, hi = (e / 90.0 for e in cfg.elevation_range)
    on_sphere = torch.rad2deg(torch.asin(_uniform((lo, hi), n, gen)))
    pick = torch.rand(n, generator=gen, dtype=torch.float64) < cfg.sphere_elevation_prob
    return torch.where(pick, on_sphere, degrees)


def orbit_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor | float) -> Tensor:
    """[N, 3] d·(cosε cosφ, cosε sinφ, sinε): the project's orbit convention, written here anew."""
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    d = torch.as_tensor(distance, dtype=e.dtype)
    return (d[:, None] if d.dim() else d) * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], -1)


def orbit_views(elevation_deg: Tensor, azimuth_deg: Tensor, distance: float, fovy_deg: float) -> ToyViews:
    """Unperturbed views [N] looking at the origin with up +Z, the light at the camera."""
    ele, azi = elevation_deg.double(), azimuth_deg.double()
    pos, n = orbit_position(ele, azi, distance), ele.shape[0]
    up = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).expand(n, 3)
    return ToyViews(
        ele,
        azi,
        pos,
        torch.zeros(n, 3, dtype=torch.float64),
        up,
        torch.full((n,), float(fovy_deg), dtype=torch.float64),
        pos.clone(),
    )


def sample_views(cfg: CameraConfig, n: int, seed: int) -> ToyViews:
    """N camera draws from the training distribution (ranges, perturbations, light)."""
    gen = torch.Generator().manual_seed(seed)
    dist, fovy = _uniform(cfg.distance_range, n, gen), _uniform(cfg.fovy_range, n, gen)
    ele, azi = _elevations(cfg, n, gen), _uniform(cfg.azimuth_range, n, gen)
    jitter = (torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1) * cfg.camera_perturb
    position = orbit_position(ele, azi, dist) + jitter
    centre = torch.randn(n, 3, generator=gen, dtype=torch.float64) * cfg.center_perturb
    up = (
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        + torch.randn(n, 3, generator=gen, dtype=torch.float64) * cfg.up_perturb
    )
    wobble = torch.randn(n, 3, generator=gen, dtype=torch.float64) * cfg.light_position_perturb
    toward = position + wobble
    light = toward / toward.norm(dim=-1, keepdim=True) * _uniform(cfg.light_distance_range, n, gen)[:, None]
    return ToyViews(ele, azi, position, centre, up, fovy, light)


def _pixel_rays(views: ToyViews, size: int) -> tuple[Tensor, Tensor]:
    """Ray origins [N, 3] and unit directions [N, S, S, 3] (S = size·SUPERSAMPLE), row 0 on top."""
    fwd = views.centre - views.position
    fwd = fwd / fwd.norm(dim=-1, keepdim=True)
    right = torch.cross(fwd, views.up, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    up = torch.cross(right, fwd, dim=-1)
    s = size * SUPERSAMPLE
    # Sub-pixel centres in [-1, 1]; the image plane spans ±tan(fov/2) at unit distance.
    coords = (torch.arange(s, dtype=torch.float64) + 0.5) / s * 2 - 1
    half = torch.tan(torch.deg2rad(views.fovy_deg) / 2)[:, None, None, None]
    across = coords[None, None, :, None] * half * right[:, None, None]  # columns: left → right
    down = -coords[None, :, None, None] * half * up[:, None, None]  # rows: top → bottom
    d = fwd[:, None, None] + across + down
    return views.position, d / d.norm(dim=-1, keepdim=True)


def _hit_sphere(o: Tensor, d: Tensor, centre: Tensor, r: float) -> tuple[Tensor, Tensor]:
    """Distance to the first hit (inf if none) and the outward normal there."""
    oc = o - centre
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - r * r)
    t = -b - disc.clamp_min(0).sqrt()
    t = torch.where((disc >= 0) & (t > 0), t, torch.full_like(t, math.inf))
    p = o + d * t.nan_to_num(posinf=0.0)[..., None]
    return t, (p - centre) / r


def _hit_box(o: Tensor, d: Tensor, centre: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
    """Slab test: distance to the entry point (inf if missed) and the face normal there."""
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0, t1 = (centre - half - o) * inv, (centre + half - o) * inv
    near, far = torch.minimum(t0, t1), torch.maximum(t0, t1)
    t_in, axis = near.max(-1)
    t_out = far.min(-1).values
    t = torch.where((t_in <= t_out) & (t_in > 0), t_in, torch.full_like(t_in, math.inf))
    normal = torch.zeros_like(d).scatter_(-1, axis[..., None], 1.0)
    return t, normal * -torch.sign((d * normal).sum(-1, keepdim=True))


def _cast(obj: ToyObject, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(hit mask, albedo, normal, hit point) of the nearest part along each ray."""
    best = torch.full(d.shape[:-1], math.inf, dtype=d.dtype)
    albedo, normal = torch.zeros_like(d), torch.zeros_like(d)
    for part in obj.parts:
        c = torch.tensor(part.centre, dtype=d.dtype)
        if part.kind == "sphere":
            t, n = _hit_sphere(o, d, c, part.size[0])
        else:
            t, n = _hit_box(o, d, c, torch.tensor(part.size, dtype=d.dtype))
        closer = t < best
        best = torch.where(closer, t, best)
        albedo = torch.where(closer[..., None], torch.tensor(part.colour, dtype=d.dtype), albedo)
        normal = torch.where(closer[..., None], n, normal)
    hit = torch.isfinite(best)
    return hit, albedo, normal, o + d * best.nan_to_num(posinf=0.0)[..., None]


def _shade(mode: str, albedo: Tensor, normal: Tensor, point: Tensor, light: Tensor, cfg: ShadingConfig) -> Tensor:
    """Colour under "albedo", "textureless" (grey, lit) or "diffuse" (albedo × light)."""
    if mode == "albedo":
        return albedo
    to_light = light - point
    to_light = to_light / to_light.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lit = cfg.ambient_light + cfg.diffuse_light * (normal * to_light).sum(-1, keepdim=True).clamp_min(0)
    return lit.expand_as(albedo) if mode == "textureless" else (albedo * lit).clamp(0, 1)


def render_toy(
    obj: ToyObject, views: ToyViews, size: int, modes: tuple[str, ...], shading: ShadingConfig
) -> tuple[Tensor, Tensor]:
    """Images ``[M, N, 3, size, size]`` (one per mode and view) and masks ``[N, size, size]``.

    A pixel is the mean of its SUPERSAMPLE² rays, each showing the nearest part shaded by
    ``mode`` or the white background; the mask is the fraction of its rays that hit.
    """
    origins, dirs = _pixel_rays(views, size)
    o = origins[:, None, None].expand_as(dirs)
    light = views.light[:, None, None].expand_as(dirs)
    hit, albedo, normal, point = _cast(obj, o, dirs)
    ss = SUPERSAMPLE

    def pool(x: Tensor) -> Tensor:  # [N, S, S, C] → [N, C, size, size]
        return torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), ss)

    images = []
    for mode in modes:
        colour = torch.where(
            hit[..., None], _shade(mode, albedo, normal, point, light, shading), torch.full_like(albedo, BACKGROUND)
        )
        images.append(pool(colour).float())
    return torch.stack(images), pool(hit[..., None].to(dirs.dtype))[:, 0].float()
