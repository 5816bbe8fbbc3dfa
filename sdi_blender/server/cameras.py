"""Orbit cameras around the object, their point lights, and their pixel rays.

Conventions (shared with Blender): the world is Z-up. A camera at distance d, elevation ε
and azimuth φ (degrees) sits at ``(d cosε cosφ, d cosε sinφ, d sinε)`` and looks at the
origin with world up +Z. **Azimuth 0 looks from +X toward the origin** - the "front" view
of the view-dependent prompts - so the object's front faces +X; azimuth 90 looks from +Y.
Camera axes follow OpenGL: +x right, +y up, looking along −z; ``c2w`` holds the columns
right, up, back (= −forward) and position. Seen from +X, world +Y is on the right of the
image and +Z at the top. Elevation must stay inside (−90°, 90°), where "right" is defined.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class CameraConfig:
    """Random training cameras and the evaluation camera (the official SDI config's ranges)."""

    distance_range: tuple[float, float] = (1.5, 2.0)
    """Camera distance from the origin, sampled uniformly."""
    fovy_range: tuple[float, float] = (40.0, 70.0)
    """Vertical field of view in degrees, sampled uniformly."""
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    """Elevation above the XY plane in degrees, sampled uniformly."""
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    """Azimuth around +Z in degrees (0 = on +X), sampled uniformly."""
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    """Distance of the point light from the origin (DreamFusion's light sampling)."""
    light_position_perturb: float = 1.0
    """Std of the Gaussian added to the camera position before taking the light's direction."""
    eval_distance: float = 2.0
    """Distance of the evaluation (preview and turntable) cameras."""
    eval_fovy: float = 70.0
    """Vertical field of view of the evaluation cameras, in degrees."""
    eval_elevation: float = 15.0
    """Elevation of the evaluation cameras, in degrees."""


@dataclass
class Cameras:
    """A batch of B pinhole cameras rendering width × height images."""

    c2w: Tensor
    """[B, 4, 4] camera-to-world matrices (columns right, up, back, position)."""
    fovy_deg: Tensor
    """[B] vertical field of view in degrees."""
    elevation_deg: Tensor
    """[B] elevation in degrees (selects the view-dependent prompt)."""
    azimuth_deg: Tensor
    """[B] azimuth in degrees (selects the view-dependent prompt)."""
    distance: Tensor
    """[B] distance from the origin."""
    light_positions: Tensor
    """[B, 3] world position of each camera's point light."""
    width: int
    """Image width in pixels."""
    height: int
    """Image height in pixels."""

    def _map(self, fn) -> Cameras:
        """A copy with ``fn`` applied to every tensor field."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Cameras(**{k: fn(v) if isinstance(v, Tensor) else v for k, v in values.items()})

    def to(self, device: torch.device | str) -> Cameras:
        return self._map(lambda t: t.to(device))

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, key: int | slice) -> Cameras:
        """Cameras selected by slice; an integer keeps a batch of one."""
        if isinstance(key, int):
            if not -len(self) <= key < len(self):
                raise IndexError(f"camera {key} out of range for a batch of {len(self)}")
            key = slice(key, key + 1 if key != -1 else None)
        return self._map(lambda t: t[key])

    def index(self, i: int) -> Cameras:
        """Camera ``i`` as a batch of one (e.g. for a preview render)."""
        return self[i]

    @property
    def position(self) -> Tensor:
        """[B, 3] camera centres in world space."""
        return self.c2w[:, :3, 3]


def _as_batch(value: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand_as(like).clone()


def look_at_origin(position: Tensor) -> Tensor:
    """[B, 4, 4] c2w for cameras at ``position`` [B, 3] looking at the origin with up +Z."""
    forward = F.normalize(-position, dim=-1)
    up_world = torch.tensor([0.0, 0.0, 1.0], dtype=position.dtype, device=position.device)
    right = F.normalize(torch.linalg.cross(forward, up_world.expand_as(forward), dim=-1), dim=-1)
    up = torch.linalg.cross(right, forward, dim=-1)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, :3] = torch.stack([right, up, -forward], dim=-1)
    c2w[:, :3, 3] = position
    return c2w


def spherical_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """[B, 3] position ``d (cosε cosφ, cosε sinφ, sinε)``."""
    ele, azi = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return distance[:, None] * torch.stack(
        [ele.cos() * azi.cos(), ele.cos() * azi.sin(), ele.sin()], dim=-1)


def orbit_cameras(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor | float,
                  fovy_deg: Tensor | float, width: int, height: int) -> Cameras:
    """Cameras on a sphere around the origin, each with its light at the camera."""
    elevation_deg = torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1)
    azimuth_deg = torch.as_tensor(azimuth_deg, dtype=elevation_deg.dtype).reshape(-1)
    distance = _as_batch(distance, elevation_deg)
    position = spherical_position(elevation_deg, azimuth_deg, distance)
    return Cameras(c2w=look_at_origin(position), fovy_deg=_as_batch(fovy_deg, elevation_deg),
                   elevation_deg=elevation_deg, azimuth_deg=azimuth_deg, distance=distance,
                   light_positions=position.clone(), width=width, height=height)


def turntable_cameras(n: int, width: int, height: int, cfg: CameraConfig) -> Cameras:
    """n evaluation views, azimuth 0, 360/n, … (view 0 looks from +X), at the eval settings."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return orbit_cameras(torch.full((n,), cfg.eval_elevation), azimuth, cfg.eval_distance,
                         cfg.eval_fovy, width, height)


