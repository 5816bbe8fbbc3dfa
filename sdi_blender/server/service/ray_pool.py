"""``serve --ray``: the queue's tasks run in parallel on a Ray cluster, one :class:`JobActor` per
GPU (per ``cpus`` CPUs on a cluster without GPUs).

Each actor holds a :class:`~.runner.JobRunner`, so it runs a task by the local worker's code and
keeps its model loaded for the next task. What its tasks emit goes into one
``ray.util.queue.Queue``, tagged with the task's ticket; a relay thread here forwards the events
through the manager's ``emit`` and ends each job (:meth:`~.jobs.JobManager.end`) when its end
message comes, so a job's terminal event always follows its other events. A watcher thread
frees an actor when its task returns; a task whose actor died (node lost, OOM kill) ends as
``interrupted`` (``out_of_memory`` for Ray's memory monitor) through the same queue, and Ray
restarts the actor for the next task. Cancel reaches the actor by a method call that sets the
task's ``threading.Event`` there (actors run two calls at once), which the trainer polls for
free between steps.

The jobs folder must be one path that every node sees (a shared file system).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import platform
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ...protocol import error_event
from ..util.devices import resolve_device
from ..util.ray_cluster import ray_module, slot_resources
from .job_files import Job, best_effort, end_run
from .runner import JobRunner, Task

if TYPE_CHECKING:
    from .jobs import JobManager

NAMESPACE = "sdi-blender"
"""The Ray namespace of the server's actors (named ``sdi-serve-<host>-<pid>-<i>``)."""
_EVENT, _END = "event", "end"
_POLL_S = 0.5
"""How long the relay and the watcher block on Ray before looking at the pool's state again."""
_DIED_HINT = "continue resumes it from its last checkpoint"
_log = logging.getLogger("sdi_blender.server")


def portable(task: Task) -> Task:
    """``task`` without its job's cancel event (a thread lock does not pickle); the actor sets its own."""
    return dataclasses.replace(task, job=dataclasses.replace(task.job, cancel=cast(threading.Event, None)))


class JobActor:
    """One Ray worker process: runs the tasks the pool hands it, one at a time, on its device."""

    def __init__(self, name: str, device: str, events: Any) -> None:
        self.name, self.events = name, events
        self.runner = JobRunner(self._emit, device=resolve_device(device))
        self._lock = threading.Lock()
        self._ticket = 0  # the running task's
        self._cancels: dict[int, threading.Event] = {}
        self._early: set[int] = set()  # tickets cancelled before their task began here

    def run(self, task: Task, ticket: int) -> str | None:
        """Run ``task``, its events and then its end message into the queue; returns the loaded model id."""
        cancel = threading.Event()
        with self._lock:
            if ticket in self._early:
                self._early.discard(ticket)
                cancel.set()
            self._cancels[ticket], self._ticket = cancel, ticket
        task.job.cancel = cancel
        try:
            status, failure = self.runner.run(task)
        finally:
            with self._lock:
                self._cancels.pop(ticket, None)
        self.events.put((_END, ticket, task.job.id, (status, failure)))
        return getattr(self.runner.prior, "model_id", None)

    def cancel(self, ticket: int) -> None:
        """Stop the task of ``ticket`` within a step (runs beside :meth:`run`)."""
        with self._lock:
            if ticket in self._cancels:
                self._cancels[ticket].set()
            else:
                self._early.add(ticket)

    def _emit(self, job: str, event: dict[str, Any]) -> None:
        if event["event"] == "started":  # which worker and machine: the job's log line on every client
            event = {**event, "worker": self.name, "node": platform.node()}
        self.events.put((_EVENT, self._ticket, job, event))


@dataclass
class _Running:
    slot: int  # the actor's index
    job: Job
    ticket: int


