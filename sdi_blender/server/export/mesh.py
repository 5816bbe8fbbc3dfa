"""Density field → textured-mesh geometry: sample, pick a level, marching cubes, clean up.

The grid samples the density at cell CORNERS: ``resolution`` cells per side means
``resolution + 1`` samples per axis, at ``-bounds + i * 2 * bounds / resolution``. Marching-cubes
vertices come back in index units, so ``world = -bounds + v * spacing`` is exact, and the
box faces themselves are sampled. A surface cut by the box stays open there (not watertight).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import mcubes
import numpy as np
import torch
import trimesh
from torch import Tensor

from sdi_blender.errors import UserError

from ..scene.renderer import OFFICIAL_THRESHOLD
from ..util.step_timer import timed

MAX_RESOLUTION = 1024
_HIST_SAMPLES = 1 << 24  # Otsu on a strided subsample of bigger grids: same answer, less time


@dataclass
class MeshSettings:
    """How to turn a density field into a mesh."""

    resolution: int = 256
    """Grid cells per side (``resolution + 1`` corner samples per axis); at most 1024."""
    threshold: float | None = None
    """Density level of the surface; ``None`` picks one with :func:`auto_threshold`."""
    faces: int | None = None
    """Target face count for quadric decimation; ``None`` keeps every face."""
    min_component_fraction: float = 0.02
    """Drop connected pieces with fewer faces than this fraction of the largest piece's."""
    bounds: float = 2.0
    """Half-size of the sampled cube ``[-bounds, bounds]^3`` (the field's scene radius)."""
    official: float = OFFICIAL_THRESHOLD
    """The level :func:`auto_threshold` tries first (:func:`official_level` of the run)."""


