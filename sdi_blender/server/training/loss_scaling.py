"""Dynamic loss scaling for fp16 training (the official "16-mixed" precision).

The guidance loss is a mean over the latents, 0.5·mean((x0 − x̂0)²), so the gradient each
of SD's 4×64×64 latents receives is (x0 − x̂0)/16384. The VAE encoder's backward runs in
fp16, whose smallest subnormal is 6·10⁻⁸: for residuals around 0.01 most of those gradients
flush to zero and the render receives almost none. The scaler multiplies the loss by a large
factor (2¹⁶ to start) before the backward, which lifts the gradients into fp16's range, and
divides the parameters' gradients by it again before Adam. A step whose scaled gradients
overflow (inf/NaN) is skipped and the scale halved; after 2000 clean steps it doubles
(``torch.amp.GradScaler``'s defaults, which the official config keeps). For an fp32 or bf16
prior the scaler is off and a step is a plain backward and Adam step. See docs/algorithm.md
for the cost compared with running the encoder in fp32.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

INIT_SCALE = 2.0**16
"""The official config's initial loss scale."""


def make_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """The loss scaler for a prior computing in ``dtype``: enabled for fp16 only (bf16 has
    fp32's exponent range and does not underflow)."""
    return torch.amp.GradScaler(device.type, init_scale=INIT_SCALE, enabled=dtype == torch.float16)


def make_adam(params: Iterable[Any], scaler: torch.amp.GradScaler, **adam: Any) -> torch.optim.Adam:
    """Adam over ``params`` (tensors or param groups); fused while ``scaler`` is enabled.

    The fused kernel reads the scaler's inf/NaN flag on the device and skips the update
    itself; with the plain Adam, ``GradScaler.step`` would read the flag on the host, a
    host-device synchronisation every step. Off, ``fused`` stays unset (not False, which
    would also turn off torch's default multi-tensor Adam).
    """
    return torch.optim.Adam(params, fused=True if scaler.is_enabled() else None, **adam)
