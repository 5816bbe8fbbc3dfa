"""Add-on scenarios, each run once in its own bpy process by tests/test_addon.py:

    python addon_scenarios.py SCENARIO ZIP WORKDIR

The add-on is installed from the built zip through Blender's extension API (into
``$BLENDER_USER_RESOURCES``), so what is tested is what ships. The server runs from
``$SDI_SERVER_PYTHON`` with the tiny model. Prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blender_harness as h
import bpy
from mathutils import Vector

MODULE = "bl_ext.user_default.sdi_blender"
SCENARIOS: dict[str, Callable[[Path], dict]] = {}


def scenario(fn: Callable[[Path], dict]) -> Callable[[Path], dict]:
    SCENARIOS[fn.__name__] = fn
    return fn


def install(zip_path: str, work: Path) -> Any:
    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    assert result == {"FINISHED"}, result
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.model, prefs.device, prefs.jobs_dir = "tiny", "cpu", str(work / "jobs")
    settings = bpy.context.scene.sdi
    settings.steps, settings.mesh_resolution, settings.texture_size = 6, 64, "256"
    return prefs


def runtime() -> Any:
    return sys.modules[MODULE + ".addon.runtime"]


def scene_data() -> dict:
    return {
        kind: sorted(b.name for b in getattr(bpy.data, kind)) for kind in ("objects", "meshes", "materials", "images")
    }


def run_op(op: Callable, **kwargs: Any) -> str:
    """An operator's outcome: "FINISHED"/"CANCELLED", or the error report it raised."""
    try:
        return ",".join(sorted(op(**kwargs)))
    except RuntimeError as exc:
        return f"error: {exc}"


def describe(obj: Any) -> dict:
    mesh = obj.data
    nodes = {n.type: n for mat in mesh.materials for n in mat.node_tree.nodes}
    bsdf, tex = nodes.get("BSDF_PRINCIPLED"), nodes.get("TEX_IMAGE")
    base_links = [link.from_node.type for link in bsdf.inputs["Base Color"].links] if bsdf else []
    coords = [v.co for v in mesh.vertices]
    lo = [min(c[i] for c in coords) for i in range(3)]
    hi = [max(c[i] for c in coords) for i in range(3)]
    return {
        "name": obj.name,
        "type": obj.type,
        "location": list(obj.location),
        "job": obj.get("sdi_job"),
        "selected": obj.select_get(),
        "active": bpy.context.view_layer.objects.active == obj,
        "uv_layers": len(mesh.uv_layers),
        "vertices": len(mesh.vertices),
        "smooth": all(p.use_smooth for p in mesh.polygons),
        "base_color_from": base_links,
        "image_size": list(tex.image.size) if tex else None,
        "image_packed": bool(tex and tex.image.packed_file),
        "bbox": [lo, hi],
        "modifiers": [m.name for m in obj.modifiers],
        "mesh_name": mesh.name,
    }


def render(obj: Any, out: Path) -> None:
    """A small Cycles render of the object, for a person to look at (alone: the startup
    scene's 2 m cube at the origin would hide it)."""
    scene = bpy.context.scene
    for other in scene.objects:
        other.hide_render = other != obj
    cam = bpy.data.objects.new("SDI test camera", bpy.data.cameras.new("SDI test camera"))
    scene.collection.objects.link(cam)
    center = obj.matrix_world.translation
    cam.location = center + Vector((0.0, -2.6, 0.9))  # in front (-Y), a little above
    direction = center - cam.location
    cam.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam
    sun = bpy.data.objects.new("SDI test sun", bpy.data.lights.new("SDI test sun", "SUN"))
    scene.collection.objects.link(sun)
    sun.rotation_euler = (0.6, 0.2, 0.5)
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples = "CPU", 16
    scene.render.resolution_x = scene.render.resolution_y = 192
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)


@contextlib.contextmanager
def step(result: dict, name: str) -> Iterator[None]:
    """One step of a scenario: if it raises, its traceback goes to ``result["failed"][name]``
    and the scenario goes on, so that each step's test fails on its own."""
    try:
        yield
    except Exception:
        result.setdefault("failed", {})[name] = traceback.format_exc()


