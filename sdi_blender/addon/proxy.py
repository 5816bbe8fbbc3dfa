"""Watch it grow: the running job's coarse mesh as one vertex-coloured object in the viewport.

The server sends a ``proxy_mesh`` event every tenth of a run (``protocol.py``). Each one
replaces the proxy's mesh in place (one object, in its own collection, never selected), so the
viewport shows the object forming where the result will be imported. The proxy is removed
when the job ends, whatever the ending. It is not part of the artist's work: it is created
and removed without undo steps.
"""

from __future__ import annotations

import array
import base64
from typing import Any

import bpy
from mathutils import Matrix

COLLECTION = OBJECT = "SDI proxy"
_state: dict[str, Any] = {"updates": 0, "step": -1}


def updates() -> int:
    """Proxies shown since the add-on started (for tests and the panel)."""
    return _state["updates"]


def show(event: dict[str, Any], matrix: Matrix) -> bpy.types.Object:
    """Build the event's mesh and swap it into the proxy object placed at ``matrix``."""
    verts = array.array("f", base64.b64decode(event["vertices"]))
    faces = array.array("i", base64.b64decode(event["faces"]))
    colours = array.array("B", base64.b64decode(event["colours"]))
    if len(verts) % 3 or len(faces) % 3 or len(colours) != len(verts) or (faces and max(faces) >= len(verts) // 3):
        raise ValueError("a proxy mesh whose arrays do not fit together")
    mesh = bpy.data.meshes.new(OBJECT)
    mesh.vertices.add(len(verts) // 3)
    mesh.vertices.foreach_set("co", verts)
    mesh.loops.add(len(faces))
    mesh.loops.foreach_set("vertex_index", faces)
    mesh.polygons.add(len(faces) // 3)
    mesh.polygons.foreach_set("loop_start", range(0, len(faces), 3))
    mesh.update()
    rgba = [c / 255.0 for i in range(0, len(colours), 3) for c in (*colours[i : i + 3], 255)]
    mesh.color_attributes.new("Col", "FLOAT_COLOR", "POINT").data.foreach_set("color", rgba)
    mesh.materials.append(_material())
    obj = bpy.data.objects.get(OBJECT)
    if obj is None:
        obj = bpy.data.objects.new(OBJECT, mesh)
        _collection().objects.link(obj)
        obj.hide_select = True  # a preview, not something to edit
    else:
        old, obj.data = obj.data, mesh
        bpy.data.meshes.remove(old)
        mesh.name = OBJECT  # made while the old one had the name
    obj.matrix_world = matrix
    _state["updates"] += 1
    _state["step"] = event.get("step", -1)
    return obj


def remove() -> None:
    """Remove the proxy object, its mesh, its material and its collection (if there are any)."""
    obj = bpy.data.objects.get(OBJECT)
    if obj is not None:
        mesh = obj.data
        bpy.data.objects.remove(obj)
        if mesh is not None and mesh.users == 0:
            bpy.data.meshes.remove(mesh)
    for kind in ("collections", "materials"):
        block = getattr(bpy.data, kind).get(COLLECTION)
        if block is not None:
            getattr(bpy.data, kind).remove(block)
    _state["step"] = -1


def _collection() -> bpy.types.Collection:
    collection = bpy.data.collections.get(COLLECTION)
    if collection is None:
        collection = bpy.data.collections.new(COLLECTION)
        bpy.context.scene.collection.children.link(collection)
    return collection


def _material() -> bpy.types.Material:
    """A material showing the vertex colours (Material Preview and renders)."""
    mat = bpy.data.materials.get(COLLECTION)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(COLLECTION)
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    attribute = nodes.new("ShaderNodeVertexColor")
    attribute.layer_name = "Col"
    mat.node_tree.links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
    return mat
