"""The one interface every 2D diffusion prior offers.

The trainer, ``distill2d``, ``eval`` and the server depend on :class:`Prior`, never on a
concrete model. Implementations: :class:`~sdi_blender.server.diffusion.prior.StableDiffusionPrior`
(a hub id, a local diffusers folder, or the random-weight ``tiny`` model) and
:class:`~sdi_blender.server.toyworld.prior.ToyWorldPrior` (``toyworld``, an exact denoiser whose
right answer is known); :func:`~sdi_blender.server.training.priors.load_prior` picks one by name.
A multi-view or camera-conditioned prior plugs in the same way: it receives the cameras in
:meth:`Prior.predictor`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .guidance import NoisePredictor
from .prompts import PromptOptions


@runtime_checkable
class Prior(Protocol):
    """A frozen image diffusion model as score distillation uses it."""

    model_id: str
    """The name it was loaded by (``--model``)."""
    device: torch.device
    """Where it runs; renders and latents live there."""
    dtype: torch.dtype
    """Its compute dtype (fp16 enables the trainer's loss scaling)."""
    alphas_cumprod: Tensor
    """[T] ᾱ_t of its noise schedule, fp32 on ``device``."""

    @property
    def image_size(self) -> int:
        """The side of the images it was trained on; renders are resized to it."""

    @property
    def latent_size(self) -> int:
        """The side of its latents (the image side for a pixel-space prior)."""

    @property
    def latent_channels(self) -> int:
        """Channels of its latents (4 for Stable Diffusion, 3 in pixel space)."""

    def apply_speed(self, speed: Any) -> None:
        """Apply a :class:`~sdi_blender.server.diffusion.prior.SpeedConfig` (a no-op where meaningless)."""

    def encode_prompt(self, prompt: str, negative_prompt: str = "", options: PromptOptions | None = None) -> Any:
        """Encode a job's prompts once; the result goes back into :meth:`predictor`."""

    def predictor(
        self, embeddings: Any, elevation_deg: Tensor | None = None, azimuth_deg: Tensor | None = None
    ) -> NoisePredictor:
        """The guided noise predictor for those prompts and (optionally) a batch of cameras [B]."""

    def encode_images(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Differentiable [B, 3, H, W] images in [0, 1] → latents [B, C, h, w]."""

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents → [B, 3, H, W] images in [0, 1]."""
