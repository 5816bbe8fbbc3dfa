"""Loading the prior a run names: ``toyworld``, or any Stable-Diffusion-family model (``tiny``,
a local diffusers folder or a hub id); all implement :class:`~sdi_blender.server.diffusion.interface.Prior`."""

from __future__ import annotations

import torch

from ..diffusion.interface import Prior


def load_prior(model: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Prior:
    """The prior ``model`` names: ``toyworld``, or any Stable-Diffusion-family model."""
    from ...catalog import TOYWORLD

    if model == TOYWORLD:
        from ..toyworld.prior import ToyWorldPrior

        return ToyWorldPrior(device=device)
    from ..diffusion.prior import StableDiffusionPrior

    return StableDiffusionPrior(model, device=device, dtype=dtype)
