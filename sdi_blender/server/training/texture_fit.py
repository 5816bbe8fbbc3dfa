"""Texturing a given mesh: score distillation of an albedo field on fixed geometry.

The artist's mesh stays as it is. It is placed in the scene box (:class:`SceneFit`, remembered in
the run folder's ``texture.json``), the trainer's cameras cast their rays against it
(:class:`~sdi_blender.server.scene.mesh_surface.SurfaceRenderer`) and only the field's albedo at the
hit points, and the background, are optimised. Everything else is the text-to-3D trainer's:
cameras, view-dependent prompts, SDI/SDS guidance and loss, schedules, checkpoints, previews and
the turntable. A texture run is planned here (checked before anything is written), trained by
:class:`TextureTrainer`, and baked into the mesh's own UVs by
:func:`sdi_blender.server.export.bake.bake_run`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...catalog import TEXTURE_JOB
from ...errors import UserError
from ..scene.mesh_file import SourceMesh, load_mesh
from ..scene.mesh_surface import MeshSurface, SceneFit, SurfaceRenderer
from ..scene.renderer import VolumeRenderer
from . import run_dir
from .config import DEFAULT_PRESET, TrainConfig, make_config
from .trainer import Trainer

TEXTURE_SETTINGS: dict[str, Any] = {
    # A surface has no samples to skip: no occupancy grid.
    "renderer.occupancy_grid": False,
    # The geometry regularisers would only add constants: the surface is not optimised.
    **{f"losses.{name}": 0.0 for name in ("orient", "sparsity", "opaque", "convex", "z_variance")},
    # A textureless (grey) render does not depend on the albedo, so shaded steps are all diffuse.
    "shading.textureless_prob": 0.0,
}
"""What a texture run sets on top of its preset."""


@dataclass
class TextureRequest:
    """What the user asked for; ``None`` means "not given"."""

    mesh: Path
    """The mesh file to texture (GLB, glTF or OBJ)."""
    prompt: str
    """What the texture should show."""
    out: Path
    """The run folder."""
    overwrite: bool = False
    """Replace a run already in ``out``."""
    preset: str | None = None
    """Quality preset (default: the trainer's)."""
    keep_placement: bool = False
    """Train on the mesh where and as large as it is (its units as the scene's metres) instead
    of centring and scaling it into the scene; it must then lie inside the scene box."""
    settings: dict[str, Any] | None = None
    """Overrides of :class:`TrainConfig` fields (method, seed, model, steps, …)."""


@dataclass
class TexturePlan:
    """A checked texture run: its config and its mesh, placed."""

    config: TrainConfig
    mesh: SourceMesh
    fit: SceneFit

    def surface(self) -> MeshSurface:
        """The mesh as the renderer sees it: in the scene box."""
        return MeshSurface(self.fit.to_scene(self.mesh.world_vertices()), self.mesh.faces)


def plan_texture(req: TextureRequest) -> TexturePlan:
    """The run's config and mesh, validated; touches no file."""
    settings = {k: v for k, v in (req.settings or {}).items() if v is not None}
    config = make_config(req.prompt, req.preset or DEFAULT_PRESET, **{**settings, **TEXTURE_SETTINGS})
    config.validate()
    mesh = load_mesh(req.mesh)
    run_dir.check_new_run(req.out, req.overwrite)
    world = mesh.world_vertices()
    if not req.keep_placement:
        return TexturePlan(config, mesh, SceneFit.of(world))
    radius = config.field.radius
    if np.abs(world).max() > radius:
        raise UserError(
            f"the mesh in '{req.mesh}' reaches outside the scene box (±{radius:g} units) where it is",
            hint="let it be centred and scaled (leave out --keep-placement)",
        )
    return TexturePlan(config, mesh, SceneFit((0.0, 0.0, 0.0), 1.0))


def start_texture_run(plan: TexturePlan, out: Path, overwrite: bool) -> None:
    """Create the run folder and record the mesh and its fit (``texture.json``)."""
    run_dir.prepare_new_run(out, overwrite)
    job = {
        "mesh": str(plan.mesh.path.resolve()),
        "sha256": _sha256(plan.mesh.path),
        "fit": {"centre": list(plan.fit.centre), "scale": plan.fit.scale},
    }
    run_dir.atomic_write(out / TEXTURE_JOB, json.dumps(job, indent=2))


def read_texture_run(run: Path) -> tuple[SourceMesh, SceneFit]:
    """A texture run's mesh, read again from its file, and its fit; a changed file is refused."""
    try:
        job = json.loads((run / TEXTURE_JOB).read_text(encoding="utf-8"))
        path, digest, fit = Path(job["mesh"]), job["sha256"], job["fit"]
        centre, scale = tuple(float(c) for c in fit["centre"]), float(fit["scale"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"'{run}' is not a texture run (no valid {TEXTURE_JOB})") from exc
    if not path.is_file() or _sha256(path) != digest:
        raise UserError(
            f"the mesh '{path}' that '{run}' was textured for is missing or has changed",
            hint="texture the mesh again",
        )
    return load_mesh(path), SceneFit((centre[0], centre[1], centre[2]), scale)


class TextureTrainer(Trainer):
    """The trainer, drawing ``surface`` with its field's albedo instead of the volume."""

    def __init__(self, config: TrainConfig, run: Path, surface: MeshSurface, **kwargs: Any) -> None:
        self.surface = surface  # before the trainer builds its renderer
        super().__init__(config, run, **kwargs)

    def make_renderer(self) -> VolumeRenderer:
        cfg = self.config
        renderer = SurfaceRenderer(self.surface, self.field, self.background, cfg.field.radius, cfg.shading)
        return renderer.to(self.device)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
