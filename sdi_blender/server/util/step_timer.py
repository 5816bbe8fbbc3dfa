"""Optional per-stage timing of training steps, for benchmarks.

The trainer and :class:`~sdi_blender.server.diffusion.guidance.ScoreDistillation` wrap their stages in
``stage("render")``, ``stage("inversion")`` and so on. By default ``stage`` is :func:`no_stage`,
which does nothing. A :class:`StepTimer` records each stage's start and end without ever waiting
for the device: on CUDA it records CUDA events in the stream (the GPU timestamps them when it gets
there), elsewhere it reads ``time.perf_counter``. Only :meth:`StepTimer.results` synchronises,
once, when a benchmark reads the numbers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

StageHook = Callable[[str], AbstractContextManager[Any]]
"""``stage(name)`` returns a context manager that times the code inside it as stage ``name``."""


def no_stage(name: str) -> AbstractContextManager[Any]:
    """The default :data:`StageHook`: times nothing."""
    return nullcontext()


@contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall-clock seconds the body takes to ``seconds[name]`` (a one-off stage, e.g. of an export)."""
    start = time.perf_counter()
    yield
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start


class StepTimer:
    """Per-step stage durations, recorded without host-device synchronisation.

    Use ``with timer.step():`` around one step and ``with timer.stage(name):`` (or
    :meth:`begin` / :meth:`end`, for intervals that autograd hooks delimit) inside it. A stage
    entered several times in one step adds up. :meth:`results` returns one ``{stage: ms}``
    per step, ``"step"`` being the whole step.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._steps: list[list[tuple[str, Any, Any]]] = []
        self._open: dict[str, Any] = {}

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()  # on the current stream: no wait
            return event
        return time.perf_counter()

    def begin(self, name: str) -> None:
        """Start stage ``name`` in the current step."""
        if not self._steps:
            self._steps.append([])
        self._open[name] = self._now()

    def end(self, name: str) -> None:
        """End stage ``name``; ignored if it was not begun (e.g. a hook that never fired)."""
        start = self._open.pop(name, None)
        if start is not None:
            self._steps[-1].append((name, start, self._now()))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body as stage ``name`` (this method is a :data:`StageHook`)."""
        self.begin(name)
        try:
            yield
        finally:
            self.end(name)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Time the body as one step (stage ``"step"``); stages inside it belong to it."""
        self._steps.append([])
        with self.stage("step"):
            yield

    def results(self) -> list[dict[str, float]]:
        """Milliseconds per stage for each recorded step (synchronises the device once)."""
        if self.cuda:
            torch.cuda.synchronize()
        out = []
        for records in self._steps:
            ms: dict[str, float] = {}
            for name, start, end in records:
                ms[name] = ms.get(name, 0.0) + self._elapsed_ms(start, end)
            out.append(ms)
        return out

    def reset(self) -> None:
        """Forget the recorded steps (e.g. after a warm-up)."""
        self._steps.clear()
        self._open.clear()

    def _elapsed_ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0


STEP_PARTS: dict[str, tuple[str, ...]] = {
    "render": ("grid", "render", "render_backward"),
    "vae": ("vae", "vae_backward"),
    "inversion": ("inversion",),
    "prediction": ("prediction",),
    "update": ("update",),
}
"""How the trainer's stages add up to the parts of a step that benchmarks report: the render
(occupancy-grid update, forward and backward), the VAE encoder (forward and backward), SDI's
inversion, the final guided prediction and the Adam update. The rest of the step (camera
sampling, regularisers, Python) is reported as ``"other"``."""


def step_parts(ms: dict[str, float]) -> dict[str, float]:
    """One step's stage times grouped into :data:`STEP_PARTS`, plus ``other`` and ``step``."""
    parts = {name: sum(ms.get(s, 0.0) for s in stages) for name, stages in STEP_PARTS.items()}
    parts["other"] = ms["step"] - sum(parts.values())
    parts["step"] = ms["step"]
    return parts


def summarise(steps: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median and mean milliseconds of each part over ``steps`` (from :meth:`StepTimer.results`)."""
    parts = [step_parts(ms) for ms in steps]
    names = list(parts[0])
    return {
        "median_ms": {k: statistics.median(p[k] for p in parts) for k in names},
        "mean_ms": {k: statistics.fmean(p[k] for p in parts) for k in names},
    }


class Pace:
    """Elapsed time and an ETA for a run of steps that ignores the warm-up.

    The first steps of a run load kernels, allocate memory and fill caches (on CPU the first
    step alone can take as long as ten others), so the rate is measured from the end of step
    ``warmup`` on; until then the ETA uses the rate so far.
    """

    def __init__(self, first_step: int, warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock, self.first, self.warmup = clock, first_step, warmup
        self.start = clock()
        self._after_warmup: tuple[float, int] | None = None

    def update(self, step: int, total: int) -> tuple[float, float]:
        """(elapsed seconds, estimated seconds left) once ``step`` is done."""
        now = self.clock()
        if self._after_warmup is None and step - self.first >= self.warmup:
            self._after_warmup = (now, step)
        since, done = self._after_warmup or (self.start, self.first)
        if step <= done:  # the warm-up just ended: no steady step measured yet
            since, done = self.start, self.first
        rate = (now - since) / max(step - done, 1)
        return now - self.start, rate * max(total - step, 0)
