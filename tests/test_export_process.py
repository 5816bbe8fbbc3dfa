"""Exports run in a child process: its crash, error or cancel reaches the server as a result."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sdi_blender.errors import UserError
from sdi_blender.server.export.child import ExportCancelled, ExportCrashed, export_in_child
from sdi_blender.server.export.pipeline import ExportSettings

# Export functions for the child: module-level, so that it can import them by name.


def segfault(run, settings, device, progress):
    os.kill(os.getpid(), signal.SIGSEGV)


def refuse(run, settings, device, progress):
    raise UserError(f"cannot export {Path(run).name} at {settings.resolution}", hint="try 64")


def bug(run, settings, device, progress):
    return {}["missing"]


def answer(run, settings, device, progress):
    progress("load", 1.0)
    return {"run": str(run), "resolution": settings.resolution, "device": device}


def wait_for_cancel(run, settings, device, progress):
    for _ in range(6000):  # at most about 5 minutes: only so that a broken cancel cannot hang the tests
        progress("bake", 0.5)  # raises once the parent asked to stop
        time.sleep(0.05)
    return "not cancelled"


def _export(fn, tmp_path, cancel=None):
    return export_in_child(tmp_path, ExportSettings(resolution=32), "cpu", cancel or threading.Event(), fn)


def test_the_result_comes_back(tmp_path):
    assert _export(answer, tmp_path) == {"run": str(tmp_path), "resolution": 32, "device": "cpu"}


def test_a_crash_is_an_error_not_the_end_of_the_caller(tmp_path):
    with pytest.raises(ExportCrashed, match="signal 11") as info:
        _export(segfault, tmp_path)
    assert info.value.code == "internal" and "server is fine" in info.value.hint
    assert _export(answer, tmp_path)["resolution"] == 32  # and the next export works


def test_a_user_error_keeps_its_code_message_and_hint(tmp_path):
    with pytest.raises(UserError) as info:
        _export(refuse, tmp_path)
    assert (info.value.code, info.value.message, info.value.hint) == (
        "bad_request",
        f"cannot export {tmp_path.name} at 32",
        "try 64",
    )


def test_a_bug_names_its_stage_and_cause_and_carries_the_childs_traceback(tmp_path):
    with pytest.raises(UserError, match="export failed during load: KeyError: 'missing'") as info:
        _export(bug, tmp_path)
    assert info.value.code == "internal" and "job.log" in info.value.hint
    assert "in the export process" in info.value.__notes__[0] and "def bug" not in info.value.message


def test_cancel_stops_the_export_through_its_progress_callback(tmp_path):
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    with pytest.raises(ExportCancelled):  # not "not cancelled": the loop stopped at a progress call
        _export(wait_for_cancel, tmp_path, cancel)
