"""The ``compare`` command: SDS and SDI on one prompt with the same seeds and settings,
through the same trainer, then ``eval`` on all of them (the paper's comparison)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import catalog
from ...errors import UserError
from ..diffusion.interface import Prior
from ..evaluation.clip_metrics import DEFAULT_CLIP
from ..evaluation.evaluate import evaluate, group_summary
from ..evaluation.report import check_report_dir, write_report
from ..training.config import TrainConfig, make_config
from ..training.plan import GenerateRequest
from ..training.priors import load_prior
from ..training.trainer import LossDiverged
from ..util.devices import resolve_device
from .generate import run_generate
from .reuse import KEEP, reuse_action, slug

METHODS = tuple(catalog.METHODS)[::-1]
"""The catalog's methods, the baseline (SDS) first."""


@dataclass
class CompareRequest:
    prompt: str
    out: Path
    seeds: int = 3
    preset: str = "draft"
    clip: str = DEFAULT_CLIP
    views: int = 8
    size: int = 256
    device: str = "auto"
    settings: dict[str, Any] = field(default_factory=dict)
    """Training overrides shared by every run (steps, resolution, model, …)."""


def default_out(prompt: str) -> Path:
    """compare/<prompt as a folder name>."""
    return Path("compare") / slug(prompt)


def run_compare(req: CompareRequest) -> Path:
    """Train what is missing, evaluate everything; returns the report folder."""
    if not 1 <= req.seeds <= 100:
        raise UserError(f"seeds must be between 1 and 100, got {req.seeds}")
    report = req.out / "report"
    check_report_dir(report)  # before hours of training, not after
    runs, prior = [], None
    plan = [(seed, method) for seed in range(req.seeds) for method in METHODS]
    for i, (seed, method) in enumerate(plan, start=1):
        run = req.out / f"{method}-seed{seed}"
        runs.append(run)
        header = f"{i}/{len(plan)}: {method.upper()} seed {seed}"
        if reuse_action(run, _config(req, method, seed)) == KEEP:
            print(f"{header}: done already with these settings, kept ({run})", file=sys.stderr)
            continue
        print(f"{header} → {run}", file=sys.stderr)
        prior = prior or load_prior(
            req.settings.get("model") or catalog.DEFAULT_MODEL, device=resolve_device(req.device)
        )
        _train(req, run, method, seed, prior)
    results = evaluate(runs, req.clip, req.views, req.size, resolve_device(req.device))
    write_report(
        results,
        group_summary(results),
        report,
        {
            "clip": req.clip,
            "views": req.views,
            "size": req.size,
            "preset": req.preset,
            "seeds": req.seeds,
            "prompt": req.prompt,
        },
    )
    return report


def _config(req: CompareRequest, method: str, seed: int) -> TrainConfig:
    """The config a run of this comparison is trained with."""
    return make_config(req.prompt, req.preset, **_settings(req, method, seed))


def _settings(req: CompareRequest, method: str, seed: int) -> dict[str, Any]:
    """The training settings of one run of the comparison."""
    return {**req.settings, "method": method, "seed": seed}


def _train(req: CompareRequest, run: Path, method: str, seed: int, prior: Prior) -> None:
    settings = _settings(req, method, seed)
    gen = GenerateRequest(
        out=run, prompt=req.prompt, overwrite=True, device=req.device, preset=req.preset, settings=settings
    )
    try:
        run_generate(gen, prior=prior)
    except LossDiverged as exc:  # a diverged seed is a result of the comparison, not a failure
        print(f"{run}: {exc.message}", file=sys.stderr)
