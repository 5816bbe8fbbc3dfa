"""The add-on's link to the generation server, kept apart from Blender data (bpy-free).

Starting and stopping the server and every request run on one background thread, so
Blender's UI never waits on the network. Job events arrive on the client's reader
thread. The main thread (a ``bpy.app.timers`` callback, or the synchronous operator in
background mode) calls :meth:`Controller.poll`, which folds what happened into
:attr:`Controller.job` and returns the :class:`Outcome` of a finished job, for the caller to
apply to Blender data. Only one job is followed at a time: the panel shows one.
"""

from __future__ import annotations

import base64
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client import Client, LocalServer, ServerError
from ..protocol import error_event, malformed
from .wording import blender_hint

SILENT_SERVER_S = 600.0
"""Background-mode operators wait for their job as long as it needs, but give up on a server
that has sent nothing for this long (seconds): a hung remote, or a stuck load. Every training
step, download chunk and export stage is news, so a healthy job is never this quiet."""

_NO_PYTHON_HINT = (
    "set 'Server Python' in Edit > Preferences > Add-ons > SDI to the Python of the "
    "environment vendor_setup.py made (.venv/bin/python), or set $SDI_SERVER_PYTHON"
)


@dataclass
class ServerSettings:
    """Where the server runs: a local process started from ``python``, or a remote one."""

    python: str = ""
    jobs_dir: Path = Path()
    model: str = ""
    device: str = "auto"
    host: str = ""
    """Remote server's host; empty: start a local server."""
    port: int = 0
    token: str = ""

    @property
    def remote(self) -> bool:
        return bool(self.host)


@dataclass
class JobView:
    """The followed job as the panel shows it."""

    purpose: str
    """"generate", "continue", "reexport", "import", "from_selected", "texture" or "variation":
    what to do with its mesh when done."""
    prompt: str = ""
    target: str = ""
    """Name of the object whose mesh a continue/reexport replaces."""
    job: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    preview: bytes | None = None
    preview_step: int = -1
    files: dict[str, str] = field(default_factory=dict)
    cancelling: bool = False
    started: dict[str, Any] = field(default_factory=dict)
    """The started event's fields (device, model, preset, steps, resolution, run, estimate)."""
    phase: str = ""
    """What the job does now: "loading", "download", "train" or "export" ("" before it starts)."""
    model: str = ""
    download: tuple[str, int, int | None] | None = None
    """(file, bytes done, bytes in all) of the file downloading."""
    bytes_at: float = 0.0
    """``time.monotonic()`` when the download last advanced (a stall is measured from it)."""
    stage: str = ""
    stage_fraction: float | None = None
    proxy: dict[str, Any] | None = None
    """The latest proxy_mesh event not shown yet (the runtime takes it)."""
    placement: dict[str, Any] | None = None
    """The exported event's placement (a run started from a mesh): back into that mesh's frame."""


