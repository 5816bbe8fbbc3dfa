"""Orbit cameras: poses, pixel rays, random sampling and turntables."""

from __future__ import annotations

import math

import pytest
import torch

from sdi_blender.server.scene.cameras import (
    CameraConfig,
    Cameras,
    camera_rays,
    look_at,
    orbit_cameras,
    perturb_pose,
    sample_cameras,
    spherical_position,
    turntable_cameras,
)


def _front(size: int = 5, fovy: float = 60.0, height: int | None = None) -> Cameras:
    """Elevation 0, azimuth 0, distance 2: the camera at (2, 0, 0)."""
    return orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 2.0, fovy, size, height or size)


def test_front_camera_pose_and_axes():
    cams = _front()
    torch.testing.assert_close(cams.position[0], torch.tensor([2.0, 0.0, 0.0]))
    # Looking from +X with up +Z, the camera's right is world +Y (right = forward × up).
    expected = torch.tensor(
        [
            [0.0, 0.0, 1.0, 2.0],  # columns: right, up, back, position
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    torch.testing.assert_close(cams.c2w[0], expected, atol=1e-6, rtol=0)


def test_pixel_directions_of_the_front_camera():
    origins, dirs = camera_rays(_front(size=5))
    assert origins.shape == dirs.shape == (1, 5, 5, 3)
    torch.testing.assert_close(origins, torch.tensor([2.0, 0.0, 0.0]).expand(1, 5, 5, 3))
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(1, 5, 5))
    torch.testing.assert_close(dirs[0, 2, 2], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert (dirs[0, 0, :, 2] > 0).all() and (dirs[0, -1, :, 2] < 0).all()  # top row looks up
    assert (dirs[0, :, -1, 1] > 0).all() and (dirs[0, :, 0, 1] < 0).all()  # right column: +Y
    assert (dirs[..., 0] < 0).all()  # every ray heads toward the origin's side


def test_top_edge_ray_angle_matches_the_field_of_view():
    fovy, h = 60.0, 9
    _, dirs = camera_rays(_front(size=9, fovy=fovy))
    top_middle = dirs[0, 0, 4]
    angle = math.atan2(top_middle[2].item(), -top_middle[0].item())
    # The top row's centres lie half a pixel inside the image's edge at tan(fovy/2).
    assert math.tan(angle) == pytest.approx(math.tan(math.radians(fovy / 2)) * (h - 1) / h, rel=1e-5)
    assert angle < math.radians(fovy / 2)


def test_non_square_image_uses_the_vertical_fov():
    _, dirs = camera_rays(_front(size=16, fovy=50.0, height=8))
    assert dirs.shape == (1, 8, 16, 3)
    f = 0.5 * 8 / math.tan(math.radians(25.0))
    # Top-left pixel: camera-space ((0.5 - 8)/f, (4 - 0.5)/f, -1); right = +Y, up = +Z, back = +X.
    expected = torch.nn.functional.normalize(torch.tensor([-1.0, -7.5 / f, 3.5 / f]), dim=0)
    torch.testing.assert_close(dirs[0, 0, 0], expected, atol=1e-6, rtol=0)


def test_c2w_is_a_rotation_and_positions_follow_the_spherical_formula():
    ele = torch.tensor([-10.0, 0.0, 30.0, 45.0, 80.0])
    azi = torch.tensor([-170.0, 0.0, 45.0, 90.0, 200.0])
    dist = torch.tensor([1.5, 2.0, 1.7, 1.9, 3.0])
    cams = orbit_cameras(ele, azi, dist, 50.0, 4, 4)
    rot = cams.c2w[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(5), atol=1e-5, rtol=0)
    e, a = torch.deg2rad(ele), torch.deg2rad(azi)
    expected = dist[:, None] * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], -1)
    torch.testing.assert_close(cams.position, expected)
    # Each looks at the origin (back axis along the position) and its right axis is horizontal.
    torch.testing.assert_close(rot[:, :, 2], expected / dist[:, None], atol=1e-6, rtol=0)
    torch.testing.assert_close(rot[:, 2, 0], torch.zeros(5), atol=1e-6, rtol=0)
    assert (rot[:, 2, 1] > 0).all()  # camera up has a +Z component
    torch.testing.assert_close(cams.light_positions, cams.position)  # orbit lights sit at the camera


