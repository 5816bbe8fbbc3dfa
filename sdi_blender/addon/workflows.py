"""What the artist workflows do with a job's news on the main thread: the live proxy while it
trains, and, once it is done, a result started from a blockout put back where the blockout is,
a texture applied to the object it was made for, or a variation recorded for the panel.

The runtime calls :func:`show_proxy` on every timer tick, :func:`ended` when a job ends however
it ends, and :func:`import_result` for a finished job's mesh (None: a plain import).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
from mathutils import Matrix, Vector

from . import controller as ctl
from . import importer, proxy, texturing, variations

_pending: dict[str, Any] = {"uvs": {}}
"""Per followed job: the new UVs a texture is baked into (``uvs``), for a mesh that had none."""


def remember(job_key: str, uvs: list[float]) -> None:
    """The new UVs a texture job sent from the scene is baked into (keyed by the target object
    name): they become the object's UV map when the texture arrives."""
    _pending["uvs"][job_key] = uvs


def result_matrix(view: ctl.JobView, placement: dict[str, Any] | None) -> Matrix:
    """Where a job's mesh goes: on its blockout (scaled and moved back into the blockout's frame)
    for a run started from one, else at the 3D cursor."""
    target = bpy.data.objects.get(view.target) if view.purpose == "from_selected" else None
    base = target.matrix_world.copy() if target is not None else Matrix.Translation(bpy.context.scene.cursor.location)
    return base @ _placement_matrix(placement)


def show_proxy(view: ctl.JobView | None) -> None:
    """Swap the job's newest proxy mesh into the viewport (once per event)."""
    if view is None or view.proxy is None:
        return
    event, view.proxy = view.proxy, None
    proxy.show(event, result_matrix(view, event.get("placement")))


def ended(outcome: ctl.Outcome) -> None:
    """Any ending: the proxy goes; a variation's queue hears of it."""
    proxy.remove()
    view = outcome.view
    if outcome.status != "done":
        _pending["uvs"].pop(view.target, None)
    if view.purpose in ("variation", "promote"):
        variations.ended(outcome)


def import_result(view: ctl.JobView, glb: Path) -> str | None:
    """A workflow's result applied; None when the job is a plain import."""
    if view.purpose == "texture":
        target = bpy.data.objects.get(view.target)
        if target is None:
            raise importer.ImportFailed(f"the object '{view.target}' is gone; the texture is in {glb.parent}")
        texture = Path(view.files.get("texture", glb.parent / "albedo.png"))
        texturing.apply(target, texture, _pending["uvs"].pop(view.target, None))
        return f"SDI: textured '{target.name}'"
    if view.purpose == "from_selected":
        obj = importer.import_glb(bpy.context, glb, importer.object_name(view.prompt), view.job)
        target = bpy.data.objects.get(view.target)
        if target is not None:  # the glTF importer's is quaternions: the blockout's, as the artist set it
            obj.rotation_mode = target.rotation_mode
        obj.matrix_world = result_matrix(view, None)  # the blockout's transform…
        obj.data.transform(_placement_matrix(view.placement))  # …with the mesh back in its frame
        obj.data.update()
        return f"SDI: imported '{obj.name}' on '{view.target}'"
    return None


def after_replace(obj: bpy.types.Object, view: ctl.JobView) -> None:
    """A continued or re-exported run started from a blockout: its new mesh back in the frame."""
    if view.placement is not None:
        obj.data.transform(_placement_matrix(view.placement))
        obj.data.update()


def _placement_matrix(placement: dict[str, Any] | None) -> Matrix:
    """The placement's scale about the origin, then its move (``protocol.py``: exported)."""
    if placement is None:
        return Matrix.Identity(4)
    return Matrix.Translation(Vector(placement["centre"])) @ Matrix.Scale(float(placement["scale"]), 4)