def sample_density(
    density_fn: Callable[[Tensor], Tensor],
    resolution: int,
    bounds: float,
    device: torch.device | str = "cpu",
    chunk: int = 2**18,
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Density at the ``(resolution + 1)^3`` cell corners of ``[-bounds, bounds]^3``, float32.

    ``grid[i, j, k]`` is the density at ``(-b + i h, -b + j h, -b + k h)``, ``h = 2b / resolution``.
    Each chunk builds its coordinates from flat indices, so memory beyond the result is
    ``O(chunk)`` whatever the resolution. ``progress(fraction)`` follows each chunk (it may raise
    to stop the sampling: that is how an export is cancelled mid-stage).
    """
    if not 1 <= resolution <= MAX_RESOLUTION:
        raise UserError(f"mesh resolution {resolution} is out of range 1–{MAX_RESOLUTION}")
    n = resolution + 1
    step = 2.0 * bounds / resolution
    out = np.empty(n**3, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, n**3, chunk):
            idx = torch.arange(start, min(start + chunk, n**3), device=device)
            ijk = torch.stack((idx // (n * n), (idx // n) % n, idx % n), dim=-1)
            x = ijk.to(torch.float32) * step - bounds
            out[start : start + len(idx)] = density_fn(x).float().reshape(-1).cpu().numpy()
            if progress is not None:
                progress((start + len(idx)) / n**3)
    return out.reshape(n, n, n)


def _otsu_level(grid: np.ndarray) -> float | None:
    """Otsu's level on ``log1p(density)`` (density in its own units), or None for a flat field."""
    flat = grid.reshape(-1)
    if flat.size > _HIST_SAMPLES:
        flat = flat[:: -(-flat.size // _HIST_SAMPLES)]
    values = np.log1p(np.clip(flat[np.isfinite(flat)], 0.0, None).astype(np.float64))
    if values.size == 0 or values.max() - values.min() <= 1e-12:
        return None
    counts, edges = np.histogram(values, bins=256)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(counts)[:-1].astype(np.float64)  # weight below each cut between bins
    w1 = counts.sum() - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = ((counts * centres).sum() - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2  # between-class variance for each cut
    cut = int(np.argmax(between))  # first maximum: deterministic
    return float(np.expm1(edges[cut + 1]))


def auto_threshold(grid: np.ndarray, official: float = OFFICIAL_THRESHOLD) -> tuple[float, str]:
    """A density level for ``grid`` and the name of the rule that chose it.

    Rules, in order:

    * ``"official"``: ``official`` (25, the official export's level, scaled to the run's
      marching step by :func:`official_level`), if the fraction of samples above it is
      strictly between 0 and 0.5 (a surface exists and the box is not mostly solid);
    * ``"otsu"``: otherwise Otsu's threshold on ``log1p(density)`` over a 256-bin histogram,
      i.e. the level that best splits the samples into an "empty" and an "occupied" class
      (log space, since densities span decades).

    Raises :class:`UserError` if the field is constant (no level can give a surface).
    """
    above = float(np.count_nonzero(grid > official)) / grid.size
    if 0.0 < above < 0.5:
        return official, "official"
    level = _otsu_level(grid)
    if level is None:
        raise UserError(_flat_field_message(grid))
    return level, "otsu"


def _flat_field_message(grid: np.ndarray) -> str:
    return (
        f"the density field is empty (constant {float(grid.reshape(-1)[0]):.3g} everywhere); "
        "there is no surface to mesh"
    )


def _no_surface_error(grid: np.ndarray, threshold: float) -> UserError:
    """One line: the level, the field's range, and a level that would give a surface."""
    suggestion = _otsu_level(grid)
    if suggestion is None:
        return UserError(_flat_field_message(grid))
    return UserError(
        f"no surface at density threshold {threshold:.3g} (the field's density ranges "
        f"{float(grid.min()):.3g}–{float(grid.max()):.3g}); try --threshold {suggestion:.3g}"
    )


def extract_mesh(
    grid: np.ndarray,
    threshold: float,
    bounds: float,
    min_component_fraction: float = 0.02,
) -> trimesh.Trimesh:
    """The ``threshold`` level set of ``grid`` in world units, normals outward, cleaned.

    Connected pieces with fewer faces than ``min_component_fraction`` times the largest
    piece's are dropped as floaters; ``mesh.metadata["components_dropped"]`` counts them.
    Raises :class:`UserError` if there is no surface at that level.
    """
    lo, hi = float(grid.min()), float(grid.max())
    if not lo < threshold < hi:
        raise _no_surface_error(grid, threshold)
    vertices, faces = mcubes.marching_cubes(grid, threshold)
    if len(faces) == 0:
        raise _no_surface_error(grid, threshold)
    step = 2.0 * bounds / (grid.shape[0] - 1)
    mesh = trimesh.Trimesh(vertices * step - bounds, faces, process=True)  # merges vertices
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()

    dropped = 0
    if min_component_fraction > 0 and len(mesh.faces):
        pieces = trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(mesh.faces)), min_len=1)
        sizes = np.array([len(p) for p in pieces])
        keep = sizes >= min_component_fraction * sizes.max()
        dropped = int((~keep).sum())
        if dropped:
            mesh.update_faces(np.concatenate([p for p, k in zip(pieces, keep) if k]))
            mesh.remove_unreferenced_vertices()

    # Density is high inside: the surface must enclose positive volume with outward normals.
    # Marching-cubes winding depends on the library's convention, so check rather than assume.
    if mesh.volume < 0:
        mesh.invert()
    mesh.metadata["components_dropped"] = dropped
    return mesh


def decimate(mesh: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:
    """Quadric decimation to about ``faces`` faces (unchanged if already at most that many)."""
    if faces <= 0 or len(mesh.faces) <= faces:
        return mesh
    simple = mesh.simplify_quadric_decimation(face_count=int(faces))
    if simple.volume < 0:  # keep the outward orientation through the rebuild
        simple.invert()
    return simple


def build_mesh(
    density_fn: Callable[[Tensor], Tensor],
    settings: MeshSettings,
    device: torch.device | str = "cpu",
    progress: Callable[[str, float], None] | None = None,
) -> tuple[trimesh.Trimesh, dict]:
    """Sample → threshold → marching cubes + cleanup → decimation; the mesh and an info dict.

    ``progress(stage, fraction)`` is called as each stage starts (``fraction`` of that stage
    done, so 0), and during the density sampling after each chunk. Info keys: ``threshold``, ``threshold_rule``
    (``"user"``, ``"official"`` or ``"otsu"``), ``vertices``, ``faces``, ``watertight``,
    ``components_dropped`` and ``seconds`` (per stage).
    """
    report = progress or (lambda stage, fraction: None)
    seconds: dict[str, float] = {}

    def stage(name: str, fraction: float) -> AbstractContextManager[None]:
        report(name, fraction)
        return timed(seconds, name)

    with stage("sample", 0.0):
        grid = sample_density(
            density_fn, settings.resolution, settings.bounds, device, progress=lambda f: report("sample", f)
        )

    with stage("threshold", 0.0):
        if settings.threshold is None:
            threshold, rule = auto_threshold(grid, settings.official)
        else:
            threshold, rule = float(settings.threshold), "user"

    with stage("marching_cubes", 0.0):
        mesh = extract_mesh(grid, threshold, settings.bounds, settings.min_component_fraction)
        dropped = mesh.metadata["components_dropped"]

    if settings.faces:
        with stage("decimate", 0.0):
            mesh = decimate(mesh, settings.faces)

    _ = mesh.vertex_normals  # computed (and cached) from the final faces
    info = {
        "threshold": threshold,
        "threshold_rule": rule,
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "watertight": bool(mesh.is_watertight),
        "components_dropped": dropped,
        "seconds": seconds,
    }
    return mesh, info
