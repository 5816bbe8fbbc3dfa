"""Density field → mesh (sdi_blender.server.export.mesh): sampling, levels, cleanup, decimation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mcubes")
pytest.importorskip("trimesh")

from sdi_blender.errors import UserError  # noqa: E402
from sdi_blender.server.export.mesh import (  # noqa: E402
    MeshSettings,
    auto_threshold,
    build_mesh,
    extract_mesh,
    sample_density,
)

R = 0.6


def ball(peak: float = 50.0, radius: float = R, centre=(0.0, 0.0, 0.0), sharpness: float = 50.0):
    """A soft ball whose density is ``peak / 2`` exactly on the sphere of ``radius``."""
    c = torch.tensor(centre)
    return lambda x: peak * torch.sigmoid((radius - (x - c).norm(dim=-1)) * sharpness)


def radii(mesh) -> np.ndarray:
    return np.linalg.norm(mesh.vertices, axis=1)


def test_ball_is_closed_round_and_outward() -> None:
    mesh, info = build_mesh(ball(), MeshSettings(resolution=128))
    assert info["threshold"] == 25.0 and info["threshold_rule"] == "official"
    assert info["watertight"] and mesh.is_watertight
    assert info["faces"] == len(mesh.faces) and info["vertices"] == len(mesh.vertices)
    assert abs(radii(mesh).mean() - R) < 0.01 * R
    assert mesh.volume > 0
    assert abs(mesh.volume - 4 / 3 * np.pi * R**3) < 0.03 * mesh.volume
    radial = mesh.vertices / radii(mesh)[:, None]
    assert (mesh.vertex_normals * radial).sum(axis=1).mean() > 0.9
    assert set(info["seconds"]) >= {"sample", "threshold", "marching_cubes"}


def test_small_floater_is_dropped() -> None:
    main, floater = ball(), ball(radius=0.07, centre=(1.4, 0.0, 0.0))
    density = lambda x: torch.maximum(main(x), floater(x))  # noqa: E731
    mesh, info = build_mesh(density, MeshSettings(resolution=128))
    assert info["components_dropped"] == 1
    assert radii(mesh).max() < R * 1.05  # nothing of the floater remains
    assert abs(radii(mesh).mean() - R) < 0.01 * R and mesh.is_watertight
    # With the filter off, the floater is kept.
    kept, info = build_mesh(density, MeshSettings(resolution=128, min_component_fraction=0.0))
    assert info["components_dropped"] == 0 and radii(kept).max() > 1.3


def test_decimation_hits_the_face_budget() -> None:
    progress: list[tuple[str, float]] = []
    mesh, info = build_mesh(
        ball(), MeshSettings(resolution=128, faces=1000), progress=lambda s, f: progress.append((s, f))
    )
    assert abs(len(mesh.faces) - 1000) <= 100 and info["faces"] == len(mesh.faces)
    assert abs(radii(mesh).mean() - R) < 0.02 * R
    assert mesh.volume > 0
    assert (mesh.vertex_normals * mesh.vertices).sum(axis=1).mean() > 0
    stages = [s for i, (s, _) in enumerate(progress) if i == 0 or progress[i - 1][0] != s]
    assert stages == ["sample", "threshold", "marching_cubes", "decimate"]  # no "done" mid-export
    assert sum(s == "sample" for s, _ in progress) > 2  # the long sampling reports as it goes
    for name in stages:  # each stage's own fraction, as the panel's bar shows it: 0 → 1
        own = [f for s, f in progress if s == name]
        assert own[0] == 0.0 and own == sorted(own), (name, own)
    assert [f for s, f in progress if s == "sample"][-1] == 1.0


def test_auto_threshold_prefers_the_official_level() -> None:
    grid = sample_density(ball(peak=100.0), 64, 2.0)
    assert auto_threshold(grid) == (25.0, "official")


def test_the_official_level_scales_with_the_renderers_marching_step() -> None:
    from sdi_blender.server.scene.renderer import official_level
    from sdi_blender.server.training.config import make_config

    assert official_level(2.0, 512) == 25.0  # the official renderer: radius 2, 512 samples
    toy = make_config("an orange box with a blue ball on its front", "toy")
    assert official_level(toy.field.radius, toy.renderer.num_samples_per_ray) == 3.125  # 8× the step
    # A field trained at that step is as opaque at density 10 as the official one at 80: a
    # faint-looking toy field has its surface at the scaled level, not at an Otsu guess.
    grid = sample_density(ball(peak=10.0), 64, 2.0)
    assert auto_threshold(grid, official_level(1.0, 32)) == (3.125, "official")


def test_auto_threshold_falls_back_for_a_faint_field() -> None:
    grid = sample_density(ball(peak=10.0), 64, 2.0)
    level, rule = auto_threshold(grid)
    assert rule == "otsu" and 0.0 < level < 10.0
    mesh = extract_mesh(grid, level, 2.0)
    assert len(mesh.faces) > 0 and mesh.is_watertight
    assert abs(radii(mesh).mean() - R) < 0.1 * R


def test_auto_threshold_falls_back_for_a_mostly_solid_box() -> None:
    grid = sample_density(lambda x: 30.0 + 1000.0 * (x.norm(dim=-1) < R), 32, 2.0)
    level, rule = auto_threshold(grid)
    assert rule == "otsu" and 30.0 < level < 1030.0


def test_empty_field_raises_a_one_line_user_error() -> None:
    with pytest.raises(UserError) as err:
        build_mesh(lambda x: torch.zeros(len(x)), MeshSettings(resolution=32))
    assert "empty" in str(err.value) and "\n" not in err.value.one_line()


def test_no_surface_at_the_given_level_suggests_one() -> None:
    with pytest.raises(UserError) as err:
        build_mesh(ball(peak=10.0), MeshSettings(resolution=32, threshold=25.0))
    message = err.value.one_line()
    assert "\n" not in message and "no surface at density threshold 25" in message
    suggested = float(message.split("--threshold ")[1])
    assert 0.0 < suggested < 10.0
    mesh, info = build_mesh(ball(peak=10.0), MeshSettings(resolution=32, threshold=suggested))
    assert info["threshold_rule"] == "user" and len(mesh.faces) > 0


def test_sampling_in_chunks_matches_one_shot_on_cell_corners() -> None:
    # Distinct per axis, so a swapped or misplaced axis shows.
    fn = lambda x: x[:, 0] + 10.0 * x[:, 1] + 100.0 * x[:, 2]  # noqa: E731
    res, b = 8, 1.5
    chunked = sample_density(fn, res, b, chunk=7)
    whole = sample_density(fn, res, b, chunk=10**6)
    axis = np.linspace(-b, b, res + 1)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    assert chunked.shape == (res + 1,) * 3 and chunked.dtype == np.float32
    np.testing.assert_allclose(chunked, whole)
    np.testing.assert_allclose(chunked, x + 10 * y + 100 * z, atol=1e-4)


def test_vertices_land_on_world_coordinates() -> None:
    # A planar level set x = 0.3 must come back at x = 0.3 exactly (linear interpolation).
    grid = sample_density(lambda x: 100.0 * (0.3 - x[:, 0]) + 25.0, 16, 2.0)
    mesh = extract_mesh(grid, 25.0, 2.0, min_component_fraction=0.0)
    np.testing.assert_allclose(mesh.vertices[:, 0], 0.3, atol=1e-5)
    assert mesh.vertices[:, 1].min() == pytest.approx(-2.0)
    assert mesh.vertices[:, 1].max() == pytest.approx(2.0)


def test_resolution_512_in_small_chunks() -> None:
    grid = sample_density(lambda x: x[:, 2], 512, 2.0, chunk=2**20)
    assert grid.shape == (513, 513, 513)
    assert grid[0, 0, 0] == pytest.approx(-2.0) and grid[-1, -1, -1] == pytest.approx(2.0)


def test_resolution_over_1024_is_refused() -> None:
    with pytest.raises(UserError):
        sample_density(lambda x: x[:, 0], 1025, 2.0)
