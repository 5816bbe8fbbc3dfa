"""Export an optimised run as a textured mesh asset: GLB (or OBJ + MTL + PNG) for Blender.

Stages: load the field from the run's checkpoint → sample its density on a grid and
extract the iso-surface (:mod:`~sdi_blender.server.export.mesh`) → UV-unwrap and bake the
albedo (:mod:`~sdi_blender.server.export.texture`) → write the files and ``export.json``.
Nothing of the optimisation is touched; the export folder is written beside it and
replaced as a whole, so a failed export leaves the previous one intact.

Orientation: the field's world is Z-up with the object's front facing +X (the view the
"front view" prompt was rendered from). The export turns it by −90° about Z so that the
front faces −Y, Blender's Front view (numpad 1), and writes glTF's Y-up axes, which
Blender's importers turn back to Z-up. Units: one scene unit is one metre (the object
is about a metre across).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ... import catalog
from ...errors import UserError
from ..scene.field import ImplicitVolume
from ..scene.mesh_file import GLTF_FROM_WORLD
from ..scene.renderer import official_level
from ..training.checkpoint import load_field
from ..util.devices import resolve_device
from ..util.fileio import staged_folder
from .mesh import MeshSettings, build_mesh
from .texture import bake_texture

EXPORT_DIR = catalog.EXPORT_DIR
FORMATS = ("glb", "obj")
ProgressFn = Callable[[str, float], None]
"""progress(stage, fraction of that stage done)."""

# Field world (Z-up, front +X) → Blender (Z-up, front −Y) → glTF (Y-up): x' = y, y' = z, z' = x.
TO_GLTF = GLTF_FROM_WORLD


@dataclass
class ExportSettings:
    """How the field becomes a mesh (defaults: the command line's)."""

    resolution: int = 256
    """Density grid cells per side for marching cubes (≤ 1024)."""
    threshold: float | None = None
    """Density iso-level; None picks it automatically (see mesh.auto_threshold)."""
    texture_size: int = 1024
    """Side of the baked albedo texture, a power of two ≤ 8192."""
    faces: int | None = None
    """Decimate to about this many triangles (None keeps marching cubes' mesh)."""
    format: str = "glb"
    """"glb" (one file, texture embedded) or "obj" (OBJ + MTL + PNG)."""

    def validate(self) -> None:
        if not 16 <= self.resolution <= 1024:
            raise UserError(f"resolution must be between 16 and 1024, got {self.resolution}")
        size = self.texture_size
        if size < 16 or size > 8192 or size & (size - 1):
            raise UserError(f"texture size must be a power of two from 16 to 8192, got {size}")
        if self.faces is not None and self.faces < 4:
            raise UserError(f"faces must be at least 4, got {self.faces}")
        if self.format not in FORMATS:
            raise UserError(f"unknown format '{self.format}'", hint=f"choose one of {', '.join(FORMATS)}")


@dataclass
class ExportResult:
    files: dict[str, Path]
    """Written files by kind: mesh, texture (obj only), material (obj only), info."""
    info: dict


def albedo_fn(field: ImplicitVolume, device: torch.device, chunk: int = 1 << 16):
    """The field's albedo at world points [N, 3] (numpy in, numpy out), for baking."""

    @torch.no_grad()
    def colour(points: np.ndarray) -> np.ndarray:
        out = [
            field(torch.as_tensor(points[s : s + chunk], dtype=torch.float32, device=device)).albedo
            for s in range(0, len(points), chunk)
        ]
        return torch.cat(out).clamp(0, 1).cpu().numpy() if out else np.zeros((0, 3), np.float32)

    return colour


def export_run(
    run: Path, settings: ExportSettings, device: str = "auto", progress: ProgressFn | None = None
) -> ExportResult:
    """Export the run in ``run`` to ``run/export/`` (replacing an earlier export)."""
    settings.validate()
    progress = progress or (lambda stage, frac: None)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    progress("load", 0.0)
    field, config, step, _ = load_field(run, dev)
    load_s = time.perf_counter() - t0
    mesh, mesh_info = build_mesh(
        lambda x: field.density(x),
        MeshSettings(
            resolution=settings.resolution,
            threshold=settings.threshold,
            faces=settings.faces,
            bounds=config.field.radius,
            official=official_level(config.field.radius, config.renderer.num_samples_per_ray),
        ),
        dev,
        progress,
    )
    verts, faces, uvs, image, tex_info = bake_texture(
        np.asarray(mesh.vertices), np.asarray(mesh.faces), albedo_fn(field, dev), settings.texture_size, progress
    )
    t_write = time.perf_counter()
    progress("write", 0.0)
    info = {
        "run": str(run),
        "step": step,
        "prompt": config.prompt,
        "settings": asdict(settings),
        **mesh_info,
        **tex_info,
        # every stage's seconds: loading, the mesh's and the texture's (the write's follow)
        "seconds": {"load": round(load_s, 3), **mesh_info["seconds"], **tex_info["seconds"]},
        "vertices": int(len(verts)),
        "faces": int(len(faces)),
    }
    files = _write_atomically(run, verts, faces, uvs, image, settings.format, info, t_write, t0, progress)
    return ExportResult(files, json.loads(files["info"].read_text()))


def _write_atomically(
    run: Path, verts, faces, uvs, image, fmt: str, info: dict, t_write: float, t0: float, progress: ProgressFn
) -> dict[str, Path]:
    target = run / EXPORT_DIR
    kept = _other_formats(target, fmt)
    with staged_folder(target) as staging:  # a failure keeps the previous export
        names = write_mesh(staging, verts @ TO_GLTF.T, faces, uvs, image, fmt)
        for files in kept.values():  # formats coexist: an OBJ export keeps the GLB, and back
            for name in files.values():
                shutil.copy2(target / name, staging / name)
        info["formats"] = {**kept, fmt: names}
        info["seconds"] = {
            **info.get("seconds", {}),
            "write": round(time.perf_counter() - t_write, 3),
            "total": round(time.perf_counter() - t0, 3),
        }
        info["files"] = names
        (staging / "export.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        progress("write", 1.0)  # the last word before the swap: raising here keeps the previous export
    return {**{k: target / v for k, v in names.items()}, "info": target / "export.json"}


def _other_formats(export: Path, fmt: str) -> dict[str, dict[str, str]]:
    """The files (by kind) of each format other than ``fmt`` that the previous export in
    ``export`` holds, as its ``export.json`` lists them; missing files drop their format."""
    try:
        formats = json.loads((export / "export.json").read_text(encoding="utf-8")).get("formats", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {
        other: files
        for other, files in formats.items()
        if other != fmt
        and isinstance(files, dict)
        and all(isinstance(n, str) and "/" not in n and (export / n).is_file() for n in files.values())
    }


def write_mesh(
    folder: Path,
    verts: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    image: np.ndarray,
    fmt: str,
    transform: np.ndarray | None = None,
) -> dict[str, str]:
    """Write a UV-textured mesh with trimesh; returns file names by kind. ``transform`` [4, 4]
    places the mesh in the GLB's scene (its node's transform; default none)."""
    import trimesh
    from PIL import Image

    texture = Image.fromarray(image)
    material: trimesh.visual.material.Material
    if fmt == "glb":  # a rough, non-metallic PBR material whose base colour is the bake
        material = trimesh.visual.material.PBRMaterial(
            name="albedo", baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=1.0
        )
    else:  # white Kd so that viewers multiplying Kd by map_Kd show the bake unchanged
        material = trimesh.visual.material.SimpleMaterial(
            name="albedo",
            image=texture,
            diffuse=(255, 255, 255, 255),
            ambient=(255, 255, 255, 255),
            specular=(0, 0, 0, 255),
            glossiness=1.0,
        )
    mesh = trimesh.Trimesh(
        vertices=verts, faces=faces, process=False, visual=trimesh.visual.TextureVisuals(uv=uvs, material=material)
    )
    if fmt == "glb":
        glb = f"{catalog.MESH_STEM}.glb"
        placed: trimesh.Trimesh | trimesh.Scene = mesh
        if transform is not None:
            placed = trimesh.Scene()
            placed.add_geometry(mesh, transform=transform)
        data = placed.export(file_type="glb")
        assert isinstance(data, bytes)  # a GLB is one binary file
        (folder / glb).write_bytes(data)
        return {"mesh": glb}
    files = trimesh.exchange.obj.export_obj(
        mesh, include_texture=True, mtl_name=f"{catalog.MESH_STEM}.mtl", return_texture=True
    )
    text, assets = files if isinstance(files, tuple) else (files, {})
    (folder / f"{catalog.MESH_STEM}.obj").write_text(text, encoding="utf-8")
    names = {"mesh": f"{catalog.MESH_STEM}.obj"}
    for name, data in assets.items():
        (folder / name).write_bytes(data)
        names["material" if name.endswith(".mtl") else "texture"] = name
    return names
