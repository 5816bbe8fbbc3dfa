"""DDIM inversion/sampling, SDS and SDI on an analytic Gaussian diffusion model."""

from __future__ import annotations

import pytest
import torch
from analytic import GaussianPredictor

from sdi_blender.server.diffusion.guidance import (
    CLEAN,
    NoisePredictor,
    ScoreDistillation,
    annealed_timestep,
    ddim_invert,
    ddim_sample,
    inversion_timesteps,
)


def _x0(shape=(3, 4, 8, 8), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 + 0.7 * torch.randn(shape, generator=g)


def test_gaussian_predictor_is_a_noise_predictor():
    assert isinstance(GaussianPredictor(), NoisePredictor)


@pytest.mark.parametrize("step, tol", [(1, 0.01), (10, 0.05)])
def test_inversion_then_sampling_recovers_x0_on_a_fine_grid(step, tol):
    p = GaussianPredictor()
    x0 = _x0()
    x_t = ddim_invert(p, x0, 900, step=step)
    assert x_t.std() > 0.9  # it really went to (nearly) pure noise
    recovered = ddim_sample(p, x_t, 900, step=step)
    assert (recovered - x0).abs().mean() < tol
    # A coarse grid is visibly worse: the test can tell the two apart.
    coarse = ddim_sample(p, ddim_invert(p, x0, 900, step=300), 900, step=300)
    assert (coarse - x0).abs().mean() > (recovered - x0).abs().mean()


def test_ddim_sample_matches_diffusers_ddim_scheduler():
    from diffusers import DDIMScheduler

    p = GaussianPredictor()
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=1,
    )
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == inversion_timesteps(901, 100)[:0:-1]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ref = x.clone()
    for t in sched.timesteps:
        eps = p.predict_noise(ref, torch.full((2,), int(t)), 3.0)
        ref = sched.step(eps, t, ref).prev_sample
    ours = ddim_sample(p, x, 901, step=100, guidance_scale=3.0)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_inversion_timesteps_follow_the_leading_grid():
    assert inversion_timesteps(500, 100) == [CLEAN, 1, 101, 201, 301, 401, 500]
    # SDI: the grid stops below t, then one hop to t + δ.
    assert inversion_timesteps(537, 100, grid_limit=500) == [CLEAN, 1, 101, 201, 301, 401, 537]
    assert inversion_timesteps(1, 100) == [CLEAN, 1]


def test_sds_with_given_noise_equals_closed_form():
    p = GaussianPredictor()
    x0, t = _x0(), 600
    noise = torch.randn_like(x0)
    target = ScoreDistillation(p, "sds", guidance_scale=7.5).target(x0, t, noise=noise)
    a = p.alphas_cumprod[t]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    eps = p.predict_noise(x_t, torch.full((3,), t), 7.5)
    torch.testing.assert_close(target, (x_t - (1 - a).sqrt() * eps) / a.sqrt())


def test_sds_draws_its_noise_from_the_generator():
    p = GaussianPredictor()
    x0 = _x0()
    out = ScoreDistillation(p, "sds").step(x0, 300, torch.Generator().manual_seed(7))
    expected = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out.noise, expected)
    assert out.t_noisy == out.t == 300


def test_sdi_is_reproducible_for_a_fixed_generator_and_varies_with_seed():
    p = GaussianPredictor()
    sdi = ScoreDistillation(p, "sdi")
    x0 = _x0()
    a = sdi.step(x0, 500, torch.Generator().manual_seed(1))
    b = sdi.step(x0, 500, torch.Generator().manual_seed(1))
    c = sdi.step(x0, 500, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a.target, b.target, rtol=0, atol=0)
    assert a.t_noisy == b.t_noisy
    assert not torch.allclose(a.x_noisy, c.x_noisy)


def test_sdi_inverts_along_the_grid_with_negative_guidance_then_predicts_at_t():
    p = GaussianPredictor()
    sdi = ScoreDistillation(p, "sdi")
    out = sdi.step(_x0(), 500, torch.Generator().manual_seed(0))
    assert 500 <= out.t_noisy < 600
    times = [int(t[0]) for t, _ in p.calls]
    scales = [s for _, s in p.calls]
    # CLEAN is evaluated at the model's timestep 0.
    assert times == [0, 1, 101, 201, 301, 401, 500]
    assert scales == [-7.5] * 6 + [7.5]
    assert all(len(t) == 3 for t, _ in p.calls)  # the whole batch in every call


