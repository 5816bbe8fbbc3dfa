"""Score distillation: SDS and SDI (Score Distillation via Reparametrized DDIM).

The maths of Lukoianov et al., NeurIPS 2024 (arXiv 2405.15891), written for any
diffusion model that implements :class:`NoisePredictor` - Stable Diffusion
(:mod:`sdi_blender.server.diffusion.prior`) or an analytic toy model in the tests.

Notation follows DDIM (Song et al. 2021): ``ᾱ_t`` is ``alphas_cumprod[t]``;
``x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε``. A noise predictor returns the classifier-free-guided ε̂ at
scale s in its own convention (the priors follow the official SDI code: Perp-Neg
``ε_u + s·e_pos``, plain CFG ``ε_c + s·(ε_c − ε_u)``; see
:func:`~sdi_blender.server.diffusion.prompts.guided_noise`). Timesteps are integers in ``[0, T)``; the
sentinel :data:`CLEAN` (``-1``) stands for the noise-free end of a trajectory, ``ᾱ = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, cast, runtime_checkable

import torch
from torch import Tensor

from ... import catalog
from ..util.step_timer import StageHook, no_stage

CLEAN = -1
"""Timestep sentinel for the clean image (ᾱ = 1), where DDIM inversion starts and sampling ends."""

Method = Literal["sdi", "sds"]
METHODS: tuple[str, ...] = tuple(catalog.METHODS)


def as_method(name: str) -> Method:
    """``name`` (e.g. a config's ``method``) as a :data:`Method`; ValueError if it is none."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return cast(Method, name)


@runtime_checkable
class NoisePredictor(Protocol):
    """A (guided) ε-prediction diffusion model bound to one prompt."""

    alphas_cumprod: Tensor
    """1-D ᾱ_t, length T (1000 for Stable Diffusion)."""

    def predict_noise(self, x_t: Tensor, t: Tensor, guidance_scale: float) -> Tensor:
        """Guided ε̂ at scale s for x_t [B, C, H, W] at timesteps t (int64, shape [B])."""
        ...


def alpha_bar(alphas_cumprod: Tensor, t: int, like: Tensor) -> Tensor:
    """ᾱ_t as a scalar tensor on ``like``'s device and dtype; ᾱ = 1 at :data:`CLEAN`."""
    if t < 0:
        return torch.ones((), device=like.device, dtype=like.dtype)
    return alphas_cumprod[t].to(device=like.device, dtype=like.dtype)


def predict_x0(x_t: Tensor, eps: Tensor, a_t: Tensor) -> Tensor:
    """x̂0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t  (DDIM eq. 9 solved for x0); x_t, ε̂ ``[B, C, H, W]``, ᾱ_t a scalar."""
    return (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ddim_hop(x: Tensor, eps: Tensor, a_from: Tensor, a_to: Tensor) -> Tensor:
    """One deterministic DDIM move from noise level ᾱ_from to ᾱ_to (DDIM eq. 12, σ = 0).

    The same formula serves both directions: denoising (ᾱ_to > ᾱ_from) and inversion.
    ``x``, ``eps``: ``[B, C, H, W]``; the ᾱ are scalars.
    """
    return a_to.sqrt() * predict_x0(x, eps, a_from) + (1 - a_to).sqrt() * eps


def ddim_sigma(a_clean: Tensor, a_noisy: Tensor) -> Tensor:
    """DDIM's σ between a cleaner and a noisier level (DDIM eq. 16 with η = 1)."""
    return ((1 - a_clean) / (1 - a_noisy) * (1 - a_noisy / a_clean)).clamp(min=0).sqrt()


def inversion_timesteps(t_end: int, step: int = 100, grid_limit: int | None = None, offset: int = 1) -> list[int]:
    """Timesteps that DDIM inversion visits: CLEAN, the grid below ``grid_limit``, then ``t_end``.

    The grid is the "leading" one of Stable Diffusion's scheduler (``k·step + offset``).
    SDI inverts along the grid below t and then hops straight to t + δ, so its
    ``grid_limit`` is t while ``t_end`` is t + δ.
    """
    limit = t_end if grid_limit is None else grid_limit
    grid = [k for k in range(offset, limit, step)]
    return [CLEAN, *grid, t_end]


def _timestep_batch(t: int, x: Tensor) -> Tensor:
    # The model never sees CLEAN: the clean end is closest to its timestep 0.
    return torch.full((x.shape[0],), max(t, 0), dtype=torch.long, device=x.device)


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def ddim_invert(
    predictor: NoisePredictor,
    x0: Tensor,
    t_end: int,
    *,
    step: int = 100,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    grid_limit: int | None = None,
    offset: int = 1,
) -> Tensor:
    """DDIM-invert the clean ``x0`` ``[B, C, H, W]`` to the noisy latent at ``t_end`` (same shape).

    Each hop predicts ε̂ at the cleaner end (the usual inversion approximation
    ε(x_next) ≈ ε(x)), moves deterministically (eq. 12), and, with ``eta > 0``, adds
    ``eta·σ·N(0, I)`` with σ the DDIM variance between the two levels, as SDI does.
    """
    a = predictor.alphas_cumprod
    x = x0
    times = inversion_timesteps(t_end, step, grid_limit, offset)
    for t_from, t_to in zip(times[:-1], times[1:]):
        a_from, a_to = alpha_bar(a, t_from, x), alpha_bar(a, t_to, x)
        eps = predictor.predict_noise(x, _timestep_batch(t_from, x), guidance_scale)
        x = ddim_hop(x, eps, a_from, a_to)
        if eta > 0:
            x = x + eta * ddim_sigma(a_from, a_to) * _randn(x, generator)
    return x


@torch.no_grad()
def ddim_sample(
    predictor: NoisePredictor,
    x_t: Tensor,
    t_start: int,
    *,
    step: int = 100,
    guidance_scale: float = 1.0,
    offset: int = 1,
) -> Tensor:
    """Deterministic DDIM sampling (η = 0) from ``x_t`` at ``t_start`` to the clean x0.

    Visits the same timesteps as :func:`ddim_invert` in reverse, so on a fine grid the
    two are inverse to each other.
    """
    a = predictor.alphas_cumprod
    x = x_t
    times = inversion_timesteps(t_start, step, None, offset)[::-1]
    for t_from, t_to in zip(times[:-1], times[1:]):
        eps = predictor.predict_noise(x, _timestep_batch(t_from, x), guidance_scale)
        x = ddim_hop(x, eps, alpha_bar(a, t_from, x), alpha_bar(a, t_to, x))
    return x


def annealed_timestep(
    step: int, total_steps: int, t_max: float = 0.98, t_min: float = 0.02, num_train_timesteps: int = 1000
) -> int:
    """Deterministic timestep schedule of SDI: linear from ``t_max·T`` to ``t_min·T``.

    t = T·(t_min + (t_max − t_min)·(1 − step/total)). The paper's 2D experiment uses
    0.98 → 0.02, its 3D configuration 0.98 → 0.25.
    """
    frac = t_min + (t_max - t_min) * (1.0 - step / max(total_steps, 1))
    t = int(num_train_timesteps * frac + 1e-6)  # the epsilon keeps 0.98·1000 at 980
    return min(max(t, 1), num_train_timesteps - 1)


@dataclass
class DistillationStep:
    """Everything one score-distillation step computed (all detached)."""

    target: Tensor
    """x̂0 that x0 is pulled toward."""
    x_noisy: Tensor
    """The noisy latent the final prediction was made on."""
    noise: Tensor
    """ε with x_noisy = √ᾱ x0 + √(1−ᾱ) ε at ``t_noisy``; i.i.d. for SDS, inferred for SDI."""
    t: int
    """Timestep of the final prediction."""
    t_noisy: int
    """Timestep of ``x_noisy``: t for SDS, t + δ for SDI."""


class ScoreDistillation:
    """SDS or SDI guidance for any :class:`NoisePredictor`; defaults are the paper's.

    Args:
        predictor: the guided diffusion model.
        method: ``"sdi"`` obtains the noise by DDIM inversion of x0 (the paper's fix);
            ``"sds"`` draws it i.i.d. (DreamFusion).
        guidance_scale: CFG scale of the final noise prediction (7.5).
        inversion_guidance_scale: CFG scale of the inversion's predictions (−7.5:
            negative guidance keeps the inverted noise close to Gaussian).
        inversion_step: stride of the inversion grid in timesteps (100, i.e. 10 steps
            over T = 1000); δ ~ U{0, …, inversion_step − 1}.
        inversion_eta: scale of the fresh noise added at every inversion hop (0.3).
        step_offset: offset of the leading timestep grid (Stable Diffusion: 1).
        delta_generator: a CPU generator to draw SDI's δ from. By default δ comes from the
            step's generator; on CUDA that costs a host-device synchronisation (δ must be a
            Python int to pick the timesteps), which a CPU generator avoids.
        stage: a :data:`~sdi_blender.server.util.step_timer.StageHook` wrapped around the
            inversion (``"inversion"``) and the final guided prediction (``"prediction"``),
            for benchmarks; by default nothing.
    """

    def __init__(
        self,
        predictor: NoisePredictor,
        method: Method = "sdi",
        *,
        guidance_scale: float = 7.5,
        inversion_guidance_scale: float = -7.5,
        inversion_step: int = 100,
        inversion_eta: float = 0.3,
        step_offset: int = 1,
        delta_generator: torch.Generator | None = None,
        stage: StageHook = no_stage,
    ) -> None:
        as_method(method)  # callers without a type checker may pass any string
        if inversion_step < 1:
            raise ValueError(f"inversion_step must be >= 1, got {inversion_step}")
        self.predictor = predictor
        self.method = method
        self.guidance_scale = guidance_scale
        self.inversion_guidance_scale = inversion_guidance_scale
        self.inversion_step = inversion_step
        self.inversion_eta = inversion_eta
        self.step_offset = step_offset
        self.delta_generator = delta_generator
        self.stage = stage

    @property
    def num_train_timesteps(self) -> int:
        return int(self.predictor.alphas_cumprod.shape[0])

    def _check_t(self, t: int) -> None:
        if not 1 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep t={t} out of range [1, {self.num_train_timesteps - 1}]")

    @torch.no_grad()
    def noisy_latent(
        self, x0: Tensor, t: int, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, int]:
        """(x_noisy, ε, t_noisy): how the method puts noise on x0 before denoising at t."""
        self._check_t(t)
        a = self.predictor.alphas_cumprod
        if self.method == "sds" or noise is not None:
            eps = _randn(x0, generator) if noise is None else noise.to(x0)
            a_t = alpha_bar(a, t, x0)
            return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps, eps, t
        # SDI (paper, Sec. 4): invert along the grid below t, then hop to t + δ.
        gen_delta = self.delta_generator if self.delta_generator is not None else generator
        delta = int(
            torch.randint(
                0,
                self.inversion_step,
                (1,),
                generator=gen_delta,
                device=gen_delta.device if gen_delta is not None else "cpu",
            ).item()
        )
        t_noisy = min(t + delta, self.num_train_timesteps - 1)
        with self.stage("inversion"):
            x_noisy = ddim_invert(
                self.predictor,
                x0,
                t_noisy,
                step=self.inversion_step,
                guidance_scale=self.inversion_guidance_scale,
                eta=self.inversion_eta,
                generator=generator,
                grid_limit=t,
                offset=self.step_offset,
            )
        a_n = alpha_bar(a, t_noisy, x0)
        eps = (x_noisy - a_n.sqrt() * x0) / (1 - a_n).sqrt()
        return x_noisy, eps, t_noisy

    @torch.no_grad()
    def step(
        self, x0: Tensor, t: int, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> DistillationStep:
        """Noise x0 by the method, then denoise in one step at t with the guided model.

        ``noise`` forces a given ε (then both methods reduce to SDS with that noise).
        """
        x0 = x0.detach()
        x_noisy, eps, t_noisy = self.noisy_latent(x0, t, generator, noise)
        with self.stage("prediction"):
            eps_hat = self.predictor.predict_noise(x_noisy, _timestep_batch(t, x0), self.guidance_scale)
        # The prediction and x̂0 use t even for SDI's x_{t+δ}, as the official implementation.
        target = predict_x0(x_noisy, eps_hat, alpha_bar(self.predictor.alphas_cumprod, t, x0))
        return DistillationStep(target=target, x_noisy=x_noisy, noise=eps, t=t, t_noisy=t_noisy)

    def target(
        self, x0: Tensor, t: int, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """Denoised x̂0 that x0 is pulled toward (no grad); the loss is 0.5·‖x0 − target‖² up to scale."""
        return self.step(x0, t, generator, noise).target

    def loss(
        self, x0: Tensor, t: int, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, DistillationStep]:
        """Differentiable 0.5·mean((x0 − x̂0)²) / B, as the official implementation.

        Its gradient w.r.t. x0 is (x0 − x̂0) / (numel·B): the direction of the paper's
        update with no w(t) weighting (Sec. 4). The scale is the official one so that
        the paper's regulariser weights keep their meaning.
        """
        out = self.step(x0, t, generator, noise)
        return 0.5 * (x0 - out.target).pow(2).mean() / x0.shape[0], out
