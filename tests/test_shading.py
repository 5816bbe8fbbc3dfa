"""Point-light shading and DreamFusion's random choice of shading mode."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from sdi_blender.server.scene.shading import SHADINGS, ShadingConfig, pick_shading, shade


def test_defaults_are_the_official_values():
    cfg = ShadingConfig()
    assert (cfg.ambient_light, cfg.diffuse_light, cfg.ambient_only_steps) == (0.1, 0.9, 1000)
    assert (cfg.diffuse_prob, cfg.textureless_prob) == (0.3, 0.75)


def test_ambient_only_phase_renders_albedo_and_draws_nothing():
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert all(pick_shading(ShadingConfig(), s, gen) == "albedo" for s in range(0, 1000, 7))
    assert torch.equal(gen.get_state(), state)


def test_mode_frequencies_after_the_ambient_phase():
    gen, n = torch.Generator().manual_seed(1), 4000
    counts = Counter(pick_shading(ShadingConfig(), 1000, gen) for _ in range(n))
    assert set(counts) == set(SHADINGS)
    expected = {"albedo": 0.7, "textureless": 0.3 * 0.75, "diffuse": 0.3 * 0.25}
    for mode, p in expected.items():
        tolerance = 4 * math.sqrt(p * (1 - p) / n)  # four binomial standard deviations
        assert counts[mode] / n == pytest.approx(p, abs=tolerance)


def test_choice_is_reproducible_with_a_seeded_generator():
    def draws(seed: int) -> list[str]:
        gen = torch.Generator().manual_seed(seed)
        return [pick_shading(ShadingConfig(), 5000, gen) for _ in range(50)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def _points():
    """Three points at the origin with normal +Z, lit from above, 60° off and below."""
    albedo = torch.tensor([[0.5, 0.2, 1.0], [0.4, 0.8, 0.6], [1.0, 1.0, 1.0]])
    normal = torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3)
    positions = torch.zeros(3, 3)
    lights = torch.tensor([[0.0, 0.0, 2.0], [math.sin(math.pi / 3), 0.0, 0.5], [0.0, 0.0, -1.0]])
    return albedo, normal, positions, lights


def test_albedo_mode_returns_the_albedo():
    albedo, normal, positions, lights = _points()
    torch.testing.assert_close(shade(albedo, None, positions, lights, "albedo", ShadingConfig()), albedo)


def test_textureless_is_grey_lambert():
    albedo, normal, positions, lights = _points()
    out = shade(albedo, normal, positions, lights, "textureless", ShadingConfig())
    # n·l̂ = 1, cos 60° = 0.5, and facing away (clamped to 0).
    expected = torch.tensor([0.1 + 0.9, 0.1 + 0.9 * 0.5, 0.1])[:, None].expand(3, 3)
    torch.testing.assert_close(out, expected)


def test_diffuse_multiplies_albedo_and_clamps():
    albedo, normal, positions, lights = _points()
    out = shade(albedo, normal, positions, lights, "diffuse", ShadingConfig())
    light = torch.tensor([1.0, 0.55, 0.1])[:, None]
    torch.testing.assert_close(out, albedo * light)
    bright = ShadingConfig(ambient_light=0.5, diffuse_light=1.0)
    torch.testing.assert_close(
        shade(albedo, normal, positions, lights, "diffuse", bright)[0], torch.tensor([0.75, 0.3, 1.0])
    )  # 1.5 × (0.5, 0.2, 1.0), clamped


def test_light_direction_is_taken_from_each_point():
    # A point off the origin: the light straight above it, not above the origin, counts.
    out = shade(
        torch.ones(1, 3),
        torch.tensor([[0.0, 0.0, 1.0]]),
        torch.tensor([[5.0, 0.0, 0.0]]),
        torch.tensor([[5.0, 0.0, 3.0]]),
        "textureless",
        ShadingConfig(),
    )
    torch.testing.assert_close(out, torch.ones(1, 3))


def test_gradients_reach_albedo_and_normals_and_bad_modes_fail():
    albedo, normal, positions, lights = _points()
    albedo, normal = albedo.clone().mul(0.5).requires_grad_(), normal.clone().requires_grad_()
    shade(albedo, normal, positions, lights, "diffuse", ShadingConfig()).sum().backward()
    assert albedo.grad.abs().sum() > 0 and normal.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        shade(albedo, normal, positions, lights, "phong", ShadingConfig())
    with pytest.raises(ValueError):
        shade(albedo, None, positions, lights, "diffuse", ShadingConfig())
