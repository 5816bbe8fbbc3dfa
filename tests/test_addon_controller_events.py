"""A malformed server event in a burst is skipped and reported; the rest of the burst applies."""

from __future__ import annotations

import pytest

from sdi_blender.addon.controller import Controller, JobView


@pytest.mark.parametrize(
    "broken",
    [
        {"event": "progress", "job": "J1", "total": 10},  # no step
        {"event": "exported", "job": "J1", "vertices": 1, "faces": 1},  # no files
        {"event": "preview", "job": "J1", "step": 2, "png": "%%% not base64 %%%"},
    ],
)
def test_a_malformed_event_does_not_lose_the_done_after_it(c: Controller, broken: dict) -> None:
    view = c.job = JobView("generate", prompt="a red apple")
    for message in (
        {"event": "queued", "job": "J1", "position": 0},
        broken,
        {"event": "done", "job": "J1", "step": 10},
    ):
        c._outbox.put(message)
    outcome = c.poll()
    assert outcome is not None and outcome.status == "done" and outcome.view is view
    assert c.job is None  # the add-on is free for the next job
    assert len(c.notices) == 1 and "malformed" in c.notices[0]
