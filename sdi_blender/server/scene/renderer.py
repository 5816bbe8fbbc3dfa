"""NeRF volume rendering of the field with nerfacc.

Rays from :func:`~sdi_blender.server.scene.cameras.camera_rays` are sampled inside the scene
box, the field is queried for density, albedo and analytic normals, the samples are
shaded (:mod:`~sdi_blender.server.scene.shading`) and composited with nerfacc's
volume-rendering functions over the learned environment-map background.

Sampling: on CUDA nerfacc's occupancy-grid estimator skips empty space (its ray
marching is a CUDA kernel) and, as the official renderer does, evaluates the field's density
at the marched samples to drop the nearly transparent ones and those behind an opaque
surface; elsewhere every ray gets ``num_samples_per_ray`` uniform (stratified while
training) samples between its entry into and exit from the box, and the same occupancy grid
(nerfacc's, updated the same way; its update runs on any device) leaves the samples in its
empty cells out of the field's evaluation, so a CPU run also skips empty space.
Memory: rays are rendered in chunks; with gradients on, each chunk is recomputed during
the backward pass (gradient checkpointing), so a 512×512 render with 512 samples per
ray never holds the whole batch's per-sample intermediates at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import nerfacc
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .cameras import Cameras, camera_rays
from .field import FieldOutput
from .shading import ShadingConfig, shade

# Per-ray channels a chunk returns: rgb(3) opacity(1) depth(1) z_variance(1) normal(3) orient(1).
_SPLITS = (3, 1, 1, 1, 3, 1)


OFFICIAL_THRESHOLD = 25.0
"""The official export's density level, for the official renderer (radius 2, 512 samples)."""


def official_level(radius: float, samples_per_ray: int) -> float:
    """The official level for a run rendered with marching step √3·2r/N.

    What a render sees as opaque is density × step, so a trained field's densities scale as
    1/step: the official 25 at step √3·2·2/512 is 25 · (4/512) / (2r/N) here, so 25 for the
    paper's presets (r = 2, N = 512) and 3.125 for the toy preset's (r = 1, N = 32)."""
    return OFFICIAL_THRESHOLD * (4.0 / 512) / (2.0 * radius / samples_per_ray)


@dataclass
class RendererConfig:
    """How rays are sampled and batched (the official NeRF volume renderer's settings)."""

    num_samples_per_ray: int = 512
    """Samples per ray across the box (the uniform sampler), or the marching step
    ``√3·2r / num_samples_per_ray`` along the ray (the occupancy grid)."""
    chunk_rays: int = 8192
    """Rays rendered at once; bounds the memory of one render."""
    min_chunk_rays: int = 1024
    """Out of memory in a training step, the trainer halves ``chunk_rays`` down to this first
    (:func:`lower_memory`)."""
    min_samples_per_ray: int = 64
    """... and then ``num_samples_per_ray`` down to this, before it gives up."""
    occupancy_grid: bool = True
    """Skip empty space with nerfacc's occupancy grid: its ray marching on CUDA, a per-sample
    cell lookup elsewhere."""
    grid_resolution: int = 32
    """Cells per side of the occupancy grid."""
    grid_update_every: int = 16
    """Steps between occupancy-grid updates."""
    grid_threshold: float = 0.01
    """Opacity (density × step) below which a cell counts as empty."""
    alpha_thre: float = 0.01
    """Grid sampler: samples whose alpha (1 − exp(−density × step)) is below this are dropped
    (nerfacc caps it at the grid's mean occupancy)."""
    early_stop_eps: float = 1e-4
    """Grid sampler: a ray's samples end once its transmittance falls below this."""
    hash_kernel: str = "auto"
    """The field's hash-grid implementation: auto (fused Triton kernels on CUDA when triton
    imports, else plain torch), torch or triton (:mod:`.hash_triton`)."""


@dataclass
class RenderOutput:
    """Per-pixel results, each [B, H, W, C]."""

    rgb: Tensor
    """Composited colour over the background, in [0, 1]."""
    opacity: Tensor
    """Accumulated weight Σ wᵢ."""
    depth: Tensor
    """Expected ray distance Σ wᵢ tᵢ (unnormalised by opacity)."""
    z_variance: Tensor
    """Σ ŵᵢ (tᵢ − Σ ŵⱼ tⱼ)² with ŵ = w / opacity: HiFA's depth variance given a hit."""
    normal: Tensor
    """World normals as (n + 1)/2 · opacity, for display and the convexity loss."""
    orient: Tensor
    """Σ wᵢ.detach() · max(0, nᵢ·d)², DreamFusion's orientation penalty per ray."""


