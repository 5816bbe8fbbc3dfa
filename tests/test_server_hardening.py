"""Server hardening: every job ends with one terminal event, hostile text and files are refused,
one server per jobs folder (issue: a probe run against the real server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fake_jobs import fake_manager

from sdi_blender.errors import UserError
from sdi_blender.protocol import ProtocolError, decode, encode
from sdi_blender.server.service import jobs as jobs_module
from sdi_blender.server.service.jobs import Conflict, JobManager
from sdi_blender.server.service.lock import JobsFolderLock

TERMINAL = ("done", "cancelled", "error")


class Recorder:
    """The manager's emit callback: every event per job, and a semaphore per terminal event."""

    def __init__(self) -> None:
        self.events: dict[str, list[dict]] = {}
        self.ended = threading.Semaphore(0)

    def __call__(self, job: str, event: dict) -> None:
        self.events.setdefault(job, []).append(event)
        if event["event"] in TERMINAL:
            self.ended.release()

    def terminal(self, job: str) -> list[dict]:
        return [e for e in self.events.get(job, []) if e["event"] in TERMINAL]


def _manager(tmp_path: Path, emit: Recorder, outcome: BaseException | None = None, **kw) -> JobManager:
    return fake_manager(tmp_path, emit, outcome=outcome, **kw)


def _generate(manager: JobManager, prompt: str = "a red apple") -> str:
    return manager.submit("generate", {"prompt": prompt, "preset": "test"})[0]


# --- 1. a disk error in the failure path --------------------------------------------------


@pytest.mark.parametrize("failure", [ValueError("boom"), OSError(28, "No space left on device")])
def test_a_job_ends_once_even_when_its_failure_cannot_be_written(tmp_path: Path, monkeypatch, failure) -> None:
    emit = Recorder()
    gate = threading.Event()
    real_write = jobs_module.run_dir.atomic_write

    manager = _manager(tmp_path, emit, outcome=failure)
    original_run = manager._run_task

    def run_task(task, events):
        gate.wait(30)
        return original_run(task, events)

    monkeypatch.setattr(manager, "_run_task", run_task)
    job = _generate(manager)

    def disk_full(path, data):  # job.json and state.json writes fail from now on
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(jobs_module.run_dir, "atomic_write", disk_full)
    gate.set()
    assert emit.ended.acquire(timeout=30), "no terminal event"
    (event,) = emit.terminal(job)
    assert event["event"] == "error" and event["code"] == "internal"
    assert manager.get(job).status == "failed"  # released in memory: not stuck "running"
    with pytest.raises(Conflict, match="failed, not queued or running"):
        manager.cancel(job)
    monkeypatch.setattr(jobs_module.run_dir, "atomic_write", real_write)
    # The worker survived: the next job runs and ends.
    monkeypatch.setattr(manager, "_run_task", lambda task, events: "done")
    second = _generate(manager)
    assert emit.ended.acquire(timeout=30)
    assert [e["event"] for e in emit.terminal(second)] == ["done"]
    manager.shutdown()


def test_host_out_of_memory_is_out_of_memory(tmp_path: Path) -> None:
    emit = Recorder()
    manager = _manager(tmp_path, emit, outcome=MemoryError())
    job = _generate(manager)
    assert emit.ended.acquire(timeout=30)
    manager.shutdown()
    (event,) = emit.terminal(job)
    assert event["code"] == "out_of_memory" and event["hint"]


# --- 2. text that is not text ---------------------------------------------------------------


def test_a_lone_surrogate_is_refused_at_the_door() -> None:
    line = json.dumps({"type": "generate", "id": 1, "prompt": "\ud800"}).encode()
    with pytest.raises(ProtocolError, match="lone surrogate") as info:
        decode(line)
    assert info.value.code == "bad_request"


def test_encoding_an_echoed_field_cannot_fail() -> None:
    line = encode({"event": "error", "id": "\udcff", "message": "x"})
    assert decode(line.replace(b"\\udcff", b"ok"))["id"] == "ok"  # valid JSON, the surrogate escaped


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ProtocolError, match="duplicate key 'id'"):
        decode(b'{"type": "status", "id": 1, "id": 2}')


def test_a_malformed_job_file_skips_that_job_only(tmp_path: Path) -> None:
    emit = Recorder()
    manager = _manager(tmp_path, emit)
    good = _generate(manager)
    assert emit.ended.acquire(timeout=30)
    manager.shutdown()
    bad = {
        "wrongtypes": {"id": "wrongtypes", "kind": "generate", "request": "x", "status": 3, "created": "y"},
        "surrogate": {
            "id": "surrogate",
            "kind": "generate",
            "request": {"prompt": "\ud800"},
            "status": "done",
            "created": 1.0,
            "error": None,
        },
        "notjson": None,
    }
    for name, data in bad.items():
        (tmp_path / name).mkdir()
        text = "{not json" if data is None else json.dumps(data)
        (tmp_path / name / "job.json").write_text(text, encoding="utf-8")
    again = _manager(tmp_path, Recorder())
    listed = again.list()
    again.shutdown()
    assert [j["job"] for j in listed] == [good]
    assert encode({"event": "jobs", "jobs": listed})  # the reply to list_jobs encodes


