"""Scores of a toy-world result against its known answer: the exported mesh and the views.

Mesh scores read the GLB as Blender sees it: glTF is Y-up and Blender's importer maps
(x, y, z) → (x, −z, y); the truth is turned from the trainer's world (front +X) to Blender's
(front −Y) by its own formula here, (x, y, z) → (y, −x, z), not by the export's code.

* ``iou``: volumetric IoU of the mesh's inside and the union of the object's primitives, on
  a grid over the cube [−1, 1]³;
* ``feature_angle_deg``: the angle between the expected direction of the object's orienting
  part (e.g. the ball on its front: Blender −Y) and the direction from the mesh's centre to
  the centroid of the surface that is *coloured* like that part (found by colour, not by
  where the truth puts it, so a turned or mirrored object fails);
* ``colour_error``: per part, the largest channel difference between the median baked
  texture colour on the surface near that part and the part's colour (RGB in 0–1).

View scores (``view_scores``): PSNR and mask IoU of rendered views against the ground-truth
renderer's pictures from the same evaluation cameras.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch

from ..toyworld.objects import ToyObject, toy_object
from ..toyworld.render import ToyViews, orbit_views, render_toy

if TYPE_CHECKING:
    import trimesh

IOU_GRID = 48
"""Grid points per side for the volumetric IoU."""
NEAR_PART = 0.06
"""Surface points within this distance outside a part count as that part's surface."""


def blender_from_gltf(v: np.ndarray) -> np.ndarray:
    """Blender's glTF import axes: Y-up (x, y, z) → Z-up (x, −z, y)."""
    return np.stack([v[:, 0], -v[:, 2], v[:, 1]], axis=-1)


def blender_from_world(v: np.ndarray) -> np.ndarray:
    """The trainer's world (front +X) → Blender (front −Y): (x, y, z) → (y, −x, z)."""
    return np.stack([v[:, 1], -v[:, 0], v[:, 2]], axis=-1)


def world_from_blender(v: np.ndarray) -> np.ndarray:
    return np.stack([-v[:, 1], v[:, 0], v[:, 2]], axis=-1)


def part_distance(part, world: np.ndarray) -> np.ndarray:
    """Signed distance from points [N, 3] (world) to a part's surface (negative inside)."""
    d = world - np.asarray(part.centre)
    if part.kind == "sphere":
        return np.linalg.norm(d, axis=-1) - part.size[0]
    q = np.abs(d) - np.asarray(part.size)
    return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


def load_blender_mesh(glb: Path) -> tuple[trimesh.Trimesh, np.ndarray]:
    """(trimesh mesh in Blender coordinates, per-vertex texture colour [V, 3] in 0–1)."""
    import trimesh

    scene = trimesh.load(glb, force="scene")
    assert isinstance(scene, trimesh.Scene)  # force="scene"
    mesh = next(iter(scene.geometry.values()))
    colours = mesh.visual.to_color().vertex_colors[:, :3] / 255.0
    mesh = trimesh.Trimesh(blender_from_gltf(np.asarray(mesh.vertices)), mesh.faces, process=False)
    return mesh, colours


def mesh_scores(glb: Path, obj: ToyObject) -> dict:
    """IoU, feature angle and per-part colour errors of an exported toy mesh."""
    return blender_mesh_scores(*load_blender_mesh(glb), obj)


def blender_mesh_scores(mesh, colours: np.ndarray, obj: ToyObject) -> dict:
    """The same scores for a trimesh already in Blender's frame with per-vertex colours [V, 3]."""
    axis = np.linspace(-1, 1, IOU_GRID)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    truth = np.min([part_distance(p, world_from_blender(grid)) for p in obj.parts], axis=0) <= 0
    inside = mesh.contains(grid)
    iou = float((truth & inside).sum() / max((truth | inside).sum(), 1))
    verts = np.asarray(mesh.vertices)
    return {
        "iou": iou,
        "feature_angle_deg": _feature_angle(mesh, verts, colours, obj),
        "colour_error": _colour_errors(verts, colours, obj),
    }


def _feature_angle(mesh, verts: np.ndarray, colours: np.ndarray, obj: ToyObject) -> float:
    palette = np.array([p.colour for p in obj.parts])
    nearest = np.argmin(((colours[:, None] - palette[None]) ** 2).sum(-1), axis=1)
    feature = [i for i, p in enumerate(obj.parts) if p.name == obj.feature][0]
    if not (nearest == feature).any():
        return 180.0
    centre = np.asarray(mesh.centroid)
    direction = verts[nearest == feature].mean(0) - centre
    expected = blender_from_world(np.asarray([obj.feature_direction], dtype=float))[0]
    cos = direction @ expected / max(np.linalg.norm(direction) * np.linalg.norm(expected), 1e-12)
    return float(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))


