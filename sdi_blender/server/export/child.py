"""Exports in a child process, so that a crash in native code (xatlas, marching cubes)
ends the child and fails the job, never the server that runs it.

The child is spawned fresh (no inherited CUDA state or threads), runs the export with a
progress callback that stops it when the parent's cancel event is set (the export then
keeps the previous one, as in-process), and sends back the result or the error.

The child never outlives the server: it exits as soon as its parent is gone (the kernel kills
it on Linux, and a watchdog thread notices a new parent pid everywhere). And an export only
replaces the job's mesh while it is still the job's current export: each start writes a new
claim (``.export.claim``) into the run folder, and the child checks it just before its swap, so
an export left over from a killed server can never overwrite a newer one.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import secrets
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import UserError
from ..util.devices import is_out_of_memory
from ..util.fileio import atomic_write
from .pipeline import ExportResult, ExportSettings, ProgressFn, export_run

CLAIM = ".export.claim"
"""The run folder's current export claim: the token of the export allowed to swap its result in."""
STAGE_EVERY_S = 0.25
"""Within one export stage, progress goes to the parent at most this often."""
_PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies (Linux)

_CRASH_HINT = "the server is fine; try another mesh resolution or face budget (see job.log)"
_FAILED_HINT = "see job.log; a different mesh resolution or --threshold may avoid it"
_OOM_HINT = "lower the mesh resolution or texture size"


class ExportCrashed(UserError):
    """The export's process died without an answer (e.g. a segfault in a native library)."""

    code, reason = "internal", "export"


class ExportFailed(UserError):
    """The export raised an unexpected error; its message names the stage and the cause."""

    code, reason = "internal", "export"


class ExportCancelled(Exception):
    """The cancel event stopped the export; the previous export is kept."""


class _Stop(Exception):
    pass


def export_in_child(
    run: Path,
    settings: ExportSettings,
    device: str,
    cancel: Any,
    export_fn: Callable[..., ExportResult] = export_run,
    poll_s: float = 0.1,
    on_stage: ProgressFn | None = None,
) -> ExportResult:
    """Run ``export_fn(run, settings, device, progress)`` in a fresh process.

    ``cancel``: a ``threading.Event``-like flag checked every ``poll_s``; ``export_fn`` must be
    importable by name (the child unpickles it). ``on_stage(stage, fraction)`` hears the export's
    progress in this process: each new stage, and within one at most every :data:`STAGE_EVERY_S`.
    """
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    claim = secrets.token_hex(8)
    atomic_write(run / CLAIM, claim)  # from now on an older export of this run cannot swap in
    child = ctx.Process(
        target=_child,
        args=(export_fn, run, settings, device, stop, send, claim, os.getpid()),
        name="sdi-export",
        daemon=True,
    )
    child.start()
    send.close()  # ours: only the child writes, so a dead child reads as EOF
    try:
        kind, payload = _receive(receive, child, cancel, stop, poll_s, on_stage)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    return _unpack(kind, payload)


def _receive(
    receive: Any, child: Any, cancel: Any, stop: Any, poll_s: float, on_stage: ProgressFn | None
) -> tuple[str, Any]:
    """The child's answer, passing its stage messages to ``on_stage`` meanwhile."""
    try:
        while True:
            if not receive.poll(poll_s):
                if cancel.is_set():
                    stop.set()
                if not child.is_alive() and not receive.poll(0):
                    raise ExportCrashed(f"the export process died ({_how(child.exitcode)})", hint=_CRASH_HINT)
                continue
            kind, payload = receive.recv()
            if kind != "stage":
                return kind, payload
            if on_stage is not None:
                on_stage(*payload)
    except EOFError:
        child.join()
        raise ExportCrashed(f"the export process died ({_how(child.exitcode)})", hint=_CRASH_HINT) from None


def _unpack(kind: str, payload: Any) -> ExportResult:
    if kind == "ok":
        return payload
    if kind == "cancelled":
        raise ExportCancelled
    if kind == "user_error":
        code, message, hint = payload
        error = UserError(message, hint)
        error.code = code
        if code == "out_of_memory":
            error.reason = "export"  # type: ignore[attr-defined]  # protocol.ERROR_REASONS
        raise error
    stage, what, trace = payload
    failure = ExportFailed(f"export failed during {stage}: {what.splitlines()[0]}", hint=_FAILED_HINT)
    failure.add_note(f"in the export process:\n{trace}")  # job.log shows the child's traceback
    raise failure


def _how(exitcode: int | None) -> str:
    return f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"


def _child(
    export_fn: Callable[..., ExportResult],
    run: Path,
    settings: ExportSettings,
    device: str,
    stop: Any,
    send: Any,
    claim: str,
    parent: int,
) -> None:
    _die_with(parent)

    current = ["load"]  # the stage running, for the error of an unexpected failure
    sent = [0.0]  # when the last stage message went to the parent

    def progress(stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage != current[0] or now - sent[0] >= STAGE_EVERY_S:
            send.send(("stage", (stage, fraction)))
            sent[0] = now
        current[0] = stage
        if stop.is_set():
            raise _Stop
        if stage == "write" and fraction >= 1.0 and not _still_claimed(run, claim):
            raise _Stop  # a newer export of this run started: keep its result, not ours

    try:
        message: tuple[str, Any] = ("ok", export_fn(run, settings, device, progress))
    except _Stop:
        message = ("cancelled", None)
    except UserError as exc:
        message = ("user_error", (exc.code, exc.message, exc.hint))
    except Exception as exc:
        message = _other_error(exc, current[0])
    send.send(message)


def _still_claimed(run: Path, claim: str) -> bool:
    try:
        return (run / CLAIM).read_text(encoding="utf-8") == claim
    except OSError:
        return False


def _die_with(parent: int, poll_s: float = 0.5) -> None:
    """End this process when ``parent`` ends, however it ends (kill -9 included)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the watchdog below still covers it
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="sdi-export-watchdog", daemon=True).start()


def _other_error(exc: Exception, stage: str) -> tuple[str, Any]:
    if is_out_of_memory(exc):
        return ("user_error", ("out_of_memory", f"out of memory during {stage}", _OOM_HINT))
    return ("error", (stage, f"{type(exc).__name__}: {exc}".strip(), traceback.format_exc()))
