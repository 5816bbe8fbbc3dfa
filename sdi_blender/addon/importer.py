"""A job's GLB into the scene: one textured object, or a new mesh for an existing one.

The GLB (see server/export.py) is Z-up in metres with the object's front facing -Y once
Blender's glTF importer has converted glTF's Y-up, so nothing here rotates or scales.
Everything the importer creates is removed again if any later step fails, so a failed
import leaves the file as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import bpy

from .properties import JOB_KEY

_DATA = ("objects", "meshes", "materials", "images", "textures", "collections")
MAX_NAME = 60  # Blender names hold 63 bytes


class ImportFailed(Exception):
    """The GLB could not be turned into one mesh object."""


def object_name(prompt: str) -> str:
    """An object name from the prompt ("a ripe strawberry" → "a ripe strawberry")."""
    name = " ".join(prompt.split()) or "SDI object"
    while len(name.encode("utf-8")) > MAX_NAME:
        name = name[:-1]
    return name


def import_glb(context: bpy.types.Context, path: Path, name: str, job: str) -> bpy.types.Object:
    """Import ``path`` as one selected, active object at the 3D cursor."""
    with undo_on_failure():
        obj = _load(path)
        _finish(obj, name, job)
        obj.location = context.scene.cursor.location
        for other in context.view_layer.objects:
            other.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
    return obj


def replace_mesh(obj: bpy.types.Object, path: Path, job: str) -> None:
    """Give ``obj`` the GLB's mesh and material; its transform, modifiers and selection stay."""
    layer = bpy.context.view_layer
    active, selected = layer.objects.active, [o for o in layer.objects if o.select_get()]
    with undo_on_failure():
        new = _load(path)
        _finish(new, obj.name, job)
        mesh = new.data
        bpy.data.objects.remove(new)
    old_mesh, obj.data, obj[JOB_KEY] = obj.data, mesh, job
    if old_mesh.users == 0:
        _remove_mesh(old_mesh)
    _finish(obj, obj.name, job)  # names again, now that the old mesh and image are gone
    for other in layer.objects:
        other.select_set(other in selected)
    layer.objects.active = active


def _load(path: Path) -> bpy.types.Object:
    if not path.is_file():
        raise ImportFailed(f"no mesh at '{path}'")
    before = set(bpy.data.objects)
    try:
        result = bpy.ops.import_scene.gltf(filepath=str(path))
    except RuntimeError as exc:
        raise ImportFailed(f"Blender could not import '{path.name}': {exc}") from None
    new = [o for o in bpy.data.objects if o not in before]
    meshes = [o for o in new if o.type == "MESH"]
    if "FINISHED" not in result or len(meshes) != 1 or len(new) != 1:
        raise ImportFailed(f"'{path.name}' did not hold exactly one mesh")
    obj = meshes[0]
    if not obj.data.uv_layers or not obj.data.materials:
        raise ImportFailed(f"'{path.name}' has no UVs or no material")
    return obj


def _finish(obj: bpy.types.Object, name: str, job: str) -> None:
    """Names, smooth shading, the texture kept inside the .blend, the job id on object and mesh."""
    obj.name = obj.data.name = name
    obj.data.shade_smooth()
    for mat in obj.data.materials:
        mat.name = name
    for image in _images(obj.data):
        image.name = f"{name} albedo"
        if image.packed_file is None:
            image.pack()
    obj[JOB_KEY] = obj.data[JOB_KEY] = job


def _images(mesh: bpy.types.Mesh) -> list[bpy.types.Image]:
    return [
        node.image
        for mat in mesh.materials
        if mat and mat.use_nodes
        for node in mat.node_tree.nodes
        if node.type == "TEX_IMAGE" and node.image
    ]


def _remove_mesh(mesh: bpy.types.Mesh) -> None:
    """Remove a mesh with the materials and images that only it used."""
    materials = [m for m in mesh.materials if m]
    images = _images(mesh)
    bpy.data.meshes.remove(mesh)
    for mat in materials:
        if mat.users == 0:
            bpy.data.materials.remove(mat)
    for image in images:
        if image.users == 0:
            bpy.data.images.remove(image)


@contextlib.contextmanager
def undo_on_failure() -> Iterator[None]:
    """Remove every datablock created inside the block if it raises."""
    before = {kind: set(getattr(bpy.data, kind)) for kind in _DATA}
    try:
        yield
    except BaseException:
        for kind in _DATA:  # objects first: they use the meshes, which use the materials…
            collection = getattr(bpy.data, kind)
            for block in [b for b in collection if b not in before[kind]]:
                collection.remove(block)
        raise
