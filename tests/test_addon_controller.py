"""The add-on's controller (bpy-free): how server messages become the panel's state and
a finished job's outcome. Messages are fed as the background thread would post them."""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import pytest
from controller_feed import feed

from sdi_blender.addon.controller import Controller, JobView, ServerError, check_python
from sdi_blender.addon.wording import BLENDER_HINTS


def follow(c: Controller, purpose: str = "generate") -> JobView:
    c.job = JobView(purpose, prompt="a red apple")
    return c.job


def progress(job: str, step: int, total: int, eta_s: float) -> dict:
    """A progress event with every field the server sends (sdi_blender/protocol.py)."""
    fields = {"step": step, "total": total, "t": 900, "loss": 1.0, "elapsed_s": 1.0, "eta_s": eta_s}
    return {"event": "progress", "job": job, **fields}


def test_job_events_update_the_view_and_end_in_done(c):
    view = follow(c)
    png = base64.b64encode(b"\x89PNG fake").decode()
    assert (
        feed(
            c,
            {"event": "state", "state": "busy"},
            {"event": "queued", "job": "J1", "position": 0},
            progress("J1", 3, 10, 7.0),
            {"event": "preview", "job": "J1", "step": 3, "png": png},
        )
        is None
    )
    assert (view.job, view.step, view.total, view.eta_s) == ("J1", 3, 10, 7.0)
    assert view.preview == b"\x89PNG fake" and c.state == "busy" and c.running
    # The exported event as the server sends it (server/service/jobs.py): the mesh under "mesh",
    # the key the add-on's runtime.apply imports from.
    files = {"mesh": "/x/export/mesh.glb", "info": "/x/export/export.json"}
    outcome = feed(
        c,
        progress("OTHER", 9, 9, 0.0),  # not ours
        {"event": "exported", "job": "J1", "files": files, "vertices": 10, "faces": 16},
        {"event": "done", "job": "J1", "step": 10},
    )
    assert view.step == 3
    assert outcome.status == "done" and outcome.view.files["mesh"] == "/x/export/mesh.glb"
    assert not c.running and c.state == "ready" and not c.notices


def test_out_of_memory_is_an_error_outcome_with_the_hint(c):
    follow(c)
    outcome = feed(
        c,
        {"event": "queued", "job": "J1", "position": 0},
        {
            "event": "error",
            "job": "J1",
            "code": "out_of_memory",
            "message": "out of memory: CUDA",
            "hint": "lower the preset or the resolution",
        },
    )
    assert outcome.status == "error"  # the server's hint, in the panel's words
    assert outcome.report() == f"out of memory: CUDA ({BLENDER_HINTS['out_of_memory', '']})"
    assert "Quality" in outcome.hint and "Render Size" in outcome.hint
    assert not c.running


def test_a_dead_local_server_is_named_with_its_last_words(c, tmp_path: Path):
    follow(c)
    stderr = tmp_path / "server.stderr"
    stderr.write_text("loading\nRuntimeError: CUDA driver too old\n\n")
    c._server = SimpleNamespace(process=SimpleNamespace(poll=lambda: -9, returncode=-9), stderr_path=stderr)
    outcome = feed(c, {"event": "error", "code": "disconnected", "message": "closed", "hint": ""})
    assert outcome.status == "error"
    assert outcome.message == "the server stopped unexpectedly (exit code -9)"
    assert outcome.hint == "RuntimeError: CUDA driver too old"
    assert c.state == "error" and c.hint == outcome.hint and c._server is None


def test_a_lost_connection_while_idle_only_changes_the_state(c):
    assert feed(c, {"event": "error", "code": "disconnected", "message": "reset", "hint": ""}) is None
    assert c.state == "error" and c.hint == "start the server again"


def test_stopping_the_server_cancels_the_followed_job(c):
    follow(c)
    outcome = feed(c, {"event": "stopped"})
    assert outcome.status == "cancelled" and "stopped" in outcome.message and not c.running


def test_failures_outside_a_job_are_notices(c):
    assert feed(c, {"event": "notice", "message": "cannot reach the server"}) is None
    assert c.notices == ["cannot reach the server"]


def test_a_jobs_own_notice_is_a_warning_not_a_failure(c):
    follow(c)
    event = {"event": "warning", "job": "J1", "step": 3, "message": "out of memory; retrying with render chunk 512"}
    assert feed(c, event) is None
    assert c.job_notes == [event["message"]] and not c.notices and c.running


def test_one_job_at_a_time(c):
    follow(c)
    with pytest.raises(RuntimeError, match="already running"):
        c.submit(None, JobView("generate"), "generate", prompt="x")


def test_check_python(tmp_path: Path):
    with pytest.raises(ServerError, match="no server Python is set"):
        check_python("")
    with pytest.raises(ServerError, match="not an executable file"):
        check_python(str(tmp_path))
    assert check_python("/bin/sh") == "/bin/sh"


def test_a_failed_start_reaches_the_job_as_an_error(c, tmp_path: Path):
    from sdi_blender.addon.controller import ServerSettings

    c.submit(
        ServerSettings(python=str(tmp_path / "nope"), jobs_dir=tmp_path), JobView("generate"), "generate", prompt="x"
    )
    import time

    deadline, outcome = time.monotonic() + 10, None
    while outcome is None and time.monotonic() < deadline:
        outcome = c.poll()
        time.sleep(0.02)
    assert outcome.status == "error" and "not an executable file" in outcome.message
    assert "Preferences" in outcome.hint and c.state == "error"
