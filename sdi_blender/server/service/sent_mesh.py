"""Meshes that requests carry (``texture``'s ``mesh_data``, ``generate``'s ``init_mesh_data``): the
client may be on another machine, so the mesh comes as contents (``protocol.mesh_data``) and the
server keeps it in the new job's own folder, as ``sent-mesh.<format>``, where the job (and a
later re-bake or resume, on any node that sees the jobs folder) reads it.

A path on the server's machine (``mesh``, ``init_mesh``) is taken from a loopback client only:
a server open to other machines refuses it, as it refuses model folders outside its model roots.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...protocol import MESH_FIELDS, read_mesh_data

SENT_MESH = "sent-mesh"
"""The stem of a sent mesh's file in its job folder (not a run entry: ``--overwrite`` keeps it)."""


@dataclass
class Sent:
    """A request's sent mesh, decoded before its job exists."""

    format: str
    """One of ``protocol.MESH_FORMATS``."""
    data: bytes
    """The mesh file's bytes."""


@contextlib.contextmanager
def stored(sent: Sent | None, job_dir: Path) -> Iterator[Path | None]:
    """The sent mesh written into the new job's folder (created here) while the job is planned
    (None: nothing was sent); the folder goes again if planning fails."""
    if sent is None:
        yield None
        return
    job_dir.mkdir(parents=True)
    try:
        path = job_dir / f"{SENT_MESH}.{sent.format}"
        path.write_bytes(sent.data)
        yield path
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise


def receive(kind: str, request: dict[str, Any], remote: bool) -> Sent | None:
    """The mesh ``request`` sent, decoded (None when it sent none); a path is refused when
    ``remote`` (the server is open to other machines). Raises ``ProtocolError``/``UserError``."""
    if kind not in MESH_FIELDS:
        return None
    path_field, data_field = MESH_FIELDS[kind]
    if remote and path_field in request:
        raise UserError(
            f"this server is open to other machines: it takes the mesh as '{data_field}', not as a path",
            hint="send the mesh's contents (the add-on does)",
        )
    value = request.get(data_field)
    return Sent(value["format"], read_mesh_data(value)) if value is not None else None


def recorded(kind: str, request: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """The request as ``job.json`` and ``job.log`` keep it: a sent mesh by the path it was stored at."""
    if kind not in MESH_FIELDS or path is None:
        return dict(request)
    path_field, data_field = MESH_FIELDS[kind]
    return {**{k: v for k, v in request.items() if k != data_field}, path_field: str(path)}
