"""The command line's progress bar for optimisation loops (tqdm on stderr)."""

from __future__ import annotations

import sys


class StepBar:
    """A step counter showing the current timestep and loss."""

    def __init__(self, total: int, initial: int = 0, label: str | None = None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=label, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, step: int, t: int, loss: float) -> None:
        """Move to ``step`` (absolute) and show t and the loss."""
        self.bar.set_postfix(t=t, loss=f"{loss:.4g}", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()
