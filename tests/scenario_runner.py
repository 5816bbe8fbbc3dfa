"""Running one add-on scenario (tests/addon_scenarios.py) in its own bpy process, for the tests
that check what it recorded (tests/test_addon.py, and the toy world's end-to-end test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OUTPUT = REPO / "tests" / "output"  # renders for a person to look at (git-ignored)
SCENARIO_TIMEOUT_S = 900  # only so that a hung Blender cannot hang the suite


def run_scenario(name: str, addon_zip: Path, work: Path, script: str = "addon_scenarios.py", **env: str) -> dict:
    """Run scenario ``name`` of ``script`` (a module of tests/ with a ``SCENARIOS`` table, run as
    ``python SCRIPT NAME ZIP WORK``) in a Blender process; ``env``: extra environment."""
    OUTPUT.mkdir(exist_ok=True)
    environ = dict(
        os.environ,
        BLENDER_USER_RESOURCES=str(work / "blender"),
        SDI_TEST_OUTPUT=str(OUTPUT),
        SDI_SERVER_PYTHON=sys.executable,
        PYTHONPATH=str(REPO / "tests"),
        **env,
    )
    # In a session of its own, so that a hang is ended with the server Blender started.
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / script), name, str(addon_zip), str(work)],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=SCENARIO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"scenario {name} did not end within {SCENARIO_TIMEOUT_S} s:\n{stdout[-3000:]}{stderr[-3000:]}"
        ) from None
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, stdout[-3000:] + stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    result["stdout"] = stdout
    return result
