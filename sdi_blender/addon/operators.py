# mypy: disable-error-code="valid-type"
# (Blender declares properties as calls in class annotations, e.g. ``x: bpy.props.IntProperty()``.)
"""The add-on's operators (``bpy.ops.sdi.*``): generate, refine, import, server control.

Job operators return at once and the runtime's timer imports the result; in background
mode (scripts, tests) they run synchronously and report how the job ended.
"""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import bpy

from ..catalog import CONFIG, mesh_file
from . import controller as ctl
from . import importer, preferences, runtime, wording
from .properties import JOB_KEY, PRESETS

_PRESET_IDS = [p[0] for p in PRESETS]


def submit(op: bpy.types.Operator, view: ctl.JobView, kind: str, **fields: Any) -> set[str]:
    """Send a job; report its start, or (background mode) how it ended."""
    try:
        report = runtime.submit(view, kind, **fields)
    except RuntimeError as exc:
        op.report({"ERROR"}, f"SDI: {exc}")
        return {"CANCELLED"}
    if report is None:
        op.report({"INFO"}, f"SDI: {kind} started")
        return {"FINISHED"}
    level, message = report
    op.report({level}, message)
    return {"FINISHED"} if level == "INFO" else {"CANCELLED"}


def downloads_allowed() -> bool:
    """Blender's Allow Online Access (Preferences ▸ System ▸ Network): off, the server may load
    the model from local files only, and downloads nothing."""
    return bool(getattr(bpy.app, "online_access", True))


def _job_object(context: bpy.types.Context) -> bpy.types.Object | None:
    obj = context.active_object
    return obj if obj is not None and obj.get(JOB_KEY) else None


