"""One task of a ``batch``: train one (prompt, seed) run and export its mesh, wherever Ray puts it.

It runs the trainer and the export that ``generate``, ``export`` and the server run, without their
terminal parts (the step bar and Ctrl-C handling are the driver's business). A task never raises:
whatever fails becomes its :class:`TaskResult`, so one bad run does not stop the others. A worker
process keeps the model it loaded for the next task that needs the same one.

Test hook: ``SDI_BLENDER_BATCH_CRASH=NAME:STEP`` makes the task of run folder NAME kill its worker
(``os._exit``) at step STEP when it starts the run afresh, as a crash or an OOM kill would; its
resumed attempt runs through.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import UserError
from ..diffusion.interface import Prior
from ..export.pipeline import ExportSettings, export_run
from ..training import run_dir
from ..training.plan import GenerateRequest, plan_run
from ..training.priors import load_prior
from ..training.trainer import LossDiverged, Progress, Trainer, TrainerCallbacks
from ..util.devices import is_out_of_memory, resolve_device
from .generate import start_lines
from .reuse import KEEP, RESUME, TRAIN

EXPORT = "export"
"""A task's action when its run is trained and only its mesh is missing."""
CRASH_ENV = "SDI_BLENDER_BATCH_CRASH"
CRASH_EXIT = 17
"""The exit status of a worker the test hook kills."""


@dataclass(frozen=True)
class BatchTask:
    """One run of a batch: what to train, where, and what to do with what is there."""

    name: str
    """The run folder's name, ``<job>-seed<k>``."""
    run: Path
    """The run folder (absolute: a worker's working folder is not the driver's)."""
    prompt: str
    preset: str
    settings: dict[str, Any]
    """Overrides of the preset (method, seed, model, …), as ``generate`` takes them."""
    action: str
    """keep, resume, train (:mod:`.reuse`) or export."""
    export: ExportSettings = field(default_factory=ExportSettings)


@dataclass
class TaskResult:
    """What became of a task; ``batch.json`` lists one per run."""

    name: str
    status: str
    """done, diverged (the loss became NaN: a result, kept) or failed."""
    action: str
    """What the task did: kept, trained, resumed or exported."""
    step: int = 0
    """The step the run stands at."""
    from_step: int = 0
    """The step the trainer started from: its checkpoint's when it resumed."""
    seconds: float = 0.0
    """How long the task took, model loading included."""
    node: str = ""
    """The machine it ran on."""
    device: str = ""
    error: dict[str, str] | None = None
    """code, message and hint of a failure (and a traceback for a bug)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_prior: list[Prior] = []  # the worker's loaded model, reused by its next task


def run_task(task: BatchTask, device_name: str = "auto") -> TaskResult:
    """Do ``task`` (train or resume, then export; or only export) on ``device_name`` (auto: the
    GPU Ray gave the task, else the CPU) and say how it went."""
    start = time.perf_counter()
    result = TaskResult(task.name, "done", did(task.action), node=platform.node())
    try:
        device = resolve_device(device_name)
        result.device = str(device)
        if task.action in (TRAIN, RESUME):
            result.from_step = _train(task, device)
        export_run(task.run, task.export, str(device))
    except LossDiverged as exc:
        result.status, result.error = "diverged", failure(exc)
    except Exception as exc:
        result.status, result.error = "failed", failure(exc)
        mark_interrupted(task.run, result.error["message"])
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the failed trainer's tensors went with the traceback
    result.step = run_dir.read_state(task.run).get("step", 0)
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def did(action: str) -> str:
    """What a task with ``action`` did, in the past tense."""
    return {KEEP: "kept", RESUME: "resumed", TRAIN: "trained", EXPORT: "exported"}[action]


def _train(task: BatchTask, device: torch.device) -> int:
    """Train the run to its end; returns the step the trainer started from (its checkpoint's)."""
    resume = task.action == RESUME
    req = GenerateRequest(
        out=task.run,
        prompt=None if resume else task.prompt,
        resume=resume,
        overwrite=True,
        preset=None if resume else task.preset,
        settings=None if resume else task.settings,
    )
    config, resume = plan_run(req)
    done = run_dir.read_state(task.run).get("step", 0) if resume else 0
    for line in start_lines(config, device, task.run, config.steps - done):
        print(f"[{task.name}] {line}", file=sys.stderr, flush=True)
    prior = _load_prior(config.model, device)
    if not resume:  # only once the model loaded: a missing model leaves no run behind
        run_dir.prepare_new_run(task.run, overwrite=True)
    trainer = Trainer(config, task.run, prior=prior, resume=resume, callbacks=_crash_hook(task.name, resume))
    start = trainer.step
    trainer.run()
    return start


def _load_prior(model: str, device: torch.device) -> Prior:
    if not (_prior and _prior[0].model_id == model and _prior[0].device == device):
        _prior.clear()  # free the old model before loading another
        _prior.append(load_prior(model, device=device))
    return _prior[0]


class _CrashAt(TrainerCallbacks):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_progress(self, progress: Progress) -> None:
        if progress.step >= self.step:
            os._exit(CRASH_EXIT)


def _crash_hook(name: str, resume: bool) -> TrainerCallbacks | None:
    """The test hook's callbacks for this task (see the module doc), if it names it."""
    target, _, step = os.environ.get(CRASH_ENV, "").partition(":")
    return _CrashAt(int(step)) if target == name and not resume else None


def failure(exc: BaseException) -> dict[str, str]:
    """code, message and hint of a task's exception: the user's errors as they are, memory by
    name, anything else ``internal`` with its traceback."""
    if isinstance(exc, UserError):
        return {"code": exc.code, "message": exc.message, "hint": exc.hint}
    if is_out_of_memory(exc):
        message = f"out of memory: {exc}".splitlines()[0]
        return {"code": "out_of_memory", "message": message, "hint": "use a smaller preset or a larger GPU"}
    return {
        "code": "internal",
        "message": f"{type(exc).__name__}: {exc}".splitlines()[0],
        "hint": "a bug: the traceback is in batch.json",
        "traceback": "".join(traceback.format_exception(exc)),
    }


def mark_interrupted(run: Path, message: str) -> None:
    """Record in the run's state that it stopped short (the trainer could not: it still says
    running), so that ``eval`` counts it unfinished; its checkpoint is where a rerun resumes."""
    state = run_dir.read_state(run)
    if state.get("status") == "running":
        run_dir.write_state(run, "interrupted", state.get("step", 0), state.get("total", 0), message)
