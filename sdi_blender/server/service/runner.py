"""Running one job's task on one device, emitting its events, keeping the loaded model between tasks.

One code path for both backends: the local worker (:class:`~.jobs.JobManager`, a
:class:`JobRunner` itself, runs tasks in its worker thread) and each Ray actor
(:mod:`.ray_pool`, which holds a :class:`JobRunner` of its own). :meth:`JobRunner.run` emits
every event of a task but its terminal one (done, cancelled or the error): ending a job is the
queue's bookkeeping (:meth:`~.jobs.JobManager.end`), done where the queue lives.

A :class:`Backend` is where the queue's tasks run: :class:`LocalWorker` (one at a time, in the
queue's own worker thread) or :class:`~.ray_pool.RayPool` (one per Ray actor, in parallel).
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ...errors import UserError
from ...protocol import error_event, job_event
from ..diffusion.hub import DownloadCancelled, DownloadPolicy, download_policy
from ..export.child import ExportCancelled, export_in_child
from ..export.pipeline import ExportSettings, export_run
from ..scene.renderer import official_level
from ..training import run_dir
from ..training.config import TrainConfig
from ..training.init_mesh import placement
from ..training.priors import load_prior
from ..training.trainer import Trainer
from ..util.devices import is_out_of_memory
from . import texture_job
from .events import Emit, JobEvents
from .job_files import LOG_FILE, Job, best_effort, end_run
from .proxy import ProxyCallbacks

if TYPE_CHECKING:
    from .jobs import JobManager

_log = logging.getLogger("sdi_blender.server")
_OOM_HINT = "lower the preset or the resolution, or close other programs that use the GPU"
_HOST_OOM_HINT = "lower the resolution or the texture size, or close other programs"
_DISK_HINT = "free disk space or check the jobs folder's permissions, then continue the job"
Outcome = tuple[str, dict[str, Any] | None]
"""How a task ended: its status, and its error event when it failed."""


@dataclass
class Task:
    """A planned job run: what to train and/or export. Picklable but for ``job.cancel`` (see
    :func:`~.ray_pool.portable`)."""

    job: Job
    config: TrainConfig | None = None  # generate / continue
    resume: bool = False
    export: ExportSettings | None = None  # export, or generate's export afterwards
    allow_downloads: bool = True  # False: the model from local files only (Blender's Online Access off)
    texture: Any = None  # a texture job's TexturePlan (service/texture_job.py): its mesh, trained then baked


class Backend(Protocol):
    """Where the queue's tasks run. ``submit`` is only called while fewer than ``slots`` of its
    tasks run; each task ends with :meth:`~.jobs.JobManager.end` (called by the backend)."""

    slots: int

    def submit(self, task: Task) -> None:
        """Run ``task`` (the local worker: now, in the caller's thread; Ray: on a free actor)."""

    def cancel(self, job: Job) -> None:
        """Ask the job's running task to stop (``job.cancel`` is already set)."""

    def loaded_model(self) -> str | None:
        """The model id a worker holds loaded, for ``status``."""

    def shutdown(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the cancelled running tasks to end, then free the workers."""


class LocalWorker:
    """The queue's own worker thread runs each task itself: one at a time, the model kept in the manager."""

    slots = 1

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    def submit(self, task: Task) -> None:
        self.manager.end(task.job, *self.manager.run(task))

    def cancel(self, job: Job) -> None:
        pass  # the trainer polls job.cancel itself

    def loaded_model(self) -> str | None:
        return getattr(self.manager.prior, "model_id", None)

    def shutdown(self, timeout: float) -> None:
        pass  # the worker thread, joined by the manager, was the only one


class JobRunner:
    """Runs tasks one after another on ``device``; ``emit(job_id, event)`` sends their events."""

    def __init__(
        self,
        emit: Emit,
        *,
        device: torch.device,
        trainer_factory: Callable[..., Any] = Trainer,
        prior_factory: Callable[..., Any] = load_prior,
        export_fn: Callable[..., Any] = export_run,
    ) -> None:
        self.emit, self.device = emit, device
        self._trainer_factory, self._prior_factory, self._export_fn = trainer_factory, prior_factory, export_fn
        self.prior: Any = None
        self.keep: set[str] = set()
        """Running jobs asked to stop training and export what they have (they end done)."""

    def run(self, task: Task) -> Outcome:
        """Run ``task``, emitting its events but the terminal one; never raises."""
        job, status, failure = task.job, "failed", None
        events = JobEvents(job.id, self.emit, on_step=lambda step: setattr(job, "step", step))
        try:
            self._start(task, events)
            status = self._run_task(task, events)
        except Exception as exc:
            failure = self._failure(job, exc)
        if failure is not None:
            self._release_memory()  # the failed trainer's tensors went with the traceback
            self.log(job, f"failed: {failure['code']}: {failure['message']}")
            best_effort(end_run, job.dir, "failed", failure["message"])
        return status, failure

    def log(self, job: Job, text: str) -> None:
        """A line in the job's job.log, and its first line on the server's log."""
        _log.info("%s: %s", job.id, text.splitlines()[0][:200] if text else "")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(job.dir / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {text.rstrip()}\n")
        except OSError:
            pass  # a deleted folder or a full disk must not stop the job itself

    def _failure(self, job: Job, exc: Exception) -> dict[str, Any]:
        """The error event of a job that raised ``exc``: the user's errors as they are, memory and
        disk by name, anything else ``internal`` with its traceback in job.log."""
        if isinstance(exc, UserError):
            return error_event(exc.code, exc.message, exc.hint, job=job.id, reason=getattr(exc, "reason", ""))
        if is_out_of_memory(exc):
            on_gpu = isinstance(exc, torch.cuda.OutOfMemoryError)
            message = f"out of memory: {exc}".splitlines()[0] if on_gpu else "the host ran out of memory"
            return error_event("out_of_memory", message, _OOM_HINT if on_gpu else _HOST_OOM_HINT, job=job.id)
        self.log(job, traceback.format_exc())
        if isinstance(exc, OSError):  # e.g. a full disk or a folder turned read-only mid-job
            return error_event("internal", f"cannot write the job's files: {exc}", _DISK_HINT, job=job.id)
        return error_event("internal", f"{type(exc).__name__}: {exc}", "see job.log", job=job.id)

    def _start(self, task: Task, events: JobEvents) -> None:
        """The started event: for training, the steps still to run and what they will cost."""
        job, config = task.job, task.config
        to_run = None
        if config is not None:
            to_run = config.steps - (run_dir.read_state(job.dir).get("step", 0) if task.resume else 0)
        events.started(job.kind, self.device, str(job.dir), config, to_run)
        self.log(job, f"started {job.kind}")

    def _run_task(self, task: Task, events: JobEvents) -> str:
        if task.config is not None and self._train(task, events) == "cancelled" and not self._kept(task):
            return "cancelled"
        return self._export(task.job, task.export, events, task.texture) if task.export is not None else "done"

    def _kept(self, task: Task) -> bool:
        """Whether a stopped job was stopped to keep what it has: then it exports that."""
        kept = task.job.id in self.keep and not task.job.cancel.is_set()
        self.keep.discard(task.job.id)
        if kept and task.export is None:
            task.export = ExportSettings()
        return kept

    def _train(self, task: Task, events: JobEvents) -> str:
        assert task.config is not None  # only training tasks come here
        try:
            prior = self._load_prior(task.config.model, events, task.allow_downloads, task.job.cancel.is_set)
        except DownloadCancelled:
            return "cancelled"
        if task.job.cancel.is_set():  # cancelled while the model loaded
            return "cancelled"
        job = task.job
        if not task.resume:  # only once the model loaded: a missing model leaves no run behind
            texture_job.prepare(task.texture, job.dir)
        factory = texture_job.trainer_factory(task.texture) if task.texture is not None else self._trainer_factory
        cfg = task.config
        level = official_level(cfg.field.radius, cfg.renderer.num_samples_per_ray)
        proxies = ProxyCallbacks(events, job.id, self.emit, cfg.field.radius, placement(cfg.init_mesh), official=level)
        with proxies as callbacks:
            trainer = factory(task.config, job.dir, prior=prior, callbacks=callbacks, resume=task.resume)
            return trainer.run(lambda: job.cancel.is_set() or job.id in self.keep).status

    def _export(self, job: Job, settings: ExportSettings, events: JobEvents, texture: Any = None) -> str:
        export_fn = self._export_fn if texture is None else texture_job.bake_export
        try:  # in a child process: a crash in native code must not take the server down
            result = export_in_child(
                job.dir, settings, str(self.device), job.cancel, export_fn, on_stage=events.export_stage
            )
        except ExportCancelled:
            return "cancelled"  # the export keeps the previous one on any exception
        files = {kind: str(path) for kind, path in result.files.items()}
        self.emit(
            job.id,
            job_event(
                "exported",
                job.id,
                files=files,
                vertices=result.info.get("vertices"),
                faces=result.info.get("faces"),
                **texture_job.placement_field(job.dir),
            ),
        )
        self.log(job, f"exported {files}")
        return "done"

    def _load_prior(self, model: str, events: JobEvents, allow_downloads: bool, cancelled: Callable[[], bool]) -> Any:
        """The loaded model, (re)loading it when the job asks for another one; downloads (if
        allowed) report their bytes and stop on cancel."""
        if self.prior is not None and self.prior.model_id != model:
            self.prior = None  # free the old model before loading the new one
            self._release_memory()
        if self.prior is None:
            events.loading(model)
            policy = DownloadPolicy(allow=allow_downloads, progress=events.download(model), cancelled=cancelled)
            with download_policy(policy):
                self.prior = self._prior_factory(model, device=self.device)
        return self.prior

    def _release_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