def _colour_errors(verts: np.ndarray, colours: np.ndarray, obj: ToyObject) -> dict[str, float]:
    world = world_from_blender(verts)
    dist = np.stack([part_distance(p, world) for p in obj.parts])  # [P, V]
    errors = {}
    for i, part in enumerate(obj.parts):
        # Surface near this part and nearer to it than to any other part.
        mine = (dist[i] < NEAR_PART) & (dist[i] <= dist.min(0))
        if not mine.any():
            errors[part.name] = 1.0
            continue
        median = np.median(colours[mine], axis=0)
        errors[part.name] = float(np.abs(median - np.asarray(part.colour)).max())
    return errors


def turntable_views(n: int, elevation_deg: float, distance: float, fovy_deg: float) -> ToyViews:
    """The evaluation turntable (azimuth 0, 360/n, …) as ground-truth cameras, no perturbation."""
    azi = torch.arange(n, dtype=torch.float64) * (360.0 / n)
    return orbit_views(torch.full((n,), float(elevation_deg), dtype=torch.float64), azi, distance, fovy_deg)


def run_view_scores(config, outs: list) -> dict:
    """PSNR and mask IoU of a toy run's evaluation renders ``outs`` (one RenderOutput per
    turntable view, as ``renderer.render_views`` returns them) against the truth."""
    cams = config.cameras
    views = turntable_views(len(outs), cams.eval_elevation, cams.eval_distance, cams.eval_fovy)
    rgb = torch.stack([o.rgb[0].permute(2, 0, 1).clamp(0, 1).float().cpu() for o in outs])
    opacity = torch.stack([o.opacity[0, :, :, 0].float().cpu() for o in outs])
    return view_scores(toy_object(config.prompt), views, rgb, opacity)


def view_scores(obj: ToyObject, views: ToyViews, rgb: torch.Tensor, opacity: torch.Tensor) -> dict:
    """PSNR (dB) and mask IoU of albedo renders ``rgb`` [N, 3, S, S] (opacity [N, S, S], both in
    0–1) against the truth from the same cameras, averaged over the views."""
    from ..scene.shading import ShadingConfig

    truth, mask = render_toy(obj, views, rgb.shape[-1], ("albedo",), ShadingConfig())
    mse = (rgb.float() - truth[0]).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
    hit, want = opacity > 0.5, mask > 0.5
    iou = (hit & want).sum((1, 2)).float() / (hit | want).sum((1, 2)).clamp_min(1).float()
    return {"psnr": float((-10 * mse.log10()).mean()), "mask_iou": float(iou.mean())}


class ToyExport(TypedDict):
    """The ``ExportSettings`` fields the toy world sets."""

    resolution: int
    texture_size: int


TOY_EXPORT: ToyExport = {"resolution": 96, "texture_size": 256}
"""Export settings that resolve the toy objects (cells of 2/96 ≈ 0.02 over the toy preset's box)."""


def score_run(run: Path, views: int = 8, size: int = 64) -> dict:
    """Export a finished toy-world run (GLB) and score it: mesh scores in Blender's frame,
    view PSNR and mask IoU at the evaluation cameras, and the export's seconds."""
    from ..export.pipeline import ExportSettings, export_run
    from ..scene.cameras import turntable_cameras
    from ..scene.renderer import render_views
    from ..training.checkpoint import load_renderer
    from ..training.init_mesh import placement

    result = export_run(run, ExportSettings(**TOY_EXPORT), device="cpu")
    renderer, config, _, _ = load_renderer(run, torch.device("cpu"))
    outs = render_views(renderer, turntable_cameras(views, size, size, config.cameras))
    mesh, colours = load_blender_mesh(result.files["mesh"])
    where = placement(config.init_mesh)
    if where is not None:  # a blockout's run: scored where the add-on puts it, the blockout's frame
        mesh.apply_scale(where["scale"])
        mesh.apply_translation(where["centre"])
    return {
        "prompt": config.prompt,
        "method": config.method,
        **blender_mesh_scores(mesh, colours, toy_object(config.prompt)),
        **run_view_scores(config, outs),
        "export_seconds": result.info["seconds"]["total"],
    }
