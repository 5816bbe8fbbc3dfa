"""Bare calls of the diffusion model, timed: the work bound of a training step.

The UNet at the prompt-batch sizes a step uses and the VAE encoder forward + backward, each in
the prior's dtype and configuration, timed with CUDA events (wall clock elsewhere).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_ms(fn: Callable[[], object], cuda: bool, repeats: int, warmup: int = 2) -> float:
    """Median ms of ``fn`` (CUDA events around each call on CUDA, wall clock elsewhere)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bare_unet_ms(prior, batch: int, repeats: int) -> float:
    """One UNet call at ``batch`` in the prior's dtype and configuration (compiled or not)."""
    size, width = prior.latent_size, prior.unet.config.cross_attention_dim
    x = torch.randn(batch, 4, size, size, device=prior.device, dtype=prior.dtype)
    t = torch.full((batch,), 500, device=prior.device)
    text = torch.randn(batch, 77, width, device=prior.device, dtype=prior.dtype)
    with torch.no_grad():
        return time_ms(lambda: prior.unet_eps(x, t, text), prior.device.type == "cuda", repeats)


def bare_vae_ms(prior, repeats: int) -> float:
    """One VAE encoder forward + backward (to the image) at the model's native size."""
    size = prior.image_size
    rgb = torch.rand(1, 3, size, size, device=prior.device, requires_grad=True)
    gen = torch.Generator(prior.device).manual_seed(0)

    def step() -> None:
        latents = prior.encode_images(rgb, gen)
        latents.backward(torch.ones_like(latents))

    return time_ms(step, prior.device.type == "cuda", repeats)


BARE_VARIANTS = {"eager": {}, "compiled": {"compile_unet": "auto"}, "eager-channels-first": {"channels_last": False}}


def measure_bare(prior, repeats: int, variants: tuple[str, ...] = tuple(BARE_VARIANTS)) -> dict:
    """Bare UNet (per prompt-batch size) and VAE encoder fwd + bwd ms for each speed variant."""
    from sdi_blender.server.diffusion.prior import SpeedConfig

    out: dict = {"unet_ms": {}, "vae_fwd_bwd_ms": {}}
    for name in variants:
        speed = BARE_VARIANTS[name]
        config = SpeedConfig(**speed)
        if name == "compiled" and config.compile_mode(prior.device) is None:
            continue  # no compiling on this device
        prior.apply_speed(config)
        out["unet_ms"][name] = {str(k): bare_unet_ms(prior, k, repeats) for k in (4, 2)}
        out["vae_fwd_bwd_ms"][name] = bare_vae_ms(prior, repeats)
    out["unet_ms_best"] = {k: min(v[k] for v in out["unet_ms"].values()) for k in ("4", "2")}
    out["vae_fwd_bwd_ms_best"] = min(out["vae_fwd_bwd_ms"].values())
    return out
