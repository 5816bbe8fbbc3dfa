"""Where tensors live: the device a run uses, its compute dtype, and host-to-device copies."""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import UserError


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; a CUDA device that is missing is an error."""
    if name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device '{name}'", hint="use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available", hint="use --device cpu")
    return device


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device``. A host-to-CUDA copy goes through pinned memory without blocking: a
    plain ``.to("cuda")`` of host memory waits for all the work queued on the GPU first."""
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    # The caching host allocator keeps the pinned block until the copy has completed.
    return x.pin_memory().to(device, non_blocking=True)


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (the paper's setting); fp32 elsewhere, where fp16 is slow or missing."""
    return torch.float16 if device.type == "cuda" else torch.float32


_HOST_OOM = ("can't allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means memory ran out: on the GPU, or on the host (torch's CPU allocator
    raises a RuntimeError, numpy a MemoryError)."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _HOST_OOM)
