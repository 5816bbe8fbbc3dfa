"""Orbit cameras around the object, their point lights, and their pixel rays.

Conventions (shared with Blender): the world is Z-up. A camera at distance d, elevation ε
and azimuth φ (degrees) sits at ``(d cosε cosφ, d cosε sinφ, d sinε)`` and looks at the
origin with world up +Z. **Azimuth 0 looks from +X toward the origin** - the "front" view
of the view-dependent prompts - so the object's front faces +X; azimuth 90 looks from +Y.
Camera axes follow OpenGL: +x right, +y up, looking along −z; ``c2w`` holds the columns
right, up, back (= −forward) and position. Seen from +X, world +Y is on the right of the
image and +Z at the top. Elevation must stay inside (−90°, 90°), where "right" is defined.

Training cameras are augmented like the official data module's: the position, the look-at
centre and the up vector are jittered (:func:`perturb_pose`), while ``elevation_deg`` and
``azimuth_deg`` keep the unperturbed angles, which select the view-dependent prompt.
Evaluation cameras (:func:`orbit_cameras`, :func:`turntable_cameras`) are never jittered.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from ..util.devices import to_device


@dataclass
class CameraConfig:
    """Random training cameras and the evaluation camera (the official SDI config's ranges)."""

    distance_range: tuple[float, float] = (1.5, 2.0)
    """Camera distance from the origin, sampled uniformly."""
    fovy_range: tuple[float, float] = (40.0, 70.0)
    """Vertical field of view in degrees, sampled uniformly."""
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    """Elevation above the XY plane in degrees, sampled uniformly (but see
    ``sphere_elevation_prob``)."""
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    """Azimuth around +Z in degrees (0 = on +X), sampled uniformly."""
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    """Distance of the point light from the origin (DreamFusion's light sampling)."""
    light_position_perturb: float = 1.0
    """Std of the Gaussian added to the (perturbed) camera position before taking the light's
    direction."""
    camera_perturb: float = 0.1
    """Each training camera's position moves by U(−camera_perturb, camera_perturb) per axis."""
    center_perturb: float = 0.2
    """Std of the Gaussian offset, per axis, of the point a training camera looks at (the
    origin before the offset)."""
    up_perturb: float = 0.02
    """Std of the Gaussian offset, per axis, of a training camera's up vector (+Z before it)."""
    sphere_elevation_prob: float = 0.5
    """Probability that a batch's elevations are drawn uniform on the sphere rather than
    uniform in degrees. As in the official code, "on the sphere" means sin ε uniform in
    [ε_min/90, ε_max/90] (ε = asin(2u − 1), u uniform in [(ε_min + 90)/180, (ε_max + 90)/180]),
    so those elevations span asin(ε_min/90) … asin(ε_max/90): −6.4° … 30° by default."""
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
    """[B] elevation in degrees before any perturbation (selects the view-dependent prompt)."""
    azimuth_deg: Tensor
    """[B] azimuth in degrees before any perturbation (selects the view-dependent prompt)."""
    distance: Tensor
    """[B] distance from the origin before any perturbation."""
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
        """These cameras on ``device``; a host-to-CUDA copy does not wait for the GPU's queue."""
        return self._map(lambda t: to_device(t, torch.device(device)))

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, key: int | slice) -> Cameras:
        """Cameras selected by slice; an integer keeps a batch of one."""
        if isinstance(key, int):
            if not -len(self) <= key < len(self):
                raise IndexError(f"camera {key} out of range for a batch of {len(self)}")
            key = slice(key, key + 1 if key != -1 else None)
        return self._map(lambda t: t[key])

    @property
    def position(self) -> Tensor:
        """[B, 3] camera centres in world space."""
        return self.c2w[:, :3, 3]


