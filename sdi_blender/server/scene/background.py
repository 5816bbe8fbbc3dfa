"""The official "neural-environment-map-background": colour as an MLP of the view direction.

The unit view direction is encoded by the 9 real spherical harmonics of degree ≤ 2 (tcnn calls
this "degree 3"), followed by an MLP with 2 hidden layers of 16 ReLU units and a sigmoid, so
colours lie in (0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mlp import mlp

# Normalisation constants of the real spherical harmonics Y_l^m, l ≤ 2.
_SH_C0 = 0.28209479177387814  # 1 / (2√π)
_SH_C1 = 0.4886025119029199  # √3 / (2√π)
# √15/(2√π), √5/(4√π), √15/(4√π)
_SH_C2 = (1.0925484305920792, 0.31539156525252005, 0.5462742152960396)


def spherical_harmonics_deg2(d: Tensor) -> Tensor:
    """The 9 real spherical harmonics (l ≤ 2, orthonormal on the sphere) of unit vectors ``[..., 3]``."""
    x, y, z = d.unbind(-1)
    a, b, c = _SH_C2
    return torch.stack(
        [
            torch.full_like(x, _SH_C0),
            -_SH_C1 * y,
            _SH_C1 * z,
            -_SH_C1 * x,
            a * x * y,
            -a * y * z,
            b * (3 * z * z - 1),
            -a * x * z,
            c * (x * x - y * y),
        ],
        dim=-1,
    )


@dataclass
class BackgroundConfig:
    """The official "neural-environment-map-background"."""

    mlp_hidden: int = 16
    """Width of the background MLP's hidden layers."""
    mlp_layers: int = 2
    """Hidden layers of the background MLP."""


class EnvironmentBackground(nn.Module):
    """Colour in (0, 1) as an MLP of the view direction's spherical harmonics."""

    def __init__(self, config: BackgroundConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BackgroundConfig()
        self.mlp = mlp(9, 3, c.mlp_hidden, c.mlp_layers)

    def forward(self, dirs: Tensor) -> Tensor:
        """Colours ``[..., 3]`` for view directions ``[..., 3]`` (normalised here)."""
        return torch.sigmoid(self.mlp(spherical_harmonics_deg2(F.normalize(dirs, dim=-1))))
