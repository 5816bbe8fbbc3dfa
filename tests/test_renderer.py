"""Volume rendering with nerfacc on analytic fields: opacity, depth, shading, chunking."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from sdi_blender.server.scene.cameras import orbit_cameras
from sdi_blender.server.scene.renderer import RendererConfig, VolumeRenderer, ray_box_interval, render_views

ALBEDO = (0.2, 0.4, 0.6)
BACKGROUND = (0.9, 0.1, 0.1)


@dataclass
class Out:
    density: torch.Tensor
    albedo: torch.Tensor
    normal: torch.Tensor | None


class Ball(nn.Module):
    """Density ``sigma`` inside a ball of radius ``r`` (a learnable scale), zero outside."""

    def __init__(self, r: float = 0.5, sigma: float = 200.0, inward: bool = False) -> None:
        super().__init__()
        self.r = nn.Parameter(torch.tensor(r))
        self.sigma, self.sign = sigma, -1.0 if inward else 1.0

    def density(self, x):
        # A steep sigmoid edge keeps the density differentiable w.r.t. r and x.
        return self.sigma * torch.sigmoid((self.r - x.norm(dim=-1)) * 2000)

    def forward(self, x, with_normals=False):
        normal = self.sign * torch.nn.functional.normalize(x, dim=-1) if with_normals else None
        return Out(self.density(x), torch.tensor(ALBEDO).expand(x.shape[0], 3), normal)


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.colour = nn.Parameter(torch.tensor(BACKGROUND))

    def forward(self, dirs):
        return self.colour.expand(*dirs.shape[:-1], 3)


def _renderer(samples=256, chunk=1 << 20, r=0.5):
    return VolumeRenderer(Ball(r), Flat(), 2.0, RendererConfig(num_samples_per_ray=samples, chunk_rays=chunk))


def _front_camera(size=33, fovy=40.0):
    return orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 2.0, fovy, size, size)


def test_ray_box_interval():
    o = torch.tensor([[3.0, 0, 0], [3.0, 5.0, 0]])
    d = torch.tensor([[-1.0, 0, 0], [-1.0, 0, 0]])
    near, far = ray_box_interval(o, d, 2.0)
    torch.testing.assert_close(near[0], torch.tensor(1.0))
    torch.testing.assert_close(far[0], torch.tensor(5.0))
    assert near[1] == far[1]  # misses the box


def test_ball_renders_with_expected_opacity_and_depth():
    out = _renderer()(_front_camera(), "albedo")
    c = 33 // 2
    assert out.opacity[0, c, c, 0] > 0.99
    # The camera is 2 away from the centre; the surface 0.5 in front of it.
    assert out.depth[0, c, c, 0].item() == pytest.approx(1.5, abs=0.02)
    assert out.opacity[0, 0, 0, 0] < 1e-3
    torch.testing.assert_close(out.rgb[0, c, c], torch.tensor(ALBEDO), atol=0.01, rtol=0)
    torch.testing.assert_close(out.rgb[0, 0, 0], torch.tensor(BACKGROUND), atol=1e-3, rtol=0)
    # Covered area: rays within asin(0.5 / 2) of the axis hit the ball.
    half = math.tan(math.asin(0.25)) / math.tan(math.radians(20))  # in half-image units
    expected = math.pi * half**2 / 4
    assert out.opacity.mean().item() == pytest.approx(expected, rel=0.03)


def test_normals_face_the_camera_and_textureless_shading_lights_them():
    out = _renderer()(_front_camera(), "textureless")
    c = 33 // 2
    # World normal at the front of the ball is +X: stored as (n + 1)/2 · opacity.
    torch.testing.assert_close(out.normal[0, c, c], torch.tensor([1.0, 0.5, 0.5]), atol=0.02, rtol=0)
    # Light at the camera: fully lit centre is ambient + diffuse = 1 (grey).
    torch.testing.assert_close(out.rgb[0, c, c], torch.ones(3), atol=0.02, rtol=0)
    assert out.orient[0, c, c, 0] < 1e-3  # normals facing the camera are fine...
    flipped = VolumeRenderer(Ball(inward=True), Flat(), 2.0, RendererConfig(num_samples_per_ray=256))
    assert flipped(_front_camera(), "albedo").orient[0, c, c, 0] > 0.95  # ...facing away is penalised


def test_chunked_render_matches_whole_batch_including_gradients():
    cams = _front_camera(17)
    results = []
    for chunk in (1 << 20, 50):
        torch.manual_seed(0)
        r = _renderer(samples=64, chunk=chunk)
        out = r(cams, "diffuse")
        loss = out.rgb.square().sum() + out.orient.sum() + out.depth.sum()
        loss.backward()
        results.append((out.rgb.detach(), r.field.r.grad.clone(), r.background.colour.grad.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert results[0][1].abs() > 0  # the field receives gradients


def test_stratified_samples_are_reproducible_and_jittered():
    r = _renderer(samples=32)
    cams = _front_camera(9)
    a = r(cams, "albedo", torch.Generator().manual_seed(1), stratified=True).depth
    b = r(cams, "albedo", torch.Generator().manual_seed(1), stratified=True).depth
    c = r(cams, "albedo", None, stratified=False).depth
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_occupancy_grid_update_marks_the_ball(monkeypatch):
    r = _renderer(samples=64)
    monkeypatch.setattr(r, "uses_grid", lambda device: True)
    for step in range(0, 64, 16):
        r.update_grid(step)
    occupied = r.estimator.binaries[0]  # [res, res, res] over [-2, 2]^3
    res = occupied.shape[0]
    centre = res // 2
    assert occupied[centre - 1 : centre + 1, centre - 1 : centre + 1, centre - 1 : centre + 1].all()
    assert not occupied[0, 0, 0] and occupied.float().mean() < 0.1


class _ShiftedBall(Ball):
    """The ball moved off the centre, so each axis and its sign is told apart, with a soft edge
    (the grid looks at one random point per cell, so a hard edge's cells can be missed); counts
    the points the renderer evaluates."""

    CENTRE = (0.8, -0.4, 0.3)

    def __init__(self) -> None:
        super().__init__(r=0.4)
        self.evaluated = 0

    def density(self, x):
        return self.sigma * torch.sigmoid((self.r - (x - torch.tensor(self.CENTRE)).norm(dim=-1)) * 50)

    def forward(self, x, with_normals=False):
        self.evaluated += x.shape[0]
        out = super().forward(x - torch.tensor(self.CENTRE), with_normals)
        return Out(self.density(x), out.albedo, out.normal)


def test_off_cuda_the_grid_leaves_its_empty_cells_out_of_the_field():
    field = _ShiftedBall()
    r = VolumeRenderer(field, Flat(), 2.0, RendererConfig(num_samples_per_ray=64))
    dense = VolumeRenderer(field, Flat(), 2.0, RendererConfig(num_samples_per_ray=64, occupancy_grid=False))
    cams = orbit_cameras(torch.tensor([10.0]), torch.tensor([-30.0]), 3.0, 60.0, 24, 24)
    with torch.no_grad():
        assert r._occupied(torch.zeros(1, 3)) is None  # not filled yet: every sample is evaluated
        for step in range(0, 320, 16):  # each update looks at one random point per cell
            r.update_grid(step)
        centre = torch.tensor([_ShiftedBall.CENTRE])
        mirrors = centre * torch.tensor([[-1.0, 1, 1], [1, -1, 1], [1, 1, -1]])
        assert r._occupied(centre).all() and not r._occupied(mirrors).any()
        field.evaluated = 0
        skipped = r(cams, "diffuse")
        evaluated, field.evaluated = field.evaluated, 0
        full = dense(cams, "diffuse")
    assert evaluated < 0.2 * field.evaluated  # the ball fills a few cells of the box
    assert full.opacity.max() > 0.9
    # What differs is the haze of the cells below the threshold (depth: that opacity × ~3).
    for a, b, tol in (
        (skipped.rgb, full.rgb, 0.05),
        (skipped.opacity, full.opacity, 0.05),
        (skipped.depth, full.depth, 0.15),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_a_seeded_grid_update_is_reproducible_and_leaves_the_global_rng_alone():
    grids = []
    for _ in range(2):
        r = VolumeRenderer(_ShiftedBall(), Flat(), 2.0, RendererConfig(num_samples_per_ray=64))
        before = torch.random.get_rng_state()
        for step in range(0, 64):
            r.update_grid(step, seed=7)
        assert torch.equal(torch.random.get_rng_state(), before)
        torch.rand(5)  # the next run must not depend on this draw
        grids.append(r.estimator.occs.clone())
    torch.testing.assert_close(grids[0], grids[1], rtol=0, atol=0)


class _RecordingEstimator(nn.Module):
    """Stands in for nerfacc's CUDA-only occupancy grid: records the arguments of its
    ``sampling`` call and returns three packed samples, two on ray 0 and one on ray 2."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def sampling(self, rays_o, rays_d, **kwargs):
        self.calls.append(kwargs)
        t0 = torch.tensor([0.2, 1.45, 1.8])
        return torch.tensor([0, 0, 2]), t0, t0 + 0.2


def test_grid_sampling_passes_the_field_density_and_the_official_thresholds(monkeypatch):
    r = _renderer(samples=64)
    r.estimator = _RecordingEstimator()
    monkeypatch.setattr(r, "uses_grid", lambda device: True)
    origins = torch.tensor([[2.0, 0.0, 0.0], [2.0, 3.0, 0.0], [0.0, 2.0, 0.0]])
    dirs = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    t0, t1, ray_idx = r._samples(origins, dirs, stratified=True)
    (kw,) = r.estimator.calls
    assert kw["alpha_thre"] == 0.01 and kw["early_stop_eps"] == 1e-4
    assert kw["stratified"] is True and kw["render_step_size"] == pytest.approx(r.step_size)
    torch.testing.assert_close(ray_idx, torch.tensor([0, 0, 2]))
    sigma = kw["sigma_fn"](t0, t1, ray_idx)
    mid = origins[ray_idx] + dirs[ray_idx] * ((t0 + t1) / 2)[:, None]
    torch.testing.assert_close(sigma, r.field.density(mid).detach())
    # At the midpoints (not the starts): outside, just inside and inside the ball of radius 0.5.
    torch.testing.assert_close(sigma, torch.tensor([0.0, 200.0, 200.0]), atol=0.5, rtol=0)
    assert not sigma.requires_grad  # the sampler's density costs no autograd graph


def test_views_for_previews_and_evaluation_show_the_albedo_only():
    r = _renderer(samples=64)
    cams = orbit_cameras(torch.tensor([0.0, 20.0]), torch.tensor([0.0, 90.0]), 2.0, 40.0, 17, 17)
    cams.light_positions = -cams.light_positions  # lit from behind: shading would darken the ball
    views = render_views(r, cams)
    with torch.no_grad():
        for i, view in enumerate(views):
            albedo, lit = r(cams[i], "albedo"), r(cams[i], "diffuse")
            torch.testing.assert_close(view.rgb, albedo.rgb, rtol=0, atol=0)
            assert (lit.rgb - albedo.rgb).abs().max() > 0.3