def test_sampling_stays_in_range_and_is_reproducible():
    cfg = CameraConfig()
    cams = sample_cameras(cfg, 2000, 8, 8, torch.Generator().manual_seed(3))
    assert len(cams) == 2000 and cams.c2w.shape == (2000, 4, 4)
    for values, (lo, hi) in [
        (cams.distance, cfg.distance_range),
        (cams.fovy_deg, cfg.fovy_range),
        (cams.azimuth_deg, cfg.azimuth_range),
    ]:
        assert values.min() >= lo and values.max() <= hi
        assert values.mean().item() == pytest.approx((lo + hi) / 2, abs=0.05 * (hi - lo))
    lo, hi = cfg.elevation_range  # its distribution: test_elevations_are_uniform_in_degrees_or_on_the_sphere
    assert cams.elevation_deg.min() >= lo and cams.elevation_deg.max() <= hi
    # The position is jittered by at most camera_perturb per axis.
    assert (cams.position.norm(dim=-1) - cams.distance).abs().max() <= 3**0.5 * cfg.camera_perturb
    light_dist = cams.light_positions.norm(dim=-1)
    assert light_dist.min() >= cfg.light_distance_range[0] - 1e-5
    assert light_dist.max() <= cfg.light_distance_range[1] + 1e-5
    # DreamFusion's lights are near the camera: most within 90° of its direction.
    cos = torch.nn.functional.cosine_similarity(cams.light_positions, cams.position, dim=-1)
    assert (cos > 0).float().mean() > 0.9
    again = sample_cameras(cfg, 2000, 8, 8, torch.Generator().manual_seed(3))
    other = sample_cameras(cfg, 2000, 8, 8, torch.Generator().manual_seed(4))
    torch.testing.assert_close(cams.c2w, again.c2w, rtol=0, atol=0)
    torch.testing.assert_close(cams.light_positions, again.light_positions, rtol=0, atol=0)
    assert not torch.equal(cams.c2w, other.c2w)
    torch.manual_seed(123)  # every draw comes from the given generator, none from the global one
    third = sample_cameras(cfg, 2000, 8, 8, torch.Generator().manual_seed(3))
    torch.testing.assert_close(cams.c2w, third.c2w, rtol=0, atol=0)


