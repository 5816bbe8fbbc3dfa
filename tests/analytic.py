"""An analytic diffusion model for guidance tests: Gaussian data, exact ε-prediction.

With data x0 ~ N(μ, s²I), the noisy marginal is N(√ᾱ μ, (ᾱ s² + 1 − ᾱ) I) and the
optimal noise prediction is E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ), in closed form.
The conditional model has mean ``mu_cond``, the unconditional one ``mu_uncond``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sd_alphas_cumprod(T: int = 1000) -> Tensor:
    """Stable Diffusion's scaled-linear schedule (betas 0.00085 → 0.012)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class GaussianPredictor:
    """Exact guided ε-prediction for Gaussian data; counts its calls."""

    def __init__(self, mu_cond: float = 0.5, mu_uncond: float = 0.0, std: float = 0.7, T: int = 1000) -> None:
        self.alphas_cumprod = sd_alphas_cumprod(T)
        self.mu_cond, self.mu_uncond, self.std = mu_cond, mu_uncond, std
        self.calls: list[tuple[Tensor, float]] = []

    def _eps(self, x_t: Tensor, a: Tensor, mu: float) -> Tensor:
        return (1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * self.std**2 + 1 - a)

    def predict_noise(self, x_t: Tensor, t: Tensor, guidance_scale: float) -> Tensor:
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],)
        self.calls.append((t.clone(), guidance_scale))
        a = self.alphas_cumprod[t].to(x_t).view(-1, *([1] * (x_t.dim() - 1)))
        e_u, e_c = self._eps(x_t, a, self.mu_uncond), self._eps(x_t, a, self.mu_cond)
        return e_u + guidance_scale * (e_c - e_u)