@scenario
def generate_refine(work: Path) -> dict:
    """Generate → Continue → Re-export → history import → render → disable stops the server.

    Each step is recorded on its own (see :func:`step`); a step that needs an earlier one's
    object fails too when that one did, with its own traceback."""
    result: dict = {"failed": {}}
    obj = None
    with step(result, "registration"):
        result["registered"] = sorted(name for name in dir(bpy.types) if name.startswith("SDI_"))
        result["operators"] = sorted(dir(bpy.ops.sdi))
    with step(result, "panels_stopped"):
        result["panels_stopped"] = h.draw_panels()
    with step(result, "generate"):
        bpy.context.scene.cursor.location = (0.5, -0.25, 0.0)
        result["generate"] = run_op(bpy.ops.sdi.generate, prompt="a red apple", preset="test")
        obj = bpy.context.active_object
        result["generated"] = describe(obj)
    with step(result, "panels_ready"):
        result["panels_ready"] = h.draw_panels()
    with step(result, "continue"):
        obj.location = (1.0, 2.0, 3.0)
        obj.modifiers.new("Subdivision", "SUBSURF")
        meshes_before = len(bpy.data.meshes)
        result["continue"] = run_op(bpy.ops.sdi.continue_job, steps=2)
        result["continued"] = describe(bpy.data.objects[obj.name])
        result["meshes_before_after"] = [meshes_before, len(bpy.data.meshes)]
    with step(result, "reexport"):
        bpy.context.scene.sdi.texture_size = "512"
        result["reexport"] = run_op(bpy.ops.sdi.reexport)
        result["reexported"] = describe(bpy.data.objects[obj.name])
    with step(result, "refresh"):
        result["refresh"] = run_op(bpy.ops.sdi.refresh_jobs)
        result["history"] = [(i.job, i.status) for i in bpy.context.scene.sdi.history]
    with step(result, "import_job"):
        result["import_job"] = run_op(bpy.ops.sdi.import_job, job=result["generated"]["job"])
        result["reimported"] = describe(bpy.context.active_object)
    with step(result, "panels_history"):
        result["panels_history"] = h.draw_panels()
        result["list_rows"] = h.draw_list_items(bpy.context.scene.sdi, "history")
    with step(result, "render"):
        out = Path(os.environ["SDI_TEST_OUTPUT"]) / "addon_render.png"
        render(bpy.context.active_object, out)  # the re-imported one: no subdivision to slow Cycles
        result["render"] = str(out)
    with step(result, "disable"):
        server = runtime().controller()._server.process
        bpy.ops.preferences.addon_disable(module=MODULE)
        result["server_exit"] = server.wait(30)
    return result


