"""The selected object as the server reads it: checked, and written as OBJ text, which the
request carries (``protocol.mesh_data``), so the server may be on another machine.

The OBJ holds the mesh in the object's own (local) frame, triangulated as Blender draws it
(``loop_triangles``), in the axes glTF and Blender's OBJ exporter use (Y up, forward −Z), which
is what the server's mesh reader expects (``server/scene/mesh_file.py``). Written here rather
than by an exporter operator: no selection or mode change, no operator context, and the local
frame exactly, so a result can be put back on the object's own transform.
"""

from __future__ import annotations

import bpy

UV_LAYER = "SDI UV"
"""The UV map Texture Selected adds to a mesh that has none."""


def selected_mesh(context: bpy.types.Context) -> tuple[bpy.types.Object | None, str]:
    """The active object if it is a mesh with faces, else (None, why not)."""
    obj = context.active_object
    if obj is None or not obj.select_get():
        return None, "select a mesh object first"
    if obj.type != "MESH":
        return None, f"'{obj.name}' is a {obj.type.lower()}, not a mesh: select a mesh object"
    if not obj.data.polygons:
        return None, f"'{obj.name}' has no faces"
    return obj, ""


def obj_bytes(mesh: bpy.types.Mesh, uvs: list[float] | None = None) -> bytes:
    """``mesh``'s triangles in local coordinates, with per-loop ``uvs`` ([u, v] per loop) if given."""
    mesh.calc_loop_triangles()
    lines = [f"v {v.co.x:.7g} {v.co.z:.7g} {-v.co.y:.7g}" for v in mesh.vertices]  # Blender → Y-up
    triangles = mesh.loop_triangles
    if uvs is None:
        lines += [f"f {t.vertices[0] + 1} {t.vertices[1] + 1} {t.vertices[2] + 1}" for t in triangles]
    else:
        lines += [f"vt {uvs[2 * i]:.7g} {uvs[2 * i + 1]:.7g}" for i in range(len(uvs) // 2)]
        lines += ["f " + " ".join(f"{v + 1}/{loop + 1}" for v, loop in zip(t.vertices, t.loops)) for t in triangles]
    return ("\n".join(lines) + "\n").encode("ascii")


def evaluated_mesh(context: bpy.types.Context, obj: bpy.types.Object) -> bpy.types.Mesh:
    """``obj``'s mesh with its modifiers applied (a temporary mesh: call ``obj.to_mesh_clear()``)."""
    return obj.evaluated_get(context.evaluated_depsgraph_get()).to_mesh()


def loop_uvs(obj: bpy.types.Object) -> tuple[list[float], bool]:
    """The UVs a texture is baked into, one (u, v) per loop: the active UV map's, or (a mesh
    without one) a Smart UV Project of it, made on a UV map that is removed again at once, so the
    object is unchanged until the texture arrives. The flag says whether they are new."""
    mesh = obj.data
    if mesh.uv_layers.active is not None:
        return _read_uvs(mesh.uv_layers.active), False
    mesh.uv_layers.new(name=UV_LAYER)
    try:
        with bpy.context.temp_override(
            active_object=obj, object=obj, selected_objects=[obj], selected_editable_objects=[obj]
        ):
            bpy.ops.object.mode_set(mode="EDIT")
            bpy.ops.mesh.select_all(action="SELECT")
            bpy.ops.uv.smart_project(island_margin=0.02)
            bpy.ops.object.mode_set(mode="OBJECT")
        return _read_uvs(mesh.uv_layers[UV_LAYER]), True
    finally:
        mesh.uv_layers.remove(mesh.uv_layers[UV_LAYER])


def _read_uvs(layer: bpy.types.MeshUVLoopLayer) -> list[float]:
    flat = [0.0] * (2 * len(layer.data))
    layer.data.foreach_get("uv", flat)
    return flat
