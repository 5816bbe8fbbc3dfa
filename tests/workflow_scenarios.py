"""Issue 16's artist workflows in Blender, on the toy world, run by tests/test_addon_workflows.py:

    python workflow_scenarios.py workflows ZIP WORKDIR

One Blender process and one server (the toy world, a few steps per job) go through Generate
from Selected watched as it grows (the proxy on the blockout while it trains, gone when the
result arrives on the blockout), a second generate cancelled while its proxy shows, a third
stopped with Stop and Keep (the object imported as it is), Texture Selected (the mesh untouched,
a baked material added; a camera refused; a cancelled texture leaves the mesh as it was; a mesh
without UVs textured to the end keeps the Smart UV map it was baked into) and Variations (two,
one promoted, the other kept apart, then discarded). Each part is a step of its own (see
``addon_scenarios.step``). Prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import blender_harness as h
import bpy
from addon_scenarios import MODULE, install, run_op, runtime, scene_data, step, wait_until

SCENARIOS = {}
PROMPT = "an orange box with a blue ball on its front"


def addon(name: str) -> Any:
    return sys.modules[f"{MODULE}.addon.{name}"]


def proxy_state(frame: Any = None) -> dict:
    """Every trace of the live proxy in the file; with ``frame`` (an object), the proxy's
    bounding box in that object's own frame."""
    kinds = ("objects", "meshes", "materials", "collections")
    found = {kind: sorted(b.name for b in getattr(bpy.data, kind) if b.name.startswith("SDI proxy")) for kind in kinds}
    obj = bpy.data.objects.get("SDI proxy")
    found["in"] = sorted(c.name for c in obj.users_collection) if obj else []
    found["vertices"] = len(obj.data.vertices) if obj else 0
    found["colours"] = [a.name for a in obj.data.color_attributes] if obj else []
    if obj is not None and frame is not None:
        to_frame = frame.matrix_world.inverted() @ obj.matrix_world
        coords = [to_frame @ v.co for v in obj.data.vertices]
        found["bbox"] = [[min(c[i] for c in coords) for i in range(3)], [max(c[i] for c in coords) for i in range(3)]]
    return found


def follow(done: Any, frame: Any = None) -> list[dict]:
    """Pump the runtime (as its timer would) until ``done()``, recording the proxy at each update."""
    seen: list[dict] = []
    count = addon("proxy").updates()

    def check() -> bool:
        nonlocal count
        if addon("proxy").updates() != count:
            count = addon("proxy").updates()
            seen.append(proxy_state(frame))
        return done()

    wait_until(check)
    return seen


def blockout() -> bpy.types.Object:
    """A box off its origin in its own frame, moved, turned and scaled unevenly in the scene."""
    bpy.ops.mesh.primitive_cube_add(size=2.0)
    obj = bpy.context.active_object
    obj.name = "Blockout"
    for v in obj.data.vertices:  # local box: x ∈ [0.2, 2.2], y ∈ [-0.5, 0.5], z ∈ [0.2, 1.0]
        v.co.x, v.co.y, v.co.z = v.co.x + 1.2, v.co.y * 0.5, v.co.z * 0.4 + 0.6
    obj.location, obj.rotation_euler, obj.scale = (2.0, -1.5, 0.8), (0.0, 0.0, 0.6), (1.5, 0.8, 1.2)
    return obj


def local_bbox(obj: bpy.types.Object) -> list[list[float]]:
    coords = [v.co for v in obj.data.vertices]
    return [[min(c[i] for c in coords) for i in range(3)], [max(c[i] for c in coords) for i in range(3)]]


def transform(obj: bpy.types.Object) -> list:
    return [list(obj.location), list(obj.rotation_euler), list(obj.scale), obj.rotation_mode]


def interactive() -> Any:
    """Operators return at once and the test pumps the runtime, as the panel's timer would."""
    real = runtime().synchronous
    runtime().synchronous = lambda: False
    return real


