"""sdi-blender's cache folder and the atomic build of what it caches (the tiny model, the toy world)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .fileio import staged_folder


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
    # Build beside the target and swap it in, so a concurrent or interrupted build never
    # leaves a half-written model that a later run would trust. A finished build that a
    # concurrent builder put there first is kept (we lost the race).
    with staged_folder(path, keep=lambda target: (target / marker).is_file()) as staging:
        build(staging)
