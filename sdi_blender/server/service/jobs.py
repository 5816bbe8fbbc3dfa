"""The server's job queue: one worker thread runs generate, continue and export jobs in turn.

A job is a run folder ``<jobs-dir>/<job-id>/`` (what the trainer writes) plus ``job.json``
(id, kind, request, status, created, error) and ``job.log``. ``continue`` and ``export``
act on an existing job, so a job id names one run for its whole life. Events go out
through the ``emit(job_id, event)`` callback; the loaded model is kept between jobs.

Statuses: queued, running, done, cancelled, failed, interrupted (the server stopped while
the job was queued or running; found on start-up; ``continue`` resumes it).
"""

from __future__ import annotations

import base64
import builtins
import gc
import json
import logging
import secrets
import shutil
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import UserError
from ...protocol import REQUESTS, encodable, error_event, job_event
from ..diffusion.model_source import check_model_name, check_remote_model
from ..export.child import ExportCancelled, export_in_child
from ..export.pipeline import ExportSettings, export_run
from ..training import run_dir
from ..training.config import TrainConfig
from ..training.plan import GenerateRequest, plan_run
from ..training.priors import load_prior
from ..training.trainer import Progress, Trainer, TrainerCallbacks
from ..util.devices import is_out_of_memory

JOB_FILE, LOG_FILE = "job.json", "job.log"
_SAVED = ("id", "kind", "request", "status", "created", "error")  # what job.json holds
ACTIVE = ("queued", "running")
MAX_QUEUED = 64
"""Jobs that may wait at once; one more is refused with ``conflict``."""
Emit = Callable[[str, dict[str, Any]], None]
_TRAIN_FIELDS = [k for k in REQUESTS["generate"] if k not in ("prompt", "preset", "export")]
_log = logging.getLogger("sdi_blender.server")
_OOM_HINT = "lower the preset or the resolution, or close other programs that use the GPU"
_HOST_OOM_HINT = "lower the resolution or the texture size, or close other programs"
_DISK_HINT = "free disk space or check the jobs folder's permissions, then continue the job"


class Conflict(UserError):
    """The job's state does not allow the request."""

    code = "conflict"


class NotFound(UserError):
    """No such job."""

    code = "not_found"


@dataclass
class Job:
    """One run folder and what the server knows about it; ``to_json`` is ``job.json``."""

    id: str
    kind: str
    request: dict[str, Any]
    status: str
    created: float
    error: dict[str, str] | None = None
    dir: Path = field(default=Path(), repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    step: int | None = None
    """Live step while running (state.json only has the last checkpoint's)."""

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in _SAVED}, indent=2)

    def summary(self) -> dict[str, Any]:
        """The job as ``list_jobs`` shows it."""
        state = run_dir.read_state(self.dir)
        return {
            "job": self.id,
            "kind": self.kind,
            "prompt": self.request.get("prompt", ""),
            "status": self.status,
            "step": self.step if self.step is not None else state.get("step", 0),
            "total": state.get("total", self.request.get("steps")),
            "created": self.created,
            "error": self.error,
        }


@dataclass
class _Task:
    job: Job
    config: TrainConfig | None = None  # generate / continue
    resume: bool = False
    export: ExportSettings | None = None  # export, or generate's export afterwards


