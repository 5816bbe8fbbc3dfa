"""The SDI tab's artist workflows: start from the selected mesh or texture it, and variations
side by side with Promote and Discard."""

from __future__ import annotations

import bpy

from . import runtime, variations
from .panel import _SDIPanel


class SDI_PT_selected(_SDIPanel, bpy.types.Panel):
    """Generate from, or texture, the selected mesh with the prompt above."""

    bl_label, bl_parent_id = "From Selection", "SDI_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        layout.enabled = not runtime.controller().running
        obj = context.active_object
        is_mesh = obj is not None and obj.type == "MESH"
        layout.label(text=obj.name if is_mesh else "Select a mesh object", icon="MESH_DATA" if is_mesh else "INFO")
        col = layout.column(align=True)
        col.operator("sdi.generate_from_selected", icon="MOD_REMESH")
        col.operator("sdi.texture_selected", icon="TEXTURE")


class SDI_PT_variations(_SDIPanel, bpy.types.Panel):
    """Seeds at a cheap preset, their turntables side by side; promote one."""

    bl_label, bl_parent_id, bl_options = "Variations", "SDI_PT_main", {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout, settings = self.layout, context.scene.sdi
        busy = runtime.controller().running
        col = layout.column(align=True)
        col.enabled = not busy
        col.prop(settings, "variation_count")
        col.prop(settings, "variation_preset", text="")
        col.prop(settings, "variation_steps")
        col.operator("sdi.variations", icon="RENDERLAYERS")
        if variations.waiting():
            layout.label(text=f"{variations.waiting()} more waiting", icon="SORTTIME")
        grid = layout.grid_flow(columns=2, even_columns=True, align=True)
        for item in settings.variations:
            cell = grid.column(align=True)
            cell.enabled = not busy
            if variations.icon(item.job):
                cell.template_icon(icon_value=variations.icon(item.job), scale=5.0)
            cell.label(text=f"seed {item.seed} · {item.step} steps")
            cell.operator("sdi.promote_variation", icon="FORWARD").job = item.job
            cell.operator("sdi.discard_variations", text="Keep Only This", icon="TRASH").keep = item.job


CLASSES = (SDI_PT_selected, SDI_PT_variations)
