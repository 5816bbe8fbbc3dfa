"""The server's job queue: one worker thread runs generate, continue and export jobs in turn.

A job is a run folder ``<jobs-dir>/<job-id>/`` (what the trainer writes) plus ``job.json``
(id, kind, request, status, created, error) and ``job.log``. ``continue`` and ``export``
act on an existing job, so a job id names one run for its whole life. Events go out
through the ``emit(job_id, event)`` callback; the loaded model is kept between jobs.
How a task runs is :mod:`.runner`'s (shared with the Ray actors of ``serve --ray``); where it
runs is the manager's backend: its own worker thread (default) or a :class:`~.ray_pool.RayPool`.

Statuses: queued, running, done, cancelled, failed, interrupted (the server stopped while
the job was queued or running; found on start-up; ``continue`` resumes it).
"""

from __future__ import annotations

import builtins
import json
import logging
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...errors import UserError
from ...protocol import MESH_FIELDS, REQUESTS, job_event
from ..diffusion.model_source import check_model_name, check_remote_model
from ..export.pipeline import ExportSettings, export_run
from ..training import run_dir
from ..training.init_mesh import plan_init_mesh
from ..training.plan import GenerateRequest, plan_run
from ..training.priors import load_prior
from ..training.trainer import Trainer
from . import sent_mesh, texture_job
from .events import Emit
from .job_files import (
    JOB_FILE,
    Conflict,
    Job,
    best_effort,
    check_no_links,
    end_run,
    read_job,
    remove_stale_temp_files,
)
from .runner import Backend, JobRunner, LocalWorker
from .runner import Task as _Task

ACTIVE = ("queued", "running")
MAX_QUEUED = 64
"""Jobs that may wait at once; one more is refused with ``conflict``."""
_NOT_TRAINING = ("prompt", "preset", "export", "allow_downloads", *MESH_FIELDS["generate"])
_TRAIN_FIELDS = [k for k in REQUESTS["generate"] if k not in _NOT_TRAINING]
_log = logging.getLogger("sdi_blender.server")


class NotFound(UserError):
    """No such job."""

    code = "not_found"