def _uniform(bounds: tuple[float, float], batch: int, generator: torch.Generator | None) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(batch, generator=generator)


def sample_cameras(cfg: CameraConfig, batch: int, width: int, height: int,
                   generator: torch.Generator | None = None) -> Cameras:
    """Random training cameras (every range uniform) with DreamFusion-style point lights.

    DreamFusion (Poole et al. 2022, Sec. 3.1 / App. A.2) places the light near the camera so
    that shading reveals geometry: its direction is the camera position plus Gaussian noise,
    its distance from the origin drawn separately. All draws come from ``generator`` (CPU).
    """
    distance = _uniform(cfg.distance_range, batch, generator)
    fovy = _uniform(cfg.fovy_range, batch, generator)
    elevation = _uniform(cfg.elevation_range, batch, generator)
    azimuth = _uniform(cfg.azimuth_range, batch, generator)
    cams = orbit_cameras(elevation, azimuth, distance, fovy, width, height)
    noise = torch.randn(batch, 3, generator=generator) * cfg.light_position_perturb
    direction = F.normalize(cams.position + noise, dim=-1)
    cams.light_positions = direction * _uniform(cfg.light_distance_range, batch, generator)[:, None]
    return cams


def focal_length(cams: Cameras) -> Tensor:
    """[B] focal length in pixels: f = H/2 / tan(fovy/2)."""
    return 0.5 * cams.height / torch.tan(torch.deg2rad(cams.fovy_deg) / 2)


def camera_rays(cams: Cameras) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions in world space, each [B, H, W, 3].

    Pixel (row i, column j) is sampled at its centre: its camera-space direction is
    ``((j + 0.5 − W/2)/f, −(i + 0.5 − H/2)/f, −1)``; row 0 is the top of the image.
    """
    c2w = cams.c2w
    h, w = cams.height, cams.width
    f = focal_length(cams).to(c2w)[:, None, None]
    i, j = torch.meshgrid(torch.arange(h, dtype=c2w.dtype, device=c2w.device),
                          torch.arange(w, dtype=c2w.dtype, device=c2w.device), indexing="ij")
    x = (j + 0.5 - w / 2) / f  # [B, H, W]
    y = -(i + 0.5 - h / 2) / f
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
    dirs = F.normalize(torch.einsum("bkc,bhwc->bhwk", c2w[:, :3, :3], d_cam), dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs

