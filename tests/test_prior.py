"""The Stable Diffusion prior on the tiny model: loading, text, guided UNet calls, VAE."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sdi_blender.errors import ModelUnavailable, UserError
from sdi_blender.server.diffusion.model_source import resolve_model_source
from sdi_blender.server.diffusion.prior import StableDiffusionPrior
from sdi_blender.server.diffusion.prompts import (
    BACK,
    FRONT,
    OVERHEAD,
    SIDE,
    PromptOptions,
    direction_index,
    perp_neg_mix,
    perpendicular_component,
    view_prompts,
)


class UNetCalls:
    """Counts UNet forward passes and their batch sizes."""

    def __init__(self, unet):
        self.batches: list[int] = []
        self._h = unet.register_forward_hook(lambda m, args, out: self.batches.append(args[0].shape[0]))

    def close(self):
        self._h.remove()


def _latents(b=2, seed=0):
    return torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_tiny_prior_runs_in_fp32_on_cpu(prior):
    assert prior.device.type == "cpu" and prior.dtype == torch.float32
    assert prior.unet.dtype == torch.float32
    assert prior.alphas_cumprod.shape == (1000,) and prior.alphas_cumprod.dtype == torch.float32
    assert (prior.latent_size, prior.image_size) == (8, 64)
    assert not any(p.requires_grad for p in prior.unet.parameters())


def test_prompt_is_encoded_once_with_view_variants(prior):
    emb = prior.encode_prompt("a red apple", "blurry")
    assert emb.prompt.shape == (1, 77, 32) and emb.views.shape == (4, 77, 32)
    expected = prior.encode_text(["a red apple", "blurry", *view_prompts("a red apple")])
    torch.testing.assert_close(torch.cat([emb.prompt, emb.negative, emb.views]), expected)
    assert view_prompts("x") == ["x, side view", "x, front view", "x, back view", "x, overhead view"]


def test_plain_cfg_is_one_batched_unet_call_with_the_official_convention(prior):
    emb = prior.encode_prompt("a red apple")
    pred = prior.predictor(emb)
    x, t = _latents(), torch.tensor([500, 500])
    calls = UNetCalls(prior.unet)
    guided = pred.predict_noise(x, t, 7.5)
    calls.close()
    assert calls.batches == [4]  # cond + uncond for a batch of 2, in one call
    e_c = prior.unet_eps(x, t, emb.prompt.expand(2, -1, -1))
    e_u = prior.unet_eps(x, t, emb.negative.expand(2, -1, -1))
    # The official plain-CFG convention: ε_c + s(ε_c − ε_u), an effective scale of s + 1.
    torch.testing.assert_close(guided, e_c + 7.5 * (e_c - e_u), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided, e_u + 8.5 * (e_c - e_u), rtol=1e-4, atol=1e-5)


def test_perp_neg_uses_four_prompts_in_one_call(prior):
    emb = prior.encode_prompt("a red apple")
    elev, azim = torch.tensor([10.0, 20.0, 75.0]), torch.tensor([0.0, 120.0, 30.0])
    pred = prior.predictor(emb, elev, azim)
    x, t = _latents(3), torch.full((3,), 400)
    calls = UNetCalls(prior.unet)
    guided = pred.predict_noise(x, t, 7.5)
    calls.close()
    assert calls.batches == [12]
    # Reference: camera 0 looks from the front: positive = front prompt, negatives front & side.
    mix = perp_neg_mix(elev, azim, emb.options)
    ref_cond = torch.einsum("bv,vld->bld", mix.positive, emb.views)
    e_c = prior.unet_eps(x, t, ref_cond)
    e_u = prior.unet_eps(x, t, emb.negative.expand(3, -1, -1))
    table = torch.cat([emb.views, emb.negative])
    acc = e_c - e_u
    for k in range(2):
        e_n = prior.unet_eps(x, t, table[mix.negatives[:, k]])
        acc = acc + mix.weights[:, k].view(-1, 1, 1, 1) * perpendicular_component(e_n - e_u, e_c - e_u)
    # Batched (12) and per-variant (3) UNet calls round differently; ×7.5 leaves ~2e-5.
    torch.testing.assert_close(guided, e_u + 7.5 * acc, rtol=1e-4, atol=5e-5)


def test_view_dependent_prompts_follow_the_camera(prior):
    emb = prior.encode_prompt("a red apple", options=PromptOptions(perp_neg=False))
    elev = torch.tensor([0.0, 0.0, 0.0, 70.0])
    azim = torch.tensor([10.0, 90.0, 180.0, 0.0])
    pred = prior.predictor(emb, elev, azim)
    assert len(pred.text) == 2
    for i, d in enumerate([FRONT, SIDE, BACK, OVERHEAD]):
        torch.testing.assert_close(pred.text[0][i], emb.views[d])
    plain = prior.predictor(prior.encode_prompt("a red apple", options=PromptOptions(view_dependent=False)), elev, azim)
    torch.testing.assert_close(plain.text[0][2], emb.prompt[0])


def test_predictor_rejects_a_batch_that_does_not_match_its_cameras(prior):
    pred = prior.predictor(prior.encode_prompt("x"), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="does not match"):
        pred.predict_noise(_latents(3), torch.full((3,), 10), 7.5)


def test_direction_and_perp_neg_weights():
    opts = PromptOptions()
    idx = direction_index(torch.tensor([0.0, 0, 0, 0, 61]), torch.tensor([44.0, 46, 136, -170, 0]), opts)
    assert idx.tolist() == [FRONT, SIDE, BACK, BACK, OVERHEAD]
    mix = perp_neg_mix(torch.tensor([0.0, 0, 0, 80]), torch.tensor([0.0, 90, 180, 0]), opts)
    # Front (r = 1): all weight on the front prompt; the front negative vanishes (f_fs(1) = 0).
    assert mix.positive[0].tolist() == [0, 1, 0, 0]
    assert mix.weights[0, 0] == pytest.approx(-(4 * math.exp(-0.5) - 2.426), abs=1e-6)
    assert mix.weights[0, 1] == pytest.approx(-(4 - 2.426))
    assert mix.positive[1].tolist() == [1, 0, 0, 0]  # pure side
    assert mix.positive[2].tolist() == [0, 0, 1, 0]  # pure back
    assert mix.negatives[2].tolist() == [SIDE, FRONT]
    assert mix.weights[2].tolist() == pytest.approx([-(1 - 0.606), -(1 + 0.967)])
    assert mix.positive[3].tolist() == [0, 0, 0, 1] and mix.weights[3].tolist() == [0, 0]


def test_vae_round_trip_is_differentiable(prior):
    rgb = torch.rand(2, 3, 64, 64, requires_grad=True)
    latents = prior.encode_images(rgb, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8)
    latents.square().sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    image = prior.decode_latents(latents.detach())
    assert image.shape == (2, 3, 64, 64) and 0 <= image.min() and image.max() <= 1


def test_a_local_directory_loads_through_the_same_path(prior):
    local = StableDiffusionPrior(resolve_model_source("tiny"), device="cpu")
    for a, b in zip(local.unet.parameters(), prior.unet.parameters()):
        assert torch.equal(a, b)


def test_unavailable_hub_model_is_one_clear_line():
    with pytest.raises(ModelUnavailable) as info:
        StableDiffusionPrior("sdi-test-nonexistent/model", device="cpu")
    line = info.value.one_line()
    assert "\n" not in line
    assert "'sdi-test-nonexistent/model'" in line and "hf download sdi-test-nonexistent/model" in line
    assert "HF_HUB_OFFLINE" in line
    assert info.value.code == "model_unavailable"


def test_incomplete_local_model_and_missing_path(tmp_path: Path):
    with pytest.raises(ModelUnavailable, match="incomplete or unreadable"):
        StableDiffusionPrior(str(tmp_path), device="cpu")
    with pytest.raises(UserError, match="does not exist"):
        StableDiffusionPrior(str(tmp_path / "nope" / "model"), device="cpu")


def test_precision_is_fp16_on_cuda_and_fp32_on_cpu():
    from sdi_blender.server.util.devices import default_dtype

    assert default_dtype(torch.device("cuda")) == torch.float16
    assert default_dtype(torch.device("cpu")) == torch.float32


def test_hub_id_loads_offline_from_the_hugging_face_cache(tmp_path: Path):
    """A hub model already in the HF cache loads with HF_HUB_OFFLINE=1 and no network."""
    import os
    import shutil
    import subprocess
    import sys

    snapshot = tmp_path / "hub" / "models--sdi-test--cached-tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(resolve_model_source("tiny"), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = (
        "from sdi_blender.server.diffusion.prior import StableDiffusionPrior as P; "
        "p = P('sdi-test/cached-tiny', device='cpu'); print(p.image_size)"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "64"


def test_attention_uses_torch_sdpa(prior):
    """diffusers' default processor on torch 2 is AttnProcessor2_0 (scaled_dot_product_attention)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    for model in (prior.unet, prior.vae):
        procs = model.attn_processors
        assert procs and all(isinstance(p, AttnProcessor2_0) for p in procs.values())


