"""Text-to-3D optimisation: render → VAE encode → SDS/SDI → backprop into field and background.

One :class:`Trainer` owns a run folder (:mod:`~sdi_blender.server.training.run_dir`). It reports
through :class:`TrainerCallbacks` (progress for every step, a preview image every
``preview_every`` steps, checkpoints), checks a cancel flag between steps, and resumes
from its checkpoint exactly: the random generators are saved with the weights.

The trainer's own step code never makes the host wait for the GPU (nerfacc's occupancy-grid
sampler still does, inside the render, to size its packed samples): host data goes to the GPU
through pinned memory, loss values come back asynchronously (:class:`~.loss_fetch.LossFetch`), and
progress is reported once they have arrived - on CUDA usually after the same step, at most
two steps late; on CPU at once. The NaN/inf check runs on every step's values as they arrive,
so it names the exact step, but the weights may already have taken that step's update (and
on CUDA up to two more); every checkpoint first waits for all values and checks them, so a
checkpoint never holds weights updated from a non-finite loss. With an fp16 prior the loss is
scaled dynamically (:mod:`~sdi_blender.server.training.loss_scaling`): a step whose gradients overflow
is skipped and the scale lowered, without stopping the run. A step that runs out of memory
in its forward or backward pass is retried with a smaller render chunk, then fewer samples per
ray (:func:`~sdi_blender.server.scene.renderer.lower_memory`), from the state before it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import UserError
from ..diffusion.guidance import ScoreDistillation, annealed_timestep, as_method
from ..diffusion.interface import Prior
from ..diffusion.prompts import PromptOptions
from ..scene.background import EnvironmentBackground
from ..scene.cameras import sample_cameras, turntable_cameras
from ..scene.field import ImplicitVolume
from ..scene.renderer import VolumeRenderer, as_image, lower_memory, render_views
from ..scene.shading import pick_shading
from ..util.devices import is_out_of_memory, resolve_device
from ..util.images import png_bytes
from ..util.step_timer import Pace, StepTimer, no_stage
from . import checkpoint, run_dir
from . import regularizers as reg
from .config import TrainConfig, incompatibilities
from .loss_fetch import LossFetch
from .loss_scaling import make_adam, make_scaler
from .priors import load_prior


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

    def on_field(self, step: int, field: ImplicitVolume) -> None:
        """Every ``config.proxy_every`` steps, the field as it is (for a live proxy mesh); it must
        not be changed, and it goes on training once this returns."""

    def on_notice(self, step: int, message: str) -> None:
        """Something the run changed by itself (e.g. less memory after running out); logged."""
        logging.getLogger(__name__).warning("step %d: %s", step, message)


@dataclass
class RunResult:
    status: str
    """done or cancelled."""
    step: int
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Optimises one run; ``resume`` continues from the run folder's checkpoint.

    ``timer`` (benchmarks) times the stages of each step; by default nothing is timed.
    """

    def __init__(
        self,
        config: TrainConfig,
        run: Path,
        *,
        prior: Prior | None = None,
        device: str = "auto",
        callbacks: TrainerCallbacks | None = None,
        resume: bool = False,
        timer: StepTimer | None = None,
    ) -> None:
        config.validate()
        self.config, self.run_path = config, Path(run)
        self.callbacks = callbacks or TrainerCallbacks()
        self.device = prior.device if prior is not None else resolve_device(device)
        self.prior = prior or load_prior(config.model, device=self.device)
        self.prior.apply_speed(config.speed)
        self.timer = timer
        self._stage = timer.stage if timer is not None else no_stage
        self._losses = LossFetch(self.device)
        self._pace: Pace | None = None  # elapsed time and ETA of run(), warm-up aside
        torch.manual_seed(config.seed)  # the field's initialisation
        self.field = ImplicitVolume(config.field, hash_kernel=config.renderer.hash_kernel).to(self.device)
        if config.init_mesh.path and not resume:  # the artist's blockout instead of the blob
            from ..scene.renderer import official_level
            from .init_mesh import fit_field

            level = official_level(config.field.radius, config.renderer.num_samples_per_ray)
            fit_field(self.field, config.init_mesh, config.seed, level)
        self.background = EnvironmentBackground(config.background).to(self.device)
        self.renderer = self.make_renderer()
        self.scaler = make_scaler(self.device, self.prior.dtype)
        self.optimizer = make_adam(
            [
                {"params": self.field.parameters(), "lr": config.lr},
                {"params": self.background.parameters(), "lr": config.background_lr},
            ],
            self.scaler,
            betas=config.betas,
            eps=config.eps,
        )
        self.gen_cpu = torch.Generator().manual_seed(config.seed)
        self.gen_dev = (
            self.gen_cpu if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(config.seed)
        )
        self.step = self.saved_step = 0
        self.status = "running"
        self.history: list[dict[str, float]] = []
        if resume:
            self._load_checkpoint()
        self.embeddings = self.prior.encode_prompt(
            config.prompt,
            config.negative_prompt,
            PromptOptions(view_dependent=config.view_dependent, perp_neg=config.perp_neg),
        )

    def make_renderer(self) -> VolumeRenderer:
        """What draws the field over the background. A subclass may draw something else with the
        same outputs: the texture fit draws a fixed mesh's albedo (``training/texture_fit.py``)."""
        cfg = self.config
        return VolumeRenderer(self.field, self.background, cfg.field.radius, cfg.renderer, cfg.shading).to(self.device)

    # -- one step -------------------------------------------------------------------------
    def train_step(self) -> tuple[int, dict[str, torch.Tensor]]:
        """One optimisation step; returns the timestep and the (weighted-sum) loss terms."""
        cfg, paper_step, stage = self.config, self.config.paper_step(self.step), self._stage
        self.field.set_step(paper_step)
        with stage("grid"):
            self.renderer.update_grid(self.step, cfg.seed)
        with stage("render"):
            host_cams = sample_cameras(cfg.cameras, cfg.batch_size, cfg.resolution, cfg.resolution, self.gen_cpu)
            cams = host_cams.to(self.device)
            shading = pick_shading(cfg.shading, paper_step, self.gen_cpu)
            out = self.renderer(cams, shading, self.gen_cpu, stratified=True)
        with stage("vae"):
            rgb = out.rgb.permute(0, 3, 1, 2)
            if rgb.shape[-1] != self.prior.image_size:  # the VAE's native input size
                rgb = F.interpolate(rgb, size=self.prior.image_size, mode="bilinear", align_corners=False)
            latents = self.prior.encode_images(rgb, self.gen_dev)
        if self.timer is not None:
            self._time_backward(latents, out.rgb)
        guidance = ScoreDistillation(
            self.prior.predictor(self.embeddings, host_cams.elevation_deg, host_cams.azimuth_deg),
            as_method(cfg.method),
            guidance_scale=cfg.guidance_scale,
            inversion_guidance_scale=cfg.inversion_guidance_scale,
            inversion_step=cfg.inversion_step,
            inversion_eta=cfg.inversion_eta,
            delta_generator=self.gen_cpu,
            stage=stage,
        )
        t = annealed_timestep(
            min(self.step, cfg.schedule_steps),
            cfg.schedule_steps,
            cfg.t_max,
            cfg.t_min,
            self.prior.alphas_cumprod.shape[0],
        )
        terms = {
            "guidance": guidance.loss(latents, t, self.gen_dev)[0],
            "orient": reg.orientation_loss(out.orient, out.opacity),
            "sparsity": reg.sparsity_loss(out.opacity),
            "opaque": reg.opacity_loss(out.opacity),
            "z_variance": reg.z_variance_loss(out.z_variance, out.opacity),
            "convex": reg.convexity_loss(out.normal),
        }
        weights = cfg.losses.at(paper_step)
        total = sum(weights[k] * v for k, v in terms.items())
        assert isinstance(total, torch.Tensor)  # not sum()'s start value: there are terms
        terms["total"] = total
        return t, terms

    def _time_backward(self, latents: torch.Tensor, rgb: torch.Tensor) -> None:
        # The backward pass is one call; gradient hooks mark where it enters the VAE (the
        # latents' gradient is ready) and leaves it for the renderer (the render's is).
        timer = self.timer
        assert timer is not None  # called only with one

        def leave_vae(grad: torch.Tensor) -> None:
            timer.end("vae_backward")
            timer.begin("render_backward")

        latents.register_hook(lambda grad: timer.begin("vae_backward"))
        rgb.register_hook(leave_vae)

    def optimise_step(self) -> int:
        """One training step: forward, backward, Adam. Returns the timestep.

        Its loss values are queued for :meth:`report_progress`, which checks and reports them
        once they have reached the host; nothing here waits for the device.
        """
        with self.timer.step() if self.timer is not None else no_stage("step"):
            t = self._forward_backward_fitting()
            with self._stage("update"):
                self.scaler.step(self.optimizer)  # skipped if any gradient is inf/NaN
                self.scaler.update()
        self.step += 1
        return t

    def _forward_backward(self) -> int:
        t, terms = self.train_step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        if self.timer is not None:
            self.timer.end("render_backward")
        self._losses.push(self.step + 1, t, terms)  # only once the step can no longer fail
        return t

    def _forward_backward_fitting(self) -> int:
        """:meth:`_forward_backward`, retried with less render memory while it runs out.

        A failed attempt leaves no trace: its gradients are dropped, the generators are
        rewound (the retry draws the same cameras and noise), the optimiser has not run and
        its losses were not queued. The lowered settings are kept for the rest of the run (and
        written to its config); with nothing left to lower the out-of-memory error is raised.
        """
        while True:
            rng = self.gen_cpu.get_state(), self.gen_dev.get_state()
            try:
                return self._forward_backward()
            except Exception as exc:
                if not is_out_of_memory(exc) or (change := lower_memory(self.config.renderer)) is None:
                    raise
            # Outside the handler, so the failed attempt's tensors (its traceback) are freed.
            self.optimizer.zero_grad(set_to_none=True)
            self.gen_cpu.set_state(rng[0])
            if self.gen_dev is not self.gen_cpu:
                self.gen_dev.set_state(rng[1])
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            run_dir.atomic_write(self.run_path / run_dir.CONFIG, self.config.to_json())
            self.callbacks.on_notice(self.step + 1, f"out of memory; retrying the step with {change}")

    def report_progress(self, wait: bool = False) -> None:
        """Check, record and report the loss values that have arrived (all of them if ``wait``)."""
        for step, t, values in self._losses.ready(wait):
            if not all(map(math.isfinite, values.values())):
                self._diverged(step, [k for k, v in values.items() if not math.isfinite(v)])
            self.history.append({"step": step, "t": t, **values})
            pace = self._pace or Pace(step - 1)
            elapsed, eta = pace.update(step, self.config.steps)
            self.callbacks.on_progress(Progress(step, self.config.steps, t, values, elapsed, eta))

    def _diverged(self, step: int, bad: list[str]) -> None:
        self._losses.pending.clear()
        names = ", ".join(bad)
        self._set_state("failed", f"loss became NaN/inf at step {step} ({names})")
        raise LossDiverged(
            f"the loss became NaN or infinite at step {step} ({names}); "
            f"stopped, the last good checkpoint (step {self.saved_step}) is kept",
            hint="lower the learning rate or guidance scale, or change the seed",
        )

    # -- the loop -------------------------------------------------------------------------
    def run(self, cancel: Callable[[], bool] | None = None) -> RunResult:
        """Train until ``config.steps`` or until ``cancel()`` is true (checked between steps)."""
        cfg = self.config
        self._pace = Pace(self.step)
        run_dir.atomic_write(self.run_path / run_dir.CONFIG, cfg.to_json())
        self._set_state("running")
        while self.step < cfg.steps:
            if cancel is not None and cancel():
                self.save_checkpoint()
                self._set_state("cancelled")
                return RunResult("cancelled", self.step, self.history)
            self.optimise_step()
            self.report_progress()
            if self.step % cfg.preview_every == 0 or self.step == cfg.steps:
                self.callbacks.on_preview(self.step, self.preview())
            if self._proxy_due():
                self.callbacks.on_field(self.step, self.field)
            if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
        self.save_checkpoint()
        self._write_reports()
        self._set_state("done")
        return RunResult("done", self.step, self.history)

    def _proxy_due(self) -> bool:
        every = self.config.proxy_every
        every = max(self.config.steps // 10, 1) if every is None else every
        return every > 0 and self.step % every == 0 and self.step < self.config.steps  # the last: the result

    # -- images ---------------------------------------------------------------------------
    @torch.no_grad()
    def render_views(self, n: int, size: int) -> list[torch.Tensor]:
        """n turntable views ([3, size, size] in [0, 1]), albedo only (see ``render_views``)."""
        cams = turntable_cameras(n, size, size, self.config.cameras).to(self.device)
        return [as_image(out) for out in render_views(self.renderer, cams)]

    def preview(self) -> bytes:
        """PNG of the fixed front view; also saved under ``previews/``."""
        png = png_bytes(self.render_views(1, self.config.preview_size)[0])
        run_dir.atomic_write(self.run_path / run_dir.PREVIEWS / f"step_{self.step:06d}.png", png)
        return png

    def _write_reports(self) -> None:
        from .reports import loss_curve_png, strip_png

        size = min(max(self.config.resolution, self.config.preview_size), 256)
        run_dir.atomic_write(
            self.run_path / run_dir.TURNTABLE, strip_png(self.render_views(self.config.turntable_views, size))
        )
        run_dir.atomic_write(
            self.run_path / run_dir.LOSS_CURVE, loss_curve_png(self.history, self.config.prompt, self.config.method)
        )

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write the checkpoint, after checking and recording every step's loss values."""
        self.report_progress(wait=True)
        state = {
            "step": self.step,
            "config": json.loads(self.config.to_json()),
            "field": self.field.state_dict(),
            "background": self.background.state_dict(),
            "renderer": self.renderer.estimator.state_dict() if self.renderer.estimator else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "gen_cpu": self.gen_cpu.get_state(),
            "gen_dev": self.gen_dev.get_state(),
        }
        path = self.run_path / run_dir.CHECKPOINT
        checkpoint.save(path, state)
        self.saved_step = self.step
        run_dir.atomic_write(self.run_path / run_dir.METRICS, "".join(json.dumps(h) + "\n" for h in self.history))
        self._set_state(self.status)  # the step a resume starts from
        self.callbacks.on_checkpoint(self.step, path)
        return path

    def _load_checkpoint(self) -> None:
        path = self.run_path / run_dir.CHECKPOINT
        state = checkpoint.read(path)
        changed = incompatibilities(state["config"], self.config)
        if changed:
            raise UserError(
                f"checkpoint '{path}' is incompatible with the run's config (changed: {', '.join(changed)})",
                hint="resume with the settings the run was created with",
            )
        checkpoint.load_into(self.field, state["field"], path, "field settings")
        checkpoint.load_into(self.background, state["background"], path, "background settings")
        if self.renderer.estimator is not None and state["renderer"] is not None:
            checkpoint.load_into(self.renderer.estimator, state["renderer"], path, "renderer settings")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):  # absent in older checkpoints, empty from an fp32 run
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"checkpoint '{path}' does not match the run's optimiser: {exc}") from exc
        self.step = self.saved_step = int(state["step"])
        self.history = list(state["history"])
        self.gen_cpu.set_state(state["gen_cpu"])
        if self.gen_dev is not self.gen_cpu:
            self.gen_dev.set_state(state["gen_dev"])

    def _set_state(self, status: str, message: str = "") -> None:
        self.status = status
        run_dir.write_state(self.run_path, status, self.saved_step, self.config.steps, message)
