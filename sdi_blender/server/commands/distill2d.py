"""The paper's 2D experiment: one latent image optimised by score distillation.

A single latent (the UNet's native size: 64×64 for SD 2.1-base) is initialised with
N(0, I) and optimised with Adam (lr 0.1) on the SDS or SDI loss for 1000 steps, the
timestep annealed linearly from 980 to 20 (paper, Sec. 5.1). SDS ends over-smoothed;
SDI, whose noise comes from DDIM inversion of the current latent, ends sharp.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from ...catalog import DEFAULT_MODEL
from ...errors import UserError
from ..diffusion.guidance import METHODS, ScoreDistillation, annealed_timestep, as_method
from ..diffusion.interface import Prior
from ..training.priors import load_prior
from ..training.reports import snapshot_strip
from ..util.console import StepBar
from ..util.devices import resolve_device
from ..util.fileio import atomic_write
from ..util.images import label, side_by_side, to_pil, write_image_atomic

ProgressFn = Callable[[int, int, int, float], None]
"""progress(step, total, t, loss) after each optimisation step."""


@dataclass
class Distill2DConfig:
    """Settings of the 2D experiment; defaults are the paper's."""

    prompt: str
    """What the image should show."""
    negative_prompt: str = ""
    """CFG's unconditional prompt ("" as in the paper)."""
    method: str = "sdi"
    """"sdi" (noise by DDIM inversion) or "sds" (i.i.d. noise)."""
    steps: int = 1000
    """Adam steps."""
    lr: float = 0.1
    """Adam learning rate on the latent."""
    guidance_scale: float = 7.5
    """CFG scale of the denoising prediction."""
    t_max: int = 980
    """Timestep at the first step (0.98·T)."""
    t_min: int = 20
    """Timestep the schedule anneals to (0.02·T)."""
    seed: int = 0
    """Seeds the initial latent and all guidance noise."""
    model: str = DEFAULT_MODEL
    """Hub id, local diffusers directory or "tiny"."""
    frames: int = 8
    """Snapshots of the optimisation kept for the strip image."""
    inversion: dict = field(default_factory=dict)
    """Overrides of ScoreDistillation's SDI parameters (inversion_guidance_scale, …)."""

    def validate(self, num_train_timesteps: int = 1000) -> None:
        """Raise :class:`UserError` naming the first invalid setting."""
        if not self.prompt.strip():
            raise UserError("the prompt is empty", hint="describe what the image should show")
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}'", hint=f"choose one of {', '.join(METHODS)}")
        if not 1 <= self.steps <= 100_000:
            raise UserError(f"steps must be between 1 and 100000, got {self.steps}")
        top = num_train_timesteps - 1
        if not 1 <= self.t_min <= self.t_max <= top:
            raise UserError(f"timesteps out of range: need 1 <= t-min ({self.t_min}) <= t-max ({self.t_max}) <= {top}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if self.frames < 1:
            raise UserError(f"frames must be at least 1, got {self.frames}")


@dataclass
class Distill2DResult:
    """The decoded final image and the snapshots along the way."""

    image: Tensor
    """[3, H, W] in [0, 1]."""
    frames: list[Tensor]
    """Decoded snapshots, the last one being the final image."""
    frame_steps: list[int]
    """Step index after which each snapshot was taken."""
    frame_timesteps: list[int]
    """The diffusion timestep t of each snapshot's step."""
    latent: Tensor
    """The optimised latent, [1, 4, h, w]."""
    seconds: float


def snapshot_steps(steps: int, frames: int) -> list[int]:
    """Evenly spaced step indices ending at the last step."""
    n = min(frames, steps)
    return sorted({round((k + 1) * steps / n) - 1 for k in range(n)})


def distill2d(cfg: Distill2DConfig, prior: Prior, progress: ProgressFn | None = None) -> Distill2DResult:
    """Optimise one latent by score distillation towards the prompt."""
    cfg.validate(prior.alphas_cumprod.shape[0])
    start = time.perf_counter()
    gen = torch.Generator(prior.device).manual_seed(cfg.seed)
    size = prior.latent_size
    latent = torch.randn((1, prior.latent_channels, size, size), generator=gen, device=prior.device)
    latent.requires_grad_(True)
    optimiser = torch.optim.Adam([latent], lr=cfg.lr)
    guidance = ScoreDistillation(
        prior.predictor(prior.encode_prompt(cfg.prompt, cfg.negative_prompt)),
        as_method(cfg.method),
        guidance_scale=cfg.guidance_scale,
        **cfg.inversion,
    )
    T = prior.alphas_cumprod.shape[0]
    keep = set(snapshot_steps(cfg.steps, cfg.frames))
    frames, frame_steps, frame_timesteps = [], [], []
    for step in range(cfg.steps):
        t = annealed_timestep(step, cfg.steps, cfg.t_max / T, cfg.t_min / T, T)
        loss, _ = guidance.loss(latent, t, gen)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step in keep:
            with torch.no_grad():
                frames.append(prior.decode_latents(latent)[0].cpu())
            frame_steps.append(step)
            frame_timesteps.append(t)
        if progress is not None:
            progress(step + 1, cfg.steps, t, float(loss.detach()))
    return Distill2DResult(
        image=frames[-1],
        frames=frames,
        frame_steps=frame_steps,
        frame_timesteps=frame_timesteps,
        latent=latent.detach(),
        seconds=time.perf_counter() - start,
    )


def metrics_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_metrics.json")


def _score(results: list[Distill2DResult], methods: list[str], prompt: str, clip: str, device: torch.device) -> dict:
    """The final images' CLIP score and CLIP-IQA, as ``eval`` computes them for views."""
    from ..evaluation.clip_metrics import ClipJudge

    judge = ClipJudge(clip, device=device)
    images = torch.stack([r.image.float() for r in results])
    scores, iqa = judge.clip_score(images, prompt).tolist(), judge.clip_iqa(images).tolist()
    for method, c, q in zip(methods, scores, iqa):
        print(f"{method.upper()}: CLIP score {c:.2f}, CLIP-IQA {q:.3f}", file=sys.stderr)
    return {
        "prompt": prompt,
        "clip": clip,
        "methods": {m: {"clip_score": c, "clip_iqa": q} for m, c, q in zip(methods, scores, iqa)},
    }


def run_distill2d(
    cfg: Distill2DConfig,
    out: Path,
    strip_out: Path,
    device: str = "auto",
    compare: bool = False,
    clip: str | None = None,
) -> list[Distill2DResult]:
    """The ``distill2d`` command: run, then write the image and the strip atomically.

    With ``compare`` SDS and SDI run from the same seed; the image shows them side by
    side (SDS left) and the strip has one row per method. With ``clip`` the final images
    are scored as ``eval`` scores views (CLIP score, CLIP-IQA) into ``<out>_metrics.json``.
    """
    methods = ["sds", "sdi"] if compare else [cfg.method]
    prior = load_prior(cfg.model, device=resolve_device(device))
    results = []
    for method in methods:
        bar = StepBar(cfg.steps, label=method.upper())

        def progress(step: int, total: int, t: int, loss: float, bar: StepBar = bar) -> None:
            bar.update(step, t, loss)

        try:
            results.append(distill2d(replace(cfg, method=method), prior, progress))
        finally:
            bar.close()
    tiles = [to_pil(r.image) for r in results]
    image = side_by_side([label(t, m.upper()) for m, t in zip(methods, tiles)]) if compare else tiles[0]
    strip = snapshot_strip(  # one row per method, each frame captioned with its step and t
        [r.frames for r in results],
        [[s + 1 for s in r.frame_steps] for r in results],
        [r.frame_timesteps for r in results],
        [m.upper() for m in methods] if compare else None,
    )
    metrics = _score(results, methods, cfg.prompt, clip, prior.device) if clip else None
    written = []
    try:
        for data, path in ((strip, strip_out), (image, out)):
            write_image_atomic(data, path)
            written.append(path)
        if metrics is not None:
            atomic_write(metrics_path(out), json.dumps(metrics, indent=2))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)  # all or nothing
        raise
    print(f"wrote {out} and {strip_out} ({sum(r.seconds for r in results):.1f} s)", file=sys.stderr)
    return results