def _ks_uniform(values: torch.Tensor, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov distance of ``values`` from U(lo, hi)."""
    x = ((values.double().sort().values - lo) / (hi - lo)).clamp(0, 1)
    n = x.numel()
    ranks = torch.arange(1, n + 1, dtype=torch.float64) / n
    return max((ranks - x).abs().max().item(), (x - (ranks - 1 / n)).abs().max().item())


def test_pose_perturbations_have_the_official_distributions():
    cfg, n = CameraConfig(), 100_000
    orbit = torch.tensor([[2.0, 0.0, 0.0]]).expand(n, 3)
    position, centre, up = perturb_pose(orbit, cfg, torch.Generator().manual_seed(0))
    shift = position - orbit  # U(-0.1, 0.1) per axis
    assert shift.abs().max() <= cfg.camera_perturb
    for axis in range(3):
        assert _ks_uniform(shift[:, axis], -cfg.camera_perturb, cfg.camera_perturb) < 0.01
    torch.testing.assert_close(centre.mean(0), torch.zeros(3), atol=0.005, rtol=0)
    torch.testing.assert_close(centre.std(0), torch.full((3,), cfg.center_perturb), atol=0, rtol=0.02)
    offset = up - torch.tensor([0.0, 0.0, 1.0])
    torch.testing.assert_close(offset.mean(0), torch.zeros(3), atol=0.0005, rtol=0)
    torch.testing.assert_close(offset.std(0), torch.full((3,), cfg.up_perturb), atol=0, rtol=0.02)


def test_look_at_points_the_camera_at_its_centre():
    g = torch.Generator().manual_seed(1)
    position = torch.randn(64, 3, generator=g) * 2
    centre = torch.randn(64, 3, generator=g) * 0.2
    up = torch.tensor([0.0, 0.0, 1.0]) + torch.randn(64, 3, generator=g) * 0.02
    c2w = look_at(position, centre, up)
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(64, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(64), atol=1e-5, rtol=0)
    forward = torch.nn.functional.normalize(centre - position, dim=-1)
    torch.testing.assert_close(-rot[:, :, 2], forward, atol=1e-6, rtol=0)  # back = −forward
    torch.testing.assert_close((rot[:, :, 0] * up).sum(-1), torch.zeros(64), atol=1e-6, rtol=0)  # right ⊥ up
    assert ((rot[:, :, 1] * up).sum(-1) > 0).all()  # camera up on up's side
    torch.testing.assert_close(c2w[:, :3, 3], position)
    torch.testing.assert_close(
        look_at(position), look_at(position, torch.zeros(64, 3), torch.tensor([0.0, 0.0, 1.0]).expand(64, 3))
    )


def test_training_cameras_are_jittered_but_keep_the_prompt_angles():
    cfg = CameraConfig()
    cams = sample_cameras(cfg, 20_000, 8, 8, torch.Generator().manual_seed(5))
    orbit = spherical_position(cams.elevation_deg, cams.azimuth_deg, cams.distance)
    shift = cams.position - orbit  # the angles and distance reported are the unperturbed ones
    assert shift.abs().max() <= cfg.camera_perturb + 1e-5
    assert _ks_uniform(shift[:, 0], -cfg.camera_perturb, cfg.camera_perturb) < 0.02
    perturbed_ele = torch.rad2deg(torch.asin(cams.position[:, 2] / cams.position.norm(dim=-1)))
    assert ((perturbed_ele - cams.elevation_deg).abs() > 0.1).float().mean() > 0.8
    rot = cams.c2w[:, :3, :3]
    eye = torch.eye(3).expand(len(cams), 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(len(cams)), atol=1e-5, rtol=0)
    # The optical axis misses the origin by about the centre's offset across it: E[miss²] ≈ 2·0.2².
    back = rot[:, :, 2]
    miss = torch.linalg.cross(cams.position, back, dim=-1).norm(dim=-1)
    assert (miss**2).mean().item() == pytest.approx(2 * cfg.center_perturb**2, rel=0.15)
    # The camera's right axis is nearly horizontal: up is only slightly tilted.
    assert rot[:, 2, 0].abs().max() < 0.2 and rot[:, 2, 0].std() > 0.005
    # Lights follow the perturbed position: with no light noise they lie along it exactly.
    still = sample_cameras(CameraConfig(light_position_perturb=0.0), 256, 8, 8, torch.Generator().manual_seed(6))
    torch.testing.assert_close(
        torch.nn.functional.normalize(still.light_positions, dim=-1),
        torch.nn.functional.normalize(still.position, dim=-1),
        atol=1e-6,
        rtol=0,
    )


def test_without_perturbation_training_cameras_are_orbit_cameras():
    cfg = CameraConfig(camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0)
    cams = sample_cameras(cfg, 64, 8, 8, torch.Generator().manual_seed(7))
    orbit = orbit_cameras(cams.elevation_deg, cams.azimuth_deg, cams.distance, cams.fovy_deg, 8, 8)
    torch.testing.assert_close(cams.c2w, orbit.c2w, atol=1e-6, rtol=0)


def test_elevations_are_uniform_in_degrees_or_on_the_sphere():
    lo, hi = (-10.0, 45.0)
    sphere = sample_cameras(
        CameraConfig(sphere_elevation_prob=1.0), 20_000, 8, 8, torch.Generator().manual_seed(8)
    ).elevation_deg
    # Inverse-transform sampling: sin ε is uniform (on the official mapping, over [ε_min/90, ε_max/90]).
    assert _ks_uniform(torch.sin(torch.deg2rad(sphere)), lo / 90, hi / 90) < 0.015
    degrees = sample_cameras(
        CameraConfig(sphere_elevation_prob=0.0), 20_000, 8, 8, torch.Generator().manual_seed(8)
    ).elevation_deg
    assert _ks_uniform(degrees, lo, hi) < 0.015
    # The default draws one mode per batch, each half of the time. A batch in degrees reaches
    # above the sphere mode's highest elevation, asin(45/90) = 30°.
    g = torch.Generator().manual_seed(9)
    batches = [sample_cameras(CameraConfig(), 32, 8, 8, g).elevation_deg for _ in range(400)]
    on_sphere = [b.max().item() <= 30.0 + 1e-4 for b in batches]
    assert sum(on_sphere) / len(on_sphere) == pytest.approx(0.5, abs=0.08)
    for b, s in zip(batches, on_sphere):
        assert b.min() >= (math.degrees(math.asin(lo / 90)) - 1e-4 if s else lo)


def test_turntable_is_evenly_spaced_from_the_front():
    cfg = CameraConfig()
    cams = turntable_cameras(8, 16, 12, cfg)
    assert (cams.width, cams.height, len(cams)) == (16, 12, 8)
    torch.testing.assert_close(cams.azimuth_deg, torch.arange(8.0) * 45.0)
    torch.testing.assert_close(cams.elevation_deg, torch.full((8,), cfg.eval_elevation))
    torch.testing.assert_close(cams.distance, torch.full((8,), cfg.eval_distance))
    torch.testing.assert_close(cams.fovy_deg, torch.full((8,), cfg.eval_fovy))
    assert cams.position[0, 0] > 0 and cams.position[0, 1].abs() < 1e-6  # view 0 from +X


def test_selecting_and_moving_cameras():
    cams = turntable_cameras(4, 8, 8, CameraConfig())
    one = cams[2]
    assert len(one) == 1 and one.width == 8
    torch.testing.assert_close(one.c2w[0], cams.c2w[2])
    torch.testing.assert_close(cams[-1].azimuth_deg, cams.azimuth_deg[3:])
    assert len(cams[1:3]) == 2
    with pytest.raises(IndexError):
        cams[4]
    moved = cams.to("cpu")
    assert moved.c2w.device.type == "cpu" and moved.height == 8
    origins, dirs = camera_rays(one)
    assert origins.shape == dirs.shape == (1, 8, 8, 3)
