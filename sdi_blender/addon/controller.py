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
    """"generate", "continue", "reexport" or "import": what to do with its mesh when done."""
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
        self._server: LocalServer | None = None
        self._client: Client | None = None
        self._settings: ServerSettings | None = None
        self._outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.notices: list[str] = []
        """Failures outside a job (start, list, cancel), for the main thread to report."""
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
        self.job = view
        self._commands.put((lambda: self._request_job(settings, kind, fields), True))

    def cancel(self) -> None:
        if self.job is not None and not self.job.cancelling:
            self.job.cancelling = True
            job = self.job.job
            self._commands.put((lambda: self._cancel(job), False))

    def refresh_jobs(self, settings: ServerSettings) -> None:
        self._commands.put((lambda: self._list_jobs(settings), False))

    def poll(self) -> Outcome | None:
        """Apply everything that arrived; return the followed job's outcome once it ends."""
        outcome = None
        for message in self._drain():
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
        elif kind == "progress":
            view.step, view.total, view.eta_s = msg["step"], msg["total"], msg.get("eta_s")
        elif kind == "preview":
            view.preview, view.preview_step = base64.b64decode(msg["png"]), msg["step"]
        elif kind == "exported":
            view.files = msg["files"]
        elif kind in ("done", "cancelled"):
            return Outcome(view, kind)
        elif kind == "error":
            return Outcome(view, "error", msg.get("message", "the server failed"), msg.get("hint", ""))
        return None

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
                if self._client is None:
                    self._say_state("error", error.hint or error.message)
                # A failed job request ends the followed job; anything else is only reported.
                self._outbox.put(
                    error_event(error.code, error.message, error.hint)
                    if for_job
                    else {"event": "notice", "message": str(error)}
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
        self.device = self._client.request("status").get("device", "")
        self._say_state("ready")
        return self._client

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

    def _cancel(self, job: str) -> None:
        if self._client is not None and job:
            self._client.request("cancel", job=job)

    def _list_jobs(self, settings: ServerSettings) -> None:
        jobs = self._connect(settings).request("list_jobs")["jobs"]
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


def wait_until(
    controller: Controller,
    done: Callable[[], bool],
    on_outcome: Callable[[Outcome], None] | None = None,
    timeout: float = 3600.0,
    interval: float = 0.05,
) -> None:
    """Poll until ``done()`` holds (background mode, where timers never fire); a job's
    outcome goes to ``on_outcome``."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        outcome = controller.poll()
        if outcome is not None and on_outcome is not None:
            on_outcome(outcome)
        time.sleep(interval)
