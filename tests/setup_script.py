"""vendor_setup.py loaded as a module (``vs``) and run as a command, for the tests that use it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "vendor_setup.py"


def _load():
    spec = importlib.util.spec_from_file_location("vendor_setup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


vs = _load()


def run_setup(args: list, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python vendor_setup.py ARGS`` with this environment's Python."""
    return subprocess.run(
        [sys.executable, str(SCRIPT)] + args, env=env, capture_output=True, text=True, timeout=timeout
    )
