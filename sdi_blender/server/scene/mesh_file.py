"""An artist's mesh file (GLB, glTF or OBJ) read for texturing, and checked: a file that is no
usable mesh is one clear line, before anything is written.

Files are read by trimesh without processing, so the vertex and face arrays are the file's own
(nothing merged, reordered or removed) and the textured result can carry exactly them. An OBJ's
separate position and UV indices become one vertex per pair, as any glTF must store them.

Axes: glTF is Y-up with the front toward +Z (Blender's importer turns it into Z-up with the front
toward −Y); an OBJ as Blender writes it by default (forward −Z, up Y) has the same axes. The
trainer's world is Z-up with the front toward +X (``docs/algorithm.md``), so the front-view prompt
looks at the mesh's Blender front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UserError

SUFFIXES = (".glb", ".gltf", ".obj")
"""The mesh files that can be textured."""
MAX_FACES = 200_000
"""Above this a mesh is refused: every training step casts its rays against all of it, and
simplifying it would change the geometry the artist asked to keep."""

GLTF_FROM_WORLD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
"""The trainer's world (Z-up, front +X) → glTF (Y-up, front +Z): x' = y, y' = z, z' = x; the
export's axes too. Orthogonal, so ``world = gltf @ GLTF_FROM_WORLD`` for row vectors."""


@dataclass
class SourceMesh:
    """One mesh as its file holds it."""

    path: Path
    """The file it was read from."""
    vertices: np.ndarray
    """[V, 3] positions in the mesh's own (local) frame, as stored."""
    faces: np.ndarray
    """[F, 3] vertex indices (int64)."""
    uvs: np.ndarray | None
    """[V, 2] texture coordinates (glTF convention, v up), or None if the file has none."""
    transform: np.ndarray
    """[4, 4] the mesh's placement in the file's scene (its node's transform; identity for OBJ)."""

    def placed_vertices(self) -> np.ndarray:
        """[V, 3] positions placed by :attr:`transform`, in the file's Y-up axes."""
        return self.vertices @ self.transform[:3, :3].T + self.transform[:3, 3]

    def world_vertices(self) -> np.ndarray:
        """[V, 3] placed positions in the trainer's axes (Z-up, front +X), unscaled."""
        return self.placed_vertices() @ GLTF_FROM_WORLD


def check_mesh_path(path: Path) -> None:
    """Raise unless ``path`` is an existing file of a supported kind (cheap: reads nothing)."""
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"cannot texture '{path.name}': unsupported mesh format '{path.suffix or path.name}'",
            hint=f"use one of {', '.join(SUFFIXES)} (Blender: File › Export › glTF 2.0)",
        )
    if not path.is_file():
        raise UserError(f"there is no mesh file at '{path}'")


def load_mesh(path: Path, max_faces: int = MAX_FACES) -> SourceMesh:
    """The one mesh in ``path``, checked; any problem is a one-line :class:`UserError`."""
    import trimesh

    check_mesh_path(path)
    try:
        scene = trimesh.load_scene(str(path), process=False)
    except Exception as exc:  # trimesh's loaders raise many kinds for a malformed file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read the mesh '{path}': {first}") from exc
    nodes = [n for n in scene.graph.nodes_geometry if isinstance(scene.geometry[scene.graph[n][1]], trimesh.Trimesh)]
    if not nodes:
        raise UserError(f"'{path}' holds no triangle mesh", hint="export the object as a mesh (GLB or OBJ)")
    if len(nodes) > 1:
        raise UserError(
            f"'{path}' holds {len(nodes)} meshes; texture one at a time",
            hint="join them in Blender (Ctrl+J) or export only the selected object",
        )
    transform, name = scene.graph[nodes[0]]
    mesh = scene.geometry[name]
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    _check_geometry(path, vertices, faces, max_faces)
    uv = getattr(mesh.visual, "uv", None)
    uvs = np.asarray(uv, np.float64) if uv is not None and len(uv) == len(vertices) else None
    return SourceMesh(path, vertices, faces, uvs, np.asarray(transform, np.float64))


def _check_geometry(path: Path, vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> None:
    if len(faces) == 0 or len(vertices) == 0:
        raise UserError(f"the mesh in '{path}' has no faces", hint="texturing needs a surface: export a mesh")
    if len(faces) > max_faces:
        raise UserError(
            f"the mesh in '{path}' has {len(faces):,} faces, more than the {max_faces:,} that can be textured",
            hint="decimate it first (Blender: Decimate modifier)",
        )
    if not np.isfinite(vertices).all():
        raise UserError(f"the mesh in '{path}' has vertices that are not finite numbers")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise UserError(f"the mesh in '{path}' has faces that name missing vertices")
    extent = vertices.max(0) - vertices.min(0)
    if (extent > 0).sum() < 2:
        raise UserError(f"the mesh in '{path}' is flat to a line or a point", hint="texturing needs a surface")