# --- 4. one server per jobs folder ------------------------------------------------------------


def test_a_second_lock_on_the_jobs_folder_fails_with_one_line(tmp_path: Path) -> None:
    first = JobsFolderLock(tmp_path)
    first.acquire()
    with pytest.raises(UserError, match=f"pid {os.getpid()}.*is using the jobs folder") as info:
        JobsFolderLock(tmp_path).acquire()
    assert "--jobs-dir" in info.value.hint and "\n" not in info.value.one_line()
    first.release()
    again = JobsFolderLock(tmp_path)
    again.acquire()  # released: a restart is not blocked
    again.release()


@pytest.mark.e2e
def test_a_second_server_on_a_locked_jobs_folder_exits_2_and_touches_nothing(tmp_path: Path) -> None:
    lock = JobsFolderLock(tmp_path)
    lock.acquire()
    (tmp_path / "server.token").write_text("the first server's token")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sdi_blender.server", "--jobs-dir", str(tmp_path), "--device", "cpu"],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        lock.release()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "is using the jobs folder" in proc.stderr
    assert (tmp_path / "server.token").read_text() == "the first server's token"


# --- 6. links and leftovers in job folders -------------------------------------------------------


def test_job_folders_with_links_are_refused(tmp_path: Path) -> None:
    emit = Recorder()
    jobs_dir, outside = tmp_path / "jobs", tmp_path / "outside"
    outside.mkdir()
    manager = _manager(jobs_dir, emit)
    job = _generate(manager)
    assert emit.ended.acquire(timeout=30)
    (jobs_dir / job / "export").symlink_to(outside, target_is_directory=True)
    with pytest.raises(Conflict, match="symbolic link"):
        manager.submit("export", {"job": job})
    manager.shutdown()
    # A job folder that is itself a link is not loaded, so it cannot be written through or "deleted".
    (jobs_dir / job / "export").unlink()
    linked = jobs_dir / "linked"
    linked.symlink_to(jobs_dir / job, target_is_directory=True)
    again = _manager(jobs_dir, Recorder())
    assert [j["job"] for j in again.list()] == [job]
    again.shutdown()


def test_stale_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    emit = Recorder()
    manager = _manager(tmp_path, emit)
    job = _generate(manager)
    assert emit.ended.acquire(timeout=30)
    manager.shutdown()
    stale = tmp_path / job / "checkpoints" / ".last.pt.12345.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a checkpoint")
    _manager(tmp_path, Recorder()).shutdown()
    assert not stale.exists()


# --- low: a bounded queue --------------------------------------------------------------------------


def test_the_queue_is_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(jobs_module, "MAX_QUEUED", 2)
    emit = Recorder()
    gate = threading.Event()
    manager = _manager(tmp_path, emit)
    monkeypatch.setattr(manager, "_run_task", lambda task, events: gate.wait(30) and "done")
    _generate(manager)
    for _ in range(300):  # until the worker holds the first job
        if manager.snapshot()[1] is not None:
            break
        threading.Event().wait(0.1)
    waiting = [_generate(manager) for _ in range(2)]
    with pytest.raises(Conflict, match=r"queue is full \(2 jobs waiting\)"):
        _generate(manager)
    assert manager.snapshot()[0] == waiting
    gate.set()
    manager.shutdown()


# --- 5. memory a client can pin ------------------------------------------------------------------


@pytest.fixture
def bare_server(monkeypatch):
    """A Server without jobs, on loopback, with short limits; yields (server, connect)."""
    import socket

    from sdi_blender.server.service import connection
    from sdi_blender.server.service.server import Server

    monkeypatch.setattr(connection, "HELLO_TIMEOUT_S", 1.0)
    monkeypatch.setattr(Server, "max_connections", 2)
    srv = Server(("127.0.0.1", 0), "secret-token", "cpu")
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def connect() -> socket.socket:
        sock = socket.create_connection(srv.server_address[:2], timeout=10)
        return sock

    yield srv, connect
    srv.shutdown()
    srv.server_close()


def _reply(sock) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data.splitlines()[0])


def test_a_hello_has_one_deadline_however_slowly_it_trickles(bare_server) -> None:
    _, connect = bare_server
    sock = connect()
    try:  # each byte well within a per-read timeout, the whole far beyond the 1 s deadline
        for byte in b'{"type": "hello", "token": "secret-token", "protocol": 1}':
            sock.sendall(bytes([byte]))
            time.sleep(0.1)
    except OSError:
        pass  # the server closed the connection
    reply = _reply(sock)
    # A per-read timeout would have let the (right) token through: the whole hello had a deadline.
    assert reply["code"] == "unauthorized" and "no hello within" in reply["message"]


