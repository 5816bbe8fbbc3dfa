"""Variations: one prompt at a cheap preset with several seeds, one job after another; their
turntables side by side in the panel; Promote trains the chosen one on to the Quality preset
(the ordinary continue), Discard deletes the others.

The seeds wait here and go to the server one at a time, as each job ends (the controller follows
one job): cancelling one, or any failure, drops the seeds still waiting. Each finished variation
is a row of ``scene.sdi.variations`` with its turntable (``turntable.png`` of its run folder, or
its last preview) as an icon.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
import bpy.utils.previews

from .. import catalog
from . import controller as ctl
from . import preferences

_state: dict[str, Any] = {"queue": [], "icons": None, "icon_ids": {}, "seed": None}


def start(fields: dict[str, Any], seeds: list[int]) -> tuple[str, str] | None:
    """Queue one generate per seed (``fields`` without the seed) and send the first; the report
    of the last one in background mode, where each job is waited for."""
    _state["queue"] = [{**fields, "seed": seed} for seed in seeds]
    report = None
    while _state["queue"]:
        report = submit_next()
        if report is None or report[0] == "ERROR":  # interactive: the timer sends the rest
            break
    return report


def submit_next() -> tuple[str, str] | None:
    """Send the next waiting seed (the runtime calls this when the followed job has ended)."""
    from . import runtime

    if not _state["queue"] or runtime.controller().running:
        return None
    fields = _state["queue"].pop(0)
    _state["seed"] = fields["seed"]
    return runtime.submit(ctl.JobView("variation", prompt=fields["prompt"]), "generate", **fields)


def waiting() -> int:
    """Seeds not sent yet."""
    return len(_state["queue"])


def ended(outcome: ctl.Outcome) -> None:
    """A variation or a promotion ended: a failed or cancelled variation drops the queue."""
    view = outcome.view
    if outcome.status != "done" and view.purpose == "variation":
        _state["queue"] = []
    for item in bpy.context.scene.sdi.variations if view.purpose == "promote" else ():
        if item.job == view.job:
            item.step = max(item.step, view.step)  # promoted: trained on


def finished(view: ctl.JobView) -> str:
    """Record a finished variation (its row and icon); the job keeps its run for Promote."""
    item = bpy.context.scene.sdi.variations.add()
    item.job, item.prompt, item.seed, item.step = view.job, view.prompt, _state["seed"] or 0, view.step
    load_icon(item.job, view.preview)
    return f"SDI: variation seed {item.seed} done ({waiting()} to go)"


def load_icon(job: str, preview: bytes | None) -> int:
    """The variation's turntable as an icon (0 when there is no picture)."""
    icons = _state["icons"] or bpy.utils.previews.new()
    _state["icons"] = icons
    path = preferences.server_settings().jobs_dir / job / catalog.TURNTABLE
    if not path.is_file() and preview is not None:  # a remote server: the last preview instead
        path = Path(bpy.app.tempdir or "/tmp") / f"sdi-variation-{job}.png"
        path.write_bytes(preview)
    if not path.is_file():
        return 0
    if job in icons:
        del icons[job]
    image = icons.load(job, str(path), "IMAGE")
    image.image_size[:]  # read the file now
    _state["icon_ids"][job] = image.icon_id
    return image.icon_id


def icon(job: str) -> int:
    return _state["icon_ids"].get(job, 0)


def promote_steps(settings: Any, done: int) -> int:
    """Steps that take a variation at ``done`` steps to the Quality preset's (or Advanced ›
    Steps') length; More Steps when it is there already."""
    target = settings.steps or catalog.PRESETS[settings.preset].steps
    return target - done if target > done else settings.continue_steps


def discard_others(scene: bpy.types.Scene, keep: str) -> list[str]:
    """Delete every variation job but ``keep`` on the server, and their rows; returns their ids."""
    from . import runtime

    items = scene.sdi.variations
    gone = [item.job for item in items if item.job != keep]
    for job in gone:
        runtime.controller().request(preferences.server_settings(), "delete_job", job=job)
        _state["icon_ids"].pop(job, None)
    for index in reversed([i for i, item in enumerate(items) if item.job != keep]):
        items.remove(index)
    return gone


def shutdown() -> None:
    if _state["icons"] is not None:
        bpy.utils.previews.remove(_state["icons"])
    _state.update(icons=None, icon_ids={}, queue=[])