def grow_from_selected(result: dict) -> None:
    """Generate from Selected, watched as it grows: the proxy is on the blockout, then the result."""
    c, block = runtime().controller(), blockout()
    result["blockout"] = {"transform": transform(block), "bbox": local_bbox(block)}
    # A proxy every 6 steps. One still being made skips the next (service/proxy.py), so the job
    # must outlast a few extractions: at 0.04 s a toy step, 8 steps gave only one proxy.
    real, bpy.context.scene.sdi.steps = interactive(), 60
    try:
        result["from_selected"] = run_op(bpy.ops.sdi.generate_from_selected, prompt=PROMPT, preset="toy")
        result["grow_proxies"] = follow(lambda: not c.running, block)
    finally:
        runtime().synchronous, bpy.context.scene.sdi.steps = real, 6
    obj = bpy.context.active_object
    result["from_selected_result"] = {
        "name": obj.name,
        "job": obj.get("sdi_job"),
        "transform": transform(obj),
        "bbox": local_bbox(obj),
        "matrix": [list(row) for row in obj.matrix_world],
        "blockout_matrix": [list(row) for row in block.matrix_world],
    }
    result["grow_after"] = proxy_state()
    bpy.data.objects.remove(block)


def cancel_growing(result: dict) -> None:
    """A second job, cancelled once its proxy is in the viewport."""
    c = runtime().controller()
    real, bpy.context.scene.sdi.steps = (
        interactive(),
        200,
    )  # a proxy every 20 steps; the rest is the margin for the stop (0.04 s a step)
    try:
        result["cancel_reply"] = run_op(bpy.ops.sdi.generate, prompt=PROMPT, preset="toy")
        result["cancel_proxies"] = follow(lambda: not c.running or bool(proxy_state()["objects"]))
        result["cancel_panels"] = h.draw_panels()
        result["cancel"] = run_op(bpy.ops.sdi.cancel)
        result["cancel_ended"] = wait_until(lambda: not c.running)
    finally:
        runtime().synchronous, bpy.context.scene.sdi.steps = real, 6
    result["cancel_after"] = proxy_state()
    result["cancel_objects"] = sorted(o.name for o in bpy.data.objects)


def stop_and_keep(result: dict) -> None:
    """A third generate, stopped with Stop and Keep once its proxy shows: the object as it is."""
    c, settings = runtime().controller(), bpy.context.scene.sdi
    before = {o.name for o in bpy.data.objects}
    real, settings.steps = (
        interactive(),
        200,
    )  # a proxy every 20 steps; the rest is the margin for the stop (0.04 s a step)
    try:
        result["keep_reply"] = run_op(bpy.ops.sdi.generate, prompt=PROMPT, preset="toy")
        result["keep_proxies"] = follow(lambda: not c.running or bool(proxy_state()["objects"]))
        job = c.job.job if c.job is not None else None
        result["keep"] = run_op(bpy.ops.sdi.stop_keep)
        result["keep_ended"] = wait_until(lambda: not c.running)
    finally:
        runtime().synchronous, settings.steps = real, 6
    added = [o for o in bpy.data.objects if o.name not in before]
    result["keep_added"] = [[o.name, o.get("sdi_job")] for o in added]
    result["keep_material"] = material_of(added[0], 0) if len(added) == 1 else None
    run = addon("preferences").server_settings().jobs_dir / str(job)
    result["keep_run"] = {
        "state": json.loads((run / "state.json").read_text()),
        "export": sorted(p.name for p in (run / "export").glob("*")),
        "job": job,
    }
    result["keep_after"] = proxy_state()


def mesh_data(obj: bpy.types.Object) -> dict:
    """Everything of the object that texturing must not change (and its slots, which it may)."""
    mesh = obj.data
    return {
        "vertices": [list(v.co) for v in mesh.vertices],
        "polygons": [list(p.vertices) for p in mesh.polygons],
        "uvs": {layer.name: [list(d.uv) for d in layer.data] for layer in mesh.uv_layers},
        "active_uv": mesh.uv_layers.active.name if mesh.uv_layers.active else None,
        "transform": transform(obj),
        "modifiers": [(m.name, m.type) for m in obj.modifiers],
        "slots": [s.material.name if s.material else None for s in obj.material_slots],
        "mesh": mesh.name,
    }


