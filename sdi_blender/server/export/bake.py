"""Baking a texture run into its mesh: the artist's geometry with the learnt albedo as its texture.

The mesh is written back in its own frame with its own vertex positions, faces and UVs (and its
node's transform), so only the material is new: a GLB whose base colour is the bake, plus the
texture as a PNG beside it. A mesh without UVs gets a new xatlas unwrap, which splits its
vertices along the new seams (glTF stores one UV per vertex); ``info["uvs"]`` says which it was.
The export folder is staged and swapped in whole, as ``export`` does, so a failed bake leaves
the previous one intact.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ... import catalog
from ..training.checkpoint import load_field
from ..training.texture_fit import read_texture_run
from ..util.devices import resolve_device
from ..util.fileio import staged_folder
from ..util.images import png_bytes
from ..util.step_timer import timed
from .pipeline import ExportResult, ExportSettings, ProgressFn, albedo_fn, write_mesh
from .texture import bake_uv_texture, unwrap_with_mapping


def bake_run(
    run: Path, texture_size: int = 1024, device: str = "auto", progress: ProgressFn | None = None
) -> ExportResult:
    """Bake the texture run in ``run`` into its mesh, written to ``run/export/``: ``mesh.glb``,
    the texture PNG and ``export.json``."""
    ExportSettings(texture_size=texture_size).validate()
    progress = progress or (lambda stage, frac: None)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    progress("load", 0.0)
    mesh, fit = read_texture_run(run)
    dev = resolve_device(device)
    field, config, step, _ = load_field(run, dev)
    scene_vertices = fit.to_scene(mesh.world_vertices())  # where the field learnt each vertex's colour
    vertices, faces, uvs, uv_source = mesh.vertices, mesh.faces, mesh.uvs, "mesh"
    if uvs is None:
        with timed(seconds, "unwrap"):
            progress("unwrap", 0.0)
            vertices, faces, uvs, split, _ = unwrap_with_mapping(mesh.vertices, mesh.faces, texture_size)
            scene_vertices, uv_source = scene_vertices[split], "xatlas"
    image, tex_info = bake_uv_texture(scene_vertices, faces, uvs, albedo_fn(field, dev), texture_size, progress)
    info = {
        "run": str(run),
        "step": step,
        "prompt": config.prompt,
        "mesh": str(mesh.path),
        "uvs": uv_source,
        "vertices": int(len(vertices)),
        "faces": int(len(faces)),
        **tex_info,
        "seconds": {**seconds, **tex_info["seconds"]},
    }
    progress("write", 0.95)
    target = run / catalog.EXPORT_DIR
    with staged_folder(target) as staging:
        names = write_mesh(staging, vertices, faces, uvs, image, "glb", transform=_node_transform(mesh.transform))
        (staging / catalog.TEXTURE_IMAGE).write_bytes(png_bytes(Image.fromarray(image)))
        names["texture"] = catalog.TEXTURE_IMAGE
        info["seconds"]["total"] = round(time.perf_counter() - t0, 3)
        info["files"] = names
        (staging / "export.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        progress("write", 1.0)
    files = {kind: target / name for kind, name in names.items()}
    return ExportResult({**files, "info": target / "export.json"}, info)


def _node_transform(transform: np.ndarray) -> np.ndarray | None:
    """The node transform to write: none where the mesh sat at the scene's origin unturned."""
    return None if np.allclose(transform, np.eye(4)) else transform