class JobManager(JobRunner):
    """Queue and worker; every public method is thread-safe and returns quickly. ``backend``
    (given the manager) is where tasks run; default :class:`~.runner.LocalWorker`."""

    def __init__(
        self,
        jobs_dir: Path,
        emit: Emit,
        *,
        device: torch.device,
        model: str,
        trainer_factory: Callable[..., Any] = Trainer,
        prior_factory: Callable[..., Any] = load_prior,
        export_fn: Callable[..., Any] = export_run,
        model_roots: tuple[Path, ...] | None = None,
        backend: Callable[[JobManager], Backend] = LocalWorker,
    ) -> None:
        super().__init__(
            emit, device=device, trainer_factory=trainer_factory, prior_factory=prior_factory, export_fn=export_fn
        )
        self.jobs_dir, self.default_model = Path(jobs_dir), model
        self.model_roots = model_roots
        """None: any model; else (a server open to other machines) local folders only under these."""
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[_Task] = deque()
        self._running: dict[str, Job] = {}
        self._stopping = False
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        self.backend = backend(self)
        self._worker = threading.Thread(target=self._work, name="sdi-worker", daemon=True)
        self._worker.start()

    # -- requests -----------------------------------------------------------------------
    def submit(
        self, kind: str, request: dict[str, Any], on_queued: Callable[[str, int], None] | None = None
    ) -> tuple[str, int]:
        """Validate and queue a generate, continue or export request; returns (job id, position).

        ``position``: jobs that run first, the running one included. ``on_queued(job, position)``
        runs before the worker can start the job, so whoever subscribes there sees every event.
        """
        sent = sent_mesh.receive(kind, request, remote=self.model_roots is not None)  # unpacked unlocked
        with self._lock:
            if self._stopping:
                raise Conflict("the server is shutting down")
            if len(self._queue) >= MAX_QUEUED:
                raise Conflict(
                    f"the queue is full ({MAX_QUEUED} jobs waiting)", hint="wait for jobs to finish, or cancel some"
                )
            task = self._plan(kind, request, sent)
            job = task.job
            if kind == "continue" and request.get("prompt") is not None:
                job.request = {**job.request, "prompt": request["prompt"]}  # list_jobs shows the new one
            job.kind, job.status, job.error, job.step = kind, "queued", None, None
            job.cancel.clear()
            if kind in ("generate", "texture"):
                self._create(job)
            else:
                self._save(job)
            position = len(self._queue) + len(self._running)
            if on_queued is not None:
                on_queued(job.id, position)
            self._queue.append(task)
            self._lock.notify_all()
        self.log(job, f"queued {kind}: {json.dumps(job.request if kind in MESH_FIELDS else request)}")
        return job.id, position

    def cancel(self, job_id: str, keep: bool = False) -> str:
        """Cancel a queued job now, or ask the running one to stop; returns what happened.
        ``keep``: a running job stops training and exports what it has, and ends done."""
        with self._lock:
            job = self.get(job_id)
            if job.status == "running" and keep:
                if not isinstance(self.backend, LocalWorker):  # a Ray actor's runner has its own set
                    raise Conflict("stop and keep needs the local worker (not serve --ray)", hint="cancel instead")
                self.keep.add(job.id)
                return "stopping"
            if job.status == "running":
                job.cancel.set()
                self.backend.cancel(job)
                return "cancelling"
            if job.status != "queued":
                raise Conflict(f"job {job_id} is {job.status}, not queued or running")
            self._queue = deque(t for t in self._queue if t.job is not job)
            self._finish(job, "cancelled")
        self._announce(job)
        return "cancelled"

    def delete(self, job_id: str) -> None:
        """Remove a job that is neither queued nor running, with its folder."""
        with self._lock:
            job = self.get(job_id)
            if job.status in ACTIVE:
                raise Conflict(f"job {job_id} is {job.status}; cancel it first")
            del self._jobs[job_id]
        shutil.rmtree(job.dir, ignore_errors=True)

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise NotFound(f"no job '{job_id[:64]}'", hint="list_jobs shows the jobs there are")
            return self._jobs[job_id]

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: (j.created, j.id))
        return [j.summary() for j in jobs]

    def snapshot(self) -> tuple[builtins.list[str], str | None, str | None]:
        """(queued job ids, running job id (the earliest started where several run), loaded model id)."""
        with self._lock:
            return ([t.job.id for t in self._queue], next(iter(self._running), None), self.backend.loaded_model())

    def shutdown(self, timeout: float = 60.0) -> None:
        """Cancel the queue and the running job (which checkpoints), and stop the worker."""
        with self._lock:
            self._stopping = True
            queued = [t.job for t in self._queue]
            self._queue.clear()
            for job in queued:
                self._finish(job, "cancelled")
            running = list(self._running.values())
            for job in running:
                job.cancel.set()
            self._lock.notify_all()
        for job in running:
            self.backend.cancel(job)
        for job in queued:
            self._announce(job)
        self._worker.join(timeout)
        self.backend.shutdown(timeout)

    # -- planning (under the lock) ------------------------------------------------------
    def _plan(self, kind: str, req: dict[str, Any], sent: sent_mesh.Sent | None) -> _Task:
        if kind in ("generate", "texture"):
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            job = Job(job_id, kind, dict(req), "queued", time.time(), dir=self.jobs_dir / job_id)
            with sent_mesh.stored(sent, job.dir) as path:  # the folder goes again if planning fails
                job.request = sent_mesh.recorded(kind, req, path)
                return self._plan_generate(job) if kind == "generate" else self._plan_texture(job)
        job = self.get(req["job"])
        if job.status in ACTIVE:
            raise Conflict(f"job {job.id} is {job.status}")
        check_no_links(job.dir)
        texture_job.check_not_texture(job)
        if kind == "export":
            return _Task(job, export=_export_settings(req))
        config, _ = plan_run(
            GenerateRequest(out=job.dir, prompt=req.get("prompt"), resume=True, settings={"steps": req["steps"]})
        )
        export = _export_settings(req["export"]) if "export" in req else None
        return _Task(job, config=config, resume=True, export=export, allow_downloads=req.get("allow_downloads", True))

    def _plan_generate(self, job: Job) -> _Task:
        req = job.request
        settings = {k: req.get(k) for k in _TRAIN_FIELDS}
        model: str = settings["model"] or self.default_model
        settings["model"] = model
        if self.model_roots is not None and model != self.default_model:
            check_remote_model(model, self.model_roots)
        check_model_name(model)
        settings["init_mesh.path"] = req.get("init_mesh")
        config, _ = plan_run(
            GenerateRequest(
                out=job.dir, prompt=req["prompt"], overwrite=True, preset=req.get("preset"), settings=settings
            )
        )
        plan_init_mesh(config.init_mesh)  # a bad mesh file is refused before the job queues
        export = _export_settings(req["export"]) if "export" in req else None
        return _Task(job, config=config, export=export, allow_downloads=req.get("allow_downloads", True))

    def _plan_texture(self, job: Job) -> _Task:
        req = job.request
        plan = texture_job.plan(req, job.dir, self.default_model)
        settings = ExportSettings(texture_size=req.get("texture_size", 1024))
        settings.validate()
        downloads = req.get("allow_downloads", True)
        return _Task(job, config=plan.config, export=settings, allow_downloads=downloads, texture=plan)

    # -- the worker -----------------------------------------------------------------------
    def _work(self) -> None:
        """Hand queued tasks to the backend while it has a free slot (the local worker runs
        each one here, so this thread is the worker)."""
        while True:
            with self._lock:
                while not self._stopping and (not self._queue or len(self._running) >= self.backend.slots):
                    self._lock.wait()
                if self._stopping and not self._queue:
                    return
                task = self._queue.popleft()
                self._running[task.job.id] = task.job
                task.job.status = "running"
                best_effort(self._save, task.job)
            try:
                self.backend.submit(task)
            except Exception:
                _log.exception("job %s: worker error", task.job.id)
                with self._lock:
                    self._running.pop(task.job.id, None)

    def end(self, job: Job, status: str, failure: dict[str, Any] | None = None) -> None:
        """A task's end, from its backend: the job's status, then its terminal event."""
        with self._lock:
            self._finish(job, status, failure and {k: failure[k] for k in ("code", "message", "hint")})
            self._running.pop(job.id, None)
            self._lock.notify_all()
        if failure is not None:
            self.emit(job.id, failure)
        else:
            self._announce(job)
        self.log(job, f"{status} at step {job.summary()['step']}")

    # -- bookkeeping --------------------------------------------------------------------
    def _announce(self, job: Job) -> None:
        """The event of a job that ended without an error: done or cancelled."""
        self.emit(job.id, job_event(job.status, job.id, step=job.summary()["step"]))

    def _finish(self, job: Job, status: str, error: dict[str, str] | None = None) -> None:
        """End the job in memory (always) and in job.json (when the disk allows)."""
        job.status, job.error, job.step = status, error, None
        best_effort(self._save, job)

    def _create(self, job: Job) -> None:
        """A new job's folder (a sent mesh may be in it already) and job.json; nothing is left
        behind if that fails."""
        job.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._save(job)
        except OSError:
            shutil.rmtree(job.dir, ignore_errors=True)
            raise UserError(f"cannot write to the jobs folder '{self.jobs_dir}'") from None
        self._jobs[job.id] = job

    def _save(self, job: Job) -> None:
        if job.dir.is_dir():  # a job deleted meanwhile stays deleted
            run_dir.atomic_write(job.dir / JOB_FILE, job.to_json())

    def _recover(self) -> None:
        """Load the jobs of an earlier server; those it left queued or running are interrupted."""
        for path in sorted(self.jobs_dir.glob(f"*/{JOB_FILE}")):
            job = read_job(path)
            if job is None:
                _log.warning("skipping %s: not a job this server can read", path.parent.name)
                continue
            remove_stale_temp_files(job.dir)
            if job.status in ACTIVE:
                was, job.status = job.status, "interrupted"
                job.error = {
                    "code": "interrupted",
                    "message": f"the server stopped while the job was {was}",
                    "hint": "continue resumes it from its last checkpoint",
                }
                best_effort(self._save, job)
                best_effort(end_run, job.dir, "interrupted")
                self.log(job, "marked interrupted on server start")
            self._jobs[job.id] = job


def _export_settings(fields: dict[str, Any]) -> ExportSettings:
    """Validated export settings from a request's fields (``job`` and ``id`` ignored)."""
    settings = ExportSettings(**{k: v for k, v in fields.items() if k in ExportSettings.__dataclass_fields__})
    settings.validate()
    return settings
