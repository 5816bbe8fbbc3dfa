"""Orbit cameras: poses, pixel rays, random sampling and turntables."""

from __future__ import annotations

import math

import pytest
import torch

from sdi_blender.server.cameras import (CameraConfig, Cameras, camera_rays, orbit_cameras,
                                        sample_cameras, turntable_cameras)


def _front(size: int = 5, fovy: float = 60.0, height: int | None = None) -> Cameras:
    """Elevation 0, azimuth 0, distance 2: the camera at (2, 0, 0)."""
    return orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), 2.0, fovy, size, height or size)


def test_front_camera_pose_and_axes():
    cams = _front()
    torch.testing.assert_close(cams.position[0], torch.tensor([2.0, 0.0, 0.0]))
    # Looking from +X with up +Z, the camera's right is world +Y (right = forward × up).
    expected = torch.tensor([[0.0, 0.0, 1.0, 2.0],   # columns: right, up, back, position
                             [1.0, 0.0, 0.0, 0.0],
                             [0.0, 1.0, 0.0, 0.0],
                             [0.0, 0.0, 0.0, 1.0]])
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
    for values, (lo, hi) in [(cams.distance, cfg.distance_range), (cams.fovy_deg, cfg.fovy_range),
                             (cams.elevation_deg, cfg.elevation_range),
                             (cams.azimuth_deg, cfg.azimuth_range)]:
        assert values.min() >= lo and values.max() <= hi
        assert values.mean().item() == pytest.approx((lo + hi) / 2, abs=0.05 * (hi - lo))
    torch.testing.assert_close(cams.position.norm(dim=-1), cams.distance)
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
    one = cams.index(2)
    assert len(one) == 1 and one.width == 8
    torch.testing.assert_close(one.c2w[0], cams.c2w[2])
    torch.testing.assert_close(cams[-1].azimuth_deg, cams.azimuth_deg[3:])
    assert len(cams[1:3]) == 2
    with pytest.raises(IndexError):
        cams.index(4)
    moved = cams.to("cpu")
    assert moved.c2w.device.type == "cpu" and moved.height == 8
    origins, dirs = camera_rays(one)
    assert origins.shape == dirs.shape == (1, 8, 8, 3)
