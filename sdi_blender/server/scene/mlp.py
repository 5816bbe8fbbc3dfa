"""The one MLP shape of the official config, for the field's heads and the background."""

from __future__ import annotations

from torch import nn


def mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    """Linear–ReLU ×layers, then Linear; no biases, as the fused (tcnn) MLPs of the official config."""
    dims = [n_in] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b, bias=False), nn.ReLU()]
    mods.append(nn.Linear(dims[-1], n_out, bias=False))
    return nn.Sequential(*mods)
