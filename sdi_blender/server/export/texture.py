"""Texture baking: UV-unwrap a mesh, rasterise its UV layout, bake colours, dilate.

Conventions (glTF / Blender with PIL images):

* UVs lie in [0, 1]; ``u`` grows to the right, ``v`` grows UP.
* Image row 0 is the TOP of the texture, so texel ``(row, col)`` has its centre at
  ``u = (col + 0.5) / size`` and ``v = 1 - (row + 0.5) / size``.

Everything here is CPU numpy; rasterisation is done by hand (no OpenGL).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xatlas
from scipy import ndimage

from ..util.step_timer import timed

ColorFn = Callable[[np.ndarray], np.ndarray]
Progress = Callable[[str, float], None]


def unwrap(
    vertices: np.ndarray, faces: np.ndarray, size: int = 1024, padding: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UV-unwrap a mesh with xatlas.

    Returns ``(vertices2 [V',3], faces2 [F,3], uvs [V',2])``; xatlas splits vertices on
    seams, so ``vertices2 = vertices[vmapping]`` (see :func:`unwrap_with_mapping`).
    """
    verts2, faces2, uvs, _, _ = unwrap_with_mapping(vertices, faces, size, padding)
    return verts2, faces2, uvs


def unwrap_with_mapping(
    vertices: np.ndarray, faces: np.ndarray, size: int = 1024, padding: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Like :func:`unwrap` but also returns ``vmapping [V']`` and the chart count."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(
        np.ascontiguousarray(vertices, dtype=np.float32),
        np.ascontiguousarray(faces, dtype=np.uint32),
    )
    pack = xatlas.PackOptions()
    # Padding (in atlas texels) keeps charts apart so bilinear/mip lookups near a
    # seam do not mix two unrelated charts; resolution makes that padding roughly
    # match the target texture (xatlas may overshoot it slightly).
    pack.resolution = int(size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, faces2, uvs = atlas[0]
    vmapping = vmapping.astype(np.int64)
    verts2 = np.asarray(vertices)[vmapping]
    return verts2, faces2.astype(np.int64), uvs.astype(np.float64), vmapping, int(atlas.chart_count)


def rasterize_uv(
    uvs: np.ndarray, faces: np.ndarray, size: int, max_pairs: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray]:
    """Find, for every texel centre, the UV triangle covering it.

    Returns ``face_id [size,size]`` (int64, -1 = empty) and ``bary [size,size,3]``
    (weights of the face's three vertices). Each triangle's texel bounding box is
    expanded into (triangle, texel) candidate pairs, tested in vectorised batches of
    at most ``max_pairs`` pairs.
    """
    face_id = np.full((size, size), -1, dtype=np.int64)
    bary = np.zeros((size, size, 3), dtype=np.float64)
    if len(faces) == 0:
        return face_id, bary
    # Texel space: x = col coordinate, y = row coordinate of the texel centres.
    uv = np.asarray(uvs, dtype=np.float64)
    pts = np.stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5], axis=-1)
    tri = pts[np.asarray(faces)]  # [F,3,2]
    x0, y0 = tri[:, 0, 0], tri[:, 0, 1]
    x1, y1 = tri[:, 1, 0], tri[:, 1, 1]
    x2, y2 = tri[:, 2, 0], tri[:, 2, 1]
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    cmin = np.clip(np.ceil(tri[:, :, 0].min(1) - 1e-9), 0, size).astype(np.int64)
    cmax = np.clip(np.floor(tri[:, :, 0].max(1) + 1e-9), -1, size - 1).astype(np.int64)
    rmin = np.clip(np.ceil(tri[:, :, 1].min(1) - 1e-9), 0, size).astype(np.int64)
    rmax = np.clip(np.floor(tri[:, :, 1].max(1) + 1e-9), -1, size - 1).astype(np.int64)
    w = np.maximum(cmax - cmin + 1, 0)
    h = np.maximum(rmax - rmin + 1, 0)
    count = np.where(np.abs(det) > 1e-12, w * h, 0)
    live = np.nonzero(count)[0]

    # Split the triangles into batches whose candidate-pair total stays bounded.
    cum = np.cumsum(count[live])
    start = 0
    while start < len(live):
        base = cum[start - 1] if start else 0
        end = max(int(np.searchsorted(cum, base + max_pairs, side="right")), start + 1)
        ids = live[start:end]
        n = count[ids]
        f = np.repeat(ids, n)
        local = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        col = cmin[f] + local % w[f]
        row = rmin[f] + local // w[f]
        dx, dy = col - x2[f], row - y2[f]
        l0 = ((y1[f] - y2[f]) * dx + (x2[f] - x1[f]) * dy) / det[f]
        l1 = ((y2[f] - y0[f]) * dx + (x0[f] - x2[f]) * dy) / det[f]
        l2 = 1.0 - l0 - l1
        # A small tolerance so texel centres exactly on a shared edge are not lost.
        inside = (l0 >= -1e-7) & (l1 >= -1e-7) & (l2 >= -1e-7)
        r, c = row[inside], col[inside]
        face_id[r, c] = f[inside]
        bary[r, c] = np.stack([l0[inside], l1[inside], l2[inside]], axis=-1)
        start = end
    return face_id, bary