class _Events(TrainerCallbacks):
    """Trainer callbacks → job events."""

    def __init__(self, job: Job, emit: Emit) -> None:
        self.job, self.emit = job, emit

    def on_progress(self, p: Progress) -> None:
        self.job.step = p.step
        self.emit(
            self.job.id,
            job_event(
                "progress",
                self.job.id,
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
        self.emit(
            self.job.id,
            job_event("preview", self.job.id, step=step, png=base64.b64encode(png).decode("ascii")),
        )


class JobManager:
    """Queue and worker; every public method is thread-safe and returns quickly."""

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
    ) -> None:
        self.jobs_dir, self.emit, self.device, self.default_model = Path(jobs_dir), emit, device, model
        self._trainer_factory, self._prior_factory, self._export_fn = trainer_factory, prior_factory, export_fn
        self.model_roots = model_roots
        """None: any model; else (a server open to other machines) local folders only under these."""
        self._lock = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[_Task] = deque()
        self._running: Job | None = None
        self._stopping = False
        self.prior: Any = None
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
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
        with self._lock:
            if self._stopping:
                raise Conflict("the server is shutting down")
            if len(self._queue) >= MAX_QUEUED:
                raise Conflict(
                    f"the queue is full ({MAX_QUEUED} jobs waiting)", hint="wait for jobs to finish, or cancel some"
                )
            task = self._plan(kind, request)
            job = task.job
            if kind == "continue" and request.get("prompt") is not None:
                job.request = {**job.request, "prompt": request["prompt"]}  # list_jobs shows the new one
            job.kind, job.status, job.error, job.step = kind, "queued", None, None
            job.cancel.clear()
            if kind == "generate":
                self._create(job)
            else:
                self._save(job)
            position = len(self._queue) + (self._running is not None)
            if on_queued is not None:
                on_queued(job.id, position)
            self._queue.append(task)
            self._lock.notify_all()
        self.log(job, f"queued {kind}: {json.dumps(request)}")
        return job.id, position

    def cancel(self, job_id: str) -> str:
        """Cancel a queued job now, or ask the running one to stop; returns what happened."""
        with self._lock:
            job = self.get(job_id)
            if job.status == "running":
                job.cancel.set()
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
        """(queued job ids, running job id, loaded model id)."""
        with self._lock:
            return (
                [t.job.id for t in self._queue],
                self._running.id if self._running else None,
                getattr(self.prior, "model_id", None),
            )

    def shutdown(self, timeout: float = 60.0) -> None:
        """Cancel the queue and the running job (which checkpoints), and stop the worker."""
        with self._lock:
            self._stopping = True
            queued = [t.job for t in self._queue]
            self._queue.clear()
            for job in queued:
                self._finish(job, "cancelled")
            if self._running is not None:
                self._running.cancel.set()
            self._lock.notify_all()
        for job in queued:
            self._announce(job)
        self._worker.join(timeout)

    def log(self, job: Job, text: str) -> None:
        """A line in the job's job.log, and its first line on the server's log."""
        _log.info("%s: %s", job.id, text.splitlines()[0][:200] if text else "")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(job.dir / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {text.rstrip()}\n")
        except OSError:
            pass  # a deleted folder or a full disk must not stop the job itself

    # -- planning (under the lock) ------------------------------------------------------
    def _plan(self, kind: str, req: dict[str, Any]) -> _Task:
        if kind == "generate":
            return self._plan_generate(req)
        job = self.get(req["job"])
        if job.status in ACTIVE:
            raise Conflict(f"job {job.id} is {job.status}")
        _check_no_links(job.dir)
        if kind == "export":
            return _Task(job, export=_export_settings(req))
        config, _ = plan_run(
            GenerateRequest(out=job.dir, prompt=req.get("prompt"), resume=True, settings={"steps": req["steps"]})
        )
        export = _export_settings(req["export"]) if "export" in req else None
        return _Task(job, config=config, resume=True, export=export)

    def _plan_generate(self, req: dict[str, Any]) -> _Task:
        settings = {k: req.get(k) for k in _TRAIN_FIELDS}
        model: str = settings["model"] or self.default_model
        settings["model"] = model
        if self.model_roots is not None and model != self.default_model:
            check_remote_model(model, self.model_roots)
        check_model_name(model)
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        job = Job(job_id, "generate", dict(req), "queued", time.time(), dir=self.jobs_dir / job_id)
        config, _ = plan_run(
            GenerateRequest(
                out=job.dir, prompt=req["prompt"], overwrite=True, preset=req.get("preset"), settings=settings
            )
        )
        export = _export_settings(req["export"]) if "export" in req else None
        return _Task(job, config=config, export=export)

    # -- the worker -----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping and not self._queue:
                    return
                task = self._queue.popleft()
                self._running = task.job
                task.job.status = "running"
                _best_effort(self._save, task.job)
            try:
                self._execute(task)
            except Exception:
                _log.exception("job %s: worker error", task.job.id)
            finally:
                with self._lock:
                    self._running = None

    def _execute(self, task: _Task) -> None:
        job, status, failure = task.job, "failed", None
        self.emit(job.id, job_event("started", job.id, kind=job.kind))
        self.log(job, f"started {job.kind}")
        try:
            status = self._run_task(task)
        except Exception as exc:
            failure = self._failure(job, exc)
        if failure is not None:
            self._release_memory()  # the failed trainer's tensors went with the traceback
            self.log(job, f"failed: {failure['code']}: {failure['message']}")
            _best_effort(_end_run, job.dir, "failed", failure["message"])
        with self._lock:
            self._finish(job, status, failure and {k: failure[k] for k in ("code", "message", "hint")})
        if failure is not None:
            self.emit(job.id, failure)
        else:
            self._announce(job)
        self.log(job, f"{status} at step {job.summary()['step']}")

    def _failure(self, job: Job, exc: Exception) -> dict[str, Any]:
        """The error event of a job that raised ``exc``: the user's errors as they are, memory and
        disk by name, anything else ``internal`` with its traceback in job.log."""
        if isinstance(exc, UserError):
            return error_event(exc.code, exc.message, exc.hint, job=job.id)
        if is_out_of_memory(exc):
            on_gpu = isinstance(exc, torch.cuda.OutOfMemoryError)
            message = f"out of memory: {exc}".splitlines()[0] if on_gpu else "the host ran out of memory"
            return error_event("out_of_memory", message, _OOM_HINT if on_gpu else _HOST_OOM_HINT, job=job.id)
        self.log(job, traceback.format_exc())
        if isinstance(exc, OSError):  # e.g. a full disk or a folder turned read-only mid-job
            return error_event("internal", f"cannot write the job's files: {exc}", _DISK_HINT, job=job.id)
        return error_event("internal", f"{type(exc).__name__}: {exc}", "see job.log", job=job.id)

    def _run_task(self, task: _Task) -> str:
        if task.config is not None and self._train(task) == "cancelled":
            return "cancelled"
        return self._export(task.job, task.export) if task.export is not None else "done"

    def _train(self, task: _Task) -> str:
        assert task.config is not None  # only training tasks come here
        prior = self._load_prior(task.config.model)
        if not task.resume:  # only once the model loaded: a missing model leaves no run behind
            run_dir.prepare_new_run(task.job.dir, overwrite=True)
        trainer = self._trainer_factory(
            task.config, task.job.dir, prior=prior, callbacks=_Events(task.job, self.emit), resume=task.resume
        )
        return trainer.run(task.job.cancel.is_set).status

    def _export(self, job: Job, settings: ExportSettings) -> str:
        try:  # in a child process: a crash in native code must not take the server down
            result = export_in_child(job.dir, settings, str(self.device), job.cancel, self._export_fn)
        except ExportCancelled:
            return "cancelled"  # the export keeps the previous one on any exception
        files = {kind: str(path) for kind, path in result.files.items()}
        self.emit(
            job.id,
            job_event(
                "exported", job.id, files=files, vertices=result.info.get("vertices"), faces=result.info.get("faces")
            ),
        )
        self.log(job, f"exported {files}")
        return "done"

    def _load_prior(self, model: str) -> Any:
        """The loaded model, (re)loading it when the job asks for another one."""
        if self.prior is not None and self.prior.model_id != model:
            self.prior = None  # free the old model before loading the new one
            self._release_memory()
        if self.prior is None:
            self.prior = self._prior_factory(model, device=self.device)
        return self.prior

    # -- bookkeeping --------------------------------------------------------------------
    def _announce(self, job: Job) -> None:
        """The event of a job that ended without an error: done or cancelled."""
        self.emit(job.id, job_event(job.status, job.id, step=job.summary()["step"]))

    def _finish(self, job: Job, status: str, error: dict[str, str] | None = None) -> None:
        """End the job in memory (always) and in job.json (when the disk allows)."""
        job.status, job.error, job.step = status, error, None
        _best_effort(self._save, job)

    def _create(self, job: Job) -> None:
        """A new job's folder and job.json; nothing is left behind if that fails."""
        job.dir.mkdir(parents=True)
        try:
            self._save(job)
        except OSError:
            shutil.rmtree(job.dir, ignore_errors=True)
            raise UserError(f"cannot write to the jobs folder '{self.jobs_dir}'") from None
        self._jobs[job.id] = job

    def _save(self, job: Job) -> None:
        if job.dir.is_dir():  # a job deleted meanwhile stays deleted
            run_dir.atomic_write(job.dir / JOB_FILE, job.to_json())

    def _release_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _recover(self) -> None:
        """Load the jobs of an earlier server; those it left queued or running are interrupted."""
        for path in sorted(self.jobs_dir.glob(f"*/{JOB_FILE}")):
            job = _read_job(path)
            if job is None:
                _log.warning("skipping %s: not a job this server can read", path.parent.name)
                continue
            _remove_stale_temp_files(job.dir)
            if job.status in ACTIVE:
                was, job.status = job.status, "interrupted"
                job.error = {
                    "code": "interrupted",
                    "message": f"the server stopped while the job was {was}",
                    "hint": "continue resumes it from its last checkpoint",
                }
                _best_effort(self._save, job)
                _best_effort(_end_run, job.dir, "interrupted")
                self.log(job, "marked interrupted on server start")
            self._jobs[job.id] = job


def _export_settings(fields: dict[str, Any]) -> ExportSettings:
    """Validated export settings from a request's fields (``job`` and ``id`` ignored)."""
    settings = ExportSettings(**{k: v for k, v in fields.items() if k in ExportSettings.__dataclass_fields__})
    settings.validate()
    return settings


_JOB_TYPES: dict[str, Any] = {
    "id": str,
    "kind": str,
    "request": dict,
    "status": str,
    "created": (int, float),
    "error": (dict, type(None)),
}


def _read_job(path: Path) -> Job | None:
    """The job in a ``job.json``, or None when it is unreadable, mistyped or not its folder's."""
    if path.parent.is_symlink() or path.is_symlink():
        return None  # a job folder must be a real folder inside the jobs folder
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(not isinstance(data.get(k), typ) for k, typ in _JOB_TYPES.items()):
        return None
    if data["id"] != path.parent.name or not all(encodable(v) for v in (data["id"], data["request"])):
        return None
    return Job(**{k: data[k] for k in _SAVED}, dir=path.parent)


def _check_no_links(folder: Path) -> None:
    """Refuse a job folder holding symlinks: writing through one would write outside the jobs folder."""
    links = [p for p in [folder, *folder.rglob("*")] if p.is_symlink()]
    if links:
        raise Conflict(
            f"job folder '{folder.name}' holds a symbolic link ({links[0].relative_to(folder.parent)})",
            hint="a job folder must hold real files only; remove the link",
        )


def _remove_stale_temp_files(folder: Path) -> None:
    """Temporary files of atomic writes cut short by a kill (``.<name>.<pid>.tmp``)."""
    for tmp in folder.rglob(".*.tmp"):
        if tmp.is_file() and not tmp.is_symlink():
            _best_effort(tmp.unlink)


def _best_effort(write: Callable[..., None], *args: Any) -> None:
    """A bookkeeping write that must not stop a job from ending (its event still goes out)."""
    try:
        write(*args)
    except OSError as exc:
        _log.warning("could not record a job's state: %s", exc)


def _end_run(run: Path, status: str, message: str = "") -> None:
    """Correct the run folder's state.json when the trainer could not (it still says running)."""
    state = run_dir.read_state(run)
    if state.get("status") == "running":
        run_dir.write_state(run, status, state.get("step", 0), state.get("total", 0), message)
