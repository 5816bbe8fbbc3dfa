# mypy: disable-error-code="valid-type"
# (Blender declares properties as calls in class annotations, e.g. ``x: bpy.props.IntProperty()``.)
"""What the artist sets in the SDI panel, stored in the scene (``scene.sdi``)."""

from __future__ import annotations

from typing import Any

import bpy

from .. import catalog

JOB_KEY = "sdi_job"
"""Custom property holding the job id on an imported object (kept if the add-on is removed)."""

PRESETS = [(name, p.label, f"{p.description}. {catalog.preset_costs(name)}") for name, p in catalog.PRESETS.items()]
"""The Quality menu: every preset the server has."""
TEXTURE_SIZES = [(str(2**k), f"{2**k} px", "") for k in range(8, 14)]


class SDIJobItem(bpy.types.PropertyGroup):
    """One row of the job history."""

    job: bpy.props.StringProperty(name="Job")
    prompt: bpy.props.StringProperty(name="Prompt")
    status: bpy.props.StringProperty(name="Status")
    step: bpy.props.IntProperty(name="Step")


class SDIVariation(bpy.types.PropertyGroup):
    """One finished variation: its job (kept on the server for Promote) and seed."""

    job: bpy.props.StringProperty(name="Job")
    prompt: bpy.props.StringProperty(name="Prompt")
    seed: bpy.props.IntProperty(name="Seed")
    step: bpy.props.IntProperty(name="Step")


class SDISettings(bpy.types.PropertyGroup):
    """The panel's fields; 0 in an Advanced number means "the preset's value"."""

    prompt: bpy.props.StringProperty(name="Prompt", description="What the object should be, in a few words")
    negative_prompt: bpy.props.StringProperty(
        name="Negative Prompt", description="What it should not look like (optional)"
    )
    method: bpy.props.EnumProperty(
        name="Method",
        default=catalog.DEFAULT_METHOD,
        items=[(m, m.upper(), what) for m, what in catalog.METHODS.items()],
        description="How the 2D model's judgement of each render steers the object",
    )
    preset: bpy.props.EnumProperty(
        name="Quality",
        items=PRESETS,
        default="draft",
        description="How long the object is refined and at what render size: longer is sharper",
    )
    seed: bpy.props.IntProperty(
        name="Seed",
        default=0,
        min=0,
        description="The same seed and settings make the same object; another seed, another take",
    )
    steps: bpy.props.IntProperty(name="Steps", default=0, min=0, description="0: the preset's")
    resolution: bpy.props.IntProperty(
        name="Render Size",
        default=0,
        min=0,
        max=1024,
        step=64,
        description="Render size in pixels, a multiple of 8; 0: the preset's",
    )
    guidance_scale: bpy.props.FloatProperty(
        name="Guidance Scale",
        default=0.0,
        min=0.0,
        max=100.0,
        description="Classifier-free guidance; 0: the preset's (the paper's 7.5, or 0 for the toy world)",
    )
    mesh_resolution: bpy.props.IntProperty(
        name="Mesh Grid",
        default=256,
        min=16,
        max=1024,
        description="Cells per side of the grid the surface is extracted on: finer shows more detail",
    )
    texture_size: bpy.props.EnumProperty(name="Texture Size", items=TEXTURE_SIZES, default="1024")
    faces: bpy.props.IntProperty(
        name="Face Budget", default=0, min=0, description="Decimate to about this many triangles; 0: keep all"
    )
    continue_steps: bpy.props.IntProperty(name="More Steps", default=1000, min=1)
    continue_prompt: bpy.props.StringProperty(name="New Prompt", description="Empty: keep the prompt")
    history: bpy.props.CollectionProperty(type=SDIJobItem)
    variations: bpy.props.CollectionProperty(type=SDIVariation)
    variation_count: bpy.props.IntProperty(
        name="Variations", default=4, min=1, max=catalog.MAX_VARIATIONS, description="Seeds to try, one job each"
    )
    variation_preset: bpy.props.EnumProperty(
        name="Variation Quality",
        items=PRESETS,
        default="draft",
        description="The cheap preset each variation runs at; Promote continues one to the Quality above",
    )
    variation_steps: bpy.props.IntProperty(
        name="Variation Steps", default=0, min=0, description="Steps of each variation; 0: the preset's"
    )
    history_index: bpy.props.IntProperty(default=0)

    def train_fields(self) -> dict[str, Any]:
        """The generate request's training fields (the preset fills what is left out)."""
        fields: dict[str, Any] = {
            "prompt": self.prompt.strip(),
            "method": self.method,
            "preset": self.preset,
            "seed": self.seed,
        }
        if self.guidance_scale:  # else the preset's: a sent value would override the toy world's 0
            fields["guidance_scale"] = self.guidance_scale
        if self.negative_prompt.strip():
            fields["negative_prompt"] = self.negative_prompt.strip()
        if self.steps:
            fields["steps"] = self.steps
        if self.resolution:
            fields["resolution"] = self.resolution
        return fields

    def export_fields(self) -> dict[str, Any]:
        """The export settings: mesh resolution, texture size and face budget, as a GLB."""
        fields = {"resolution": self.mesh_resolution, "texture_size": int(self.texture_size), "format": "glb"}
        if self.faces:
            fields["faces"] = self.faces
        return fields


CLASSES = (SDIJobItem, SDIVariation, SDISettings)


def register() -> None:
    bpy.types.Scene.sdi = bpy.props.PointerProperty(type=SDISettings)


def unregister() -> None:
    del bpy.types.Scene.sdi
