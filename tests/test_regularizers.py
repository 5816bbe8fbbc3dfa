"""The SDI system's regularisers and their weight schedules."""

from __future__ import annotations

import math

import pytest
import torch

from sdi_blender.server.training import regularizers as reg
from sdi_blender.server.training.regularizers import LossWeights, ramp


def test_ramp_constants_and_linear_schedules():
    assert ramp(0.1, 12345) == 0.1
    sparsity, convex = (0, 0.15, 0.0, 3000), [0, 1.0, 0.1, 4000]  # a list, as read from JSON
    assert ramp(sparsity, 0) == pytest.approx(0.15)
    assert ramp(sparsity, 1500) == pytest.approx(0.075)
    assert ramp(sparsity, 3000) == pytest.approx(0.0)
    assert ramp(sparsity, 9000) == pytest.approx(0.0)
    assert ramp(convex, 2000) == pytest.approx(0.55)
    assert ramp(convex, 4000) == pytest.approx(0.1) == ramp(convex, 10_000)
    assert ramp((100, 2.0, 4.0, 200), 50) == pytest.approx(2.0)  # clamped before the start
    with pytest.raises(ValueError):
        ramp((0, 1.0, 2.0), 5)


def test_loss_weights_at_a_step():
    w = LossWeights()
    assert w.at(0) == pytest.approx(
        {"guidance": 1.0, "orient": 0.1, "sparsity": 0.15, "opaque": 0.1, "convex": 1.0, "z_variance": 1.0}
    )
    late = w.at(5000)
    assert late["sparsity"] == 0.0 and late["convex"] == pytest.approx(0.1)


def _maps(opacity_values: list[float]) -> torch.Tensor:
    return torch.tensor(opacity_values).reshape(1, 1, -1, 1)


def test_orientation_loss_averages_over_covered_rays():
    opacity = _maps([0.0, 0.5, 1.0, 0.0])
    orient = _maps([0.0, 0.2, 0.6, 0.0])
    torch.testing.assert_close(reg.orientation_loss(orient, opacity), torch.tensor(0.4))
    empty = reg.orientation_loss(torch.zeros(1, 2, 2, 1), torch.zeros(1, 2, 2, 1))
    assert torch.isfinite(empty) and empty == 0


def test_sparsity_loss():
    opacity = _maps([0.0, 1.0])
    expected = (math.sqrt(0.01) + math.sqrt(1.01)) / 2
    assert reg.sparsity_loss(opacity).item() == pytest.approx(expected)


def test_opacity_loss_is_binary_entropy():
    assert reg.opacity_loss(_maps([0.5])).item() == pytest.approx(math.log(2))
    # Fully empty or opaque pixels cost the (small) entropy of the clamp, not NaN.
    eps = 1e-3
    clamp_entropy = -(eps * math.log(eps) + (1 - eps) * math.log(1 - eps))
    assert reg.opacity_loss(_maps([0.0, 1.0])).item() == pytest.approx(clamp_entropy, rel=1e-4)
    assert reg.opacity_loss(_maps([0.5])) > reg.opacity_loss(_maps([0.9])) > reg.opacity_loss(_maps([1.0]))


def test_z_variance_loss_counts_opaque_rays_only():
    opacity = _maps([0.2, 0.6, 1.0])
    z_var = _maps([5.0, 0.1, 0.3])
    torch.testing.assert_close(reg.z_variance_loss(z_var, opacity), torch.tensor(0.2))
    none = reg.z_variance_loss(z_var, _maps([0.1, 0.2, 0.5]))
    assert torch.isfinite(none) and none == 0


def _normal_grid(rows: list[list[list[float]]]) -> torch.Tensor:
    return torch.tensor(rows).unsqueeze(0)  # [1, H, W, 3]


def test_convexity_on_hand_made_normal_maps():
    # At res equal to the input size the bilinear resize is the identity.
    x, y, z = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
    horizontal = _normal_grid([[x, y], [x, y]])  # cross(left, right).z = 1 on both rows
    torch.testing.assert_close(reg.convexity_loss(horizontal, res=2), torch.tensor(-1.0))
    flipped = _normal_grid([[y, x], [y, x]])
    torch.testing.assert_close(reg.convexity_loss(flipped, res=2), torch.tensor(1.0))
    # Vertical pairs: cross(down, up).z, row 0 being the top; z-only normals contribute nothing.
    vertical = _normal_grid([[y, z], [x, z]])  # down=x, up=y in column 0: +1; column 1: 0
    torch.testing.assert_close(reg.convexity_loss(vertical, res=2), torch.tensor(-(0.0 + 0.5)))
    constant = torch.full((2, 16, 16, 3), 0.4)
    torch.testing.assert_close(reg.convexity_loss(constant), torch.tensor(0.0))