@dataclass
class Outcome:
    """How the followed job ended: ``status`` is done, cancelled or error."""

    view: JobView
    status: str
    message: str = ""
    hint: str = ""

    def report(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class Controller:
    """One server connection, one followed job; public methods return at once."""

    def __init__(self) -> None:
        self.state, self.hint = "stopped", ""
        self.job: JobView | None = None
        self.jobs: list[dict[str, Any]] = []
        """The last ``list_jobs`` answer (the history list)."""
        self.device = ""
        self.free_gb: float | None = None
        """GPU memory the server can use for a job (its status: free plus its own cache); None off a GPU."""
        self.last_error: tuple[str, str] | None = None
        """(message, hint) of the last failed job, kept for the panel until dismissed."""
        self.last_news = time.monotonic()
        """When poll() last drained a message: how long the server has been silent."""
        self._server: LocalServer | None = None
        self._client: Client | None = None
        self._settings: ServerSettings | None = None
        self._outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.notices: list[str] = []
        """Failures outside a job (start, list, cancel), for the main thread to report."""
        self.job_notes: list[str] = []
        """What a running job changed by itself, reported as warnings."""
        self._commands: queue.Queue[tuple[Callable[[], Any], bool] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, daemon=True, name="sdi-addon")
        self._worker.start()

    # -- main thread ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.job is not None

    def start(self, settings: ServerSettings) -> None:
        """Start (or connect to) the server in the background."""
        self._commands.put((lambda: self._connect(settings), False))

    def stop(self, wait: bool = False, timeout: float = 60.0) -> None:
        """Stop a server this controller started (a remote one is only disconnected)."""
        done = threading.Event()

        def stop() -> None:
            try:
                self._disconnect()
                self._outbox.put({"event": "stopped"})
            finally:
                done.set()

        self._commands.put((stop, False))
        if wait:
            done.wait(timeout)

    def submit(self, settings: ServerSettings, view: JobView, kind: str, **fields: Any) -> None:
        """Follow a new job: connect if needed, then send the generate/continue/export request."""
        if self.job is not None:
            raise RuntimeError("a job is already running; cancel it first")
        self.job, self.last_news = view, time.monotonic()
        self._commands.put((lambda: self._request_job(settings, kind, fields), True))

    def cancel(self, keep: bool = False) -> None:
        """Stop the followed job; ``keep``: stop training and import what it has."""
        if self.job is not None and not self.job.cancelling:
            self.job.cancelling = True
            job = self.job.job
            self._commands.put((lambda: self._cancel(job, keep), False))

    def request(self, settings: ServerSettings, kind: str, **fields: Any) -> None:
        """A request that is no job (e.g. delete_job), in the background; a failure is a notice."""
        self._commands.put((lambda: self._connect(settings).request(kind, **fields), False))

    def abandon(self, why: str) -> Outcome | None:
        """Stop following the job (asking the server to cancel it): the caller gave up on it."""
        view = self.job
        if view is None:
            return None
        self.cancel()
        self.job = None
        outcome = Outcome(view, "error", why, "the job may still run on the server: see the Jobs list")
        self.last_error = (outcome.message, outcome.hint)
        return outcome

    def dismiss_error(self) -> None:
        self.last_error = None

    def refresh_jobs(self, settings: ServerSettings) -> None:
        self._commands.put((lambda: self._list_jobs(settings), False))

    def poll(self) -> Outcome | None:
        """Apply everything that arrived; return the followed job's outcome once it ends."""
        outcome, messages = None, self._drain()
        if messages:
            self.last_news = time.monotonic()
        for message in messages:
            why = malformed(message)
            if why is not None:  # a broken event must not cost the rest of the burst
                self.notices.append(f"ignored a malformed server event: {why}")
                continue
            try:
                outcome = self._apply(message) or outcome
            except (KeyError, TypeError, ValueError) as exc:  # e.g. a preview that is not base64
                self.notices.append(f"ignored a malformed server event: {type(exc).__name__}: {exc}")
        if outcome is not None:
            self.job = None
            if self.state == "busy":
                self.state = "ready"
            if outcome.status == "error":
                self.last_error = (outcome.message, outcome.hint)
        return outcome

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the background thread, then the server, from the calling thread (the add-on is
        being disabled or Blender quits: the worker may already be gone or frozen)."""
        self._commands.put(None)
        self._worker.join(timeout)
        self._disconnect()

    # -- what poll() applies ----------------------------------------------------------------
    def _drain(self) -> list[dict[str, Any]]:
        messages = []
        for box in (self._outbox, self._client.events if self._client else None):
            while box is not None:
                try:
                    messages.append(box.get_nowait())
                except queue.Empty:
                    break
        return messages

    def _apply(self, msg: dict[str, Any]) -> Outcome | None:
        kind, view = msg.get("event"), self.job
        if kind == "state":
            self.state, self.hint = msg["state"], msg.get("hint", "")
        elif kind == "jobs":
            self.jobs = msg["jobs"]
        elif kind == "notice":
            self.notices.append(msg["message"])
        elif kind == "warning":  # what a job changed by itself (e.g. less memory): news, not a failure
            self.job_notes.append(msg["message"])
        elif kind == "error" and msg.get("code") == "disconnected":
            return self._lost_connection(view, msg)
        elif kind == "stopped" and view is not None:
            return Outcome(view, "cancelled", "the server was stopped")
        elif view is not None and kind is not None:
            return self._job_event(view, kind, msg)
        return None

    def _job_event(self, view: JobView, kind: str, msg: dict[str, Any]) -> Outcome | None:
        if view.job and msg.get("job", view.job) != view.job:
            return None  # another job's event (a second client's)
        if kind == "queued":
            view.job, self.state = msg["job"], "busy"
        elif kind == "started":
            view.started = {k: v for k, v in msg.items() if k not in ("event", "job")}
        elif kind == "loading":
            view.phase, view.model = "loading", msg["model"]
        elif kind == "download":
            self._download(view, msg)
        elif kind == "export_stage":
            view.phase, view.stage, view.stage_fraction = "export", msg["stage"], msg["fraction"]
        elif kind == "progress":
            view.phase = "train"
            view.step, view.total, view.eta_s = msg["step"], msg["total"], msg.get("eta_s")
        elif kind == "preview":
            view.preview, view.preview_step = base64.b64decode(msg["png"]), msg["step"]
        elif kind == "exported":
            view.files, view.placement = msg["files"], msg.get("placement")
        elif kind == "proxy_mesh":
            view.proxy = msg
        elif kind in ("done", "cancelled"):
            return Outcome(view, kind)
        elif kind == "error":
            hint = blender_hint(str(msg.get("code")), str(msg.get("reason") or ""), str(msg.get("hint", "")))
            return Outcome(view, "error", msg.get("message", "the server failed"), hint)
        return None

    @staticmethod
    def _download(view: JobView, msg: dict[str, Any]) -> None:
        file, done, total = msg["file"], int(msg["done"]), msg["total"]
        if view.download is None or view.download[0] != file or done > view.download[1]:
            view.bytes_at = time.monotonic()  # a stall is time without new bytes, not without events
        view.phase, view.model, view.download = "download", msg["model"], (file, done, total)

    def _lost_connection(self, view: JobView | None, msg: dict[str, Any]) -> Outcome | None:
        message, hint = self._lost_server(msg.get("message", ""))
        self.state, self.hint, self._client = "error", hint or message, None
        return Outcome(view, "error", message, hint) if view is not None else None

    def _lost_server(self, message: str) -> tuple[str, str]:
        """Why the connection dropped: a dead local server says so on its stderr."""
        server = self._server
        if server is None or server.process.poll() is None:
            return f"lost the connection to the server: {message}", "start the server again"
        self._server = None
        tail = _last_line(server.stderr_path)
        return (
            f"the server stopped unexpectedly (exit code {server.process.returncode})",
            tail or f"see {server.stderr_path}",
        )

    # -- background thread ----------------------------------------------------------------
    def _work(self) -> None:
        while (item := self._commands.get()) is not None:
            command, for_job = item
            try:
                command()
            except Exception as exc:
                error = exc if isinstance(exc, ServerError) else ServerError("internal", f"{type(exc).__name__}: {exc}")
                hint = blender_hint(error.code, error.reason, error.hint)
                if self._client is None:
                    self._say_state("error", hint or error.message)
                # A failed job request ends the followed job; anything else is only reported.
                self._outbox.put(
                    error_event(error.code, error.message, error.hint, reason=error.reason)
                    if for_job
                    else {"event": "notice", "message": f"{error.message}; {hint}" if hint else error.message}
                )

    def _say_state(self, state: str, hint: str = "") -> None:
        self._outbox.put({"event": "state", "state": state, "hint": hint})

    def _connect(self, settings: ServerSettings) -> Client:
        if self._client is not None and self._settings == settings and self._alive():
            return self._client
        self._disconnect()
        self._say_state("starting")
        if settings.remote:
            self._client = Client(settings.host, settings.port, settings.token)
        else:
            try:
                self._server = LocalServer(
                    settings.jobs_dir,
                    python=check_python(settings.python),
                    device=settings.device,
                    model=settings.model or None,
                )
            except ServerError as exc:
                raise ServerError(exc.code, exc.message, exc.hint or _NO_PYTHON_HINT) from None
            self._client = self._server.connect()
        self._settings = settings
        self._read_status(self._client)
        self._say_state("ready")
        return self._client

    def _read_status(self, client: Client) -> None:
        status = client.request("status")
        self.device, self.free_gb = status.get("device", ""), usable_gb(status.get("memory") or {})

    def _alive(self) -> bool:
        return self._server is None or self._server.process.poll() is None

    def _disconnect(self) -> None:
        client, server, self._client, self._server = self._client, self._server, None, None
        if client is not None:
            client.close()
        if server is not None:
            server.stop()
        self._say_state("stopped")

    def _request_job(self, settings: ServerSettings, kind: str, fields: dict[str, Any]) -> None:
        client = self._connect(settings)
        self._say_state("busy")
        client.request(kind, **fields)  # its "queued" reply also reaches client.events

    def _cancel(self, job: str, keep: bool = False) -> None:
        if self._client is not None and job:
            self._client.request("cancel", job=job, **({"keep": True} if keep else {}))

    def _list_jobs(self, settings: ServerSettings) -> None:
        client = self._connect(settings)
        jobs = client.request("list_jobs")["jobs"]
        self._read_status(client)  # after a job: the memory it left free
        self._outbox.put({"event": "jobs", "jobs": jobs})


def check_python(python: str) -> str:
    """The server Python, or a ServerError saying what is wrong with it."""
    if not python:
        raise ServerError("no_python", "no server Python is set", _NO_PYTHON_HINT)
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ServerError("no_python", f"the server Python '{python}' is not an executable file", _NO_PYTHON_HINT)
    return python


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def usable_gb(memory: dict[str, Any]) -> float | None:
    """GPU memory a job could use, in GB: free on the device plus what the server itself holds (its
    cache, and the loaded model that a preset's figure already counts); None off a GPU (the status
    reply's ``memory`` has no ``free`` there)."""
    if "free" not in memory:
        return None
    return (memory["free"] + memory.get("reserved", 0)) / 1e9


def wait_until(
    controller: Controller,
    done: Callable[[], bool],
    on_outcome: Callable[[Outcome], None] | None = None,
    silent_s: float = SILENT_SERVER_S,
    interval: float = 0.05,
) -> bool:
    """Poll until ``done()`` holds (background mode, where timers never fire); a job's outcome goes
    to ``on_outcome``. However long the job takes, this waits while the server sends news; it
    returns False (done() still false) once the server has been silent for ``silent_s`` seconds.
    A server that dies ends the job through poll() (its connection drops)."""
    since = time.monotonic()
    while not done():
        outcome = controller.poll()
        if outcome is not None and on_outcome is not None:
            on_outcome(outcome)
        if time.monotonic() - max(since, controller.last_news) > silent_s and not done():
            return False
        time.sleep(interval)
    return True
