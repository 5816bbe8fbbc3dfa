"""sdi-blender's cache folder and the atomic build of what it caches (the tiny model, the toy world)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """Where sdi-blender caches built artefacts (``$SDI_BLENDER_CACHE`` overrides)."""
    env = os.environ.get("SDI_BLENDER_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdi-blender"


def cached_build(name: str, build: Callable[[Path], None], marker: str) -> Path:
    """``cache_root()/models/name``, made by ``build(folder)`` on first use; ``marker`` is a file
    every finished build has (a folder without it is built again, atomically)."""
    path = cache_root() / "models" / name
    if not (path / marker).is_file():
        _build_atomically(path, build, marker)
    return path


def _build_atomically(path: Path, build: Callable[[Path], None], marker: str) -> None:
    """Run ``build`` into ``path``; ``marker`` is a file every build has."""
    # Build beside the target and rename, so a concurrent or interrupted build never
    # leaves a half-written model that a later run would trust.
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    try:
        build(staging)
        try:
            os.replace(staging, path)
        except OSError:
            if not (path / marker).is_file():  # lost a race only if it exists
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
