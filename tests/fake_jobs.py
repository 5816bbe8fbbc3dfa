"""A job manager whose trainer only counts its steps: for tests of the service around it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

from sdi_blender.server.service.jobs import JobManager
from sdi_blender.server.training.trainer import RunResult


def fake_manager(
    jobs: Path,
    emit: Callable[[str, dict], None],
    *,
    outcome: BaseException | None = None,
    configs: list | None = None,
    **kw,
) -> JobManager:
    """A CPU ``JobManager`` on ``jobs``: its trainer records each config in ``configs`` (when
    given), then raises ``outcome`` or reports every step done."""

    class FakeTrainer:
        def __init__(self, config, run, *, prior, callbacks, resume) -> None:
            self.steps = config.steps
            if configs is not None:
                configs.append(config)

        def run(self, cancel) -> RunResult:
            if outcome is not None:
                raise outcome
            return RunResult("done", self.steps)

    return JobManager(
        jobs,
        emit,
        device=torch.device("cpu"),
        model="tiny",
        trainer_factory=FakeTrainer,
        prior_factory=lambda model, device: SimpleNamespace(model_id=model, device=device),
        **kw,
    )