def test_a_huge_first_line_is_refused_before_it_is_read(bare_server) -> None:
    _, connect = bare_server
    sock = connect()
    try:
        sock.sendall(b'{"type": "hello", "token": "' + b"x" * 100_000)
    except OSError:
        pass  # the server may already have closed
    reply = _reply(sock)
    assert reply["code"] == "too_large" and "4096" in reply["message"]


def test_connections_are_capped_with_a_clear_refusal(bare_server) -> None:
    _, connect = bare_server
    held = [connect(), connect()]
    time.sleep(0.3)  # both registered
    third = connect()
    reply = _reply(third)
    assert reply["code"] == "too_busy" and "2 connections" in reply["message"]
    for sock in held:
        sock.close()


def test_a_client_that_never_reads_is_dropped_by_bytes(monkeypatch) -> None:
    import socket

    from sdi_blender.server.service import connection

    monkeypatch.setattr(connection, "OUTBOX_BYTES", 1 << 20)
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    conn = connection.Connection(ours, "test")
    big = {"event": "preview", "job": "J", "step": 1, "png": "x" * (1 << 16)}
    for _ in range(64):  # 4 MiB in 64 messages, far under the message-count cap
        conn.send(big)
    theirs.settimeout(10)
    received = 0
    while chunk := theirs.recv(1 << 20):  # the connection was broken: reading ends
        received += len(chunk)
    assert received < 3 << 20
    conn.close(timeout=1)


# --- 8. a reply that comes after the client gave up ----------------------------------------------


def test_a_job_whose_reply_comes_too_late_is_cancelled_not_orphaned() -> None:
    import socket

    from sdi_blender.client import Client, ServerError

    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[dict] = []

    def fake_server() -> None:  # answers hello at once and generate only after 1.5 s
        conn, _ = listener.accept()
        lines = conn.makefile("rb")
        for line in lines:
            message = json.loads(line)
            seen.append(message)
            if message["type"] == "hello":
                conn.sendall(encode({"event": "hello", "id": message["id"], "protocol": 1}))
            elif message["type"] == "generate":
                time.sleep(1.5)
                conn.sendall(encode({"event": "queued", "id": message["id"], "job": "J-late", "position": 0}))
            elif message["type"] == "cancel":
                conn.sendall(encode({"event": "ok", "id": message["id"], "job": message["job"]}))
                break
        conn.close()

    thread = threading.Thread(target=fake_server, daemon=True)
    thread.start()
    client = Client(*listener.getsockname()[:2], token="t", timeout=0.5)
    with pytest.raises(ServerError) as info:
        client.request("generate", prompt="a red apple")
    assert info.value.code == "timeout"
    thread.join(10)
    client.close()
    listener.close()
    assert [m["type"] for m in seen] == ["hello", "generate", "cancel"] and seen[-1]["job"] == "J-late"
    notices: list[dict] = []
    for _ in range(100):  # the reader thread queues the notice just after sending the cancel
        notices = [e for e in list(client.events.queue) if e.get("event") == "notice"]
        if notices:
            break
        time.sleep(0.05)
    assert notices and "J-late" in notices[0]["message"]


# --- 7. host memory and cancel inside long export stages ----------------------------------------


def test_host_allocation_failures_read_as_out_of_memory() -> None:
    from sdi_blender.server.util.devices import is_out_of_memory

    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_density_sampling_stops_between_chunks_when_cancelled() -> None:
    from sdi_blender.server.export.mesh import sample_density

    calls = []

    class Cancelled(Exception):
        pass

    def density(x):
        calls.append(len(x))
        return torch.zeros(len(x))

    def progress(fraction: float) -> None:
        raise Cancelled  # what the export child's cancel check does

    with pytest.raises(Cancelled):
        sample_density(density, 63, 1.0, chunk=1000, progress=progress)
    assert calls == [1000]  # one chunk of 64³, not all 263


# --- low: what a remote client may name as a model ----------------------------------------------


def test_remote_clients_name_hub_ids_builtins_and_folders_under_the_roots_only(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "models", tmp_path / "private"
    (root / "sd").mkdir(parents=True)
    elsewhere.mkdir()
    manager = _manager(tmp_path / "jobs", Recorder(), model_roots=(root,))
    errors = {}
    for model in (str(elsewhere), str(tmp_path / "does-not-exist"), "../private", str(root / "sd" / ".." / "..")):
        with pytest.raises(UserError) as info:
            manager.submit("generate", {"prompt": "a red apple", "preset": "test", "model": model})
        errors[model] = info.value.message.replace(model[:200], "MODEL")
    assert len(set(errors.values())) == 1  # the same answer whether the folder exists or not
    for model in ("tiny", "owner/some-model", str(root / "sd")):
        manager.submit("generate", {"prompt": "a red apple", "preset": "test", "model": model})
    manager.shutdown()
