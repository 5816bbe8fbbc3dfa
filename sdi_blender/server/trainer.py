"""Text-to-3D optimisation: render → VAE encode → SDS/SDI → backprop into field and background.

One :class:`Trainer` owns a run folder (:mod:`~sdi_blender.server.run_dir`). It reports
through :class:`TrainerCallbacks` (progress every step, a preview image every
``preview_every`` steps, checkpoints), checks a cancel flag between steps, and resumes
from its checkpoint exactly: the random generators are saved with the weights.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from . import regularizers as reg
from . import run_dir
from .cameras import sample_cameras, turntable_cameras
from .field import EnvironmentBackground, ImplicitVolume
from .guidance import ScoreDistillation, annealed_timestep
from .images import to_pil
from .prior import StableDiffusionPrior, resolve_device
from .prompts import PromptOptions
from .renderer import VolumeRenderer
from .shading import pick_shading
from .train_config import TrainConfig, incompatibilities

CHECKPOINT_FORMAT = 1


class LossDiverged(UserError):
    """The loss became NaN or infinite; the run stopped at its last good checkpoint."""

    code = "diverged"


@dataclass
class Progress:
    """What the trainer reports after each step."""

    step: int
    total: int
    t: int
    losses: dict[str, float]
    elapsed_s: float
    eta_s: float


class TrainerCallbacks:
    """Override what you need; the defaults do nothing."""

    def on_progress(self, progress: Progress) -> None: ...

    def on_preview(self, step: int, png: bytes) -> None: ...

    def on_checkpoint(self, step: int, path: Path) -> None: ...


@dataclass
class RunResult:
    status: str
    """done or cancelled."""
    step: int
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Optimises one run; ``resume`` continues from the run folder's checkpoint."""

    def __init__(self, config: TrainConfig, run: Path, *, prior: StableDiffusionPrior | None = None,
                 device: str = "auto", callbacks: TrainerCallbacks | None = None,
                 resume: bool = False) -> None:
        config.validate()
        self.config, self.run_path = config, Path(run)
        self.callbacks = callbacks or TrainerCallbacks()
        self.device = prior.device if prior is not None else resolve_device(device)
        self.prior = prior or StableDiffusionPrior(config.model, device=self.device)
        torch.manual_seed(config.seed)  # the field's initialisation
        self.field = ImplicitVolume(config.field).to(self.device)
        self.background = EnvironmentBackground(config.background).to(self.device)
        self.renderer = VolumeRenderer(self.field, self.background, config.field.radius,
                                       config.renderer, config.shading).to(self.device)
        self.optimizer = torch.optim.Adam(
            [{"params": self.field.parameters(), "lr": config.lr},
             {"params": self.background.parameters(), "lr": config.background_lr}],
            betas=config.betas, eps=config.eps)
        self.gen_cpu = torch.Generator().manual_seed(config.seed)
        self.gen_dev = (self.gen_cpu if self.device.type == "cpu"
                        else torch.Generator(self.device).manual_seed(config.seed))
        self.step = self.saved_step = 0
        self.status = "running"
        self.history: list[dict[str, float]] = []
        if resume:
            self._load_checkpoint()
        self.embeddings = self.prior.encode_prompt(
            config.prompt, config.negative_prompt,
            PromptOptions(view_dependent=config.view_dependent, perp_neg=config.perp_neg))

    # -- one step -------------------------------------------------------------------------
    def train_step(self) -> tuple[int, dict[str, torch.Tensor]]:
        """One optimisation step; returns the timestep and the (weighted-sum) loss terms."""
        cfg, paper_step = self.config, self.config.paper_step(self.step)
        self.field.set_step(paper_step)
        self.renderer.update_grid(self.step)
        cams = sample_cameras(cfg.cameras, cfg.batch_size, cfg.resolution, cfg.resolution,
                              self.gen_cpu).to(self.device)
        shading = pick_shading(cfg.shading, paper_step, self.gen_cpu)
        out = self.renderer(cams, shading, self.gen_cpu, stratified=True)
        rgb = out.rgb.permute(0, 3, 1, 2)
        if rgb.shape[-1] != self.prior.image_size:  # the VAE's native input size
            rgb = F.interpolate(rgb, size=self.prior.image_size, mode="bilinear", align_corners=False)
        latents = self.prior.encode_images(rgb, self.gen_dev)
        guidance = ScoreDistillation(
            self.prior.predictor(self.embeddings, cams.elevation_deg, cams.azimuth_deg), cfg.method,
            guidance_scale=cfg.guidance_scale, inversion_guidance_scale=cfg.inversion_guidance_scale,
            inversion_step=cfg.inversion_step, inversion_eta=cfg.inversion_eta)
        t = annealed_timestep(min(self.step, cfg.schedule_steps), cfg.schedule_steps, cfg.t_max,
                              cfg.t_min, self.prior.alphas_cumprod.shape[0])
        terms = {
            "guidance": guidance.loss(latents, t, self.gen_dev)[0],
            "orient": reg.orientation_loss(out.orient, out.opacity),
            "sparsity": reg.sparsity_loss(out.opacity),
            "opaque": reg.opacity_loss(out.opacity),
            "z_variance": reg.z_variance_loss(out.z_variance, out.opacity),
            "convex": reg.convexity_loss(out.normal),
        }
        weights = cfg.losses.at(paper_step)
        terms["total"] = sum(weights[k] * v for k, v in terms.items())
        return t, terms

    def _optimise(self) -> tuple[int, dict[str, float]]:
        t, terms = self.train_step()
        values = {k: float(v.detach()) for k, v in terms.items()}
        if not all(map(_finite, values.values())):
            bad = ", ".join(k for k, v in values.items() if not _finite(v))
            self._set_state("failed", f"loss became NaN/inf at step {self.step + 1} ({bad})")
            raise LossDiverged(f"the loss became NaN or infinite at step {self.step + 1} ({bad}); "
                               f"stopped, the last good checkpoint (step {self.saved_step}) is kept",
                               hint="lower the learning rate or guidance scale, or change the seed")
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        self.step += 1
        self.history.append({"step": self.step, "t": t, **values})
        return t, values

    # -- the loop -------------------------------------------------------------------------
    def run(self, cancel: Callable[[], bool] | None = None) -> RunResult:
        """Train until ``config.steps`` or until ``cancel()`` is true (checked between steps)."""
        cfg, start, first = self.config, time.perf_counter(), self.step
        run_dir.atomic_write(self.run_path / run_dir.CONFIG, cfg.to_json())
        self._set_state("running")
        while self.step < cfg.steps:
            if cancel is not None and cancel():
                self.save_checkpoint()
                self._set_state("cancelled")
                return RunResult("cancelled", self.step, self.history)
            t, values = self._optimise()
            elapsed = time.perf_counter() - start
            eta = elapsed / (self.step - first) * (cfg.steps - self.step)
            self.callbacks.on_progress(Progress(self.step, cfg.steps, t, values, elapsed, eta))
            if self.step % cfg.preview_every == 0 or self.step == cfg.steps:
                self.callbacks.on_preview(self.step, self.preview())
            if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
        self.save_checkpoint()
        self._write_reports()
        self._set_state("done")
        return RunResult("done", self.step, self.history)

    # -- images ---------------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, n: int, size: int) -> list[torch.Tensor]:
        """n turntable views ([3, size, size] in [0, 1]) with diffuse shading."""
        cams = turntable_cameras(n, size, size, self.config.cameras).to(self.device)
        views = []
        for i in range(n):
            out = self.renderer(cams.index(i), "diffuse")
            views.append(out.rgb[0].permute(2, 0, 1).clamp(0, 1).float().cpu())
        return views

    def preview(self) -> bytes:
        """PNG of the fixed front view; also saved under ``previews/``."""
        image = to_pil(self.render_views(1, self.config.preview_size)[0])
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        png = buf.getvalue()
        run_dir.atomic_write(self.run_path / run_dir.PREVIEWS / f"step_{self.step:06d}.png", png)
        return png

    def _write_reports(self) -> None:
        from .reports import loss_curve_png, strip_png

        size = min(self.config.resolution, 256)
        run_dir.atomic_write(self.run_path / run_dir.TURNTABLE,
                             strip_png(self.render_views(self.config.turntable_views, size)))
        run_dir.atomic_write(self.run_path / run_dir.LOSS_CURVE, loss_curve_png(self.history))

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        state = {
            "format": CHECKPOINT_FORMAT, "step": self.step, "config": json.loads(self.config.to_json()),
            "field": self.field.state_dict(), "background": self.background.state_dict(),
            "renderer": self.renderer.estimator.state_dict() if self.renderer.estimator else None,
            "optimizer": self.optimizer.state_dict(), "history": self.history,
            "gen_cpu": self.gen_cpu.get_state(), "gen_dev": self.gen_dev.get_state(),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.run_path / run_dir.CHECKPOINT
        run_dir.atomic_write(path, buf.getvalue())
        self.saved_step = self.step
        run_dir.atomic_write(self.run_path / run_dir.METRICS,
                             "".join(json.dumps(h) + "\n" for h in self.history))
        self._set_state(self.status)  # the step a resume starts from
        self.callbacks.on_checkpoint(self.step, path)
        return path

    def _load_checkpoint(self) -> None:
        path = self.run_path / run_dir.CHECKPOINT
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file
            raise UserError(f"cannot read checkpoint '{path}': {exc}") from exc
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"checkpoint '{path}' has an unknown format")
        changed = incompatibilities(state["config"], self.config)
        if changed:
            raise UserError(f"checkpoint '{path}' is incompatible with the run's config "
                            f"(changed: {', '.join(changed)})",
                            hint="resume with the settings the run was created with")
        try:
            self.field.load_state_dict(state["field"])
            self.background.load_state_dict(state["background"])
            if self.renderer.estimator is not None and state["renderer"] is not None:
                self.renderer.estimator.load_state_dict(state["renderer"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"checkpoint '{path}' does not match the run's config: {exc}") from exc
        self.step = self.saved_step = int(state["step"])
        self.history = list(state["history"])
        self.gen_cpu.set_state(state["gen_cpu"])
        if self.gen_dev is not self.gen_cpu:
            self.gen_dev.set_state(state["gen_dev"])

    def _set_state(self, status: str, message: str = "") -> None:
        self.status = status
        run_dir.write_state(self.run_path, status, self.saved_step, self.config.steps, message)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
