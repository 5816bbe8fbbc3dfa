"""Safe file writing shared by every output: atomic writes, staged folders and writability probes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash or an error never leaves a half-written file that a later run would trust.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staged_folder(target: Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty folder beside ``target`` to fill; when the body succeeds, it becomes ``target``.

    A previous ``target`` is moved aside and deleted only once the new folder is in place (put
    back if the swap fails). Whatever fails, nothing half-written is ever at ``target``, the
    previous one is left as it was and no staging folder stays behind. ``keep(target)`` true when
    the swap finds ``target`` taken (a concurrent builder got there first): that one is kept and
    the staged folder dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    old = staging.with_suffix(".old")
    try:
        yield staging
        _swap_in(staging, target, old, keep)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _swap_in(staging: Path, target: Path, old: Path, keep: Callable[[Path], bool] | None) -> None:
    try:
        os.replace(staging, target)  # one atomic step where target is absent
        return
    except OSError:
        if keep is not None and keep(target):
            return
        if not target.exists():
            raise
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException as exc:
        if not target.exists():
            old.rename(target)  # put the previous one back
        if not (isinstance(exc, OSError) and keep is not None and keep(target)):
            raise


def probe_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``; raises OSError where that fails.

    A real write, because permission bits say little as root or on read-only mounts.
    """
    probe = folder / f".probe.{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
