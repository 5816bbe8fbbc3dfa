"""What a running job tells its subscribers, as protocol job events: its start line, the model
loading (and downloading), training progress and previews, and the export's stages.

Downloads and export stages report far more often than a client needs: :class:`Throttle` lets
through each new file or stage, its end, and otherwise one report per :data:`REPORT_EVERY_S`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from ... import catalog
from ...protocol import job_event
from ..training.trainer import Progress, TrainerCallbacks

Emit = Callable[[str, dict[str, Any]], None]
REPORT_EVERY_S = 0.25
"""Within one download file or export stage, at most one event per this many seconds."""


class Throttle:
    """Whether a report about ``key`` may go out now: a new key or a final report always may."""

    def __init__(self, every_s: float = REPORT_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self._key: object = None
        self._last = float("-inf")

    def ready(self, key: object, final: bool = False) -> bool:
        now = self.clock()
        if key != self._key or final or now - self._last >= self.every_s:
            self._key, self._last = key, now
            return True
        return False


class JobEvents(TrainerCallbacks):
    """One job's events; the trainer's callbacks among them. ``on_step(step)`` keeps the job's
    live step."""

    def __init__(self, job: str, emit: Emit, on_step: Callable[[int], None] = lambda step: None) -> None:
        self.job, self.emit, self.on_step = job, emit, on_step
        self._downloads, self._stages = Throttle(), Throttle()

    def started(self, kind: str, device: Any, run: str, config: Any = None, steps_to_run: int | None = None) -> None:
        """The start line: what runs where, and (training) what it will cost by the catalog's estimate."""
        fields: dict[str, Any] = dict(model=None, preset=None, steps=None, resolution=None, estimate=None)
        if config is not None:
            to_run = config.steps if steps_to_run is None else steps_to_run
            fields = {
                "model": config.model,
                "preset": config.preset,
                "steps": to_run,
                "resolution": config.resolution,
                "estimate": catalog.estimate(config.preset, device.type, config.model, to_run, detail=False),
            }
        self.emit(self.job, job_event("started", self.job, kind=kind, device=str(device), run=run, **fields))

    def loading(self, model: str) -> None:
        self.emit(self.job, job_event("loading", self.job, model=model))

    def download(self, model: str) -> Callable[[str, int, int | None], None]:
        """A download-progress callback (``hub.DownloadPolicy.progress``) for ``model``."""

        def progress(file: str, done: int, total: int | None) -> None:
            if self._downloads.ready(file, final=total is not None and done >= total):
                self.emit(self.job, job_event("download", self.job, model=model, file=file, done=done, total=total))

        return progress

    def export_stage(self, stage: str, fraction: float | None) -> None:
        if self._stages.ready(stage, final=fraction is not None and fraction >= 1.0):
            fraction = None if fraction is None else round(float(fraction), 4)
            self.emit(self.job, job_event("export_stage", self.job, stage=stage, fraction=fraction))

    # -- the trainer's callbacks ----------------------------------------------------------
    def on_notice(self, step: int, message: str) -> None:
        super().on_notice(step, message)  # the server's log too
        self.emit(self.job, job_event("warning", self.job, step=step, message=message))

    def on_progress(self, p: Progress) -> None:
        self.on_step(p.step)
        self.emit(
            self.job,
            job_event(
                "progress",
                self.job,
                step=p.step,
                total=p.total,
                t=p.t,
                loss=p.losses["total"],
                elapsed_s=round(p.elapsed_s, 3),
                eta_s=round(p.eta_s, 3),
                time=time.time(),
            ),
        )

    def on_preview(self, step: int, png: bytes) -> None:
        self.emit(self.job, job_event("preview", self.job, step=step, png=base64.b64encode(png).decode("ascii")))
