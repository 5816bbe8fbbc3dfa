"""fp16 dynamic loss scaling: VAE-encoder gradients survive, overflowing steps are skipped."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdi_blender.server.training import run_dir
from sdi_blender.server.training.loss_scaling import INIT_SCALE, make_adam, make_scaler
from sdi_blender.server.training.trainer import Trainer

RMS = (0.01, 0.1, 1.0)


@pytest.fixture(scope="module")
def vaes():
    """The tiny model's VAE architecture, random weights, in fp32 and an fp16 copy."""
    from diffusers import AutoencoderKL

    from sdi_blender.server.diffusion.tiny_model import TINY_VAE

    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE).eval()
    return vae, copy.deepcopy(vae).half()


def _encode(vae, rgb: torch.Tensor) -> torch.Tensor:
    """fp32 latents of ``rgb`` through ``vae`` in its dtype (the posterior mean, no sampling)."""
    dtype = next(vae.parameters()).dtype
    return (vae.encode((rgb * 2 - 1).to(dtype)).latent_dist.mode() * vae.config.scaling_factor).float()


def _render_gradients(vae, scaled: bool) -> list[torch.Tensor]:
    """The render's gradient [3·512·512] of the guidance loss, for a residual of each RMS.

    The render is 512×512, so the latents are 4×64×64 and the loss's mean divides by 16384,
    as in training. ``scaled`` takes the trainer's path: the scaler's backward and step.
    """
    rgb = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    latents = _encode(vae, rgb)
    grads = []
    for rms in RMS:
        residual = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2)) * rms
        loss = 0.5 * F.mse_loss(latents, (latents + residual).detach())
        rgb.grad = None
        if scaled:  # lr 0: the step only unscales the gradient
            scaler = make_scaler(rgb.device, torch.float16)
            optimizer = torch.optim.SGD([rgb], lr=0.0)
            scaler.scale(loss).backward(retain_graph=True)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward(retain_graph=True)
        grads.append(rgb.grad.flatten().clone())
    return grads


def test_cpu_has_fp16_convolutions():
    x = torch.randn(1, 3, 8, 8, dtype=torch.float16, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float16, requires_grad=True)
    F.conv2d(x, w).sum().backward()
    assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all()


def test_scaled_fp16_vae_gradient_matches_fp32(vaes):
    vae32, vae16 = vaes
    reference = _render_gradients(vae32, scaled=False)
    scaled = _render_gradients(vae16, scaled=True)
    unscaled = _render_gradients(vae16, scaled=False)
    for rms, g32, g16, _bare in zip(RMS, reference, scaled, unscaled):
        assert F.cosine_similarity(g16, g32, dim=0) >= 0.99, rms
        torch.testing.assert_close(g16.norm(), g32.norm(), rtol=0.02, atol=0)
    # The bug it fixes: unscaled, the small residual's gradient underflows to (almost) zero.
    assert F.cosine_similarity(unscaled[0], reference[0], dim=0) < 0.5
    assert unscaled[0].abs().max() < 0.1 * reference[0].abs().max()


def test_an_overflowing_step_is_skipped_and_the_scale_drops():
    scaler = make_scaler(torch.device("cpu"), torch.float16)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = make_adam([weight], scaler, lr=0.1)
    # d loss / d half = 2¹⁶ after scaling: above fp16's largest value (65504), so inf.
    loss = (weight.half() * 1.0).float().sum()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    torch.testing.assert_close(weight.detach(), torch.ones(3), rtol=0, atol=0)
    assert scaler.get_scale() == INIT_SCALE / 2
    optimizer.zero_grad()
    scaler.scale((weight.half() * 1e-3).float().sum()).backward()  # fits: this one is taken
    scaler.step(optimizer)
    scaler.update()
    assert (weight.detach() < 1).all() and scaler.get_scale() == INIT_SCALE / 2


def test_scaling_is_off_unless_the_prior_is_fp16():
    assert make_scaler(torch.device("cpu"), torch.float16).is_enabled()
    assert not make_scaler(torch.device("cpu"), torch.float32).is_enabled()
    assert not make_scaler(torch.device("cpu"), torch.bfloat16).is_enabled()


# -- the trainer with an fp16 prior -------------------------------------------------------
@pytest.fixture(scope="module")
def prior16(model_cache: Path):
    from sdi_blender.server.diffusion.prior import StableDiffusionPrior

    return StableDiffusionPrior("tiny", device="cpu", dtype=torch.float16)


def _trainer(prior, run: Path, resume: bool = False) -> Trainer:
    from test_trainer import small_config

    if not resume:
        run_dir.prepare_new_run(run, overwrite=False)
    return Trainer(small_config(), run, prior=prior, resume=resume)


def _params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in [*trainer.field.parameters(), *trainer.background.parameters()]]


def test_trainer_skips_a_step_whose_fp16_gradients_overflow(prior16, tmp_path, monkeypatch):
    trainer = _trainer(prior16, tmp_path)
    assert trainer.scaler.is_enabled()
    real = Trainer.train_step

    def overflowing(self):
        t, terms = real(self)
        terms["total"] = terms["total"] * 1e12  # finite loss, inf gradients in the fp16 VAE
        return t, terms

    before = _params(trainer)
    monkeypatch.setattr(Trainer, "train_step", overflowing)
    trainer.optimise_step()
    trainer.report_progress(wait=True)  # a finite loss: no divergence
    for a, b in zip(before, _params(trainer)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert trainer.scaler.get_scale() == INIT_SCALE / 2
    monkeypatch.setattr(Trainer, "train_step", real)
    trainer.optimise_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(trainer)))


def test_the_scale_is_checkpointed_and_older_checkpoints_still_load(prior16, tmp_path):
    trainer = _trainer(prior16, tmp_path)
    trainer.optimise_step()
    trainer.scaler.update(new_scale=1024.0)
    trainer.save_checkpoint()
    assert _trainer(prior16, tmp_path, resume=True).scaler.get_scale() == 1024.0
    path = tmp_path / run_dir.CHECKPOINT
    state = torch.load(path, weights_only=False)
    del state["scaler"]
    torch.save(state, path)
    old = _trainer(prior16, tmp_path, resume=True)
    assert old.step == 1 and old.scaler.get_scale() == INIT_SCALE
