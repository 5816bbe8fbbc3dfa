"""A fixed mesh in the scene: placed in the scene box, hit by camera rays, drawn with the
field's albedo on it.

Texturing keeps the artist's geometry: nothing about the surface is learnt, so the rays are
cast against the triangles once per render (trimesh's ray–triangle intersector with its R-tree
of triangle bounds, on the CPU) and no gradient needs to reach them. Only the colour is
differentiable: the field's albedo at the hit points, shaded as in training
(:mod:`~sdi_blender.server.scene.shading`, with the mesh's face normals) and composited over
the learned background exactly as the volume renderer composites.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Cameras, camera_rays
from .renderer import RenderedField, RendererConfig, RenderOutput, VolumeRenderer
from .shading import ShadingConfig, shade

FIT_RADIUS = 0.6
"""The bounding-sphere radius a mesh is scaled to in the scene: the size the trainer makes
objects at (its initial density blob has radius 0.5, the toy world's objects reach ≈ 0.6), well
inside the training cameras' view."""


@dataclass(frozen=True)
class SceneFit:
    """Centre and uniform scale that place a mesh in the scene box (remembered, to undo)."""

    centre: tuple[float, float, float]
    """Centre of the mesh's bounding box, in world axes before scaling."""
    scale: float
    """Scene units per mesh unit."""

    @classmethod
    def of(cls, world_vertices: np.ndarray, radius: float = FIT_RADIUS) -> SceneFit:
        """The fit that centres ``world_vertices`` [V, 3] on their bounding box and scales them
        so that the farthest lies ``radius`` from the centre."""
        centre = (world_vertices.min(0) + world_vertices.max(0)) / 2
        reach = float(np.linalg.norm(world_vertices - centre, axis=1).max())
        return cls((float(centre[0]), float(centre[1]), float(centre[2])), radius / reach)

    def to_scene(self, world_vertices: np.ndarray) -> np.ndarray:
        """[V, 3] world positions → scene-box positions."""
        return (world_vertices - np.asarray(self.centre)) * self.scale


@dataclass
class SurfaceHits:
    """Where a batch of rays meets the surface (the rays that miss are left out)."""

    ray: Tensor
    """[K] index of each hitting ray."""
    face: Tensor
    """[K] index of the face it hits."""
    points: Tensor
    """[K, 3] its first hit."""
    normals: Tensor
    """[K, 3] the hit face's unit normal, turned toward the ray's origin."""
    distance: Tensor
    """[K] the ray distance to the hit."""


class MeshSurface:
    """A triangle mesh, fixed in the scene box, that rays are cast against."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray) -> None:
        """``vertices`` [V, 3] in scene-box positions, ``faces`` [F, 3]."""
        import trimesh

        self.mesh = trimesh.Trimesh(vertices, faces, process=False)
        # Embree (embreex) where it is installed, ~200x faster than trimesh's numpy fallback.
        self._rays = self.mesh.ray

    def cast(self, origins: Tensor, dirs: Tensor) -> SurfaceHits:
        """First hits of rays ``origins``, ``dirs`` [R, 3] (unit directions), on their device."""
        o = origins.detach().double().cpu().numpy()
        d = dirs.detach().double().cpu().numpy()
        face, ray, points = self._rays.intersects_id(o, d, multiple_hits=False, return_locations=True)
        normals = np.asarray(self.mesh.face_normals)[face]
        normals = np.where(((normals * d[ray]).sum(-1) > 0)[:, None], -normals, normals)  # face the camera
        distance = np.linalg.norm(points - o[ray], axis=-1)

        def like(values: np.ndarray, dtype: torch.dtype = origins.dtype) -> Tensor:
            return torch.as_tensor(values, dtype=dtype, device=origins.device)

        return SurfaceHits(like(ray, torch.long), like(face, torch.long), like(points), like(normals), like(distance))


class SurfaceRenderer(VolumeRenderer):
    """Draws a :class:`MeshSurface` coloured by the field's albedo over the background.

    A drop-in for the volume renderer (same call, same :class:`RenderOutput`), so the trainer's
    step, previews and turntables work unchanged. Opacity is the hit mask; the geometry terms
    (``orient``, ``z_variance``) are zero, as the surface is not optimised.
    """

    def __init__(
        self,
        surface: MeshSurface,
        field: RenderedField,
        background: torch.nn.Module,
        radius: float,
        shading: ShadingConfig | None = None,
        supersample: int = 2,
    ) -> None:
        super().__init__(field, background, radius, RendererConfig(occupancy_grid=False), shading)
        self.surface, self.supersample = surface, supersample

    def forward(
        self,
        cams: Cameras,
        shading: str = "diffuse",
        generator: torch.Generator | None = None,
        stratified: bool = False,
    ) -> RenderOutput:
        """Render ``cams``; ``generator`` and ``stratified`` are unused (a surface has no samples).

        Each pixel averages ``supersample``² rays: a hard-edged silhouette would disagree with the
        prior's pictures (which are antialiased) along every edge and pull edge colours apart.
        """
        s = self.supersample
        out = self._render(dataclasses.replace(cams, width=cams.width * s, height=cams.height * s), shading)
        if s == 1:
            return out

        def pool(x: Tensor) -> Tensor:  # [B, sH, sW, C] → [B, H, W, C]
            return F.avg_pool2d(x.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)

        return RenderOutput(**{f.name: pool(getattr(out, f.name)) for f in dataclasses.fields(out)})

    def _render(self, cams: Cameras, shading: str) -> RenderOutput:
        origins, dirs = camera_rays(cams)
        b, h, w, _ = origins.shape
        origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        lights = cams.light_positions.to(origins)[:, None].expand(b, h * w, 3).reshape(-1, 3)
        hits = self.surface.cast(origins, dirs)
        albedo = self.field(hits.points).albedo
        colour = shade(albedo, hits.normals, hits.points, lights[hits.ray], shading, self.shading)
        n_rays = origins.shape[0]
        mask = torch.zeros(n_rays, 1, dtype=origins.dtype, device=origins.device)
        mask[hits.ray] = 1.0

        def per_ray(values: Tensor) -> Tensor:  # [K, C] on the hitting rays → [B, H, W, C], 0 elsewhere
            out = values.new_zeros(n_rays, values.shape[-1]).index_put((hits.ray,), values)
            return out.reshape(b, h, w, -1)

        opacity = mask.reshape(b, h, w, 1)
        rgb = per_ray(colour) + self.background(dirs).reshape(b, h, w, 3) * (1.0 - opacity)
        return RenderOutput(
            rgb=rgb,
            opacity=opacity,
            depth=per_ray(hits.distance[:, None]),
            z_variance=torch.zeros_like(opacity),
            normal=per_ray((hits.normals + 1) / 2),
            orient=torch.zeros_like(opacity),
        )
