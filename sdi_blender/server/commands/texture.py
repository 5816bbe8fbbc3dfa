"""The ``texture`` command: paint a given mesh from a prompt, keeping its geometry.

Plan (mesh and settings checked, nothing written) → load the model → train the albedo on the
fixed mesh with a progress bar (:mod:`~sdi_blender.server.training.texture_fit`) → bake it into
the mesh's own UVs (:mod:`~sdi_blender.server.export.bake`). The first Ctrl-C stops training
after the current step and bakes what there is; a second aborts and keeps nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ... import catalog
from ..export.bake import bake_run
from ..export.pipeline import ExportResult, ExportSettings
from ..training import run_dir
from ..training.priors import load_prior
from ..training.texture_fit import TexturePlan, TextureRequest, TextureTrainer, plan_texture, start_texture_run
from ..util.devices import resolve_device
from .generate import start_lines, train_in_terminal


def mesh_line(plan: TexturePlan) -> str:
    """What was read and how it will be placed, in one line."""
    mesh, fit = plan.mesh, plan.fit
    uvs = "its own UVs" if mesh.uvs is not None else "no UVs: a new xatlas unwrap will split its vertices on the seams"
    return (
        f"mesh {mesh.path.name}: {len(mesh.vertices):,} vertices, {len(mesh.faces):,} faces, {uvs}; "
        f"in the scene at scale {fit.scale:.4g} about ({', '.join(f'{c:.3g}' for c in fit.centre)})"
    )


def run_texture(req: TextureRequest, texture_size: int = 1024, device: str = "auto") -> ExportResult:
    """Plan, train and bake; prints what it does and where the result is."""
    ExportSettings(texture_size=texture_size).validate()
    plan = plan_texture(req)
    dev = resolve_device(device)
    for line in [mesh_line(plan), *start_lines(plan.config, dev, req.out, plan.config.steps)]:
        print(line, file=sys.stderr, flush=True)
    print(f"loading the model {plan.config.model}…", file=sys.stderr, flush=True)
    prior = load_prior(plan.config.model, device=dev)  # before the run folder is touched
    start_texture_run(plan, req.out, req.overwrite)
    trainer = TextureTrainer(plan.config, req.out, plan.surface(), prior=prior)
    result = train_in_terminal(trainer, lambda saved: _discard(req.out))
    if result.status == "cancelled":
        print(f"stopped at step {result.step}; baking what it has", file=sys.stderr)
    seen: set[str] = set()

    def progress(stage: str, fraction: float) -> None:
        if stage not in seen:
            seen.add(stage)
            print(f"[bake] {stage}", file=sys.stderr, flush=True)

    baked = bake_run(req.out, texture_size, device, progress)
    if baked.info["uvs"] == "xatlas":
        vertices = baked.info["vertices"]
        print(f"{req.mesh.name} had no UVs: unwrapped with xatlas ({vertices:,} vertices)", file=sys.stderr)
    print(f"wrote {baked.files['mesh']} and {baked.files['texture']}", file=sys.stderr)
    return baked


def _discard(out: Path) -> str:
    """An aborted texture run keeps nothing: it cannot be resumed."""
    run_dir.remove_run(out)
    (out / catalog.TEXTURE_JOB).unlink(missing_ok=True)
    return "interrupted; nothing was kept"
