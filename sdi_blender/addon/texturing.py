"""A texture job's result on the object it was made for: its geometry untouched, a material
with the baked image added.

The server bakes into the object's own UVs (the active UV map), or, for a mesh without one,
into the Smart UV Project the add-on sent (``selection.loop_uvs``), which becomes a new UV map
only now, with the texture. The material is a Principled BSDF whose Base Color is the image
through that UV map; it goes into the active material slot (a new slot when there is none), so
the other slots, the transform and the modifiers stay as they are.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from .importer import undo_on_failure
from .selection import UV_LAYER


def apply(obj: bpy.types.Object, texture: Path, new_uvs: list[float] | None) -> bpy.types.Material:
    """Give ``obj`` the baked ``texture`` (a PNG); ``new_uvs``: the UVs it was baked into when the
    mesh had none (one (u, v) per loop)."""
    if not texture.is_file():
        raise FileNotFoundError(f"no texture at '{texture}'")
    mesh = obj.data
    with undo_on_failure():  # a failure leaves no image or material behind
        image = bpy.data.images.load(str(texture), check_existing=False)
        image.name = f"{obj.name} SDI albedo"
        image.pack()  # kept inside the .blend, as imported objects' textures are
        mat = _material(f"{obj.name} SDI", image, UV_LAYER if new_uvs is not None else mesh.uv_layers.active.name)
    if new_uvs is not None:
        layer = mesh.uv_layers.new(name=UV_LAYER)
        layer.data.foreach_set("uv", new_uvs)
    if obj.material_slots:
        obj.material_slots[obj.active_material_index].material = mat
    else:
        mesh.materials.append(mat)
    return mat


def _material(name: str, image: bpy.types.Image, uv_map: str) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 1.0  # the bake is albedo only: matte, as the export's
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    uv = nodes.new("ShaderNodeUVMap")
    uv.uv_map = uv_map
    links.new(uv.outputs["UV"], tex.inputs["Vector"])
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat
