"""Tests for texture baking: unwrap, UV rasterisation, bake, dilation."""

from __future__ import annotations

import numpy as np
import pytest

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("xatlas")

from sdi_blender.server.export.texture import (  # noqa: E402
    bake_texture,
    dilate,
    rasterize_uv,
    unwrap,
    unwrap_with_mapping,
)


def color_fn(points: np.ndarray) -> np.ndarray:
    """A smooth, known colour field (values stay in [0.1, 0.9])."""
    return np.clip(0.5 + 0.4 * np.sin(2.0 * points), 0.0, 1.0)


def sample_bilinear(image: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Bilinear lookup with the module's convention: row 0 is the top (v = 1)."""
    size = image.shape[0]
    x = uvs[:, 0] * size - 0.5
    y = (1.0 - uvs[:, 1]) * size - 0.5
    x0 = np.clip(np.floor(x).astype(int), 0, size - 1)
    y0 = np.clip(np.floor(y).astype(int), 0, size - 1)
    x1, y1 = np.minimum(x0 + 1, size - 1), np.minimum(y0 + 1, size - 1)
    fx = np.clip(x - x0, 0, 1)[:, None]
    fy = np.clip(y - y0, 0, 1)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.fixture(scope="module")
def sphere():
    return trimesh.creation.icosphere(subdivisions=4, radius=0.5)


@pytest.fixture(scope="module")
def baked(sphere):
    stages: list[tuple[str, float]] = []
    out = bake_texture(sphere.vertices, sphere.faces, color_fn, size=512, progress=lambda s, f: stages.append((s, f)))
    return out, stages


def test_unwrap_uvs_and_mapping(sphere):
    verts2, faces2, uvs, vmapping, charts = unwrap_with_mapping(sphere.vertices, sphere.faces, 512)
    assert uvs.shape == (len(verts2), 2)
    assert uvs.min() >= 0.0 and uvs.max() <= 1.0
    assert faces2.shape == sphere.faces.shape and faces2.max() < len(verts2)
    np.testing.assert_array_equal(verts2, sphere.vertices[vmapping])
    assert len(verts2) > len(sphere.vertices)  # seams split vertices
    assert charts >= 1
    # Same triangles as the input, only re-indexed.
    np.testing.assert_array_equal(vmapping[faces2], sphere.faces)
    v3, f3, uv3 = unwrap(sphere.vertices, sphere.faces, 512)
    assert v3.shape == verts2.shape and f3.shape == faces2.shape and uv3.shape == uvs.shape


def test_rasterize_two_triangles():
    size = 64
    # Lower-left half of the UV square (v up): (0,0), (1,0), (0,1).
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    face_id, bary = rasterize_uv(uvs, np.array([[0, 1, 2]]), size)
    covered = face_id >= 0
    assert abs(covered.mean() - 0.5) < 2.0 / size
    # Lower-left means the BOTTOM-left of the image (row 0 is the top).
    assert covered[-1, 0] and not covered[0, -1]
    rows, cols = np.nonzero(covered)
    b = bary[rows, cols]
    np.testing.assert_allclose(b.sum(-1), 1.0, atol=1e-9)
    assert (b >= -1e-6).all()
    centre = np.stack([(cols + 0.5) / size, 1.0 - (rows + 0.5) / size], axis=-1)
    np.testing.assert_allclose(b @ uvs[:3], centre, atol=1e-9)

    # Both halves together cover every texel, with the right face ids.
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    face_id, bary = rasterize_uv(uvs, faces, size)
    assert (face_id >= 0).all()
    assert face_id[-1, 0] == 0 and face_id[0, -1] == 1
    rows, cols = np.indices((size, size))
    centre = np.stack([(cols + 0.5) / size, 1.0 - (rows + 0.5) / size], axis=-1)
    rebuilt = np.einsum("hwk,hwkd->hwd", bary, uvs[faces[face_id]])
    np.testing.assert_allclose(rebuilt, centre, atol=1e-9)


def test_rasterize_small_triangle_bbox():
    # A triangle well inside the square covers only texels near it.
    size = 32
    uvs = np.array([[0.25, 0.25], [0.5, 0.25], [0.25, 0.5]])
    face_id, _ = rasterize_uv(uvs, np.array([[0, 1, 2]]), size)
    rows, cols = np.nonzero(face_id >= 0)
    assert cols.min() >= 8 and cols.max() < 16
    assert rows.min() >= 16 and rows.max() < 24  # v in [0.25, 0.5] -> rows 16..23
    assert abs((face_id >= 0).sum() - 0.5 * 8 * 8) <= 8


def test_dilate_fills_everything_with_edge_colours():
    size = 40
    mask = np.zeros((size, size), dtype=bool)
    mask[:, :10] = True  # a chart on the left; its right edge is column 9
    image = np.full((size, size, 3), -1.0)  # background sentinel
    ramp = np.linspace(0.0, 1.0, size)
    image[:, :10] = np.stack([ramp, 1 - ramp, 0.5 * ramp], axis=-1)[:, None, :]
    out = dilate(image, mask)
    assert (out >= 0).all()  # no background left anywhere
    np.testing.assert_array_equal(out[:, :10], image[:, :10])  # covered texels untouched
    # Every texel to the right takes the colour of the edge texel in its row.
    np.testing.assert_allclose(out[:, 10:], np.repeat(image[:, 9:10], size - 10, axis=1))

    limited = dilate(image, mask, iterations=3)
    assert (limited[:, 10:13] >= 0).all() and (limited[:, 13:] < 0).all()


def test_dilate_isolated_blobs():
    size = 33
    mask = np.zeros((size, size), dtype=bool)
    mask[2, 2] = mask[30, 30] = True
    image = np.zeros((size, size, 3))
    image[2, 2] = [1.0, 0.0, 0.0]
    image[30, 30] = [0.0, 0.0, 1.0]
    out = dilate(image, mask)
    rr, cc = np.indices((size, size))
    d_red = (rr - 2) ** 2 + (cc - 2) ** 2
    d_blue = (rr - 30) ** 2 + (cc - 30) ** 2
    np.testing.assert_array_equal(out[d_red < d_blue], [[1.0, 0.0, 0.0]] * int((d_red < d_blue).sum()))
    np.testing.assert_array_equal(out[d_blue < d_red], [[0.0, 0.0, 1.0]] * int((d_blue < d_red).sum()))


@pytest.mark.parametrize("density", [0.005, 0.05, 0.5])
def test_dilate_takes_the_exact_nearest_covered_texel(density):
    size = 61
    rng = np.random.default_rng(7)
    mask = rng.random((size, size)) < density
    mask[20:30, 5:40] = True  # and a chart
    image = np.zeros((size, size, 3))
    image[..., 0] = np.arange(size * size).reshape(size, size)  # each texel's colour names it
    out = dilate(image, mask)
    np.testing.assert_array_equal(out[mask], image[mask])
    sr, sc = np.divmod(out[..., 0].astype(np.int64), size)
    assert mask[sr, sc].all()  # every texel's colour comes from a covered texel...
    rr, cc = np.indices((size, size))
    seeds = np.argwhere(mask)
    nearest = ((rr[..., None] - seeds[:, 0]) ** 2 + (cc[..., None] - seeds[:, 1]) ** 2).min(-1)
    np.testing.assert_array_equal((rr - sr) ** 2 + (cc - sc) ** 2, nearest)  # ...an exactly nearest one


def test_bake_sphere_round_trip(sphere, baked):
    (verts2, faces2, uvs, image, info), stages = baked
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    # Every texel was filled (the colour field never goes below 0.1 = 25/255).
    assert image.min() >= 20
    # Sampling the texture back at each (seam-split) vertex gives color_fn there.
    got = sample_bilinear(image.astype(np.float64) / 255.0, uvs)
    want = color_fn(verts2)
    err = np.abs(got - want)
    assert err.mean() <= 2.0 / 255.0, err.mean() * 255
    assert err.max() <= 12.0 / 255.0, err.max() * 255
    assert info["texture_size"] == 512
    assert info["charts"] >= 1
    assert 0.3 < info["coverage"] < 1.0
    assert set(info["seconds"]) == {"unwrap", "rasterize", "bake", "dilate"}
    assert {s for s, _ in stages} == {"unwrap", "rasterize", "bake", "dilate"}


def test_bake_uses_world_positions(sphere, baked):
    # A texel's colour must come from its own surface point, not a neighbour's:
    # the texture must differ between far-apart points (no constant fill).
    (verts2, _, uvs, image, _), _ = baked
    got = sample_bilinear(image.astype(np.float64) / 255.0, uvs)
    top, bottom = verts2[:, 2].argmax(), verts2[:, 2].argmin()
    assert np.abs(got[top] - got[bottom]).max() > 0.3
