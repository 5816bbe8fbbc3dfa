"""The add-on's running state: one controller, and a main-thread timer that applies its news.

Blender data may only be touched on the main thread, so the controller's background
thread never does; :func:`pump` runs as a ``bpy.app.timers`` callback (and in a loop in
background mode, where timers do not run) and imports finished meshes, updates the
preview and reports failures.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import bpy
import bpy.utils.previews

from . import controller as ctl
from . import importer, preferences, variations, workflows

_state: dict[str, Any] = {
    "controller": None,
    "previews": None,
    "preview_icon": 0,
    "preview_step": -1,
    "jobs_shown": None,
}
ACTIVE_INTERVAL, IDLE_INTERVAL = 0.2, 1.0  # seconds between timer calls
Report = tuple[str, str]  # (Blender report level, message)


def synchronous() -> bool:
    """Whether job operators wait for their job: in background mode timers never fire.
    (Tests replace this to drive the interactive path by calling :func:`pump` themselves.)"""
    return bpy.app.background


def controller() -> ctl.Controller:
    if _state["controller"] is None:
        _state["controller"] = ctl.Controller()
    return _state["controller"]


def preview_icon() -> int:
    """Icon id of the followed job's latest preview, 0 when there is none (or no UI to draw it)."""
    return _state["preview_icon"]


def preview_step() -> int:
    """The step of the latest preview loaded, -1 when there is none."""
    return _state["preview_step"]


def submit(view: ctl.JobView, kind: str, **fields: Any) -> Report | None:
    """Send a job request; in background mode wait for it and return its report."""
    c = controller()
    c.submit(preferences.server_settings(), view, kind, **fields)
    _state["preview_icon"], _state["preview_step"] = 0, -1
    if not synchronous():
        ensure_timer()
        return None
    reports: list[Report] = []
    if not ctl.wait_until(c, lambda: not c.running, lambda outcome: reports.append(apply(outcome))):
        gave_up = c.abandon(f"the server sent nothing for {ctl.SILENT_SERVER_S:.0f} s")
        if gave_up is not None:
            reports.append(apply(gave_up))
    return reports[-1] if reports else ("ERROR", "SDI: the job ended without news")


def pump() -> float:
    """Timer callback: apply the controller's news to Blender; returns the next interval."""
    c = controller()
    outcome = c.poll()
    _show_preview(c.job)
    workflows.show_proxy(c.job)
    for message in c.notices:
        notify("ERROR", message)
        c.last_error = (message, "")  # kept in the panel, as a job's error is
    c.notices.clear()
    for message in c.job_notes:
        notify("WARNING", message)
    c.job_notes.clear()
    if c.jobs is not _state["jobs_shown"]:
        fill_history(bpy.context.scene)
    if outcome is not None:
        notify(*apply(outcome))
        if outcome.status != "error":  # after a crash, do not start a server just for the list
            c.refresh_jobs(preferences.server_settings())
        variations.submit_next()  # the next seed of a Variations run, if one waits
    _redraw()
    return ACTIVE_INTERVAL if c.running or c.state == "starting" else IDLE_INTERVAL


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(pump):
        bpy.app.timers.register(pump, first_interval=ACTIVE_INTERVAL, persistent=True)


def apply(outcome: ctl.Outcome) -> Report:
    """Act on a finished job: import its mesh, or say why there is none."""
    view = outcome.view
    workflows.ended(outcome)
    if outcome.status == "cancelled":
        return "WARNING", outcome.message or "SDI: cancelled; the scene is unchanged"
    if outcome.status == "error":
        return "ERROR", f"SDI: {outcome.report()}"
    if view.purpose == "variation":  # no mesh: its turntable goes into the panel
        return "INFO", variations.finished(view)
    glb = view.files.get("mesh")  # the exported event's files by kind (server/service/jobs.py)
    if not glb:
        return "ERROR", "SDI: the job ended without a mesh"
    try:
        with _window_context():
            return "INFO", import_result(view, Path(glb))
    except (importer.ImportFailed, OSError, RuntimeError) as exc:  # e.g. a texture Blender cannot read
        return "ERROR", f"SDI: {exc}"


def import_result(view: ctl.JobView, glb: Path) -> str:
    target = bpy.data.objects.get(view.target) if view.target else None
    if view.purpose in ("continue", "reexport") and target is not None:
        importer.replace_mesh(target, glb, view.job)
        workflows.after_replace(target, view)
        return f"SDI: updated '{target.name}'"
    done = workflows.import_result(view, glb)
    if done is not None:
        _undo_push(done)
        return done
    obj = importer.import_glb(bpy.context, glb, importer.object_name(view.prompt), view.job)
    _undo_push(f"SDI import {obj.name}")
    return f"SDI: imported '{obj.name}'"


def fill_history(scene: bpy.types.Scene) -> None:
    """The server's job list into the panel's history (newest first)."""
    jobs = _state["jobs_shown"] = controller().jobs
    scene.sdi.history.clear()
    for entry in reversed(jobs):
        item = scene.sdi.history.add()
        item.job, item.prompt, item.status, item.step = (
            entry["job"],
            entry.get("prompt", ""),
            entry["status"],
            entry.get("step") or 0,
        )


def _window_context() -> contextlib.AbstractContextManager:
    """Timers run without a window in the context; the glTF importer and selection want one."""
    windows = getattr(bpy.context.window_manager, "windows", [])
    if bpy.context.window is None and len(windows):
        return bpy.context.temp_override(window=windows[0], screen=windows[0].screen)
    return contextlib.nullcontext()


def notify(level: str, message: str) -> None:
    """A Blender report (Info editor and status bar), from outside an operator."""
    if bpy.app.background:
        print(f"{level}: {message}")
        return
    try:
        with _window_context():  # a report needs a window to reach the status bar
            bpy.ops.sdi.notify(level=level, message=message)
    except RuntimeError:
        print(f"{level}: {message}")


def _show_preview(view: ctl.JobView | None) -> None:
    if view is None or view.preview is None:
        return
    previews = _state["previews"] or bpy.utils.previews.new()
    _state["previews"] = previews
    path = Path(tempfile.gettempdir()) / f"sdi-preview-{os.getpid()}.png"
    path.write_bytes(view.preview)
    previews.clear()  # one image at a time; a new key each time defeats the icon cache
    image = previews.load(f"{view.job}-{view.preview_step}", str(path), "IMAGE")
    image.image_size[:]  # reads the file now, while it is this preview's
    _state["preview_icon"], _state["preview_step"] = image.icon_id, view.preview_step
    view.preview = None


def _redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def _undo_push(message: str) -> None:
    if not bpy.app.background:
        try:
            bpy.ops.ed.undo_push(message=message)
        except RuntimeError:
            pass  # no undo stack in this context; the import stands


def shutdown() -> None:
    """Stop a server we started, the timer and the previews (add-on disabled, Blender quits)."""
    if bpy.app.timers.is_registered(pump):
        bpy.app.timers.unregister(pump)
    c, _state["controller"] = _state["controller"], None
    if c is not None:
        c.shutdown()
    variations.shutdown()
    if _state["previews"] is not None:
        bpy.utils.previews.remove(_state["previews"])
        _state["previews"], _state["preview_icon"] = None, 0


@atexit.register
def _stop_server_at_exit() -> None:
    """Blender quits without disabling add-ons: a server we started must not outlive it."""
    c, _state["controller"] = _state["controller"], None
    if c is not None:
        c.shutdown(timeout=10.0)