class SDI_OT_generate(bpy.types.Operator):
    """Generate a textured object from the prompt"""

    bl_idname, bl_label = "sdi.generate", "Generate"
    prompt: bpy.props.StringProperty(name="Prompt", description="Empty: the panel's", options={"SKIP_SAVE"})
    preset: bpy.props.StringProperty(name="Preset", description="Empty: the panel's", options={"SKIP_SAVE"})
    model: bpy.props.StringProperty(name="Model", description="Empty: the preferences'", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not runtime.controller().running

    def execute(self, context: bpy.types.Context) -> set[str]:
        fields = generate_fields(self, context, self.prompt, self.preset, self.model)
        if fields is None:
            return {"CANCELLED"}
        return submit(self, ctl.JobView("generate", prompt=fields["prompt"]), "generate", **fields)


def generate_fields(
    op: bpy.types.Operator, context: bpy.types.Context, prompt: str = "", preset: str = "", model: str = ""
) -> dict[str, Any] | None:
    """A generate request from the panel (``prompt``, ``preset``, ``model``: "" for the panel's and
    the preferences'), or None after reporting what is missing."""
    fields = context.scene.sdi.train_fields()
    fields["prompt"] = prompt.strip() or fields["prompt"]
    fields["preset"] = preset or fields["preset"]
    if not fields["prompt"]:
        op.report({"ERROR"}, "SDI: write a prompt first")
        return None
    if fields["preset"] not in _PRESET_IDS:
        op.report({"ERROR"}, f"SDI: unknown preset '{preset}' (one of {', '.join(_PRESET_IDS)})")
        return None
    if model.strip():
        fields["model"] = model.strip()
    elif not preferences.server_settings(context).model:
        op.report({"ERROR"}, f"SDI: choose the model folder (Model: Local folder) in {wording.PREFERENCES}")
        return None
    fields["export"] = context.scene.sdi.export_fields()
    fields["allow_downloads"] = downloads_allowed()
    return fields


class SDI_OT_continue_job(bpy.types.Operator):
    """Train the selected object's job for more steps (optionally with a new prompt) and update it"""

    bl_idname, bl_label = "sdi.continue_job", "Continue"
    steps: bpy.props.IntProperty(name="Steps", default=0, min=0, description="0: the panel's")
    prompt: bpy.props.StringProperty(name="Prompt", description="Empty: the panel's, else the same")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _job_object(context) is not None and not runtime.controller().running

    def execute(self, context: bpy.types.Context) -> set[str]:
        obj, settings = _job_object(context), context.scene.sdi
        assert obj is not None  # poll checked it
        fields: dict[str, Any] = {
            "job": obj[JOB_KEY],
            "steps": self.steps or settings.continue_steps,
            "export": settings.export_fields(),
            "allow_downloads": downloads_allowed(),
        }
        prompt = self.prompt.strip() or settings.continue_prompt.strip()
        if prompt:
            fields["prompt"] = prompt
        view = ctl.JobView("continue", prompt=prompt or obj.name, target=obj.name)
        return submit(self, view, "continue", **fields)


class SDI_OT_reexport(bpy.types.Operator):
    """Extract the selected object's mesh and texture again with the Advanced settings"""

    bl_idname, bl_label = "sdi.reexport", "Re-export"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _job_object(context) is not None and not runtime.controller().running

    def execute(self, context: bpy.types.Context) -> set[str]:
        obj = _job_object(context)
        assert obj is not None  # poll checked it
        view = ctl.JobView("reexport", prompt=obj.name, target=obj.name)
        return submit(self, view, "export", job=obj[JOB_KEY], **context.scene.sdi.export_fields())


class SDI_OT_cancel(bpy.types.Operator):
    """Stop the running job; the scene stays as it is"""

    bl_idname, bl_label = "sdi.cancel", "Cancel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return runtime.controller().running

    def execute(self, context: bpy.types.Context) -> set[str]:
        runtime.controller().cancel()
        return {"FINISHED"}


class SDI_OT_server_start(bpy.types.Operator):
    """Start the generation server (or connect to the remote one)"""

    bl_idname, bl_label = "sdi.server_start", "Start Server"

    def execute(self, context: bpy.types.Context) -> set[str]:
        c = runtime.controller()
        c.start(preferences.server_settings(context))
        if not runtime.synchronous():
            runtime.ensure_timer()
            return {"FINISHED"}
        ctl.wait_until(c, lambda: c.state in ("ready", "error"))
        if c.state != "ready":
            self.report({"ERROR"}, f"SDI: {c.hint or 'the server did not start'}")
            return {"CANCELLED"}
        return {"FINISHED"}


class SDI_OT_server_stop(bpy.types.Operator):
    """Stop the generation server this add-on started"""

    bl_idname, bl_label = "sdi.server_stop", "Stop Server"

    def execute(self, context: bpy.types.Context) -> set[str]:
        runtime.controller().stop(wait=runtime.synchronous())
        runtime.controller().poll()
        return {"FINISHED"}


class SDI_OT_refresh_jobs(bpy.types.Operator):
    """Ask the server for its jobs"""

    bl_idname, bl_label = "sdi.refresh_jobs", "Refresh Jobs"

    def execute(self, context: bpy.types.Context) -> set[str]:
        c = runtime.controller()
        before = c.jobs
        c.refresh_jobs(preferences.server_settings(context))
        if runtime.synchronous():
            ctl.wait_until(c, lambda: c.jobs is not before or bool(c.notices))
            runtime.fill_history(context.scene)
        else:
            runtime.ensure_timer()
        return {"FINISHED"}


class SDI_OT_import_job(bpy.types.Operator):
    """Import a finished job's object again (exporting it first if it has no mesh)"""

    bl_idname, bl_label = "sdi.import_job", "Import Job"
    job: bpy.props.StringProperty(name="Job")

    def execute(self, context: bpy.types.Context) -> set[str]:
        item = next((i for i in context.scene.sdi.history if i.job == self.job), None)
        if item is None or item.status != "done":
            self.report({"ERROR"}, f"SDI: job '{self.job}' is not a finished job in the list")
            return {"CANCELLED"}
        glb = preferences.server_settings(context).jobs_dir / item.job / mesh_file("glb")
        view = ctl.JobView("import", prompt=item.prompt, job=item.job)
        if glb.is_file():
            return _import(self, view, glb)
        return submit(self, view, "export", job=item.job, **context.scene.sdi.export_fields())


class SDI_OT_import_run(bpy.types.Operator):
    """Import a run folder's exported mesh (what `sdi-blender export --open` calls)"""

    bl_idname, bl_label = "sdi.import_run", "Import SDI Run"
    run_dir: bpy.props.StringProperty(name="Run Folder", subtype="DIR_PATH")

    def execute(self, context: bpy.types.Context) -> set[str]:
        run = Path(bpy.path.abspath(self.run_dir))
        try:
            prompt = json.loads((run / CONFIG).read_text(encoding="utf-8")).get("prompt", "")
        except (OSError, ValueError):
            prompt = run.name
        return _import(self, ctl.JobView("import", prompt=prompt, job=run.name), run / mesh_file("glb"))


def _import(op: bpy.types.Operator, view: ctl.JobView, glb: Path) -> set[str]:
    try:
        op.report({"INFO"}, runtime.import_result(view, glb))
    except importer.ImportFailed as exc:
        op.report({"ERROR"}, f"SDI: {exc}")
        return {"CANCELLED"}
    return {"FINISHED"}


class SDI_OT_check_python(bpy.types.Operator):
    """Check that the server Python can import the server"""

    bl_idname, bl_label = "sdi.check_python", "Check Server Python"

    def execute(self, context: bpy.types.Context) -> set[str]:
        python = preferences.server_python(preferences.get(context))
        try:
            ctl.check_python(python)
            log = tempfile.TemporaryFile()
            proc = subprocess.Popen(
                [python, "-c", "import sdi_blender.server.service.launch"], stdout=subprocess.DEVNULL, stderr=log
            )
        except (ctl.ServerError, OSError) as exc:
            self.report({"ERROR"}, f"SDI: {exc}")
            return {"CANCELLED"}
        if runtime.synchronous():
            proc.wait()
            level, message = _checked(proc, log, python)
            self.report({level}, message)
            return {"FINISHED"} if level == "INFO" else {"CANCELLED"}
        bpy.app.timers.register(lambda: _check_done(proc, log, python), first_interval=0.5)
        return {"FINISHED"}


def _check_done(proc: subprocess.Popen, log: Any, python: str) -> float | None:
    if proc.poll() is None:
        return 0.5
    runtime.notify(*_checked(proc, log, python))
    return None


def _checked(proc: subprocess.Popen, log: Any, python: str) -> runtime.Report:
    log.seek(0)
    lines = log.read().decode(errors="replace").strip().splitlines()
    log.close()
    if proc.returncode == 0:
        return "INFO", f"SDI: {python} can run the server"
    return "ERROR", f"SDI: {python} cannot import the server: {lines[-1] if lines else proc.returncode}"


class SDI_OT_random_seed(bpy.types.Operator):
    """Pick a random seed: another take on the same prompt"""

    bl_idname, bl_label, bl_options = "sdi.random_seed", "Random Seed", {"UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.scene.sdi.seed = random.randrange(2**31 - 1)
        return {"FINISHED"}


class SDI_OT_use_preset(bpy.types.Operator):
    """Choose this Quality, which fits the server's free GPU memory"""

    bl_idname, bl_label, bl_options = "sdi.use_preset", "Use Quality", {"UNDO", "INTERNAL"}
    preset: bpy.props.EnumProperty(items=PRESETS)

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.scene.sdi.preset = self.preset
        return {"FINISHED"}


class SDI_OT_dismiss_error(bpy.types.Operator):
    """Clear the last error from the panel"""

    bl_idname, bl_label, bl_options = "sdi.dismiss_error", "Dismiss", {"INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        runtime.controller().dismiss_error()
        return {"FINISHED"}


class SDI_OT_notify(bpy.types.Operator):
    """Show a message from the server as a Blender report"""

    bl_idname, bl_label, bl_options = "sdi.notify", "SDI Message", {"INTERNAL"}
    level: bpy.props.StringProperty(default="INFO")
    message: bpy.props.StringProperty()

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.report({self.level}, self.message)
        return {"FINISHED"}


CLASSES = (
    SDI_OT_generate,
    SDI_OT_continue_job,
    SDI_OT_reexport,
    SDI_OT_cancel,
    SDI_OT_server_start,
    SDI_OT_server_stop,
    SDI_OT_refresh_jobs,
    SDI_OT_import_job,
    SDI_OT_import_run,
    SDI_OT_check_python,
    SDI_OT_random_seed,
    SDI_OT_use_preset,
    SDI_OT_dismiss_error,
    SDI_OT_notify,
)
