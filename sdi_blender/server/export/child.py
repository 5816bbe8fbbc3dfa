"""Exports in a child process, so that a crash in native code (xatlas, marching cubes)
ends the child and fails the job, never the server that runs it.

The child is spawned fresh (no inherited CUDA state or threads), runs the export with a
progress callback that stops it when the parent's cancel event is set (the export then
keeps the previous one, as in-process), and sends back the result or the error.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import UserError
from .pipeline import ExportResult, ExportSettings, export_run

_CRASH_HINT = "the server is fine; try another mesh resolution or face budget (see job.log)"


class ExportCrashed(UserError):
    """The export's process died without an answer (e.g. a segfault in a native library)."""

    code = "internal"


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
) -> ExportResult:
    """Run ``export_fn(run, settings, device, progress)`` in a fresh process.

    ``cancel``: a ``threading.Event``-like flag checked every ``poll_s``; ``export_fn`` must be
    importable by name (the child unpickles it).
    """
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child, args=(export_fn, run, settings, device, stop, send), name="sdi-export", daemon=True
    )
    child.start()
    send.close()  # ours: only the child writes, so a dead child reads as EOF
    try:
        while not receive.poll(poll_s):
            if cancel.is_set():
                stop.set()
            if not child.is_alive() and not receive.poll(0):
                raise ExportCrashed(f"the export process died ({_how(child.exitcode)})", hint=_CRASH_HINT)
        kind, payload = receive.recv()
    except EOFError:
        child.join()
        raise ExportCrashed(f"the export process died ({_how(child.exitcode)})", hint=_CRASH_HINT) from None
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    return _unpack(kind, payload)


def _unpack(kind: str, payload: Any) -> ExportResult:
    if kind == "ok":
        return payload
    if kind == "cancelled":
        raise ExportCancelled
    if kind == "user_error":
        code, message, hint = payload
        error = UserError(message, hint)
        error.code = code
        raise error
    last = payload.strip().splitlines()[-1] if payload.strip() else "no traceback"
    error = RuntimeError(f"export failed: {last}")
    error.add_note(f"in the export process:\n{payload}")  # job.log shows the child's traceback
    raise error


def _how(exitcode: int | None) -> str:
    return f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"


def _child(
    export_fn: Callable[..., ExportResult], run: Path, settings: ExportSettings, device: str, stop: Any, send: Any
) -> None:
    def progress(stage: str, fraction: float) -> None:
        if stop.is_set():
            raise _Stop

    try:
        message: tuple[str, Any] = ("ok", export_fn(run, settings, device, progress))
    except _Stop:
        message = ("cancelled", None)
    except UserError as exc:
        message = ("user_error", (exc.code, exc.message, exc.hint))
    except Exception as exc:
        message = _other_error(exc)
    send.send(message)


def _other_error(exc: Exception) -> tuple[str, Any]:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return (
            "user_error",
            ("out_of_memory", f"out of memory: {exc}".splitlines()[0], "lower the mesh resolution or texture size"),
        )
    return ("error", traceback.format_exc())
