"""The run folder: its layout, safe creation, and atomic writes.

A run folder holds ``config.json`` (the :class:`TrainConfig`), ``state.json`` (status
and step), ``checkpoints/last.pt``, ``metrics.jsonl`` (loss terms per step),
``previews/step_NNNNNN.png``, and at the end ``loss_curve.png`` and ``turntable.png``.
Every file is written to a temporary name and renamed, so a crash never leaves a
half-written file that a later resume would trust.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ...catalog import CHECKPOINT, CONFIG, EXPORT_DIR, LOSS_CURVE, METRICS, PREVIEWS, STATE, TURNTABLE
from ...errors import UserError
from ..util.fileio import atomic_write, probe_writable

RUN_ENTRIES = (CONFIG, STATE, "checkpoints", METRICS, PREVIEWS, LOSS_CURVE, TURNTABLE, EXPORT_DIR)
"""What a run creates (and ``--overwrite`` removes); anything else is left alone."""


def write_state(run: Path, status: str, step: int, total: int, message: str = "") -> None:
    """Record the run's status: running, done, cancelled, interrupted or failed."""
    atomic_write(
        run / STATE, json.dumps({"status": status, "step": step, "total": total, "message": message}, indent=2)
    )


def read_state(run: Path) -> dict:
    try:
        return json.loads((run / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _check_writable(run: Path) -> None:
    """Raise unless ``run`` is, or could be made, a writable folder; creates nothing."""
    if run.exists() and not run.is_dir():
        raise UserError(f"run folder '{run}' is a file")
    existing = run
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"'{existing}' is a file")
        probe_writable(existing)
    except OSError as exc:
        raise UserError(f"run folder '{run}' is not writable: {exc.strerror or exc}") from exc


def check_new_run(run: Path, overwrite: bool) -> None:
    """Raise unless ``run`` can take a new run: an existing or foreign one needs ``overwrite``."""
    if run.is_dir() and not overwrite:
        if (run / CONFIG).exists():
            raise UserError(
                f"'{run}' already holds a run", hint="continue it with --resume, or replace it with --overwrite"
            )
        if any(run.iterdir()):
            raise UserError(
                f"'{run}' is not empty and holds no run", hint="choose an empty or new folder, or pass --overwrite"
            )
    _check_writable(run)


def prepare_new_run(run: Path, overwrite: bool) -> None:
    """Create ``run`` for a new run, removing an old run's files when ``overwrite``."""
    check_new_run(run, overwrite)
    run.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_run(run)


def remove_run(run: Path) -> None:
    """Remove what a run creates in ``run`` (:data:`RUN_ENTRIES`); anything else stays, and so
    does the folder unless it ends up empty."""
    for name in RUN_ENTRIES:
        target = run / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def check_resumable(run: Path) -> str:
    """The run's config text; raises :class:`UserError` if ``run`` has nothing to resume."""
    if not (run / CONFIG).is_file():
        raise UserError(f"'{run}' holds no run to resume (no {CONFIG})")
    if not (run / CHECKPOINT).is_file():
        raise UserError(f"'{run}' has no checkpoint to resume from ({CHECKPOINT} is missing)")
    _check_writable(run)
    return (run / CONFIG).read_text(encoding="utf-8")
