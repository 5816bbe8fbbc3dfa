"""The "SDI" tab of the 3D Viewport's sidebar: prompt, progress, refine, history, server."""

from __future__ import annotations

import textwrap

import bpy

from . import preferences, runtime, wording
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
        col.label(text="Prompt")
        col.prop(settings, "prompt", text="", placeholder="a ripe strawberry")
        col.label(text="Negative Prompt")
        col.prop(settings, "negative_prompt", text="", placeholder="optional: blurry, flat")
        col.row().prop(settings, "method", expand=True)
        col.prop(settings, "preset")
        _draw_preset_advice(col, c, settings.preset)
        row = col.row(align=True)
        row.prop(settings, "seed")
        row.operator("sdi.random_seed", text="", icon="FILE_REFRESH")
        if c.running:
            _draw_job(layout, c, preferences.get(context).stall_seconds)
        else:
            layout.operator("sdi.generate", icon="PLAY")
        _draw_error(layout, c, _text_width(context))
        _draw_server(layout, c)


def _draw_preset_advice(layout: bpy.types.UILayout, c: Controller, preset: str) -> None:
    """Under Quality, when the server's GPU has too little free memory for it (catalog's figures)."""
    advice, better = wording.preset_advice(c.free_gb, preset)
    if not advice:
        return
    row = layout.row()
    row.alert = True
    row.label(text=advice, icon="ERROR")
    if better is not None:
        row.operator("sdi.use_preset", text="Use").preset = better


def _draw_job(layout: bpy.types.UILayout, c: Controller, stall_s: float) -> None:
    view = c.job
    assert view is not None  # drawn only while a job runs
    if view.started:
        layout.label(text=wording.start_line(view.started), icon="TIME")
    line = wording.job_status(view, stall_s)
    row = layout.row()
    row.alert = line.alert
    if line.fraction is not None:
        row.progress(factor=line.fraction, type="BAR", text=line.text)
    else:
        row.label(text=line.text, icon="ERROR" if line.alert else "SORTTIME")
    if runtime.preview_icon():
        layout.template_icon(icon_value=runtime.preview_icon(), scale=8.0)
    row = layout.row(align=True)
    row.enabled = not view.cancelling
    row.operator("sdi.cancel", icon="CANCEL", text="Cancelling…" if view.cancelling else "Cancel")
    if view.purpose in ("generate", "continue", "from_selected", "promote"):
        row.operator("sdi.stop_keep", icon="CHECKMARK")


def _draw_error(layout: bpy.types.UILayout, c: Controller, width: int) -> None:
    """The last error, wrapped to the sidebar's width, until its X clears it."""
    if c.last_error is None:
        return
    message, hint = c.last_error
    box = layout.box()
    row = box.row()
    row.alert = True
    row.label(text="Last error", icon="ERROR")
    row.operator("sdi.dismiss_error", text="", icon="X", emboss=False)
    col = box.column(align=True)
    for line in textwrap.wrap(message, width) + textwrap.wrap(hint, width):
        col.label(text=line)


def _text_width(context: bpy.types.Context) -> int:
    """Characters that fit on a line of the sidebar (a guess from its pixel width; 40 without one)."""
    region = getattr(context, "region", None)
    if region is None or region.width <= 1:
        return 40
    return max(16, int(region.width / (7.0 * context.preferences.system.ui_scale)))


def _draw_server(layout: bpy.types.UILayout, c: Controller) -> None:
    box = layout.box()
    row = box.row()
    text = f"Server: {c.state}" + (f" ({c.device})" if c.device and c.state in ("ready", "busy") else "")
    row.label(text=text, icon=_STATE_ICONS[c.state])
    if c.state in ("stopped", "error"):
        row.operator("sdi.server_start", text="Start", icon="PLAY")
    else:
        row.operator("sdi.server_stop", text="Stop", icon="SNAP_FACE")
    if c.state == "error" and c.hint:
        box.label(text=c.hint, icon="INFO")


class SDI_PT_advanced(_SDIPanel, bpy.types.Panel):
    """Training and export settings; 0 means "the preset's"."""

    bl_label, bl_parent_id, bl_options = "Advanced", "SDI_PT_main", {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout, settings = self.layout, context.scene.sdi
        layout.use_property_split = True
        for heading, names in (
            ("Optimisation", ("steps", "resolution", "guidance_scale")),
            ("Mesh", ("mesh_resolution", "texture_size", "faces")),
        ):
            col = layout.column(align=True)
            col.label(text=heading)
            for name in names:
                col.prop(settings, name)


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
