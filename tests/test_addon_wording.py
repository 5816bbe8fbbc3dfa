"""What the panel says (bpy-free): the server's errors in Blender's words, the start line, the
loading / download / export status lines, the preset advice, and background-mode waiting."""

from __future__ import annotations

import threading
import time

import pytest
from controller_feed import feed

from sdi_blender import catalog
from sdi_blender.addon import wording
from sdi_blender.addon.controller import Controller, JobView, usable_gb, wait_until
from sdi_blender.protocol import error_event

STARTED = {
    "event": "started",
    "job": "J1",
    "kind": "generate",
    "device": "cpu",
    "model": "toyworld",
    "preset": "toy",
    "steps": 400,
    "resolution": 32,
    "run": "/jobs/J1",
    "estimate": catalog.estimate("toy", "cpu", "toyworld", 400, detail=False),
}


def test_the_start_line_shows_the_catalogs_estimate_device_steps_and_size() -> None:
    assert wording.start_line(STARTED) == "about 17 s on cpu, 400 steps at 32²"
    assert wording.start_line({**STARTED, "steps": None, "estimate": None}) == "on cpu"  # an export


def test_events_move_the_status_from_loading_to_download_to_training_to_export(c: Controller) -> None:
    view = c.job = JobView("generate", prompt="x")
    feed(c, {"event": "queued", "job": "J1", "position": 0}, STARTED, {"event": "loading", "job": "J1", "model": "m/x"})
    assert view.started["estimate"] == "about 17 s" and wording.job_status(view, 60).text == "Loading the model m/x…"
    feed(c, {"event": "download", "job": "J1", "model": "m/x", "file": "unet/w.bin", "done": 5 * 10**8, "total": 10**9})
    line = wording.job_status(view, 60)
    assert (line.text, line.fraction, line.alert) == ("Downloading unet/w.bin: 500 / 1,000 MB", 0.5, False)
    progress = {"step": 3, "total": 10, "t": 1, "loss": 1.0, "elapsed_s": 1.0, "eta_s": 65.0}
    feed(c, {"event": "progress", "job": "J1", **progress})
    assert wording.job_status(view, 60).text == "Step 3 / 10, 1m 05s left"
    feed(c, {"event": "export_stage", "job": "J1", "stage": "marching_cubes", "fraction": 0.65})
    line = wording.job_status(view, 60)
    assert (line.text, line.fraction) == ("Exporting: marching cubes", 0.65)  # no longer "Step 10 / 10"


def test_a_download_without_new_bytes_for_the_stall_time_is_stalled(c: Controller) -> None:
    view = c.job = JobView("generate", prompt="x", job="J1")
    chunk = {"event": "download", "job": "J1", "model": "m/x", "file": "vae/w.bin", "done": 10, "total": 100}
    feed(c, chunk)
    fresh = view.bytes_at
    feed(c, chunk)  # the same bytes again: news, but no progress
    assert view.bytes_at == fresh
    assert not wording.job_status(view, stall_s=60, now=fresh + 59).alert
    stalled = wording.job_status(view, stall_s=60, now=fresh + 75)
    assert stalled.alert and stalled.text == "Download stalled: no data for 75 s (vae/w.bin)"
    feed(c, {**chunk, "done": 20})
    assert view.bytes_at > fresh and not wording.job_status(view, stall_s=60).alert


@pytest.mark.parametrize(
    "code, reason, server_hint, needle",
    [
        ("model_unavailable", "offline", "allow downloads, or pass --model …", "Preferences ▸ System ▸ Network"),
        ("model_unavailable", "", "fetch it … or pass --model with a local diffusers directory", "set Model in"),
        ("bad_request", "model", "give a diffusers model directory, a hub id …", "SDI add-on preferences"),
        ("out_of_memory", "export", "lower the mesh resolution or texture size", "Mesh Grid"),
        ("interrupted", "", "continue resumes it from its last checkpoint", "Refine"),
    ],
)
def test_server_hints_become_blender_wording(code: str, reason: str, server_hint: str, needle: str) -> None:
    hint = wording.blender_hint(code, reason, server_hint)
    assert needle in hint and "--" not in hint


def test_a_hint_with_no_blender_wording_is_kept_and_a_missing_one_filled() -> None:
    assert wording.blender_hint("internal", "", "see job.log") == "see job.log"
    assert wording.blender_hint("unreachable", "", "RuntimeError: CUDA driver too old") == (
        "RuntimeError: CUDA driver too old"
    )
    assert "Host and Port" in wording.blender_hint("unreachable", "", "")


def test_a_job_error_is_worded_for_blender_and_kept_until_dismissed(c: Controller) -> None:
    c.job = JobView("generate", prompt="x", job="J1")
    message, hint = "model 'a/b' is not on this machine", "allow downloads, or pass --model"
    outcome = feed(c, error_event("model_unavailable", message, hint, job="J1", reason="offline"))
    assert outcome.status == "error" and "Allow Online Access" in outcome.hint
    assert c.last_error == (outcome.message, outcome.hint)
    feed(c, {"event": "state", "state": "ready"})  # later news does not clear it
    assert c.last_error is not None
    c.dismiss_error()
    assert c.last_error is None


def test_the_preset_advice_uses_the_catalogs_memory_figures() -> None:
    assert wording.preset_advice(None, "paper") == ("", None)  # off a GPU
    assert wording.preset_advice(80.0, "paper") == ("", None)  # fits
    text, better = wording.preset_advice(16.0, "paper")
    assert better == catalog.suggest_preset(16.0, "paper") == "draft" and text.endswith("try Draft")
    text, better = wording.preset_advice(4.0, "draft")  # nothing smaller for Stable Diffusion
    assert better is None and "may run short" in text
    # The status reply's memory: free plus what the server holds itself; none off a GPU.
    assert usable_gb({"kind": "cuda", "free": 6e9, "reserved": 2e9, "allocated": 1e9}) == 8.0
    assert usable_gb({"kind": "process", "rss": 10**9}) is None


def test_background_waiting_lasts_while_news_comes_and_ends_on_silence(c: Controller) -> None:
    view = c.job = JobView("generate", prompt="x", job="J1")
    c.last_news = time.monotonic()

    def server() -> None:  # a job that runs 4× longer than the silence limit, with news throughout
        for step in range(1, 9):
            time.sleep(0.1)
            fields = {"step": step, "total": 8, "t": 1, "loss": 1.0, "elapsed_s": 0.0, "eta_s": 0.0}
            c._outbox.put({"event": "progress", "job": "J1", **fields})
        c._outbox.put({"event": "done", "job": "J1", "step": 8})

    outcomes: list = []
    feeder = threading.Thread(target=server)
    feeder.start()
    assert wait_until(c, lambda: not c.running, outcomes.append, silent_s=0.25, interval=0.01)
    feeder.join()
    assert [o.status for o in outcomes] == ["done"] and view.step == 8
    c.job = JobView("generate", prompt="y", job="J2")  # a server that says nothing at all
    assert not wait_until(c, lambda: not c.running, outcomes.append, silent_s=0.2, interval=0.01)
    assert c.running and c.abandon("silent").status == "error" and not c.running
