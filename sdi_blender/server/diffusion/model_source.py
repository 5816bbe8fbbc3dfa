"""Where a model comes from: the built-in ``tiny`` model, a local directory or a hub id.

Torch-free, so that the command line can reject a bad ``--model`` before loading torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...catalog import BUILTIN_MODELS, TINY
from ...errors import UserError

# A Hugging Face repository id: "owner/name", no path-like prefix.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class BadModelName(UserError):
    """A model that is neither a built-in, an existing folder nor a hub id."""

    reason = "model"  # protocol.ERROR_REASONS: a client words its own hint for it


def check_model_name(model: str, hint: str = "", builtins: tuple[str, ...] = BUILTIN_MODELS) -> None:
    """Raise :class:`UserError` unless ``model`` is a built-in, an existing directory or a hub id.

    ``hint`` replaces the default hint (which names Stable Diffusion models).
    """
    if model in builtins or Path(model).expanduser().is_dir():
        return
    if _HUB_ID.match(model) and not model.startswith("."):
        return
    raise BadModelName(
        f"model path '{model}' does not exist",
        hint=hint
        or "give a diffusers model directory, a hub id such as "
        "stabilityai/stable-diffusion-2-1-base, 'tiny' or 'toyworld'",
    )


def check_remote_model(model: str, roots: tuple[Path, ...]) -> None:
    """For a server reachable from other machines: only built-ins, hub ids and folders under
    ``roots``. The refusal is the same whether or not the path exists, so a client cannot use it
    to learn which folders the server's machine has."""
    if model in BUILTIN_MODELS or (_HUB_ID.match(model) and not model.startswith(".")):
        return
    path = Path(model)
    if path.is_absolute() and any(_inside(path, root) for root in roots):
        return
    raise UserError(
        f"model '{model[:200]}' is not a hub id, a built-in model or a folder under the server's model roots",
        hint="the server's owner can add a folder with --model-root",
    )


def _inside(path: Path, root: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError):
        return False


def resolve_model_source(model: str) -> str:
    """What to pass to ``from_pretrained``: a directory path or a hub id."""
    check_model_name(model)
    if model == TINY:
        from .tiny_model import tiny_model_path  # imports torch: only when needed

        return str(tiny_model_path())
    path = Path(model).expanduser()
    return str(path) if path.is_dir() else model