def _as_batch(value: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand_as(like).clone()


def look_at(position: Tensor, centre: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """[B, 4, 4] c2w for cameras at ``position`` [B, 3] looking at ``centre`` [B, 3] (default
    the origin); ``up`` [B, 3] (default +Z) need be neither unit nor orthogonal to the view."""
    centre = torch.zeros_like(position) if centre is None else centre
    if up is None:
        up = position.new_tensor([0.0, 0.0, 1.0]).expand_as(position)
    forward = F.normalize(centre - position, dim=-1)
    right = F.normalize(torch.linalg.cross(forward, up, dim=-1), dim=-1)
    up = torch.linalg.cross(right, forward, dim=-1)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, :3] = torch.stack([right, up, -forward], dim=-1)
    c2w[:, :3, 3] = position
    return c2w


def spherical_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """[B, 3] position ``d (cosε cosφ, cosε sinφ, sinε)``."""
    ele, azi = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return distance[:, None] * torch.stack([ele.cos() * azi.cos(), ele.cos() * azi.sin(), ele.sin()], dim=-1)


def orbit_cameras(
    elevation_deg: Tensor,
    azimuth_deg: Tensor,
    distance: Tensor | float,
    fovy_deg: Tensor | float,
    width: int,
    height: int,
) -> Cameras:
    """Cameras on a sphere around the origin, each with its light at the camera."""
    elevation_deg = torch.as_tensor(elevation_deg, dtype=torch.float32).reshape(-1)
    azimuth_deg = torch.as_tensor(azimuth_deg, dtype=elevation_deg.dtype).reshape(-1)
    distance = _as_batch(distance, elevation_deg)
    position = spherical_position(elevation_deg, azimuth_deg, distance)
    return Cameras(
        c2w=look_at(position),
        fovy_deg=_as_batch(fovy_deg, elevation_deg),
        elevation_deg=elevation_deg,
        azimuth_deg=azimuth_deg,
        distance=distance,
        light_positions=position.clone(),
        width=width,
        height=height,
    )


def turntable_cameras(n: int, width: int, height: int, cfg: CameraConfig) -> Cameras:
    """n evaluation views, azimuth 0, 360/n, … (view 0 looks from +X), at the eval settings."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return orbit_cameras(torch.full((n,), cfg.eval_elevation), azimuth, cfg.eval_distance, cfg.eval_fovy, width, height)


def _uniform(bounds: tuple[float, float], batch: int, generator: torch.Generator | None) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(batch, generator=generator)


def _elevations(cfg: CameraConfig, batch: int, generator: torch.Generator | None) -> Tensor:
    """[B] elevations in degrees: uniform in degrees, or (one draw for the whole batch, with
    probability ``cfg.sphere_elevation_prob``) uniform on the sphere by inverse transform."""
    on_sphere = torch.rand((), generator=generator) < cfg.sphere_elevation_prob
    if on_sphere:
        lo, hi = cfg.elevation_range
        u = _uniform(((lo + 90.0) / 180.0, (hi + 90.0) / 180.0), batch, generator)
        return torch.rad2deg(torch.asin(2 * u - 1))
    return _uniform(cfg.elevation_range, batch, generator)


def perturb_pose(
    position: Tensor, cfg: CameraConfig, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The official data module's pose augmentation of orbit positions [B, 3].

    Returns the jittered position (+ U(−camera_perturb, camera_perturb) per axis), the look-at
    centre (origin + N(0, center_perturb²)) and the up vector (+Z + N(0, up_perturb²)), each
    [B, 3], for :func:`look_at`.
    """
    batch = position.shape[0]
    shift = (torch.rand(batch, 3, generator=generator) * 2 - 1) * cfg.camera_perturb
    centre = torch.randn(batch, 3, generator=generator) * cfg.center_perturb
    up = torch.tensor([0.0, 0.0, 1.0]) + torch.randn(batch, 3, generator=generator) * cfg.up_perturb
    return position + shift, centre, up


def sample_cameras(
    cfg: CameraConfig, batch: int, width: int, height: int, generator: torch.Generator | None = None
) -> Cameras:
    """Random training cameras, augmented (:func:`perturb_pose`), with DreamFusion-style lights.

    DreamFusion (Poole et al. 2022, Sec. 3.1 / App. A.2) places the light near the camera so
    that shading reveals geometry: its direction is the (perturbed) camera position plus
    Gaussian noise, its distance from the origin drawn separately. All draws come from
    ``generator`` (CPU), none from torch's global generator.
    """
    distance = _uniform(cfg.distance_range, batch, generator)
    fovy = _uniform(cfg.fovy_range, batch, generator)
    elevation = _elevations(cfg, batch, generator)
    azimuth = _uniform(cfg.azimuth_range, batch, generator)
    position, centre, up = perturb_pose(spherical_position(elevation, azimuth, distance), cfg, generator)
    noise = torch.randn(batch, 3, generator=generator) * cfg.light_position_perturb
    direction = F.normalize(position + noise, dim=-1)
    lights = direction * _uniform(cfg.light_distance_range, batch, generator)[:, None]
    return Cameras(
        c2w=look_at(position, centre, up),
        fovy_deg=fovy,
        elevation_deg=elevation,
        azimuth_deg=azimuth,
        distance=distance,
        light_positions=lights,
        width=width,
        height=height,
    )


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
    i, j = torch.meshgrid(
        torch.arange(h, dtype=c2w.dtype, device=c2w.device),
        torch.arange(w, dtype=c2w.dtype, device=c2w.device),
        indexing="ij",
    )
    x = (j + 0.5 - w / 2) / f  # [B, H, W]
    y = -(i + 0.5 - h / 2) / f
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
    dirs = F.normalize(torch.einsum("bkc,bhwc->bhwk", c2w[:, :3, :3], d_cam), dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs
