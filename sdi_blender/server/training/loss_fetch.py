"""Loss values on their way from the device to the host, without making the host wait."""

from __future__ import annotations

from collections import deque

import torch


class LossFetch:
    """Loss values on their way to the host, copied without making the host wait.

    On CUDA each step's values are copied into pinned memory behind the step's work and an
    event marks their arrival; :meth:`ready` returns those that have arrived (``query``, no
    wait) and waits only for values more than ``max_lag`` steps old, or for all when asked.
    On other devices the values are there at once.
    """

    def __init__(self, device: torch.device, max_lag: int = 2) -> None:
        self.cuda, self.max_lag = device.type == "cuda", max_lag
        self.pending: deque[tuple[int, int, list[str], torch.Tensor, torch.cuda.Event | None]] = deque()

    def push(self, step: int, t: int, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float() for v in terms.values()])
        event = None
        if self.cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            values, event = host, torch.cuda.Event()
            event.record()
        self.pending.append((step, t, list(terms), values, event))

    def ready(self, wait: bool = False) -> list[tuple[int, int, dict[str, float]]]:
        """(step, t, values) of the steps whose values have arrived, oldest first."""
        out = []
        while self.pending:
            step, t, names, values, event = self.pending[0]
            if event is not None:
                if not (wait or len(self.pending) > self.max_lag or event.query()):
                    break
                event.synchronize()
            self.pending.popleft()
            out.append((step, t, dict(zip(names, values.tolist()))))
        return out