class RayPool:
    """A :class:`~.runner.Backend` of one actor per slot of an initialised Ray."""

    def __init__(self, manager: JobManager, *, device: str = "auto", cpus: float = 1.0) -> None:
        ray = ray_module("serve --ray")
        from ray.util.queue import Queue

        self.ray, self.manager = ray, manager
        resources, actor_device, self.slots = slot_resources(ray, device, cpus)
        self._events = Queue(actor_options={"num_cpus": 0})
        prefix = f"sdi-serve-{platform.node()}-{os.getpid()}"
        remote = ray.remote(JobActor)
        self._actors = [
            remote.options(
                name=f"{prefix}-{i}",
                namespace=NAMESPACE,
                max_restarts=-1,  # a dead worker comes back for the next task; its task is not retried
                max_task_retries=0,
                max_concurrency=2,  # run and cancel
                **resources,
            ).remote(f"{prefix}-{i}", actor_device, self._events)
            for i in range(self.slots)
        ]
        self._lock = threading.Condition()
        self._free = list(range(self.slots))
        self._refs: dict[Any, _Running] = {}  # the running tasks' result refs
        self._tickets: dict[int, _Running] = {}  # until their end message is relayed
        self._models: dict[int, str | None] = {}  # per actor (its index): the model it holds
        self._next_ticket = itertools.count(1)
        self._closing = False
        self._relay_thread = threading.Thread(target=self._relay, name="sdi-ray-relay", daemon=True)
        self._watch_thread = threading.Thread(target=self._watch, name="sdi-ray-watch", daemon=True)
        self._relay_thread.start()
        self._watch_thread.start()
        _log.info("Ray pool: %d workers with %s each", self.slots, resources)

    # -- the backend ----------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        with self._lock:
            while not self._free:  # an actor whose task just ended is about to be freed by the watcher
                self._lock.wait()
            entry = _Running(self._free.pop(0), task.job, next(self._next_ticket))
            self._tickets[entry.ticket] = entry
            self._refs[self._actors[entry.slot].run.remote(portable(task), entry.ticket)] = entry

    def cancel(self, job: Job) -> None:
        with self._lock:
            entries = [e for e in self._tickets.values() if e.job is job]
        for entry in entries:
            self._actors[entry.slot].cancel.remote(entry.ticket)

    def loaded_model(self) -> str | None:
        with self._lock:
            models = Counter(m for m in self._models.values() if m is not None)
        return models.most_common(1)[0][0] if models else None

    def shutdown(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._refs and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)  # the cancelled tasks checkpoint and end
            self._closing = True
        self._watch_thread.join(max(0.0, deadline - time.monotonic()) + _POLL_S)
        self._relay_thread.join(max(0.0, deadline - time.monotonic()) + _POLL_S)
        for actor in self._actors:
            self.ray.kill(actor, no_restart=True)
        self.ray.kill(self._events.actor, no_restart=True)

    # -- the threads ----------------------------------------------------------------------
    def _relay(self) -> None:
        """Forward the actors' events in the order they came; end the jobs whose end came."""
        from ray.util.queue import Empty

        while True:
            try:
                kind, ticket, job_id, payload = self._events.get(timeout=_POLL_S)
            except Empty:
                if self._closing:
                    return  # drained: every task's end came before its result did
                continue
            except self.ray.exceptions.RayError:
                _log.exception("Ray pool: the event queue is gone")
                return
            try:
                self._forward(kind, ticket, job_id, payload)
            except Exception:
                _log.exception("job %s: could not relay %s", job_id, kind)

    def _forward(self, kind: str, ticket: int, job_id: str, payload: Any) -> None:
        with self._lock:
            entry = self._tickets.get(ticket) if kind == _EVENT else self._tickets.pop(ticket, None)
        if entry is None:
            return  # a second end (the actor died after sending its own), or a stale task's event
        if kind == _EVENT:
            if payload["event"] == "progress":
                entry.job.step = payload["step"]  # list_jobs' live step, as the local worker keeps it
            self.manager.emit(job_id, payload)
        else:
            self.manager.end(entry.job, *payload)

    def _watch(self) -> None:
        """Free each actor when its task returns; end the task of an actor that died."""
        while True:
            with self._lock:
                if self._closing:
                    return
                refs = list(self._refs)
                if not refs:
                    self._lock.wait(_POLL_S)
                    continue
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=_POLL_S)
            for ref in ready:
                self._reap(ref)

    def _reap(self, ref: Any) -> None:
        entry = self._refs[ref]
        model: str | None = None
        try:
            model = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            try:
                self._lost(entry, exc)
            except Exception:  # the queue itself gone: the slot must still come free
                _log.exception("job %s: could not end it after its worker died", entry.job.id)
        with self._lock:
            del self._refs[ref]
            self._models[entry.slot] = model
            self._free.append(entry.slot)
            self._lock.notify_all()

    def _lost(self, entry: _Running, exc: Exception) -> None:
        """The end of a task whose actor died: after the events it sent, through the same queue."""
        job = entry.job
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        oom = isinstance(exc, self.ray.exceptions.OutOfMemoryError)
        message = f"the Ray worker running the job died: {why}"
        failure = error_event("out_of_memory" if oom else "interrupted", message, _DIED_HINT, job=job.id)
        self.manager.log(job, f"worker lost: {exc}")
        best_effort(end_run, job.dir, "interrupted", message)
        self._events.put((_END, entry.ticket, job.id, ("failed" if oom else "interrupted", failure)))
