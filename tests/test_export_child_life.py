"""The export child never outlives the server, and a stale export never replaces a newer one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sdi_blender.server.export.child import CLAIM, ExportCancelled, export_in_child
from sdi_blender.server.export.pipeline import ExportSettings

TESTS = Path(__file__).resolve().parent


# Export functions for the child: module-level, so that it can import them by name.
def hang_and_report(run, settings, device, progress):
    (run / "child.pid").write_text(str(os.getpid()))
    for _ in range(1200):  # two minutes, reporting progress like a long sampling stage
        progress("sample", 0.0)
        time.sleep(0.1)
    raise AssertionError("the export child outlived its parent")


def overtaken(run, settings, device, progress):
    (run / CLAIM).write_text("a newer export's claim")  # what a restarted server's export does
    progress("write", 1.0)
    (run / "swapped").write_text("the stale export got through")


def test_a_stale_export_does_not_swap_in(tmp_path: Path) -> None:
    with pytest.raises(ExportCancelled):
        export_in_child(tmp_path, ExportSettings(), "cpu", threading.Event(), overtaken)
    assert not (tmp_path / "swapped").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status is left


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_the_export_child_dies_with_a_killed_server(tmp_path: Path) -> None:
    driver = (
        f"import sys, threading; sys.path.insert(0, {str(TESTS)!r})\n"
        "from pathlib import Path\n"
        "from sdi_blender.server.export.child import export_in_child\n"
        "from sdi_blender.server.export.pipeline import ExportSettings\n"
        "from test_export_child_life import hang_and_report\n"
        f"export_in_child(Path({str(tmp_path)!r}), ExportSettings(), 'cpu', threading.Event(), hang_and_report)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", driver], stderr=subprocess.DEVNULL)
    pid_file = tmp_path / "child.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline and server.poll() is None:
        time.sleep(0.1)
    assert pid_file.exists(), "the export child never started"
    child = int(pid_file.read_text())
    assert _alive(child)
    server.send_signal(signal.SIGKILL)  # kill -9: no cleanup code of the server runs
    server.wait(30)
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the export child outlived the killed server"