def material_of(obj: bpy.types.Object, slot: int) -> dict:
    mat = obj.material_slots[slot].material
    bsdf = next((n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    links = bsdf.inputs["Base Color"].links if bsdf else []
    tex = links[0].from_node if links else None
    image = tex.image if tex is not None and tex.type == "TEX_IMAGE" else None
    uv_map = tex.inputs["Vector"].links[0].from_node if image and tex.inputs["Vector"].links else None
    return {
        "base_color_from": [link.from_node.type for link in links],
        "image": [list(image.size), bool(image.packed_file), image.has_data] if image else None,
        "uv_map": uv_map.uv_map if uv_map is not None and uv_map.type == "UVMAP" else None,
        "pixels_vary": bool(image) and len(set(round(p, 3) for p in list(image.pixels)[: 4 * 4096])) > 4,
    }


def select_only(obj: bpy.types.Object) -> None:
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj


def dressed(name: str, rotation: tuple, scale: tuple, modifier: tuple[str, str], slots: tuple, active: int):
    """The active object, named, turned, scaled, with a modifier and material slots (the one at
    ``active`` active), and selected alone: what texturing it must keep."""
    obj = bpy.context.active_object
    obj.name = name
    obj.rotation_euler, obj.scale = rotation, scale
    obj.modifiers.new(*modifier)
    for slot in slots:
        obj.data.materials.append(bpy.data.materials.new(slot))
    obj.active_material_index = active
    select_only(obj)
    return obj


def without_uvs(obj) -> None:
    while obj.data.uv_layers:
        obj.data.uv_layers.remove(obj.data.uv_layers[0])


def texture_selected(result: dict) -> None:
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(-2.0, 1.0, 0.5))  # with its UV map
    cube = dressed("Painted", (0.3, 0.0, 0.2), (1.2, 1.0, 0.9), ("Bevel", "BEVEL"), ("Kept", "Replaced"), 1)
    result["texture_before"] = mesh_data(cube)
    result["texture"] = run_op(bpy.ops.sdi.texture_selected, prompt=PROMPT, preset="toy")
    result["texture_after"] = mesh_data(cube)
    result["texture_material"] = material_of(cube, 1)


def texture_refused(result: dict) -> None:
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    bpy.context.scene.collection.objects.link(cam)
    select_only(cam)
    before = scene_data()
    result["camera"] = run_op(bpy.ops.sdi.texture_selected, prompt=PROMPT, preset="toy")
    result["camera_unchanged"] = scene_data() == before


def texture_cancelled(result: dict) -> None:
    """A texture job cancelled mid-run, on a mesh without UVs: nothing of it stays."""
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=1, location=(0.0, 3.0, 0.0))
    ball = bpy.context.active_object
    ball.name = "Unpainted"
    without_uvs(ball)
    select_only(ball)
    before, data_before = mesh_data(ball), scene_data()
    c, settings = runtime().controller(), bpy.context.scene.sdi
    real, settings.steps = interactive(), 400
    try:
        result["texture_cancel_reply"] = run_op(bpy.ops.sdi.texture_selected, prompt=PROMPT, preset="toy")
        result["texture_cancel_progressed"] = wait_until(lambda: c.job is not None and c.job.step > 0)
        result["texture_cancel"] = run_op(bpy.ops.sdi.cancel)
        result["texture_cancel_ended"] = wait_until(lambda: not c.running)
    finally:
        runtime().synchronous, settings.steps = real, 6
    result["texture_cancel_unchanged"] = [mesh_data(ball) == before, scene_data() == data_before]


def others(target: bpy.types.Object) -> dict:
    """Every other object's transform, data and slots: what texturing ``target`` must not touch."""
    return {
        o.name: [[list(r) for r in o.matrix_world], o.data.name if o.data else None, [s.name for s in o.material_slots]]
        for o in bpy.data.objects
        if o != target
    }


