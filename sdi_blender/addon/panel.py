"""The "SDI" tab of the 3D Viewport's sidebar: prompt, progress, refine, history, server."""

from __future__ import annotations

import bpy

from . import runtime
from .controller import Controller
from .properties import JOB_KEY

_STATE_ICONS = {
    "stopped": "RADIOBUT_OFF",
    "starting": "SORTTIME",
    "ready": "CHECKMARK",
    "busy": "RENDER_ANIMATION",
    "error": "ERROR",
}


class _SDIPanel:
    bl_space_type, bl_region_type, bl_category = "VIEW_3D", "UI", "SDI"


class SDI_PT_main(_SDIPanel, bpy.types.Panel):
    """Prompt in, object out."""

    bl_label = "Text to 3D (SDI)"

    def draw(self, context: bpy.types.Context) -> None:
        layout, settings, c = self.layout, context.scene.sdi, runtime.controller()
        col = layout.column()
        col.enabled = not c.running
        col.prop(settings, "prompt", text="")
        col.prop(settings, "negative_prompt")
        col.row().prop(settings, "method", expand=True)
        col.prop(settings, "preset")
        col.prop(settings, "seed")
        if c.running:
            _draw_job(layout, c)
        else:
            layout.operator("sdi.generate", icon="PLAY")
        _draw_server(layout, c)


def _draw_job(layout: bpy.types.UILayout, c: Controller) -> None:
    view = c.job
    assert view is not None  # drawn only while a job runs
    if view.total:
        eta = f", {_duration(view.eta_s)} left" if view.eta_s is not None else ""
        layout.progress(factor=view.step / view.total, type="BAR", text=f"Step {view.step} / {view.total}{eta}")
    else:
        layout.label(text="Exporting…" if view.purpose in ("reexport", "import") else "Starting…", icon="SORTTIME")
    if runtime.preview_icon():
        layout.template_icon(icon_value=runtime.preview_icon(), scale=8.0)
    row = layout.row()
    row.enabled = not view.cancelling
    row.operator("sdi.cancel", icon="CANCEL", text="Cancelling…" if view.cancelling else "Cancel")


def _draw_server(layout: bpy.types.UILayout, c: Controller) -> None:
    box = layout.box()
    row = box.row()
    text = f"Server: {c.state}" + (f" ({c.device})" if c.device and c.state in ("ready", "busy") else "")
    row.label(text=text, icon=_STATE_ICONS[c.state])
    if c.state in ("stopped", "error"):
        row.operator("sdi.server_start", text="", icon="PLAY")
    else:
        row.operator("sdi.server_stop", text="", icon="SNAP_FACE")
    if c.state == "error" and c.hint:
        box.label(text=c.hint, icon="INFO")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {secs:02d}s"


class SDI_PT_advanced(_SDIPanel, bpy.types.Panel):
    """Training and export settings; 0 means "the preset's"."""

    bl_label, bl_parent_id, bl_options = "Advanced", "SDI_PT_main", {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout, settings = self.layout, context.scene.sdi
        layout.use_property_split = True
        for name in ("steps", "resolution", "guidance_scale", "mesh_resolution", "texture_size", "faces"):
            layout.prop(settings, name)


class SDI_PT_refine(_SDIPanel, bpy.types.Panel):
    """Continue or re-export the selected generated object."""

    bl_label = "Refine"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        obj = context.active_object
        return obj is not None and bool(obj.get(JOB_KEY))

    def draw(self, context: bpy.types.Context) -> None:
        layout, settings = self.layout, context.scene.sdi
        layout.enabled = not runtime.controller().running
        layout.label(text=f"Job {context.active_object[JOB_KEY]}", icon="OBJECT_DATA")
        col = layout.column(align=True)
        col.prop(settings, "continue_steps")
        col.prop(settings, "continue_prompt", text="")
        col.operator("sdi.continue_job", icon="FORWARD")
        layout.operator("sdi.reexport", icon="FILE_REFRESH")
        layout.label(text="Re-export uses the Advanced mesh settings")


class SDI_UL_jobs(bpy.types.UIList):
    """One job per row: prompt, status, step."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0) -> None:
        row = layout.row()
        row.label(text=item.prompt or item.job, icon="CHECKMARK" if item.status == "done" else "DOT")
        row.label(text=f"{item.status} · {item.step}")


class SDI_PT_history(_SDIPanel, bpy.types.Panel):
    """Jobs the server knows; import any finished one again."""

    bl_label, bl_options = "Jobs", {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout, settings = self.layout, context.scene.sdi
        row = layout.row()
        row.template_list("SDI_UL_jobs", "", settings, "history", settings, "history_index", rows=4)
        row.operator("sdi.refresh_jobs", text="", icon="FILE_REFRESH")
        if 0 <= settings.history_index < len(settings.history):
            item = settings.history[settings.history_index]
            row = layout.row()
            row.enabled = item.status == "done" and not runtime.controller().running
            row.operator("sdi.import_job", icon="IMPORT").job = item.job


CLASSES = (SDI_UL_jobs, SDI_PT_main, SDI_PT_advanced, SDI_PT_refine, SDI_PT_history)
