"""The client library against a real local server (tiny model, CPU)."""

from __future__ import annotations

import queue
import socket
import time
from pathlib import Path

import pytest

from sdi_blender.client import Client, LocalServer, ServerError

JOB = {
    "prompt": "a red apple",
    "preset": "test",
    "steps": 4,
    "resolution": 32,
    "export": {"resolution": 32, "texture_size": 64},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LocalServer(tmp_path_factory.mktemp("jobs"), model="tiny", device="cpu")
    yield srv
    srv.stop()
    assert srv.process.wait(30) is not None


def _events_until(client: Client, job: str, last: set[str], timeout: float = 240) -> list[dict]:
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = client.events.get(timeout=1)
        except queue.Empty:
            continue
        if event.get("job") == job:
            events.append(event)
            if event["event"] in last:
                return events
    raise AssertionError(f"no {last} for job {job}; got {[e['event'] for e in events]}")


def test_generate_and_export_through_the_client(server):
    with server.connect() as client:
        status = client.request("status")
        assert status["event"] == "status" and status["protocol"] == 1
        queued = client.request("generate", **JOB)
        assert queued["event"] == "queued"
        events = _events_until(client, queued["job"], {"done", "error"})
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done", events[-1]
    assert "started" in kinds and "progress" in kinds and "exported" in kinds
    exported = next(e for e in events if e["event"] == "exported")
    assert any(str(p).endswith("mesh.glb") and Path(p).is_file() for p in _paths(exported))


def _paths(event: dict) -> list[str]:
    files = event.get("files") or event.get("paths") or {}
    return list(files.values()) if isinstance(files, dict) else list(files)


def test_errors_arrive_as_server_errors(server):
    with server.connect() as client:
        with pytest.raises(ServerError) as info:
            client.request("cancel", job="no-such-job")
        assert info.value.code == "not_found"
        assert client.request("status")["event"] == "status"  # the connection still works
    with pytest.raises(ServerError) as info:
        Client(server.host, server.port, "wrong-token")
    assert info.value.code in {"unauthorized", "disconnected"}


def test_unreachable_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(ServerError) as info:
        Client("127.0.0.1", port, "t", timeout=2)
    assert info.value.code == "unreachable" and str(port) in info.value.message