def bake(
    vertices_world: np.ndarray,
    faces: np.ndarray,
    face_id: np.ndarray,
    bary: np.ndarray,
    color_fn: ColorFn,
    size: int,
    chunk: int = 1 << 16,
    progress: Progress | None = None,
) -> np.ndarray:
    """Colour every covered texel with ``color_fn`` at its interpolated world point.

    Returns a float ``[size,size,3]`` image in [0, 1]; empty texels stay 0.
    """
    image = np.zeros((size, size, 3), dtype=np.float32)
    rows, cols = np.nonzero(face_id >= 0)
    corners = np.asarray(vertices_world, dtype=np.float64)[np.asarray(faces)]  # [F,3,3]
    for s in range(0, len(rows), chunk):
        r, c = rows[s : s + chunk], cols[s : s + chunk]
        points = np.einsum("nk,nkd->nd", bary[r, c], corners[face_id[r, c]])
        image[r, c] = np.clip(np.asarray(color_fn(points), dtype=np.float32), 0.0, 1.0)
        if progress is not None:
            progress("bake", min(1.0, (s + chunk) / len(rows)))
    return image


def dilate(image: np.ndarray, mask: np.ndarray, iterations: int | None = None) -> np.ndarray:
    """Fill empty texels with the colour of the (exactly, Euclidean) nearest covered texel.

    With ``iterations=None`` every texel is filled, so no background colour can bleed
    into a seam at any mip level; an integer limits the fill to texels within that
    many texels (Chebyshev distance) of that nearest covered one.
    """
    out = np.array(image, copy=True)
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        return out
    # The exact Euclidean distance transform of the empty texels also says where each one's
    # nearest covered texel is.
    sr, sc = ndimage.distance_transform_edt(~mask, return_distances=False, return_indices=True)
    fill = ~mask
    if iterations is not None:
        rr, cc = np.indices(mask.shape)
        fill &= np.maximum(np.abs(rr - sr), np.abs(cc - sc)) <= iterations
    out[fill] = image[sr[fill], sc[fill]]
    return out


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    color_fn: ColorFn,
    size: int = 1024,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Unwrap, rasterise, bake and dilate: a textured copy of the mesh.

    Returns ``(vertices2, faces2, uvs, image uint8 [size,size,3], info)`` where
    ``info`` has texture_size, charts, coverage and per-stage ``seconds``.
    """
    seconds: dict[str, float] = {}
    with timed(seconds, "unwrap"):
        if progress is not None:
            progress("unwrap", 0.0)
        verts2, faces2, uvs, _, charts = unwrap_with_mapping(vertices, faces, size)
    image8, baked = bake_uv_texture(verts2, faces2, uvs, color_fn, size, progress)
    info = {**baked, "charts": charts, "seconds": {**seconds, **baked["seconds"]}}
    return verts2, faces2, uvs, image8, info


def bake_uv_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    color_fn: ColorFn,
    size: int = 1024,
    progress: Progress | None = None,
) -> tuple[np.ndarray, dict]:
    """Rasterise the mesh's own UV layout ``uvs`` [V, 2], bake ``color_fn`` at the texels' points
    on ``vertices`` [V, 3] and dilate into the empty texels.

    Returns ``(image uint8 [size,size,3], info)``; ``info`` has texture_size, coverage and
    per-stage ``seconds``.
    """
    report = progress or (lambda stage, fraction: None)
    seconds: dict[str, float] = {}

    with timed(seconds, "rasterize"):
        report("rasterize", 0.0)
        face_id, bary = rasterize_uv(uvs, faces, size)

    with timed(seconds, "bake"):
        report("bake", 0.0)
        image = bake(vertices, faces, face_id, bary, color_fn, size, progress=report)

    with timed(seconds, "dilate"):
        report("dilate", 0.0)
        mask = face_id >= 0
        image = dilate(image, mask)
    report("dilate", 1.0)

    image8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return image8, {"texture_size": int(size), "coverage": float(mask.mean()), "seconds": seconds}
