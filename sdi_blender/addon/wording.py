"""What the panel and the reports say, bpy-free: the server's errors in Blender's words, the job's
start line and the status line of whatever the job is doing now.

The server's hints are written for the command line ("pass --model …"). An add-on user sets
things in the panel and the add-on preferences instead, so each error *kind* (its protocol code,
refined by its ``reason``, see :data:`sdi_blender.protocol.ERROR_REASONS`) has its Blender
wording here, in one table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import catalog

if TYPE_CHECKING:  # the controller imports this module
    from .controller import JobView

ONLINE_ACCESS = "Edit ▸ Preferences ▸ System ▸ Network ▸ Allow Online Access"
PREFERENCES = "the SDI add-on preferences (Edit ▸ Preferences ▸ Add-ons ▸ SDI)"

BLENDER_HINTS: dict[tuple[str, str], str] = {
    ("model_unavailable", "offline"): (
        f"Blender's online access is off, so the model is not downloaded: turn on {ONLINE_ACCESS} "
        f"to download it once, or set Model to a local folder in {PREFERENCES}"
    ),
    ("model_unavailable", ""): (
        f"set Model in {PREFERENCES} to a local folder holding the model, or Tiny to check the "
        "install; a download needs the network"
    ),
    ("bad_request", "model"): f"set Model in {PREFERENCES}: one of the listed models, or a local model folder",
    ("out_of_memory", ""): (
        "choose a lower Quality or a smaller Render Size (Advanced ▸ Optimisation), "
        "or close other programs that use the GPU"
    ),
    ("out_of_memory", "export"): "lower Mesh Grid or Texture Size (Advanced ▸ Mesh), then Re-export",
    ("internal", "export"): "try another Mesh Grid or a Face Budget (Advanced ▸ Mesh), then Re-export",
    ("interrupted", ""): "select its object and press Continue (Refine) to resume from its last checkpoint",
    ("not_found", ""): "press Refresh in the Jobs panel",
    ("unauthorized", ""): f"set Token in {PREFERENCES} to the contents of the server's token file",
    ("mesh_too_large", ""): "simplify the selected mesh (e.g. apply a Decimate modifier), then try again",
}
"""Blender's wording by (code, reason); it replaces the server's hint."""

WHEN_NO_HINT: dict[str, str] = {
    "unreachable": f"check Host and Port under Remote Server in {PREFERENCES}, and that the server runs",
    "timeout": "the server is busy or stuck: stop and start it (the server line of the SDI panel)",
}
"""Blender's wording for codes whose own hint, when there is one, says more (a server's last words)."""


def blender_hint(code: str, reason: str, hint: str) -> str:
    """The hint an artist in Blender can act on, for an error of ``code``/``reason``."""
    return BLENDER_HINTS.get((code, reason)) or BLENDER_HINTS.get((code, "")) or hint or WHEN_NO_HINT.get(code, "")


def start_line(started: dict) -> str:
    """A training job's start event as one line: "about 2 min on cpu, 400 steps at 32²"."""
    if started.get("steps") is None:
        return f"on {started.get('device', '?')}"
    size = started["resolution"]
    return f"{started['estimate']} on {started['device']}, {started['steps']} steps at {size}²"


@dataclass
class StatusLine:
    """What the job is doing, as the panel draws it: a text, a bar's fill (None: no bar), and
    whether it is a warning (drawn in red)."""

    text: str
    fraction: float | None = None
    alert: bool = False


def job_status(view: JobView, stall_s: float, now: float | None = None) -> StatusLine:
    """The panel's line for what the followed job does now, from its latest events."""
    if view.phase == "download" and view.download is not None:
        file, done, total = view.download
        return download_line(file, done, total, (now or time.monotonic()) - view.bytes_at, stall_s)
    if view.phase == "loading":
        return StatusLine(f"Loading the model {view.model}…")
    if view.phase == "export":
        return export_line(view.stage, view.stage_fraction)
    if view.phase == "train" and view.total:
        return step_line(view.step, view.total, view.eta_s)
    return StatusLine("Exporting…" if view.purpose in ("reexport", "import") else "Starting…")


def download_line(file: str, done: int, total: int | None, silent_s: float, stall_s: float) -> StatusLine:
    """One file's download; after ``stall_s`` seconds without a byte it is reported stalled."""
    amount = f"{_mb(done)} / {_mb(total)} MB" if total else f"{_mb(done)} MB"
    if silent_s >= stall_s:
        return StatusLine(f"Download stalled: no data for {silent_s:.0f} s ({file})", _fill(done, total), True)
    return StatusLine(f"Downloading {file}: {amount}", _fill(done, total))


def export_line(stage: str, fraction: float | None) -> StatusLine:
    return StatusLine(f"Exporting: {stage.replace('_', ' ')}", fraction)


def step_line(step: int, total: int, eta_s: float | None) -> StatusLine:
    eta = f", {duration(eta_s)} left" if eta_s is not None else ""
    return StatusLine(f"Step {step} / {total}{eta}", step / total)


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {secs:02d}s"


def preset_advice(free_gb: float | None, wanted: str) -> tuple[str, str | None]:
    """A line for under Quality when the chosen preset needs more GPU memory than the server has
    free, and the preset to suggest instead (("", None) when it fits, or off a GPU; None when no
    smaller one exists). The figures are the catalog's."""
    if free_gb is None or wanted not in catalog.PEAK_VRAM_GB:
        return "", None
    better = catalog.suggest_preset(free_gb, wanted)
    if better is None:
        return "", None
    need = f"needs ≈{catalog.PEAK_VRAM_GB[wanted][0]:.0f} GB of GPU memory, {free_gb:.1f} GB free"
    if better == wanted:
        return f"{need}; it may run short", None
    return f"{need}: try {catalog.PRESETS[better].label}", better


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:,.0f}"


def _fill(done: int, total: int | None) -> float | None:
    return min(1.0, done / total) if total else None