def test_convexity_downscales_to_res():
    torch.manual_seed(0)
    normals = torch.rand(2, 32, 32, 3)
    # A 2×2 average-pool is what bilinear resizing by exactly one half computes.
    pooled = torch.nn.functional.avg_pool2d(normals.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(reg.convexity_loss(normals, res=16), reg.convexity_loss(pooled, res=16))


def test_gradients_flow_to_the_render_outputs():
    torch.manual_seed(0)
    opacity = torch.rand(1, 8, 8, 1).mul(0.9).add(0.05).requires_grad_()
    orient = torch.rand(1, 8, 8, 1, requires_grad=True)
    z_var = torch.rand(1, 8, 8, 1, requires_grad=True)
    normal = torch.rand(1, 8, 8, 3, requires_grad=True)
    total = (
        reg.orientation_loss(orient, opacity)
        + reg.sparsity_loss(opacity)
        + reg.opacity_loss(opacity)
        + reg.z_variance_loss(z_var, opacity)
        + reg.convexity_loss(normal)
    )
    total.backward()
    for t in (opacity, orient, z_var, normal):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_no_nan_when_nothing_is_opaque():
    opacity = torch.zeros(1, 4, 4, 1, requires_grad=True)
    z_var = torch.zeros(1, 4, 4, 1, requires_grad=True)
    losses = [
        reg.orientation_loss(torch.zeros(1, 4, 4, 1), opacity),
        reg.sparsity_loss(opacity),
        reg.opacity_loss(opacity),
        reg.z_variance_loss(z_var, opacity),
        reg.convexity_loss(torch.zeros(1, 4, 4, 3)),
    ]
    assert all(torch.isfinite(v) for v in losses)
    sum(losses).backward()
    assert torch.isfinite(opacity.grad).all() and torch.isfinite(z_var.grad).all()


def test_schedules_read_from_json_compare_equal():
    import dataclasses
    import json

    w = LossWeights(orient=0.2)
    back = LossWeights(**json.loads(json.dumps(dataclasses.asdict(w))))
    assert back == w and isinstance(back.sparsity, tuple)
    with pytest.raises(ValueError):
        LossWeights(convex=(0, 1.0, 4000))


class _Fog(torch.nn.Module):
    """Constant density ``sigma`` inside the ball of radius 0.5: a semi-transparent object."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = torch.nn.Parameter(torch.tensor(sigma))

    def density(self, x):
        return self.sigma * (x.norm(dim=-1) < 0.5).to(x)

    def forward(self, x, with_normals=False):
        from types import SimpleNamespace

        normal = torch.nn.functional.normalize(x, dim=-1)
        return SimpleNamespace(density=self.density(x), albedo=torch.ones_like(x) * 0.5, normal=normal)


def test_rendered_z_variance_is_normalised_by_opacity():
    """The official z-variance: depth variance *given a hit* (weights / opacity), so a
    semi-transparent ray's value is that of its depth distribution, not 100× larger."""
    from sdi_blender.server.scene.cameras import orbit_cameras
    from sdi_blender.server.scene.renderer import RendererConfig, VolumeRenderer

    sigma = 0.916  # opacity 1 − e^(−σ·1) ≈ 0.6 through the centre
    renderer = VolumeRenderer(
        _Fog(sigma), lambda d: torch.zeros_like(d), 1.0, RendererConfig(num_samples_per_ray=2048, occupancy_grid=False)
    )
    cams = orbit_cameras(torch.zeros(1), torch.zeros(1), 2.0, 10.0, 9, 9)
    with torch.no_grad():
        out = renderer(cams, "albedo")
    opacity, z_var = out.opacity[0, 4, 4, 0], out.z_variance[0, 4, 4, 0]
    # The hit depth s ∈ [0, 1] into the ball has density σe^(−σs)/(1 − e^(−σ)): its variance.
    s = torch.linspace(0, 1, 200001, dtype=torch.float64)
    p = torch.exp(-sigma * s)
    p /= p.sum()
    mean = (p * s).sum()
    expected = (p * (s - mean) ** 2).sum()
    assert abs(opacity - 0.6) < 0.01
    assert abs(z_var - expected) < 0.02 * expected, (float(z_var), float(expected))
    # and the loss (opaque rays only) sees exactly that value on the centre ray
    assert reg.z_variance_loss(out.z_variance[:, 4:5, 4:5], out.opacity[:, 4:5, 4:5]) == z_var