def texture_without_uvs(result: dict) -> None:
    """Texture Selected to the end on a mesh without UVs: the Smart UV map it is baked into stays."""
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=2, radius=0.8, location=(3.0, 2.0, 0.4))
    without_uvs(bpy.context.active_object)
    ball = dressed("Unwrapped", (0.0, 0.4, 1.1), (1.0, 1.3, 0.7), ("Subdivision", "SUBSURF"), ("Shell", "Inner"), 0)
    before, scene_before, others_before = mesh_data(ball), scene_data(), others(ball)
    result["no_uv_texture"] = run_op(bpy.ops.sdi.texture_selected, prompt=PROMPT, preset="toy")
    after = mesh_data(ball)
    result["no_uv_before"], result["no_uv_after"] = before, after
    result["no_uv_material"] = material_of(ball, 0)
    result["no_uv_uvs_in_unit_square"] = all(0.0 <= x <= 1.0 for uv in after["uvs"].get("SDI UV", []) for x in uv)
    scene_after = scene_data()
    result["no_uv_scene_added"] = {k: sorted(set(scene_after[k]) - set(scene_before[k])) for k in scene_after}
    result["no_uv_scene_removed"] = {k: sorted(set(scene_before[k]) - set(scene_after[k])) for k in scene_after}
    result["no_uv_others_unchanged"] = others(ball) == others_before


def variations(result: dict) -> None:
    settings, var = bpy.context.scene.sdi, addon("variations")
    settings.prompt, settings.seed = PROMPT, 3
    settings.variation_count, settings.variation_preset, settings.variation_steps = 2, "toy", 4
    objects_before, c = len(bpy.data.objects), runtime().controller()
    real = interactive()  # the panel's way: the timer sends each seed as the one before ends
    try:
        result["variations"] = run_op(bpy.ops.sdi.variations)
        result["variations_waiting"] = var.waiting()
        result["variations_ended"] = wait_until(lambda: not c.running and not var.waiting())
    finally:
        runtime().synchronous = real
    rows = settings.variations
    result["variation_rows"] = [[i.job, i.seed, i.step] for i in rows]
    icons = var._state["icons"]
    result["variation_icons"] = [list(icons[i.job].image_size) if i.job in icons else None for i in rows]
    result["variation_objects_added"] = len(bpy.data.objects) - objects_before
    result["variation_panels"] = h.draw_panels()
    chosen, other = rows[0].job, rows[1].job
    settings.preset, settings.steps = "toy", 8  # Promote trains on to the Quality's length: 4 more
    result["promote"] = run_op(bpy.ops.sdi.promote_variation, job=chosen)
    obj = bpy.context.active_object
    result["promoted_object"] = [obj.name, obj.get("sdi_job")]
    result["variation_rows_promoted"] = [[i.job, i.step] for i in rows]
    run_op(bpy.ops.sdi.refresh_jobs)
    result["jobs_promoted"] = {i.job: [i.status, i.step] for i in settings.history if i.job in (chosen, other)}
    result["keep_only"] = run_op(bpy.ops.sdi.discard_variations, keep=chosen)
    run_op(bpy.ops.sdi.refresh_jobs)  # after the delete: one queue, in order
    result["variation_rows_kept"] = [i.job for i in rows]
    result["jobs_kept"] = sorted(i.job for i in settings.history if i.job in (chosen, other))
    jobs = addon("preferences").server_settings().jobs_dir
    result["job_dirs_kept"] = sorted(p.name for p in jobs.iterdir() if p.name in (chosen, other))


def workflows(work: Path) -> dict:
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.model = "toyworld"
    settings = bpy.context.scene.sdi
    settings.steps, settings.mesh_resolution, settings.texture_size, settings.method = 6, 48, "256", "sds"
    result: dict = {"failed": {}}
    parts = (grow_from_selected, cancel_growing, stop_and_keep, texture_selected, texture_refused, texture_cancelled)
    for part in (*parts, texture_without_uvs, variations):
        with step(result, part.__name__):
            part(result)
    result["temp_files"] = sorted(p.name for p in Path(tempfile.gettempdir()).rglob("*.obj"))  # $TMPDIR: its own
    jobs = addon("preferences").server_settings().jobs_dir  # the meshes the requests carried, kept by the server
    result["sent_meshes"] = {p.parent.name: p.name for p in jobs.glob("*/sent-mesh.*")}
    return result


SCENARIOS["workflows"] = workflows


if __name__ == "__main__":
    name, zip_path, workdir = sys.argv[1:4]
    install(zip_path, Path(workdir))
    h.emit(SCENARIOS[name](Path(workdir)))
