"""A job's folder on disk: ``job.json`` (what the server knows of the job) and ``job.log`` beside
the run the trainer writes, read back after a restart, and the checks and repairs of the folder
(symbolic links refused, temporary files of cut-short writes removed, a stale state corrected)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...protocol import encodable
from ..training import run_dir

JOB_FILE, LOG_FILE = "job.json", "job.log"
_SAVED = ("id", "kind", "request", "status", "created", "error")  # what job.json holds
_log = logging.getLogger("sdi_blender.server")


class Conflict(UserError):
    """The job's state does not allow the request."""

    code = "conflict"


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


_JOB_TYPES: dict[str, Any] = {
    "id": str,
    "kind": str,
    "request": dict,
    "status": str,
    "created": (int, float),
    "error": (dict, type(None)),
}


def read_job(path: Path) -> Job | None:
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


def check_no_links(folder: Path) -> None:
    """Refuse a job folder holding symlinks: writing through one would write outside the jobs folder."""
    links = [p for p in [folder, *folder.rglob("*")] if p.is_symlink()]
    if links:
        raise Conflict(
            f"job folder '{folder.name}' holds a symbolic link ({links[0].relative_to(folder.parent)})",
            hint="a job folder must hold real files only; remove the link",
        )


def remove_stale_temp_files(folder: Path) -> None:
    """Temporary files of atomic writes cut short by a kill (``.<name>.<pid>.tmp``)."""
    for tmp in folder.rglob(".*.tmp"):
        if tmp.is_file() and not tmp.is_symlink():
            best_effort(tmp.unlink)


def best_effort(write: Callable[..., None], *args: Any) -> None:
    """A bookkeeping write that must not stop a job from ending (its event still goes out)."""
    try:
        write(*args)
    except OSError as exc:
        _log.warning("could not record a job's state: %s", exc)


def end_run(run: Path, status: str, message: str = "") -> None:
    """Correct the run folder's state.json when the trainer could not (it still says running)."""
    state = run_dir.read_state(run)
    if state.get("status") == "running":
        run_dir.write_state(run, status, state.get("step", 0), state.get("total", 0), message)
