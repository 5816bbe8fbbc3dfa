"""Where a model comes from: the built-in ``tiny`` model, a local directory or a hub id.

Torch-free, so that the command line can reject a bad ``--model`` before loading torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import UserError

TINY = "tiny"
TOYWORLD = "toyworld"
"""The built-in toy world: an exact denoiser of pictures of known objects (``toy_prior``)."""
BUILTIN_MODELS = (TINY, TOYWORLD)
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
"""The paper's model."""
# A Hugging Face repository id: "owner/name", no path-like prefix.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_name(model: str, hint: str = "", builtins: tuple[str, ...] = BUILTIN_MODELS) -> None:
    """Raise :class:`UserError` unless ``model`` is a built-in, an existing directory or a hub id.

    ``hint`` replaces the default hint (which names Stable Diffusion models).
    """
    if model in builtins or Path(model).expanduser().is_dir():
        return
    if _HUB_ID.match(model) and not model.startswith("."):
        return
    raise UserError(
        f"model path '{model}' does not exist",
        hint=hint
        or "give a diffusers model directory, a hub id such as "
        "stabilityai/stable-diffusion-2-1-base, 'tiny' or 'toyworld'",
    )


def resolve_model_source(model: str) -> str:
    """What to pass to ``from_pretrained``: a directory path or a hub id."""
    check_model_name(model)
    if model == TINY:
        from .tiny_model import tiny_model_path  # imports torch: only when needed

        return str(tiny_model_path())
    path = Path(model).expanduser()
    return str(path) if path.is_dir() else model
