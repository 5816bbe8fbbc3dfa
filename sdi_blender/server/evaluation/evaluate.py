"""Evaluation of finished runs, as the paper compares methods: views at the evaluation
camera, CLIP score against the run's prompt, CLIP-IQA quality, and divergence.

A run has *diverged* when its loss became NaN/inf (the trainer stopped it), its field
holds non-finite weights, or its density is empty (mean opacity over the views below
:data:`EMPTY_OPACITY`) or exploded (above :data:`FULL_OPACITY`: the density fills the
evaluation views). Diverged runs are counted, and kept out of the metric means.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...catalog import TOYWORLD
from ...errors import UserError
from ..scene.cameras import turntable_cameras
from ..scene.renderer import VolumeRenderer, as_image, render_views
from ..training import run_dir
from ..training.checkpoint import load_renderer
from ..training.config import TrainConfig
from ..training.reports import view_azimuths
from .clip_metrics import ClipJudge
from .toy_score import run_view_scores

EMPTY_OPACITY = 0.005
"""Mean opacity of the views below which nothing is there."""
FULL_OPACITY = 0.9
"""Mean opacity above which the density fills the views: an object seen from 2 units away at a
70° field of view covers far less of the frame."""


@dataclass
class RunEval:
    """One run's views and numbers (per view, in turntable order)."""

    run: Path
    prompt: str
    method: str
    seed: int
    step: int
    clip_score: list[float]
    clip_iqa: list[float]
    opacity: list[float]
    diverged: str
    """Why the run counts as diverged; empty when it did not."""
    truth: dict[str, float] = field(default_factory=dict)
    """Toy-world runs only: PSNR and mask IoU of the views against the known object."""
    status: str = "done"
    """The run's state: done, or cancelled / interrupted / running / failed (then it is unfinished)."""
    total: int = 0
    """The steps the run was asked for."""
    preset: str = ""
    """The preset the run's settings started from."""
    views: list[Tensor] = field(repr=False, default_factory=list)
    history: list[dict[str, float]] = field(repr=False, default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether the run completed its steps (only finished runs enter the means)."""
        return self.status == "done"

    @property
    def label(self) -> str:
        return f"{self.run.name} ({self.method.upper()}, seed {self.seed})"

    def summary(self) -> dict[str, Any]:
        """The run as metrics.json lists it."""
        return {
            "run": str(self.run),
            "label": self.label,
            "prompt": self.prompt,
            "method": self.method,
            "seed": self.seed,
            "preset": self.preset,
            "step": self.step,
            "total": self.total,
            "status": self.status,
            "finished": self.finished,
            "diverged": bool(self.diverged),
            "diverged_reason": self.diverged,
            "clip_score": _mean(self.clip_score),
            "clip_iqa": _mean(self.clip_iqa),
            "opacity": _mean(self.opacity),
            **self.truth,
            "views": [
                {
                    "view": i,
                    "azimuth_deg": a,
                    "clip_score": c,
                    "clip_iqa": q,
                    "opacity": o,
                }
                for i, (a, c, q, o) in enumerate(
                    zip(view_azimuths(len(self.clip_score)), self.clip_score, self.clip_iqa, self.opacity)
                )
            ],
        }


ViewDone = Callable[[int], None]
"""on_view(done) after each rendered view: the count of views done so far."""


def evaluate_run(
    run: Path, judge: ClipJudge, views: int, size: int, device: torch.device, on_view: ViewDone | None = None
) -> RunEval:
    """Render ``views`` turntable views at the evaluation camera and score them."""
    if not (run / run_dir.CHECKPOINT).is_file():
        return _stopped_before_checkpoint(run, views, size)
    renderer, config, step, state = load_renderer(run, device)
    cams = turntable_cameras(views, size, size, config.cameras).to(device)
    outs = []
    for i in range(views):  # one at a time, to say how far it got
        outs += render_views(renderer, cams[i])
        if on_view is not None:
            on_view(i + 1)
    images = [as_image(out) for out in outs]
    opacity = [float(out.opacity.mean()) for out in outs]
    batch = torch.stack(images)
    history = list(state.get("history", []))
    truth = run_view_scores(config, outs) if config.model == TOYWORLD else {}
    return RunEval(
        truth=truth,
        status=str(run_dir.read_state(run).get("status", "done")),
        total=config.steps,
        preset=config.preset,
        run=run,
        prompt=config.prompt,
        method=config.method,
        seed=config.seed,
        step=step,
        clip_score=judge.clip_score(batch, config.prompt).tolist(),
        clip_iqa=judge.clip_iqa(batch).tolist(),
        opacity=opacity,
        diverged=divergence(run, renderer, opacity, history),
        views=images,
        history=history,
    )


def _stopped_before_checkpoint(run: Path, views: int, size: int) -> RunEval:
    """A run the trainer stopped (NaN) before its first checkpoint: diverged, nothing to render."""
    config = TrainConfig.from_json((run / run_dir.CONFIG).read_text(encoding="utf-8"))
    blank, nan = [torch.zeros(3, size, size)] * views, [float("nan")] * views
    return RunEval(
        run=run,
        prompt=config.prompt,
        method=config.method,
        seed=config.seed,
        step=0,
        clip_score=nan,
        clip_iqa=nan,
        opacity=nan,
        views=blank,
        status="failed",
        total=config.steps,
        preset=config.preset,
        diverged="loss became NaN/inf before the first checkpoint",
    )


def divergence(
    run: Path, renderer: VolumeRenderer, opacity: Sequence[float], history: Sequence[dict[str, float]]
) -> str:
    """Why the run diverged (see the module doc), or "" when it did not."""
    state = run_dir.read_state(run)
    if state.get("status") == "failed" and "NaN" in state.get("message", ""):
        return "loss became NaN/inf"
    if any(not math.isfinite(v) for h in history for k, v in h.items() if k not in ("step", "t")):
        return "loss became NaN/inf"
    if not all(torch.isfinite(p).all() for p in renderer.field.parameters()):
        return "non-finite field weights"
    mean = _mean(opacity)
    if not math.isfinite(mean) or mean > FULL_OPACITY:
        return f"exploded density (mean opacity {mean:.3f})"
    if mean < EMPTY_OPACITY:
        return f"empty density (mean opacity {mean:.4f})"
    return ""


def evaluate(
    runs: Sequence[Path],
    clip: str,
    views: int = 8,
    size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[RunEval]:
    """Evaluate every run with one CLIP; a folder that is not a run is a one-line error.

    With ``progress`` a bar per run on stderr counts its views ("eval run 2/4 NAME: 3/8 views").
    """
    if views < 1 or size < 16:
        raise UserError(f"need at least 1 view of at least 16 px, got {views} views of {size} px")
    missing = [str(r) for r in runs if not _evaluable(Path(r))]
    if missing:
        raise UserError(
            f"not a run with a checkpoint: {', '.join(missing[:3])}", hint="pass the folders sdi-blender generate wrote"
        )
    device = torch.device(device)
    judge = ClipJudge(clip, device=device)
    results = []
    for i, run in enumerate(runs, start=1):
        bar = _view_bar(f"eval run {i}/{len(runs)} {Path(run).name}", views) if progress else None
        try:
            results.append(evaluate_run(Path(run), judge, views, size, device, _advance(bar) if bar else None))
        finally:
            if bar is not None:
                bar.close()
    return results


def _view_bar(label: str, views: int) -> Any:
    from tqdm import tqdm

    # Every view is shown: a view takes a render, far longer than a line of output.
    return tqdm(total=views, desc=label, unit="view", file=sys.stderr, mininterval=0, miniters=1, dynamic_ncols=True)


def _advance(bar: Any) -> ViewDone:
    return lambda done: bar.update(done - bar.n)


def _evaluable(run: Path) -> bool:
    """A run folder with a checkpoint, or one that failed before its first."""
    if (run / run_dir.CHECKPOINT).is_file():
        return True
    return (run / run_dir.CONFIG).is_file() and run_dir.read_state(run).get("status") == "failed"


def group_summary(results: Sequence[RunEval]) -> list[dict[str, Any]]:
    """Per prompt and method: how many runs, the share that diverged, and the means of the
    others that finished (the paper's comparison over seeds); cancelled or interrupted runs are
    counted as unfinished and left out of the means."""
    groups: dict[tuple[str, str], list[RunEval]] = {}
    for r in results:
        groups.setdefault((r.prompt, r.method), []).append(r)
    out = []
    for (prompt, method), members in groups.items():
        ok = [r for r in members if not r.diverged and r.finished]
        diverged = sum(bool(r.diverged) for r in members)
        out.append(
            {
                "prompt": prompt,
                "method": method,
                "runs": len(members),
                "diverged": diverged,
                "diverged_share": diverged / len(members),
                "unfinished": sum(not r.finished and not r.diverged for r in members),
                "clip_score": _mean([v for r in ok for v in r.clip_score]),
                "clip_iqa": _mean([v for r in ok for v in r.clip_iqa]),
                **{k: _mean([r.truth[k] for r in ok]) for k in (ok[0].truth if ok else {})},
            }
        )
    return out


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")