def test_channels_last_gives_the_same_prediction(prior):
    x, t = _latents(2), torch.tensor([500, 500])
    text = prior.encode_prompt("a red apple").prompt.expand(2, -1, -1)
    plain = prior.unet_eps(x, t, text)
    try:
        prior.set_channels_last(True)
        assert prior.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        fast = prior.unet_eps(x, t, text)
    finally:
        prior.set_channels_last(False)
    assert prior.unet.conv_in.weight.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_vae_checkpointing_gives_the_same_gradients(prior):
    def grad() -> torch.Tensor:
        rgb = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
        latents = prior.encode_images(rgb, torch.Generator().manual_seed(1))
        (latents * torch.linspace(-1, 1, latents.numel()).view_as(latents)).sum().backward()
        return rgb.grad

    plain = grad()
    try:
        prior.set_vae_checkpointing(True)
        assert prior.vae.encoder.gradient_checkpointing
        checkpointed = grad()
    finally:
        prior.set_vae_checkpointing(False)
    assert not prior.vae.is_gradient_checkpointing
    torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)


def test_speed_config_defaults_and_compile_mode():
    from sdi_blender.server.diffusion.prior import SpeedConfig

    speed = SpeedConfig()
    assert speed.compile_mode(torch.device("cpu")) is None  # off by default until a GPU run measures it
    assert speed.compile_mode(torch.device("cuda")) is None
    auto = SpeedConfig(compile_unet="auto")
    assert auto.compile_mode(torch.device("cpu")) is None and auto.compile_mode(torch.device("cuda")) == "default"
    assert SpeedConfig(compile_unet="off").compile_mode(torch.device("cuda")) is None
    assert SpeedConfig(compile_unet="max-autotune").compile_mode(torch.device("cpu")) == "max-autotune"
    with pytest.raises(UserError, match="compile mode"):
        SpeedConfig(compile_unet="fast").validate()


def test_apply_speed_on_cpu_changes_nothing(prior):
    from sdi_blender.server.diffusion.prior import SpeedConfig

    prior.apply_speed(SpeedConfig(channels_last=True))  # channels-last applies on CUDA only
    assert prior.memory_format == torch.contiguous_format and prior._compiled is None


def test_a_failing_compiled_unet_falls_back_with_one_warning(prior, caplog):
    x, t = _latents(2), torch.tensor([10, 10])
    text = prior.encode_prompt("a red apple").prompt.expand(2, -1, -1)
    expected = prior.unet_eps(x, t, text)

    def broken(*args, **kwargs):
        raise RuntimeError("backend compiler failed\nlong traceback")

    prior._compiled, prior._compile_mode = broken, "default"
    try:
        with caplog.at_level("WARNING", logger="sdi_blender.server.diffusion.prior"):
            out = prior.unet_eps(x, t, text)
            again = prior.unet_eps(x, t, text)
    finally:
        prior.set_unet_compile(None)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "torch.compile of the UNet failed (RuntimeError: backend compiler failed); running it uncompiled"
    ]
    assert prior._compiled is None
