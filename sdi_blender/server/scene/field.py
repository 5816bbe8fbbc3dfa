"""The radiance field of the official SDI config: a hash-grid "implicit volume".

:class:`ImplicitVolume` — an :class:`~.encoding.Encoding` (by default the hash grid of
:mod:`.encoding`) → small MLPs → density (softplus, with Magic3D's blob bias) and albedo
(sigmoid); normals are the analytic, normalised negative density gradient. The background is
:mod:`.background`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoding import Encoding, HashGridEncoding
from .mlp import mlp


@dataclass
class FieldConfig:
    """The official "implicit-volume" geometry (configs/sdi.yaml)."""

    radius: float = 2.0
    """Half-size of the scene box ``[-radius, radius]^3``; the encoding sees ``(x + r) / (2r)``."""
    n_levels: int = 16
    """Hash-grid levels."""
    n_features_per_level: int = 2
    """Features stored per grid vertex and level."""
    log2_hashmap_size: int = 19
    """log2 of the largest table size ``T`` per level."""
    base_resolution: int = 16
    """Resolution of the coarsest level."""
    per_level_scale: float = 1.447269237440378
    """Growth factor of the resolution per level (16 levels from 16 to ≈ 4096)."""
    start_level: int = 8
    """Levels active at the start of training."""
    start_step: int = 2000
    """Step after which further levels are unlocked."""
    update_steps: int = 500
    """Steps between two unlocked levels."""
    mlp_hidden: int = 64
    """Width of the density and albedo MLPs."""
    mlp_layers: int = 1
    """Hidden layers of the density and albedo MLPs."""
    density_blob_scale: float = 10.0
    """Magic3D blob bias: peak value added to the raw density at the origin."""
    density_blob_std: float = 0.5
    """Magic3D blob bias: radius at which the bias crosses zero."""


@dataclass
class FieldOutput:
    """Per-point field values."""

    density: Tensor
    """``[N]`` volume density (≥ 0)."""
    albedo: Tensor
    """``[N, 3]`` diffuse colour in (0, 1)."""
    normal: Tensor | None = None
    """``[N, 3]`` unit normals ``-∇density / ‖∇density‖``, or None if not requested."""


class ImplicitVolume(nn.Module):
    """Density and albedo from a shared encoding of the normalised position."""

    def __init__(
        self, config: FieldConfig | None = None, encoding: Encoding | None = None, hash_kernel: str = "auto"
    ) -> None:
        """``hash_kernel`` picks the default hash grid's implementation (:data:`.encoding.KERNELS`)."""
        super().__init__()
        self.config = c = config or FieldConfig()
        self.encoding = (
            encoding
            if encoding is not None
            else HashGridEncoding(
                c.n_levels,
                c.n_features_per_level,
                c.log2_hashmap_size,
                c.base_resolution,
                c.per_level_scale,
                c.start_level,
                c.start_step,
                c.update_steps,
                hash_kernel,
            )
        )
        n_enc = self.encoding.n_output_dims
        self.density_mlp = mlp(n_enc, 1, c.mlp_hidden, c.mlp_layers)
        self.albedo_mlp = mlp(n_enc, 3, c.mlp_hidden, c.mlp_layers)

    def set_step(self, step: int) -> None:
        """Forward the training step to the encoding (progressive levels)."""
        self.encoding.set_step(step)

    def _blob(self, x: Tensor) -> Tensor:
        # Magic3D's density bias: scale · (1 - ‖x‖ / std), on world positions.
        r = torch.linalg.vector_norm(x, dim=-1)  # its gradient at the origin is 0, not NaN
        return self.config.density_blob_scale * (1.0 - r / self.config.density_blob_std)

    def _features(self, x: Tensor) -> Tensor:
        r = self.config.radius
        return self.encoding(((x + r) / (2 * r)).clamp(0.0, 1.0))

    def density(self, x: Tensor) -> Tensor:
        """Density ``[N]`` at world positions ``[N, 3]``."""
        raw = self.density_mlp(self._features(x))[..., 0]
        return F.softplus(raw + self._blob(x))

    def forward(self, x: Tensor, with_normals: bool = False) -> FieldOutput:
        """Density, albedo and optionally analytic normals at world positions ``[N, 3]``.

        Normals are differentiable (for the orientation loss and shading) when the caller has
        gradients enabled, and computed but detached under ``torch.no_grad()``.
        """
        if not with_normals:
            h = self._features(x)
            density = F.softplus(self.density_mlp(h)[..., 0] + self._blob(x))
            return FieldOutput(density, torch.sigmoid(self.albedo_mlp(h)))
        grad_on = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if (grad_on and x.requires_grad) else x.detach().requires_grad_(True)
            h = self._features(xg)
            density = F.softplus(self.density_mlp(h)[..., 0] + self._blob(xg))
            albedo = torch.sigmoid(self.albedo_mlp(h))
            (grad,) = torch.autograd.grad(density, xg, torch.ones_like(density), create_graph=grad_on)
        normal = F.normalize(-grad, dim=-1, eps=1e-12)
        if not grad_on:
            density, albedo, normal = density.detach(), albedo.detach(), normal.detach()
        return FieldOutput(density, albedo, normal)