def test_sdi_noise_reparametrises_the_noisy_latent():
    p = GaussianPredictor()
    x0 = _x0()
    out = ScoreDistillation(p, "sdi").step(x0, 400, torch.Generator().manual_seed(4))
    a = p.alphas_cumprod[out.t_noisy]
    torch.testing.assert_close(out.x_noisy, a.sqrt() * x0 + (1 - a).sqrt() * out.noise)
    # and the target is the one-step DDIM denoising of it at t
    eps = p.predict_noise(out.x_noisy, torch.full((3,), 400), 7.5)
    a_t = p.alphas_cumprod[400]
    torch.testing.assert_close(out.target, (out.x_noisy - (1 - a_t).sqrt() * eps) / a_t.sqrt())


def test_inversion_eta_adds_noise_and_eta_zero_is_deterministic():
    p = GaussianPredictor()
    x0 = _x0()
    det = [ddim_invert(p, x0, 700, eta=0.0, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    torch.testing.assert_close(det[0], det[1], rtol=0, atol=0)
    noisy = ddim_invert(p, x0, 700, eta=0.3, generator=torch.Generator().manual_seed(0))
    assert (noisy - det[0]).abs().mean() > 1e-3


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_shapes_are_preserved_for_any_batch(batch):
    p = GaussianPredictor()
    x0 = _x0((batch, 4, 16, 8))
    for method in ("sds", "sdi"):
        sd = ScoreDistillation(p, method)
        out = sd.step(x0, 250, torch.Generator().manual_seed(0))
        for tensor in (out.target, out.x_noisy, out.noise):
            assert tensor.shape == x0.shape


def test_loss_gradient_points_from_target_to_x0():
    p = GaussianPredictor()
    x0 = _x0((2, 4, 8, 8)).requires_grad_(True)
    noise = torch.randn(2, 4, 8, 8)
    loss, out = ScoreDistillation(p, "sds").loss(x0, 300, noise=noise)
    loss.backward()
    torch.testing.assert_close(x0.grad, (x0 - out.target).detach() / (x0.numel() * 2))


def test_annealed_timestep_schedules():
    assert annealed_timestep(0, 1000) == 980
    assert annealed_timestep(500, 1000) == 500
    assert annealed_timestep(1000, 1000) == 20
    # The paper's 3D schedule: 0.98 → 0.25.
    assert annealed_timestep(0, 10_000, 0.98, 0.25) == 980
    assert annealed_timestep(10_000, 10_000, 0.98, 0.25) == 250
    ts = [annealed_timestep(s, 100) for s in range(100)]
    assert ts == sorted(ts, reverse=True)


def test_bad_arguments_raise():
    p = GaussianPredictor()
    with pytest.raises(ValueError, match="unknown method"):
        ScoreDistillation(p, "vsd")  # type: ignore[arg-type]
    for t in (0, 1000, -5):
        with pytest.raises(ValueError, match="out of range"):
            ScoreDistillation(p, "sds").target(_x0(), t)


def test_sdi_draws_delta_from_the_delta_generator_and_names_its_stages():
    """δ can come from a separate (CPU) generator: no host-device sync on CUDA."""
    from contextlib import nullcontext

    stages: list[str] = []

    def stage(name):
        stages.append(name)
        return nullcontext()

    x0 = _x0()
    for seed in (0, 1, 2):
        delta_gen = torch.Generator().manual_seed(seed)
        expected = 500 + int(torch.randint(0, 100, (1,), generator=torch.Generator().manual_seed(seed)))
        sdi = ScoreDistillation(GaussianPredictor(), "sdi", delta_generator=delta_gen, stage=stage)
        assert sdi.step(x0, 500, torch.Generator().manual_seed(9)).t_noisy == expected
    assert stages == ["inversion", "prediction"] * 3
    stages.clear()
    ScoreDistillation(GaussianPredictor(), "sds", stage=stage).step(x0, 500, torch.Generator())
    assert stages == ["prediction"]
