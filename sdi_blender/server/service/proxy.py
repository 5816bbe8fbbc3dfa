"""Watch it grow: a coarse mesh of the field while a job trains, as ``proxy_mesh`` events.

Every ``proxy_every`` steps the trainer hands over its field (``TrainerCallbacks.on_field``).
The field is copied there (the only time training waits) and a worker thread samples the
copy's density on a small grid, extracts the surface as the export does
(:func:`~sdi_blender.server.export.mesh.sample_density`, :func:`~.mesh.auto_threshold`,
:func:`~.mesh.extract_mesh`) and colours its vertices with the copy's albedo. If the previous
proxy is still being made, the new request is skipped: a slow extraction costs proxies, never
training steps. A field with no surface yet sends nothing.

The arrays travel as base64 of little-endian float32/int32/uint8, in Blender's axes, so the
add-on builds its object with ``foreach_set`` and no conversion; at 64³ a proxy is well under a
megabyte, far below :data:`~sdi_blender.protocol.MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

import base64
import copy
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import UserError
from ...protocol import job_event
from ..export.mesh import auto_threshold, extract_mesh, sample_density
from ..scene.renderer import OFFICIAL_THRESHOLD
from ..training.trainer import Progress, TrainerCallbacks

PROXY_RESOLUTION = 64
"""Grid cells per side of a proxy (the export's default is 256)."""
MAX_PROXY_FACES = 200_000
"""A proxy with more faces is not sent (a 64³ grid gives far fewer)."""
_log = logging.getLogger("sdi_blender.server")


def proxy_arrays(
    field: Any, bounds: float, resolution: int = PROXY_RESOLUTION, official: float = OFFICIAL_THRESHOLD
) -> dict[str, Any] | None:
    """The field's coarse mesh as the event's fields (base64 arrays, Blender's axes), or None
    when it has no surface yet; ``official`` is the export's first level (``scene.renderer.official_level``)."""
    device = next(field.parameters()).device
    grid = sample_density(lambda x: field.density(x), resolution, bounds, device)
    try:
        mesh = extract_mesh(grid, auto_threshold(grid, official)[0], bounds)
    except UserError:  # no surface at any level yet
        return None
    if not 0 < len(mesh.faces) <= MAX_PROXY_FACES:
        return None
    world = np.asarray(mesh.vertices, dtype=np.float32)
    with torch.no_grad():
        albedo = field(torch.as_tensor(world, device=device)).albedo.clamp(0, 1).cpu().numpy()
    # The export's frame: the scene's front (+X) toward Blender's front (−Y), (x, y, z) → (y, −x, z).
    blender = np.stack([world[:, 1], -world[:, 0], world[:, 2]], axis=-1)
    return {
        "vertices": _b64(blender.astype("<f4")),
        "faces": _b64(np.asarray(mesh.faces).astype("<i4")),
        "colours": _b64((albedo * 255).round().astype(np.uint8)),
    }


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


class ProxyCallbacks(TrainerCallbacks):
    """A job's trainer callbacks (``inner``) plus proxies sent with ``emit(job, event)``.

    Use as a context manager around training: leaving it waits for the proxy being made, so
    none arrives after the job's end.
    """

    def __init__(
        self,
        inner: TrainerCallbacks,
        job: str,
        emit: Callable[[str, dict[str, Any]], None],
        bounds: float,
        placement: dict[str, Any] | None = None,
        resolution: int = PROXY_RESOLUTION,
        official: float = OFFICIAL_THRESHOLD,
    ) -> None:
        """``placement``: sent with each proxy of a run started from a mesh (see ``init_mesh.placement``);
        ``official``: the run's export level (``scene.renderer.official_level``)."""
        self.inner, self.job, self.emit, self.bounds, self.resolution = inner, job, emit, bounds, resolution
        self.official = official
        self.placement = {"placement": placement} if placement is not None else {}
        self._thread: threading.Thread | None = None
        self.sent = 0

    def __enter__(self) -> ProxyCallbacks:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._thread.join()

    # -- the inner callbacks, unchanged ---------------------------------------------------
    def on_progress(self, progress: Progress) -> None:
        self.inner.on_progress(progress)

    def on_preview(self, step: int, png: bytes) -> None:
        self.inner.on_preview(step, png)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.inner.on_checkpoint(step, path)

    def on_notice(self, step: int, message: str) -> None:
        self.inner.on_notice(step, message)

    # -- proxies ----------------------------------------------------------------------------
    def on_field(self, step: int, field: Any) -> None:
        if self._thread is not None and self._thread.is_alive():
            return  # still making the last one: skip this one rather than wait
        with torch.no_grad():
            snapshot = copy.deepcopy(field).requires_grad_(False)
        self._thread = threading.Thread(target=self._send, args=(step, snapshot), name="sdi-proxy", daemon=True)
        self._thread.start()

    def _send(self, step: int, field: Any) -> None:
        try:
            arrays = proxy_arrays(field, self.bounds, self.resolution, self.official)
        except Exception:  # a proxy is a nicety: its failure must not touch the job
            _log.exception("job %s: the proxy at step %d failed", self.job, step)
            return
        if arrays is not None:
            self.emit(self.job, job_event("proxy_mesh", self.job, step=step, **arrays, **self.placement))
            self.sent += 1
