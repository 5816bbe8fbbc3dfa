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


@pytest.fixture
def client(server):
    """The client library connected to the session's shared server (tests/conftest.py)."""
    with Client(server.host, server.port, server.token) as connected:
        yield connected


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


@pytest.mark.e2e
def test_generate_and_export_through_the_client(client):
    status = client.request("status")
    assert status["event"] == "status" and status["protocol"] == 1
    queued = client.request("generate", **JOB)
    assert queued["event"] == "queued"
    events = _events_until(client, queued["job"], {"done", "error"})
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done", events[-1]
    assert "started" in kinds and "progress" in kinds and "exported" in kinds
    exported = next(e for e in events if e["event"] == "exported")
    # The server's exported event: files by kind (sdi_blender/protocol.py), the mesh under "mesh".
    mesh = Path(exported["files"]["mesh"])
    assert mesh.name == "mesh.glb" and mesh.is_file()


@pytest.mark.e2e
def test_errors_arrive_as_server_errors(server, client):
    with pytest.raises(ServerError) as info:
        client.request("cancel", job="no-such-job")
    assert info.value.code == "not_found"
    assert client.request("status")["event"] == "status"  # the connection still works
    with pytest.raises(ServerError) as info:
        Client(server.host, server.port, "wrong-token")
    assert info.value.code in {"unauthorized", "disconnected"}


@pytest.mark.e2e
def test_local_server_starts_serves_and_stops(tmp_path: Path):
    local = LocalServer(tmp_path / "jobs", model="tiny", device="cpu")
    try:
        with local.connect() as client:
            assert client.request("status")["event"] == "status"
        local.stop()
        assert local.process.poll() == 0  # shut down when asked, not left running or killed
    finally:
        if local.process.poll() is None:
            local.process.kill()
            local.process.wait()


def test_unreachable_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(ServerError) as info:
        Client("127.0.0.1", port, "t", timeout=2)
    assert info.value.code == "unreachable" and str(port) in info.value.message
