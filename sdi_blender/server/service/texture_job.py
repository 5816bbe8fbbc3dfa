"""The server's side of two artist workflows, around the library's entry points.

* ``texture`` jobs: paint a mesh file from a prompt (:mod:`~sdi_blender.server.training.texture_fit`
  trains, :func:`~sdi_blender.server.export.bake.bake_run` bakes into the mesh's own UVs); the
  job's events are generate's, its ``exported`` files the baked GLB and the texture PNG.
* runs started from a mesh (``generate`` with ``init_mesh``): the ``exported`` event carries the
  placement that puts the result back in the blockout's frame
  (:func:`~sdi_blender.server.training.init_mesh.placement`).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ... import catalog
from ...errors import UserError
from ..export.bake import bake_run
from ..export.pipeline import ExportResult, ExportSettings, ProgressFn
from ..training import run_dir
from ..training.config import TrainConfig
from ..training.init_mesh import placement
from ..training.texture_fit import TexturePlan, TextureRequest, TextureTrainer, plan_texture, start_texture_run
from .job_files import Conflict, Job

_SETTINGS = ("method", "steps", "resolution", "seed", "model", "preview_every")
"""The texture request's fields that are training settings."""


def plan(req: dict[str, Any], job_dir: Path, default_model: str) -> TexturePlan:
    """A texture request's run, checked (the mesh read and placed); writes nothing."""
    settings = {k: req.get(k) for k in _SETTINGS}
    settings["model"] = settings["model"] or default_model
    texture = plan_texture(
        TextureRequest(
            mesh=Path(req["mesh"]),
            prompt=req["prompt"],
            out=job_dir,
            overwrite=True,
            preset=req.get("preset"),
            settings=settings,
        )
    )
    texture.config.proxy_every = 0  # the geometry is the artist's: nothing grows
    return texture


def prepare(texture: TexturePlan | None, job_dir: Path) -> None:
    """A new run's folder: a texture run records its mesh and fit; any other starts empty."""
    if texture is None:
        run_dir.prepare_new_run(job_dir, overwrite=True)
    else:
        start_texture_run(texture, job_dir, overwrite=True)


def trainer_factory(texture: TexturePlan) -> Any:
    """The trainer of a texture job: the usual one, drawing the fixed mesh."""
    return functools.partial(_texture_trainer, texture)


def _texture_trainer(texture: TexturePlan, config: TrainConfig, run: Path, **kwargs: Any) -> TextureTrainer:
    return TextureTrainer(config, run, texture.surface(), **kwargs)


def bake_export(run: Path, settings: ExportSettings, device: str, progress: ProgressFn) -> ExportResult:
    """A texture job's export (in the export child: importable by name): the bake."""
    return bake_run(run, settings.texture_size, device, progress)


def check_not_texture(job: Job) -> None:
    """Continuing or re-exporting a texture job would treat its albedo field as a volume."""
    if (job.dir / catalog.TEXTURE_JOB).is_file():
        raise Conflict(f"job {job.id} textures a mesh; it cannot be continued or re-exported", hint="texture it again")


def placement_field(job_dir: Path) -> dict[str, Any]:
    """``{"placement": …}`` for the exported event of a run started from a mesh, else ``{}``."""
    try:
        config = TrainConfig.from_json((job_dir / catalog.CONFIG).read_text(encoding="utf-8"))
    except (OSError, UserError):
        return {}
    where = placement(config.init_mesh)
    return {"placement": where} if where is not None else {}
