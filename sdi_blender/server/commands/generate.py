"""The ``generate`` command: start or resume a run with a progress bar.

Ctrl-C asks the trainer to stop after the current step and leaves a checkpoint to
resume from; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ... import catalog
from ...errors import program
from ..diffusion.interface import Prior
from ..training import run_dir
from ..training.config import TrainConfig
from ..training.plan import GenerateRequest, plan_run
from ..training.priors import load_prior
from ..training.trainer import Progress, RunResult, Trainer, TrainerCallbacks
from ..training.variations import plan_variations, write_contact_sheet
from ..util.console import StepBar
from ..util.devices import resolve_device


class _ProgressBar(TrainerCallbacks):
    def __init__(self, total: int, initial: int) -> None:
        self.bar = StepBar(total, initial)

    def on_progress(self, p: Progress) -> None:
        self.bar.update(p.step, p.t, p.losses["total"])

    def on_notice(self, step: int, message: str) -> None:
        self.bar.bar.write(f"step {step}: {message}", file=sys.stderr)  # above the bar, not through it


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


def _aborted(out: Path, saved_step: int, steps: int, resume: bool) -> str:
    """Leave ``out`` so that what the message says is true: a new run with no checkpoint yet is
    removed; one with a checkpoint is left for ``--resume``."""
    if saved_step == 0 and not resume:
        run_dir.remove_run(out)
        return "interrupted before the first checkpoint; nothing was kept"
    run_dir.write_state(out, "interrupted", saved_step, steps, "aborted with Ctrl-C")
    return f"interrupted; the run resumes from step {saved_step} with: {resume_command(out)}"


def resume_command(out: Path) -> str:
    """The command line, runnable as written, that continues the run in ``out``."""
    return f"{program('sdi-blender')} generate --resume {shlex.quote(str(out))}"


def start_lines(config: TrainConfig, device: torch.device, out: Path, steps: int) -> list[str]:
    """What a run is and what it will cost, before anything slow starts (and a warning where
    the cost is hours)."""
    lines = [
        f"{config.method.upper()} '{config.prompt}': model {config.model}, preset {config.preset}, "
        f"{steps} steps at {config.resolution} px on {device} → {out}",
        "estimated: " + catalog.estimate(config.preset, device.type, config.model, steps),
    ]
    if device.type == "cpu" and catalog.model_kind(config.model) == "stable-diffusion":
        lines.append("warning: Stable Diffusion on a CPU takes many hours; use a GPU (--device cuda) if there is one")
    return lines


def train_in_terminal(trainer: Trainer, aborted: Callable[[int], str]) -> RunResult:
    """Run ``trainer`` with a progress bar. The first Ctrl-C stops after the step; a second aborts
    with the message ``aborted(last saved step)``, which leaves the run folder as it says."""
    bar = trainer.callbacks = _ProgressBar(trainer.config.steps, trainer.step)  # after all checks passed
    try:
        with _CancelOnInterrupt() as cancel:
            return trainer.run(cancel)
    except KeyboardInterrupt:  # the second Ctrl-C: abort now
        raise KeyboardInterrupt(aborted(trainer.saved_step)) from None
    finally:
        bar.bar.close()


def run_generate(req: GenerateRequest, prior: Prior | None = None) -> RunResult:
    """Plan, build and train; prints where the results are. ``prior``: an already loaded model
    (several runs in a row, e.g. ``compare``)."""
    config, resume = plan_run(req)
    device = prior.device if prior is not None else resolve_device(req.device)
    steps = config.steps - (run_dir.read_state(req.out).get("step", 0) if resume else 0)
    for line in start_lines(config, device, req.out, steps):
        print(line, file=sys.stderr, flush=True)
    # The model loads before the run folder is touched: a missing model leaves nothing behind.
    if prior is None or prior.model_id != config.model:
        print(f"loading the model {config.model}…", file=sys.stderr, flush=True)
        prior = load_prior(config.model, device=device)
    if not resume:
        run_dir.prepare_new_run(req.out, req.overwrite)
    trainer = Trainer(config, req.out, prior=prior, resume=resume)
    result = train_in_terminal(trainer, lambda saved: _aborted(req.out, saved, config.steps, resume))
    if result.status == "cancelled":
        print(f"cancelled at step {result.step}; continue with: {resume_command(req.out)}", file=sys.stderr)
    else:
        print(f"done: {result.step} steps in {req.out} (turntable.png, loss_curve.png, checkpoints/)", file=sys.stderr)
    return result


def run_variations(req: GenerateRequest, seeds: list[int]) -> list[RunResult]:
    """Train one run per seed in ``req.out/seed-N``, one after another, then write the contact
    sheet ``req.out/variations.png``. Every run is checked before the first trains; Ctrl-C stops
    after the current run's step, leaving the runs so far (and no sheet)."""
    plans = plan_variations(req, seeds)
    device = resolve_device(req.device)
    print(f"loading the model {plans[0][1].model}…", file=sys.stderr, flush=True)
    prior = load_prior(plans[0][1].model, device=device)
    results = []
    for i, (run, _) in enumerate(plans, start=1):
        print(f"variation {i}/{len(plans)}: seed {seeds[i - 1]}", file=sys.stderr, flush=True)
        results.append(run_generate(run, prior))
        if results[-1].status == "cancelled":
            return results
    sheet = write_contact_sheet(req.out, [run.out for run, _ in plans], seeds)
    print(f"wrote {sheet}; promote one with: {resume_command(plans[0][0].out)} --steps N", file=sys.stderr)
    return results