def lower_memory(config: RendererConfig) -> str | None:
    """Halve the render chunk, or once it is at its floor the samples per ray (never below
    their floors); says what changed, or returns None when both are at their floors."""
    for name, floor in (("chunk_rays", config.min_chunk_rays), ("num_samples_per_ray", config.min_samples_per_ray)):
        old = getattr(config, name)
        if old > floor:
            setattr(config, name, max(floor, old // 2))
            what = "render chunk" if name == "chunk_rays" else "samples per ray"
            return f"{what} {old} → {getattr(config, name)}"
    return None


def ray_box_interval(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through the box [−r, r]³ (near = far when missed)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (-radius - origins) * inv, (radius - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, torch.maximum(far, near)


class RenderedField(Protocol):
    """What the renderer queries: a field module such as :class:`~.field.ImplicitVolume`."""

    def density(self, x: Tensor) -> Tensor:
        """Density ``[N]`` at world positions ``[N, 3]``."""
        ...

    def __call__(self, x: Tensor, with_normals: bool = ...) -> FieldOutput:
        """Density, albedo and (``with_normals``) normals at world positions ``[N, 3]``."""
        ...

    def parameters(self, recurse: bool = ...) -> Iterator[nn.Parameter]: ...


class VolumeRenderer(nn.Module):
    """Renders a field over a background for a batch of cameras."""

    def __init__(
        self,
        field: RenderedField,
        background: nn.Module,
        radius: float,
        config: RendererConfig | None = None,
        shading: ShadingConfig | None = None,
    ) -> None:
        super().__init__()
        self.field, self.background, self.radius = field, background, radius
        self.config = config or RendererConfig()
        self.shading = shading or ShadingConfig()
        self.estimator: nerfacc.OccGridEstimator | None = None
        self._grid_step: int | None = None  # the last step update_grid saw
        if self.config.occupancy_grid:
            r = radius
            self.estimator = nerfacc.OccGridEstimator(
                roi_aabb=[-r, -r, -r, r, r, r], resolution=self.config.grid_resolution, levels=1
            )

    @property
    def step_size(self) -> float:
        """Marching step of the occupancy-grid sampler: the box diagonal over the sample count."""
        return 3**0.5 * 2 * self.radius / self.config.num_samples_per_ray

    def uses_grid(self, device: torch.device) -> bool:
        return self.estimator is not None and device.type == "cuda"

    @torch.no_grad()
    def update_grid(self, step: int, seed: int | None = None) -> None:
        """Refresh the occupancy grid from the field's density (call once per training step;
        a step that is retried, e.g. after running out of memory, updates it only once).

        nerfacc looks at a random point per cell with the global RNG; given the run's ``seed``,
        those points are drawn from a stream seeded by (seed, step) instead, so a run's result
        depends neither on what else in the process drew random numbers nor on retried steps."""
        if self.estimator is None or step == self._grid_step:
            return
        self._grid_step = step
        if step % self.config.grid_update_every:
            return  # nerfacc would skip it too
        if seed is None:
            self._update_grid(step)
            return
        device = next(self.field.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            stream = (seed * 1_000_003 + step) % 2**63
            torch.default_generator.manual_seed(stream)
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(stream)
            self._update_grid(step)

    def _update_grid(self, step: int) -> None:
        assert self.estimator is not None
        self.estimator.train()
        self.estimator.update_every_n_steps(
            step,
            lambda x: self.field.density(x)[..., None] * self.step_size,
            occ_thre=self.config.grid_threshold,
            n=self.config.grid_update_every,
        )

    def forward(
        self,
        cams: Cameras,
        shading: str = "diffuse",
        generator: torch.Generator | None = None,
        stratified: bool = False,
    ) -> RenderOutput:
        """Render ``cams``; ``stratified`` jitters the samples (training) from ``generator``."""
        origins, dirs = camera_rays(cams)
        b, h, w, _ = origins.shape
        origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        lights = cams.light_positions.to(origins)[:, None].expand(b, h * w, 3).reshape(-1, 3)
        n_rays = origins.shape[0]
        chunk = self.config.chunk_rays
        jitter = self._jitter(n_rays, origins, generator) if stratified else None
        recompute = torch.is_grad_enabled() and n_rays > chunk  # gradient checkpointing
        outs = []
        for s in range(0, n_rays, chunk):
            part = slice(s, s + chunk)
            args = (origins[part], dirs[part], lights[part], None if jitter is None else jitter[part])
            if recompute:
                outs.append(checkpoint(self._render_rays, *args, shading, stratified, use_reentrant=False))
            else:
                outs.append(self._render_rays(*args, shading, stratified))
        per_ray = torch.cat(outs).reshape(b, h, w, -1)
        rgb_fg, opacity, depth, z_var, normal, orient = per_ray.split(_SPLITS, dim=-1)
        bg = self.background(dirs).reshape(b, h, w, 3)
        rgb = rgb_fg + bg * (1.0 - opacity)
        return RenderOutput(rgb=rgb, opacity=opacity, depth=depth, z_variance=z_var, normal=normal, orient=orient)

    def _jitter(self, n_rays: int, like: Tensor, generator: torch.Generator | None) -> Tensor | None:
        # Drawn up front, outside the checkpointed chunks, so recomputation sees the same samples.
        if self.uses_grid(like.device):
            return None  # the grid sampler jitters internally
        gen_device = generator.device if generator is not None else like.device
        u = torch.rand((n_rays, self.config.num_samples_per_ray), generator=generator, device=gen_device)
        return u.to(like)

    def _samples(self, origins: Tensor, dirs: Tensor, stratified: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """(t_starts, t_ends, ray_indices): [R, N] uniform, or packed [S] from the grid.

        The grid's own stratification draws from torch's global RNG, which gradient
        checkpointing restores before recomputing a chunk.
        """
        near, far = ray_box_interval(origins, dirs, self.radius)
        if self.uses_grid(origins.device):

            @torch.no_grad()
            def sigma_fn(t0: Tensor, t1: Tensor, ray_idx: Tensor) -> Tensor:
                """[S] density at the midpoints of packed samples (for the thresholds)."""
                return self.field.density(origins[ray_idx] + dirs[ray_idx] * ((t0 + t1) / 2)[:, None])

            cfg = self.config
            assert self.estimator is not None  # uses_grid checked it
            ray_idx, t0, t1 = self.estimator.sampling(
                origins,
                dirs,
                sigma_fn=sigma_fn,
                t_min=near,
                t_max=far,
                render_step_size=self.step_size,
                stratified=stratified,
                alpha_thre=cfg.alpha_thre,
                early_stop_eps=cfg.early_stop_eps,
            )
            return t0, t1, ray_idx
        n = self.config.num_samples_per_ray
        edges = torch.linspace(0.0, 1.0, n + 1, device=origins.device, dtype=origins.dtype)
        span = (far - near)[:, None]
        return near[:, None] + edges[:-1] * span, near[:, None] + edges[1:] * span, None

    def _render_rays(
        self, origins: Tensor, dirs: Tensor, lights: Tensor, jitter: Tensor | None, shading: str, stratified: bool
    ) -> Tensor:
        """Per-ray outputs [R, 10] for one chunk of rays."""
        t0, t1, ray_idx = self._samples(origins, dirs, stratified)
        n_rays = origins.shape[0]
        if ray_idx is None:  # dense [R, N]: jittered sample points inside each interval
            u = jitter if jitter is not None else torch.full_like(t0, 0.5)
            t_mid = t0 + u * (t1 - t0)
            ray_of = lambda v: v[:, None].expand(-1, t0.shape[1], -1)  # noqa: E731
        else:  # packed [S]
            t_mid = (t0 + t1) / 2
            ray_of = lambda v: v[ray_idx]  # noqa: E731
        positions = ray_of(origins) + ray_of(dirs) * t_mid[..., None]
        shape = t_mid.shape
        density, colour, normal = self._query(positions.reshape(-1, 3), ray_of(lights).reshape(-1, 3), shading)
        density, colour, normal = density.reshape(shape), colour.reshape(*shape, 3), normal.reshape(*shape, 3)
        packed = _packed(ray_idx, n_rays)
        weights, _, _ = nerfacc.render_weight_from_density(t0, t1, density, **packed)

        def acc(values: Tensor | None, w: Tensor = weights) -> Tensor:
            return nerfacc.accumulate_along_rays(w, values, **packed)

        opacity = acc(None)
        depth = acc(t_mid[..., None])
        z_var = acc(*_z_variance_terms(weights, t_mid, opacity, ray_idx))
        comp_normal = (F.normalize(acc(normal), dim=-1) + 1) / 2 * opacity
        facing = (normal * ray_of(dirs)).sum(-1, keepdim=True).clamp_min(0) ** 2
        orient = acc(facing, weights.detach())
        return torch.cat([acc(colour), opacity, depth, z_var, comp_normal, orient], dim=-1)

    def _query(self, points: Tensor, lights: Tensor, shading: str) -> tuple[Tensor, Tensor, Tensor]:
        """Density [S], shaded colour [S, 3] and normal [S, 3] at sample points [S, 3]; points in
        the occupancy grid's empty cells (off CUDA, once the grid has been filled) are left out
        of the field's evaluation and get zero density, colour and normal."""
        keep = None if self.uses_grid(points.device) else self._occupied(points)
        query = points if keep is None else points[keep]
        # Normals are always needed: shading, the orientation loss and the normal map.
        out = self.field(query, with_normals=True)
        assert out.normal is not None  # asked for
        colour = shade(out.albedo, out.normal, query, lights if keep is None else lights[keep], shading, self.shading)
        if keep is None:
            return out.density, colour, out.normal
        return tuple(_scatter(keep, v) for v in (out.density, colour, out.normal))  # type: ignore[return-value]

    def _occupied(self, points: Tensor) -> Tensor | None:
        """Whether each point [S, 3] lies in an occupied cell of the grid; None without a grid or
        before its first update (an all-empty grid has not seen the field yet)."""
        if self.estimator is None or not bool(self.estimator.binaries.any()):
            return None
        grid = self.estimator.binaries[0]  # [X, Y, Z], nerfacc's cell order
        res = torch.tensor(grid.shape, device=points.device)
        cell = ((points + self.radius) / (2 * self.radius) * res).long()
        cell = torch.minimum(cell.clamp_min(0), res - 1)
        return grid[cell[:, 0], cell[:, 1], cell[:, 2]]


def _scatter(keep: Tensor, values: Tensor) -> Tensor:
    """``values`` [K, ...] of the kept points placed among zeros for all points [S, ...]."""
    full = values.new_zeros(keep.shape[0], *values.shape[1:])
    full[keep] = values
    return full


def _z_variance_terms(weights: Tensor, t_mid: Tensor, opacity: Tensor, ray_idx: Tensor | None) -> tuple[Tensor, Tensor]:
    """(values, weights) whose accumulation is HiFA's depth variance as the official SDI renderer.

    The weights are normalised by the ray's opacity first, so the variance is that of the
    depth distribution *given* a hit, about its normalised mean Σ ŵᵢ tᵢ. Unnormalised
    (Σ wᵢ (tᵢ − Σ wᵢ tᵢ)²), a semi-transparent ray's "mean" sits in front of the surface and
    its variance is 100-500× larger, pulling surfaces toward the camera.
    """
    per_sample = (lambda v: v[:, None]) if ray_idx is None else (lambda v: v[ray_idx])
    w_norm = weights / per_sample(opacity[..., 0]).clamp_min(1e-5)
    sample_t = t_mid[..., None]
    mean = nerfacc.accumulate_along_rays(w_norm, sample_t, **_packed(ray_idx, opacity.shape[0]))
    return (sample_t - per_sample(mean)) ** 2, w_norm


def _packed(ray_idx: Tensor | None, n_rays: int) -> dict:
    """nerfacc's keyword arguments for packed samples (none for dense [R, N] ones)."""
    return {"ray_indices": ray_idx, "n_rays": n_rays} if ray_idx is not None else {}


@torch.no_grad()
def render_views(renderer: VolumeRenderer, cams: Cameras) -> list[RenderOutput]:
    """Each camera rendered on its own (memory bounded by one view) with the albedo only,
    the official test renders' ambient-only shading (previews, turntables, evaluation)."""
    return [renderer(cams[i], "albedo") for i in range(len(cams))]


def as_image(out: RenderOutput) -> Tensor:
    """The first view's colour as a [3, H, W] image in [0, 1] on the CPU."""
    return out.rgb[0].permute(2, 0, 1).clamp(0, 1).float().cpu()
