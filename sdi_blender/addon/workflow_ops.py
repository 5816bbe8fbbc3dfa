# mypy: disable-error-code="valid-type"
# (Blender declares properties as calls in class annotations, e.g. ``x: bpy.props.IntProperty()``.)
"""The artist workflows' operators: Generate from Selected, Texture Selected, Stop and Keep,
Variations, Promote and Discard.

A bad selection or setting is one error report and changes nothing in the scene; results are
applied when their job ends (``workflows.py``), as Generate's are.
"""

from __future__ import annotations

from typing import Any, cast

import bpy

from ..protocol import REQUESTS, ProtocolError, mesh_data
from . import controller as ctl
from . import runtime, selection, variations, workflows
from .operators import downloads_allowed, generate_fields, submit


def _idle(context: bpy.types.Context) -> bool:
    return not runtime.controller().running


def _mesh_data(op: bpy.types.Operator, obj: bpy.types.Object, raw: bytes) -> dict[str, Any] | None:
    """The mesh as a request carries it, or None after reporting that it is too large to send."""
    try:
        return mesh_data(raw, "obj")
    except ProtocolError as exc:
        op.report({"ERROR"}, f"SDI: '{obj.name}' cannot be sent: {exc}; simplify it (e.g. a Decimate modifier)")
        return None


def _selected(op: bpy.types.Operator, context: bpy.types.Context) -> bpy.types.Object | None:
    obj, why = selection.selected_mesh(context)
    if obj is None:
        op.report({"ERROR"}, f"SDI: {why}")
    return obj


class _OnSelected:
    """What the operators on the selected mesh share: a prompt and a preset (empty: the panel's),
    offered only while no job runs, and the check of the selection and the fields."""

    prompt: bpy.props.StringProperty(name="Prompt", description="Empty: the panel's", options={"SKIP_SAVE"})
    preset: bpy.props.StringProperty(name="Preset", description="Empty: the panel's", options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _idle(context)

    def _start(self, context: bpy.types.Context) -> tuple[bpy.types.Object, dict[str, Any]] | None:
        """(the selected mesh, the request's fields), or None once the problem was reported."""
        op = cast(bpy.types.Operator, self)
        obj = _selected(op, context)
        fields = generate_fields(op, context, self.prompt, self.preset) if obj is not None else None
        return None if obj is None or fields is None else (obj, fields)


class SDI_OT_generate_from_selected(_OnSelected, bpy.types.Operator):
    """Generate from the prompt, starting from the selected mesh's shape (a blockout); the result
    takes the blockout's place"""

    bl_idname, bl_label = "sdi.generate_from_selected", "Generate from Selected"

    def execute(self, context: bpy.types.Context) -> set[str]:
        started = self._start(context)
        if started is None:
            return {"CANCELLED"}
        obj, fields = started
        try:  # with its modifiers: the shape the artist sees
            sent = _mesh_data(self, obj, selection.obj_bytes(selection.evaluated_mesh(context, obj)))
        finally:
            obj.evaluated_get(context.evaluated_depsgraph_get()).to_mesh_clear()
        if sent is None:
            return {"CANCELLED"}
        view = ctl.JobView("from_selected", prompt=fields["prompt"], target=obj.name)
        return submit(self, view, "generate", **fields, init_mesh_data=sent)


class SDI_OT_texture_selected(_OnSelected, bpy.types.Operator):
    """Paint the selected mesh from the prompt, keeping its geometry: a baked image texture in its
    own UVs (a Smart UV Project when it has none)"""

    bl_idname, bl_label, bl_options = "sdi.texture_selected", "Texture Selected", {"REGISTER", "UNDO"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        started = self._start(context)
        if started is None:
            return {"CANCELLED"}
        obj, fields = started
        uvs, new = selection.loop_uvs(obj)
        sent = _mesh_data(self, obj, selection.obj_bytes(obj.data, uvs))
        if sent is None:
            return {"CANCELLED"}
        if new:
            workflows.remember(obj.name, uvs)
        request: dict[str, Any] = {k: v for k, v in fields.items() if k in REQUESTS["texture"]}
        request["texture_size"] = fields["export"]["texture_size"]
        view = ctl.JobView("texture", prompt=fields["prompt"], target=obj.name)
        return submit(self, view, "texture", **request, mesh_data=sent)


class SDI_OT_stop_keep(bpy.types.Operator):
    """Stop training now and import the object as it is (it can be continued later)"""

    bl_idname, bl_label = "sdi.stop_keep", "Stop and Keep"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        view = runtime.controller().job
        return view is not None and view.purpose in ("generate", "continue", "from_selected", "promote")

    def execute(self, context: bpy.types.Context) -> set[str]:
        runtime.controller().cancel(keep=True)
        return {"FINISHED"}


class SDI_OT_variations(bpy.types.Operator):
    """Try the prompt with several seeds at the cheap Variation Quality, one job after another"""

    bl_idname, bl_label = "sdi.variations", "Variations"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _idle(context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.sdi
        fields = generate_fields(self, context, preset=settings.variation_preset)
        if fields is None:
            return {"CANCELLED"}
        del fields["export"]  # a turntable is enough to choose; the promoted one gets its mesh
        fields.pop("steps", None)
        if settings.variation_steps:
            fields["steps"] = settings.variation_steps
        seeds = list(range(settings.seed, settings.seed + settings.variation_count))
        report = variations.start(fields, seeds)
        if report is None:
            self.report({"INFO"}, f"SDI: {len(seeds)} variations queued")
            return {"FINISHED"}
        self.report({report[0]}, report[1])
        return {"FINISHED"} if report[0] == "INFO" else {"CANCELLED"}


def _variation(op: bpy.types.Operator, context: bpy.types.Context, job: str) -> Any:
    item = next((i for i in context.scene.sdi.variations if i.job == job), None)
    if item is None:
        op.report({"ERROR"}, f"SDI: '{job}' is not one of the variations")
    return item


class SDI_OT_promote_variation(bpy.types.Operator):
    """Train this variation on to the Quality preset and import it"""

    bl_idname, bl_label = "sdi.promote_variation", "Promote"
    job: bpy.props.StringProperty(name="Job")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return _idle(context)

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings, item = context.scene.sdi, _variation(self, context, self.job)
        if item is None:
            return {"CANCELLED"}
        fields = {
            "job": item.job,
            "steps": variations.promote_steps(settings, item.step),
            "export": settings.export_fields(),
            "allow_downloads": downloads_allowed(),
        }
        return submit(self, ctl.JobView("promote", prompt=item.prompt, job=item.job), "continue", **fields)


class SDI_OT_discard_variations(bpy.types.Operator):
    """Delete the other variations' jobs and keep this one"""

    bl_idname, bl_label = "sdi.discard_variations", "Discard Others"
    keep: bpy.props.StringProperty(name="Keep")

    def execute(self, context: bpy.types.Context) -> set[str]:
        if _variation(self, context, self.keep) is None:
            return {"CANCELLED"}
        gone = variations.discard_others(context.scene, self.keep)
        self.report({"INFO"}, f"SDI: discarded {len(gone)} variation(s)")
        return {"FINISHED"}


CLASSES = (
    SDI_OT_generate_from_selected,
    SDI_OT_texture_selected,
    SDI_OT_stop_keep,
    SDI_OT_variations,
    SDI_OT_promote_variation,
    SDI_OT_discard_variations,
)
