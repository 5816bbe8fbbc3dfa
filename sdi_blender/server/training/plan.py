"""Planning a run from what the user asked for: a new run's config, or a resumed one's, validated
before anything is written (the CLI's ``generate`` and the server's jobs share it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UserError
from . import run_dir
from .config import DEFAULT_PRESET, PRESETS, TrainConfig, make_config

RESUMABLE = ("steps", "prompt", "negative_prompt", "preview_every", "checkpoint_every")
"""Settings a resumed run may change; everything else is fixed by the run folder."""


@dataclass
class GenerateRequest:
    """What the user asked for; ``None`` means "not given"."""

    out: Path
    prompt: str | None = None
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    preset: str | None = None
    settings: dict[str, Any] | None = None
    """Overrides of :class:`TrainConfig` fields (dotted keys for nested ones)."""


def plan_run(req: GenerateRequest) -> tuple[TrainConfig, bool]:
    """The run's config, validated, and whether it resumes; touches no file."""
    settings = {k: v for k, v in (req.settings or {}).items() if v is not None}
    if not req.resume:
        if req.prompt is None:
            raise UserError("a prompt is needed to start a run", hint="or pass --resume RUN_DIR")
        config = make_config(req.prompt, req.preset or DEFAULT_PRESET, **settings)
        config.validate()
        run_dir.check_new_run(req.out, req.overwrite)
        return config, False
    fixed = sorted(k for k in settings if k not in RESUMABLE)
    if fixed:
        raise UserError(
            f"cannot change {', '.join(fixed)} when resuming",
            hint="only --steps (or --preset), --prompt and preview/checkpoint intervals can change",
        )
    if req.preset is not None and "steps" in settings:
        raise UserError("give --steps or --preset when resuming, not both")
    config = TrainConfig.from_json(run_dir.check_resumable(req.out))
    done = run_dir.read_state(req.out).get("step", 0)
    if req.prompt is not None:
        config.prompt = req.prompt
    for key in ("negative_prompt", "preview_every", "checkpoint_every"):
        if key in settings:
            setattr(config, key, settings[key])
    if "steps" in settings:
        if settings["steps"] <= 0:
            raise UserError(f"steps must be positive, got {settings['steps']}")
        config.steps = done + settings["steps"]  # more steps on top of where the run is
    elif req.preset is not None:
        config.steps = _preset_steps(req, done)
    elif done >= config.steps:
        raise UserError(
            f"the run in '{req.out}' is already complete ({done} steps)",
            hint="pass --steps N to continue it for N more steps",
        )
    config.validate()
    return config, True


def _preset_steps(req: GenerateRequest, done: int) -> int:
    """A resumed run promoted to ``req.preset``: trained on to that preset's step count, at its own
    render size and settings (extra steps refine at the schedules' final values)."""
    if req.preset not in PRESETS:
        raise UserError(f"unknown preset '{req.preset}'", hint=f"choose one of {', '.join(PRESETS)}")
    steps = PRESETS[req.preset]["steps"]
    if steps <= done:
        raise UserError(
            f"the run in '{req.out}' has {done} steps already, preset {req.preset} has {steps}",
            hint="pass --steps N to continue it for N more steps",
        )
    return steps
