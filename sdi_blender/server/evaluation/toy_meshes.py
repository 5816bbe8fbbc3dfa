"""The toy world's objects as triangle meshes: their primitives (boxes, icospheres) joined, in
glTF's axes as a mesh file holds them, for texturing a known geometry (``texture``) and for
blockouts (``generate --init-mesh``) whose right answer is known."""

from __future__ import annotations

import dataclasses
from typing import cast

import numpy as np
import trimesh

from ..scene.mesh_file import GLTF_FROM_WORLD
from ..toyworld.objects import ToyObject


def toy_mesh(obj: ToyObject, uvs: bool = True) -> tuple[trimesh.Trimesh, np.ndarray]:
    """The object's primitives as one mesh in glTF axes (with xatlas UVs when ``uvs``), and
    each face's part index."""
    import xatlas

    parts, part_of = [], []
    for k, part in enumerate(obj.parts):
        if part.kind == "sphere":
            mesh = trimesh.creation.icosphere(subdivisions=3, radius=part.size[0])
        else:
            mesh = trimesh.creation.box(extents=[2 * s for s in part.size])
        mesh.apply_translation(part.centre)
        parts.append(mesh)
        part_of += [k] * len(mesh.faces)
    whole = cast(trimesh.Trimesh, trimesh.util.concatenate(parts))  # typed as any Geometry
    vertices = whole.vertices @ GLTF_FROM_WORLD.T
    if not uvs:
        return trimesh.Trimesh(vertices, whole.faces, process=False), np.array(part_of)
    split, faces, uv = xatlas.parametrize(vertices, whole.faces)
    visual = trimesh.visual.TextureVisuals(uv=uv)
    return trimesh.Trimesh(vertices[split], faces, process=False, visual=visual), np.array(part_of)


def main_part(obj: ToyObject) -> ToyObject:
    """The object without its orienting part (the box without its ball): a blockout of it."""
    return dataclasses.replace(obj, parts=tuple(p for p in obj.parts if p.name != obj.feature))
