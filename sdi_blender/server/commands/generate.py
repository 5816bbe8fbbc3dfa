"""The ``generate`` command: start or resume a run with a progress bar.

Ctrl-C asks the trainer to stop after the current step and leaves a checkpoint to
resume from; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UserError
from ..training import run_dir
from ..training.config import TrainConfig, make_config
from ..training.priors import Prior, load_prior
from ..training.trainer import Progress, RunResult, Trainer, TrainerCallbacks
from ..util.console import StepBar
from ..util.devices import resolve_device

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
        config = make_config(req.prompt, req.preset or "standard", **settings)
        config.validate()
        run_dir.check_new_run(req.out, req.overwrite)
        return config, False
    fixed = sorted(k for k in settings if k not in RESUMABLE) + (["preset"] if req.preset else [])
    if fixed:
        raise UserError(
            f"cannot change {', '.join(fixed)} when resuming",
            hint="only --steps, --prompt and preview/checkpoint intervals can change",
        )
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
    elif done >= config.steps:
        raise UserError(
            f"the run in '{req.out}' is already complete ({done} steps)",
            hint="pass --steps N to continue it for N more steps",
        )
    config.validate()
    return config, True


class _ProgressBar(TrainerCallbacks):
    def __init__(self, total: int, initial: int) -> None:
        self.bar = StepBar(total, initial)

    def on_progress(self, p: Progress) -> None:
        self.bar.update(p.step, p.t, p.losses["total"])


class _CancelOnInterrupt:
    """First Ctrl-C: stop after this step. Second: abort now."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self) -> _CancelOnInterrupt:
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort)", file=sys.stderr)


def run_generate(req: GenerateRequest, prior: Prior | None = None) -> RunResult:
    """Plan, build and train; prints where the results are. ``prior``: an already loaded model
    (several runs in a row, e.g. ``compare``)."""
    config, resume = plan_run(req)
    # The model loads before the run folder is touched: a missing model leaves nothing behind.
    if prior is None or prior.model_id != config.model:
        prior = load_prior(config.model, device=resolve_device(req.device))
    if not resume:
        run_dir.prepare_new_run(req.out, req.overwrite)
    trainer = Trainer(config, req.out, prior=prior, resume=resume)
    bar = trainer.callbacks = _ProgressBar(config.steps, trainer.step)  # after all checks passed
    try:
        with _CancelOnInterrupt() as cancel:
            result = trainer.run(cancel)
    finally:
        bar.bar.close()
    if result.status == "cancelled":
        print(
            f"cancelled at step {result.step}; continue with: sdi-blender generate --resume {req.out}", file=sys.stderr
        )
    else:
        print(f"done: {result.step} steps in {req.out} (turntable.png, loss_curve.png, checkpoints/)", file=sys.stderr)
    return result
