"""Errors that reach users as one line (CLI: exit code 2; server: an error event).

Torch-free, so the CLI and the Blender add-on can raise and catch them cheaply.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path


class UserError(Exception):
    """Bad input or a missing resource: reported as one line, never as a traceback.

    ``code`` is the machine-readable kind (the server's error codes); ``hint`` says
    what the user can do about it.
    """

    code = "bad_request"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and the hint on one line."""
        text = f"{self.message}; {self.hint}" if self.hint else self.message
        return " ".join(text.split())


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run a console entry point: a :class:`UserError` is one line on stderr and exit code 2,
    Ctrl-C is exit code 130; anything else is a bug and keeps its traceback."""
    try:
        return command()
    except UserError as exc:
        print(f"{prog}: error: {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a command may say what it left behind
        print(f"{prog}: {exc.args[0] if exc.args else 'interrupted; nothing was written'}", file=sys.stderr)
        return 130


def program(name: str) -> str:
    """How to type ``name``, a console script of this environment, so that a hint runs as written.

    The bare name where PATH finds this environment's copy (an activated venv); else its
    path (relative when it lies below the working directory: ``.venv/bin/sdi-blender``).
    """
    here = Path(sys.executable).with_name(name)
    if not here.exists():
        return name
    found = shutil.which(name)
    if found and Path(found).resolve() == here.resolve():
        return name
    rel = os.path.relpath(here, Path.cwd()) if here.is_absolute() else str(here)
    return shlex.quote(rel if not rel.startswith("..") else str(here))


class ModelUnavailable(UserError):
    """The diffusion model is neither on disk nor downloadable."""

    code = "model_unavailable"
