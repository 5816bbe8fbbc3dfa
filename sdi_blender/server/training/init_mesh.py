"""Starting a run from the artist's blockout: the density field begins as a mesh's inside.

The mesh (GLB, glTF or OBJ, read by :mod:`~sdi_blender.server.scene.mesh_file`) is placed in the
scene box as texturing places it (:class:`~sdi_blender.server.scene.mesh_surface.SceneFit`: its
bounding box centred, uniformly scaled to the size the trainer makes objects at); the fit is
remembered in the run's config, so the result can be put back where the blockout was
(:func:`placement`). Before the first step the field's density is fitted to the mesh's occupancy
by a short regression, as threestudio's shape initialisation does: a few hundred Adam steps of
MSE between the field's density and the occupancy (trilinearly interpolated from a grid, so the
target is smooth at the surface) at random points of the box. The albedo and the background
stay as they start; optimisation then runs as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import UserError
from ..scene.mesh_file import check_mesh_path, load_mesh
from ..scene.mesh_surface import SceneFit


@dataclass
class InitMesh:
    """Where a run's density starts from; the default (no path) is the field's blob."""

    path: str = ""
    """The mesh file; "" starts from the blob."""
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The mesh's bounding-box centre in the trainer's axes, in mesh units (set when planned)."""
    scale: float = 0.0
    """Scene units per mesh unit (0: not placed yet; :func:`plan_init_mesh` sets it)."""
    steps: int = 200
    """Regression steps of the pre-fit."""
    points: int = 8192
    """Random points per regression step."""
    density: float | None = None
    """The density the inside is fitted to (outside: 0); None: twice the run's official export
    level (``scene.renderer.official_level``: 50 for the paper's renderer, 6.25 for the toy's), so
    that level cuts the blockout's surface from the first step on. (At 20, below 25, the export
    fell back to Otsu until training pushed a few spots above 25; the official level then kept
    only those: IoU 0.03 after 20 steps with views that still showed the whole box.)"""
    grid: int = 48
    """Occupancy grid cells per side over the scene box (the target's resolution)."""


def plan_init_mesh(init: InitMesh) -> None:
    """Read and place the mesh (a bad file is one :class:`UserError` line); sets centre and scale."""
    if not init.path or init.scale:
        return
    check_mesh_path(Path(init.path))
    fit = SceneFit.of(load_mesh(Path(init.path)).world_vertices())
    init.centre, init.scale = fit.centre, fit.scale


def occupancy_grid(init: InitMesh, radius: float) -> torch.Tensor:
    """[G+1, G+1, G+1] float occupancy of the placed mesh at the cell corners of the scene box,
    indexed [x, y, z]."""
    import trimesh

    mesh = load_mesh(Path(init.path))
    fit = SceneFit(init.centre, init.scale) if init.scale else SceneFit.of(mesh.world_vertices())
    placed = trimesh.Trimesh(fit.to_scene(mesh.world_vertices()), mesh.faces, process=True)
    axis = np.linspace(-radius, radius, init.grid + 1)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    lo, hi = placed.bounds
    near = np.all((points >= lo - 1e-6) & (points <= hi + 1e-6), axis=1)  # contains() only where it can be
    inside = np.zeros(len(points), dtype=np.float32)
    inside[near] = placed.contains(points[near])
    if not inside.any():
        raise UserError(
            f"the mesh '{init.path}' encloses no volume",
            hint="start from a closed mesh (a blockout of boxes and spheres, not a plane)",
        )
    n = init.grid + 1
    return torch.from_numpy(inside.reshape(n, n, n))


def fit_field(field: Any, init: InitMesh, seed: int, level: float = 25.0) -> list[float]:
    """Regress ``field``'s density to the mesh's occupancy × ``init.density`` (default twice the
    export's ``level``); returns the losses.

    ``field`` is an :class:`~sdi_blender.server.scene.field.ImplicitVolume` (on any device); only
    the parameters the density depends on receive gradients.
    """
    plan_init_mesh(init)
    params = next(field.parameters())
    device = params.device
    radius = float(field.config.radius)
    target = occupancy_grid(init, radius).to(device)[None, None]  # [1, 1, D, H, W] = [x, y, z]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    optimiser = torch.optim.Adam(
        [*field.encoding.parameters(), *field.density_mlp.parameters()], lr=0.01, betas=(0.9, 0.99), eps=1e-15
    )
    inside = init.density if init.density is not None else 2.0 * level
    field.set_step(0)  # the levels training starts with
    losses = []
    for _ in range(init.steps):
        x = (torch.rand(init.points, 3, generator=gen) * 2 - 1).to(device) * radius
        # grid_sample takes (x, y, z) as (W, H, D): the grid is [x, y, z], so the coordinates reversed.
        grid = (x / radius).flip(-1)[None, :, None, None]
        occupied = F.grid_sample(target, grid, align_corners=True)[0, 0, :, 0, 0]
        loss = F.mse_loss(field.density(x), occupied * inside)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses


def placement(init: InitMesh) -> dict[str, Any] | None:
    """How the add-on puts an exported mesh back in the blockout's frame, or None for a run
    that started from the blob: scale by ``scale`` about the origin, then move by ``centre``
    (Blender's axes, the blockout's units).

    The export writes the scene's (x, y, z) as Blender's (y, −x, z) (``export/pipeline.py``:
    glTF's axes, which Blender's importer turns back to Z-up); so does the centre here.
    """
    if not init.path or not init.scale:
        return None
    x, y, z = init.centre
    return {"centre": [y, -x, z], "scale": 1.0 / init.scale}
