"""The run checkpoint (``checkpoints/last.pt``): its format, writing, reading, and the field or
renderer it holds, for the trainer, export and evaluation alike.

A checkpoint is read with ``torch.load(weights_only=True)``: it holds only tensors, numbers,
strings and plain containers (weights, optimiser and scaler state, the loss history, the random
generators' states), so a file planted in a run folder cannot run code when it is opened.
Everything wrong with a file — truncated, foreign, another format, weights that do not fit
the run's config — is a :class:`~sdi_blender.errors.UserError` naming the checkpoint;
anything else that fails is a programming error and propagates as it is.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import UserError, program
from ..scene.background import EnvironmentBackground
from ..scene.field import ImplicitVolume
from ..scene.renderer import VolumeRenderer
from . import run_dir
from .config import TrainConfig

FORMAT = 1
"""Version of the checkpoint's layout; a reader refuses any other."""

_UNREADABLE = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError, OSError)
"""What ``torch.load`` raises for a truncated, foreign or unsafe file."""
_MISMATCH = (RuntimeError, KeyError, ValueError, TypeError)
"""What ``load_state_dict`` raises for tensors that do not fit the module."""


def to_bytes(state: dict[str, Any]) -> bytes:
    """The checkpoint file's bytes for ``state`` (stamped with :data:`FORMAT`)."""
    buf = io.BytesIO()
    torch.save({**state, "format": FORMAT}, buf)
    return buf.getvalue()


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a reader never sees half a file)."""
    run_dir.atomic_write(path, to_bytes(state))


def read(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, on the CPU; a bad file is a one-line :class:`UserError`."""
    if not path.is_file():
        raise UserError(f"there is no checkpoint at '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as exc:
        raise UserError(f"cannot read checkpoint '{path}': {_first_line(exc)}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"checkpoint '{path}' has an unknown format", hint="it was not written by this version of sdi-blender"
        )
    return state


def load_into(module: nn.Module, tensors: Any, path: Path, what: str) -> None:
    """``module.load_state_dict(tensors)``; tensors that do not fit are a :class:`UserError`."""
    try:
        module.load_state_dict(tensors)
    except _MISMATCH as exc:
        raise UserError(f"checkpoint '{path}' does not match the run's {what}: {_first_line(exc)}") from exc


def read_run(run: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """A run folder's config and checkpoint, for export and evaluation."""
    if not (run / run_dir.CONFIG).is_file() or not (run / run_dir.CHECKPOINT).is_file():
        raise UserError(
            f"'{run}' has no checkpoint", hint=f"run {program('sdi-blender')} generate first, or check the folder"
        )
    config = TrainConfig.from_json((run / run_dir.CONFIG).read_text(encoding="utf-8"))
    return config, read(run / run_dir.CHECKPOINT)


def load_field(run: Path, device: torch.device) -> tuple[ImplicitVolume, TrainConfig, int, dict[str, Any]]:
    """The run's field at its checkpoint, with the hash-grid levels it had reached; also the
    config, the step and the whole checkpoint (for its background and occupancy grid)."""
    config, state = read_run(run)
    field = ImplicitVolume(config.field)
    load_into(field, _entry(state, "field", run), run / run_dir.CHECKPOINT, "field settings")
    step = int(_entry(state, "step", run))
    field.set_step(config.paper_step(step))
    return field.to(device).eval(), config, step, state


def load_renderer(run: Path, device: torch.device) -> tuple[VolumeRenderer, TrainConfig, int, dict[str, Any]]:
    """The run's field, background and occupancy grid at its checkpoint, ready to render."""
    field, config, step, state = load_field(run, device)
    path = run / run_dir.CHECKPOINT
    background = EnvironmentBackground(config.background)
    load_into(background, _entry(state, "background", run), path, "background settings")
    renderer = VolumeRenderer(field, background, config.field.radius, config.renderer, config.shading)
    if renderer.estimator is not None and state.get("renderer") is not None:
        load_into(renderer.estimator, state["renderer"], path, "renderer settings")
    return renderer.to(device).eval(), config, step, state


def _entry(state: dict[str, Any], key: str, run: Path) -> Any:
    if key not in state:
        raise UserError(f"checkpoint '{run / run_dir.CHECKPOINT}' has no {key}")
    return state[key]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