def wait_until(condition: Callable[[], bool], timeout: float = 300.0) -> bool:
    """Drive the add-on's timer by hand (background mode never fires timers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runtime().pump()
        if condition():
            return True
        time.sleep(0.05)
    return False


def start_async(work: Path, steps: int = 500, preview: bool = False) -> dict:
    """Start a generate the interactive way (returns at once) and wait for its progress
    (or its first preview image, drawn every 10 steps by the test preset)."""
    runtime().synchronous = lambda: False
    bpy.context.scene.sdi.steps = steps
    before = scene_data()
    c = runtime().controller()
    reply = run_op(bpy.ops.sdi.generate, prompt="a slow apple", preset="test")
    progressed = wait_until(lambda: c.job is not None and (runtime().preview_step() > 0 if preview else c.job.step))
    return {
        "reply": reply,
        "progressed": progressed,
        "before": before,
        "panels_busy": h.draw_panels(),
        "state_busy": c.state,
    }


@scenario
def cancel(work: Path) -> dict:
    result = start_async(work, preview=True)
    result["preview"] = [runtime().preview_step(), list(next(iter(runtime()._state["previews"].values())).image_size)]
    c = runtime().controller()
    result["cancel"] = run_op(bpy.ops.sdi.cancel)
    result["panels_cancelling"] = h.draw_panels()
    result["ended"] = wait_until(lambda: not c.running)
    result["after"], result["state"] = scene_data(), c.state
    result["panels_after"] = h.draw_panels()
    result["server_pid"] = c._server.process.pid  # still running: quitting must stop it
    return result


@scenario
def server_killed(work: Path) -> dict:
    result = start_async(work)
    c = runtime().controller()
    reports: list = []
    runtime().notify = lambda level, message: reports.append([level, message])
    c._server.process.kill()
    result["ended"] = wait_until(lambda: not c.running)
    result["reports"], result["after"] = reports, scene_data()
    result["state"], result["hint"] = c.state, c.hint
    result["panels_error"] = h.draw_panels()
    return result


@scenario
def errors(work: Path) -> dict:
    """Each bad set-up gives an error report and leaves the scene alone."""
    prefs, result = bpy.context.preferences.addons[MODULE].preferences, {"before": scene_data()}
    python = os.environ.pop("SDI_SERVER_PYTHON")
    generate = lambda **kw: run_op(bpy.ops.sdi.generate, preset="test", **kw)  # noqa: E731
    result["no_python"] = generate(prompt="x")
    prefs.server_python = str(work / "missing-python")
    result["missing_python"] = generate(prompt="x")
    prefs.server_python = os.environ["SDI_FOREIGN_PYTHON"]  # a Python without the server
    result["foreign_python"] = generate(prompt="x")
    prefs.server_python = python
    result["empty_prompt"] = generate(prompt="")
    result["bad_preset"] = run_op(bpy.ops.sdi.generate, prompt="x", preset="ultra")
    result["bad_model"] = run_op(bpy.ops.sdi.generate, prompt="x", preset="test", model="no/such-model")
    result["check_python"] = run_op(bpy.ops.sdi.check_python)
    prefs.use_remote, prefs.remote_host, prefs.remote_port = True, "127.0.0.1", int(os.environ["SDI_FREE_PORT"])
    result["unreachable"] = generate(prompt="x")
    host, port, token = os.environ["SDI_REMOTE"].split(":")
    prefs.remote_port, prefs.remote_token = int(port), token + "-wrong"
    result["wrong_token"] = generate(prompt="x")
    result["panels_error"] = h.draw_panels()
    result["prefs_drawn"] = h.draw_preferences(prefs)
    # A finished job whose files lack the server's "mesh" key (here under a key the server never
    # sends) imports nothing. The server's own events take this path in generate_refine.
    ctl = sys.modules[MODULE + ".addon.controller"]
    view = ctl.JobView("generate", prompt="x", job="J", files={"glb": str(work / "mesh.glb")})
    try:
        result["apply_without_mesh"] = list(runtime().apply(ctl.Outcome(view, "done")))
    except Exception as exc:
        result["apply_without_mesh"] = f"raised {exc!r}"
    result["after"] = scene_data()
    return result


@scenario
def panel(work: Path) -> dict:
    """The panel in each state a job passes through, drawn without a server (the controller's
    view is set as its events would set it), and the preferences' model menu."""
    mod = lambda name: sys.modules[f"{MODULE}.addon.{name}"]  # noqa: E731
    ctl, prefs_mod = mod("controller"), mod("preferences")
    prefs, settings, c = (
        bpy.context.preferences.addons[MODULE].preferences,
        bpy.context.scene.sdi,
        runtime().controller(),
    )
    result: dict = {"failed": {}, "panels_idle": h.draw_panels()}
    with step(result, "seed"):
        settings.seed = 0
        result["random_seed"] = [run_op(bpy.ops.sdi.random_seed), settings.seed]
    started = {"kind": "generate", "device": "cpu", "model": "tiny", "preset": "test", "steps": 500}
    started |= {"resolution": 64, "run": str(work / "jobs" / "J1"), "estimate": "about 7 min"}
    views = {
        "loading": dict(phase="loading", model="sdi-test/model"),
        "download": dict(phase="download", model="m", download=("unet/w.safetensors", 5 * 10**8, 10**9)),
        "stalled": dict(phase="download", model="m", download=("unet/w.safetensors", 10, 10**9)),
        "export": dict(phase="export", stage="sample", stage_fraction=0.25, step=500, total=500),
    }
    for name, fields in views.items():
        with step(result, name):
            view = c.job = ctl.JobView("generate", prompt="x", job="J1", started=started, **fields)
            view.bytes_at = time.monotonic() - (prefs.stall_seconds + 30 if name == "stalled" else 0)
            result[f"panels_{name}"] = h.draw_panels()
    with step(result, "cancel_downloading"):
        result["cancel_downloading"] = [run_op(bpy.ops.sdi.cancel), c.job.cancelling]
    c.job = None
    with step(result, "error_box"):
        c.last_error = ("model 'a/b' is not on this machine " * 3, "turn on Allow Online Access " * 3)
        result["panels_error_box"] = h.draw_panels()
        result["dismiss"] = run_op(bpy.ops.sdi.dismiss_error)
        result["panels_dismissed"] = h.draw_panels()
    with step(result, "preset_advice"):
        c.free_gb, settings.preset = 20.0, "paper"  # as a 24 GB GPU's status reply would say
        result["panels_preset_advice"] = h.draw_panels()
        result["use_preset"] = [run_op(bpy.ops.sdi.use_preset, preset="draft"), settings.preset]
        c.free_gb = None
    with step(result, "model_menu"):
        result["model_items"] = [i.identifier for i in prefs.bl_rna.properties["model_choice"].enum_items]
        result["device_items"] = [i.identifier for i in prefs.bl_rna.properties["device"].enum_items]
        result["preset_items"] = {i.identifier: i.name for i in settings.bl_rna.properties["preset"].enum_items}
        migrated = {}
        for old in ("toyworld", str(work), "some-org/some-model"):  # free text of earlier versions
            prefs.model = old
            chosen = prefs_mod.server_settings().model
            migrated[old] = [chosen, prefs.model_choice, prefs.model_folder, prefs.model]
        result["migrated"] = migrated
        result["prefs_drawn"] = h.draw_preferences(prefs)
    return result


