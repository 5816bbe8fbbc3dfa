"""What to do with a run folder a command finds already there (``compare`` and ``batch``):
keep it when it finished with the same settings, resume it when it was cut short with them,
train it again otherwise."""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import UserError
from ..training import run_dir
from ..training.config import TrainConfig

KEEP, RESUME, TRAIN = "keep", "resume", "train"
"""The actions :func:`reuse_action` returns."""


def slug(text: str, limit: int = 60) -> str:
    """``text`` as a folder name: lower case, runs of other characters as one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def same_settings(run: Path, expected: TrainConfig) -> bool:
    """Whether ``run`` was trained with ``expected``'s settings (a changed --steps reruns it)."""
    try:
        saved = TrainConfig.from_json((run / run_dir.CONFIG).read_text(encoding="utf-8"))
    except (OSError, UserError):
        return False
    return saved.to_json() == expected.to_json()


def complete(run: Path) -> bool:
    """Whether the trainer finished ``run``: done, or stopped by a NaN loss (a result too)."""
    state = run_dir.read_state(run)
    return state.get("status") in ("done", "failed") and (run / run_dir.CHECKPOINT).is_file()


def reuse_action(run: Path, expected: TrainConfig) -> str:
    """:data:`KEEP` a complete run with these settings, :data:`RESUME` one cut short with them
    from its checkpoint, else :data:`TRAIN` (anew, replacing what the folder holds)."""
    if not same_settings(run, expected):
        return TRAIN
    if complete(run):
        return KEEP
    step = run_dir.read_state(run).get("step")
    resumable = (run / run_dir.CHECKPOINT).is_file() and isinstance(step, int) and 0 < step < expected.steps
    return RESUME if resumable else TRAIN