def mesh_in_world(obj: Any) -> dict:
    """The object's triangles in Blender world space, relative to its origin, and each vertex's
    colour read from its material's image through its UVs (as a person would see it)."""
    mesh = obj.data
    mesh.calc_loop_triangles()
    image = next(n.image for mat in mesh.materials for n in mat.node_tree.nodes if n.type == "TEX_IMAGE")
    width, height = image.size
    pixels = list(image.pixels)
    uv = mesh.uv_layers.active.data
    colour = [[0.0, 0.0, 0.0] for _ in mesh.vertices]
    for loop in mesh.loops:
        u, v = uv[loop.index].uv
        x, y = min(int(u * width), width - 1), min(int(v * height), height - 1)
        colour[loop.vertex_index] = pixels[(y * width + x) * 4 : (y * width + x) * 4 + 3]
    origin = obj.matrix_world.translation
    verts = [list(obj.matrix_world @ v.co - origin) for v in mesh.vertices]
    return {"vertices": verts, "faces": [list(t.vertices) for t in mesh.loop_triangles], "colours": colour}


@scenario
def toy_object(work: Path) -> dict:
    """The toy world end to end in Blender: prompt → known object → imported → rendered."""
    prefs = bpy.context.preferences.addons[MODULE].preferences
    prefs.model = "toyworld"
    settings = bpy.context.scene.sdi
    settings.steps, settings.mesh_resolution, settings.texture_size = 0, 96, "256"
    settings.method = "sds"  # the method that reaches the toy thresholds today (docs/toy-world.md)
    prompt = "an orange box with a blue ball on its front"
    result = {"generate": run_op(bpy.ops.sdi.generate, prompt=prompt, preset="toy")}
    obj = bpy.context.active_object
    result["generated"] = describe(obj)
    result["mesh"] = mesh_in_world(obj)
    out = Path(os.environ["SDI_TEST_OUTPUT"]) / "addon_toy_render.png"
    render(obj, out)
    result["render"] = str(out)
    return result


if __name__ == "__main__":
    name, zip_path, workdir = sys.argv[1:4]
    prefs = install(zip_path, Path(workdir))
    h.emit(SCENARIOS[name](Path(workdir)))
