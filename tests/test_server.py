"""``sdi-blender serve``: a real server process on loopback with the tiny model on CPU."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from server_harness import TERMINAL, Client, Server

from sdi_blender.cli import main
from sdi_blender.protocol import MAX_MESSAGE_BYTES

SMALL = {"preset": "test", "resolution": 32, "steps": 4}

# ``server`` (tests/conftest.py) is the session's shared server: tests leave it up and idle.
# A test that stops, kills or restarts a server starts its own.


@pytest.mark.e2e
def test_listening_line_and_private_token(server: Server):
    assert set(server.listening) == {"event", "host", "port", "pid", "protocol"}
    assert server.listening["event"] == "listening" and server.listening["host"] == "127.0.0.1"
    assert server.listening["pid"] == server.proc.pid and server.listening["protocol"] == 1
    assert stat.S_IMODE((server.jobs_dir / "server.token").stat().st_mode) == 0o600
    assert len(server.token) >= 32


@pytest.mark.e2e
def test_wrong_token_is_refused_and_closed(server: Server):
    for hello in (
        {"type": "hello", "token": "nope", "protocol": 1},
        {"type": "hello", "token": server.token, "protocol": 2},
        {"type": "status", "id": 1},
    ):
        client = Client(server.port)
        client.send_raw((json.dumps(hello) + "\n").encode())
        assert client.recv()["code"] == "unauthorized"
        assert client.recv() is None  # closed
        client.close()


def test_non_loopback_host_needs_allow_remote(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-remote" in err[0]


def _check_export_stages(events: list[dict[str, Any]]) -> None:
    """The export's stages come as events between the training's last and ``exported``, in order."""
    kinds = [e["event"] for e in events]
    stages = [e for e in events if e["event"] == "export_stage"]
    first, last = kinds.index("export_stage"), len(kinds) - 1 - kinds[::-1].index("export_stage")
    assert "progress" not in kinds[first:] and kinds[last + 1] == "exported", kinds
    names = list(dict.fromkeys(e["stage"] for e in stages))
    assert names[:2] == ["load", "sample"] and names[-1] == "write" and "bake" in names, names
    assert all(e["fraction"] is None or 0.0 <= e["fraction"] <= 1.0 for e in stages)


@pytest.mark.e2e
def test_generate_with_export_then_export_again(server: Server):
    client = server.client()
    reply = client.ask(
        {"type": "generate", "prompt": "a red apple", **SMALL, "export": {"resolution": 32, "texture_size": 64}}
    )
    assert reply["event"] == "queued" and reply["position"] == 0
    job = reply["job"]
    events = client.events(job)
    # loading and export stages are checked below, live proxies in tests/test_proxy.py
    kinds = [e["event"] for e in events if e["event"] not in ("loading", "export_stage", "proxy_mesh")]
    assert kinds == ["started"] + ["progress"] * 4 + ["preview", "exported", "done"], kinds
    started = {k: events[0][k] for k in ("kind", "device", "model", "preset", "steps", "resolution", "run")}
    assert started == {
        "kind": "generate",
        "device": "cpu",
        "model": "tiny",
        "preset": "test",
        "steps": 4,
        "resolution": 32,
        "run": str(server.jobs_dir / job),
    }
    assert events[0]["estimate"] == "about a few seconds"  # catalog.estimate: 4 steps × 0.16 s measured
    _check_export_stages(events)
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4]
    assert all(e["total"] == 4 and e["loss"] > 0 for e in events if e["event"] == "progress")
    exported = events[-2]["files"]
    assert exported["mesh"].endswith("mesh.glb") and all(Path(p).is_file() for p in exported.values())
    assert (server.jobs_dir / job / "job.json").is_file() and (server.jobs_dir / job / "job.log").is_file()

    reply = client.ask({"type": "export", "job": job, "resolution": 32, "texture_size": 64, "format": "obj"})
    assert reply["event"] == "queued"
    events = client.events(job)
    assert [e["event"] for e in events if e["event"] != "export_stage"] == ["started", "exported", "done"]
    assert events[0]["kind"] == "export" and events[0]["steps"] is None and events[0]["estimate"] is None
    _check_export_stages(events)
    assert Path(events[-2]["files"]["mesh"]).suffix == ".obj"
    listed = {j["job"]: j for j in client.ask({"type": "list_jobs"})["jobs"]}
    assert listed[job]["status"] == "done" and listed[job]["step"] == 4 and listed[job]["prompt"] == "a red apple"
    client.close()


@pytest.mark.e2e
def test_cancel_stops_within_one_step_with_a_valid_checkpoint(server: Server):
    import torch

    client = server.client()
    job = client.ask({"type": "generate", "prompt": "a pear", **SMALL, "steps": 500})["job"]
    while (event := client.recv())["event"] != "progress":
        pass
    reply = client.ask({"type": "cancel", "job": job})
    asked_at = max([event["step"]] + [e["step"] for e in client.backlog if e["event"] == "progress"])
    assert reply["event"] == "ok"
    events = client.events(job)
    assert events[-1]["event"] == "cancelled" and events[-1]["step"] <= asked_at + 1
    state = json.loads((server.jobs_dir / job / "state.json").read_text())
    assert state["status"] == "cancelled" and state["step"] == events[-1]["step"]
    checkpoint = torch.load(server.jobs_dir / job / "checkpoints/last.pt", weights_only=False)
    assert checkpoint["step"] == events[-1]["step"]
    assert json.loads((server.jobs_dir / job / "job.json").read_text())["status"] == "cancelled"
    assert client.ask({"type": "cancel", "job": job})["code"] == "conflict"
    assert client.ask({"type": "delete_job", "job": job})["event"] == "ok"
    assert not (server.jobs_dir / job).exists()
    client.close()


@pytest.mark.e2e
def test_status_stays_responsive_while_another_client_generates(server: Server):
    worker, watcher = server.client(), server.client()
    job = worker.ask({"type": "generate", "prompt": "a plum", **SMALL, "steps": 6})["job"]
    done = threading.Event()
    replies: list[dict[str, Any]] = []

    def poll() -> None:
        while not done.is_set():
            replies.append(watcher.ask({"type": "status"}))
            time.sleep(0.1)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        assert worker.events(job)[-1]["event"] == "done"
    finally:
        done.set()
        thread.join()
    # Answered while the job ran: the status replies saw it running (how fast is bench/'s business).
    assert all(r["event"] == "status" for r in replies) and job in [r["running"] for r in replies]
    status = watcher.ask({"type": "status"})
    assert status["model"] == "tiny" and status["memory"]["rss"] > 0 and status["device"] == "cpu"
    worker.close()
    watcher.close()


def _hostile() -> list[tuple[bytes, str]]:
    """Malformed or hostile lines with the error code each must get."""

    def msg(**fields: Any) -> bytes:
        return json.dumps({"id": 7, **fields}).encode()

    def gen(**fields: Any) -> bytes:
        return msg(**{"type": "generate", "prompt": "x", **fields})

    return [
        (b"not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'"text"', "bad_request"),
        (b"{", "bad_request"),
        (b"\xff\xfe{}", "bad_request"),
        (b"[" * 100_000, "bad_request"),
        (b"", "bad_request"),
        (msg(type="nope"), "unknown_type"),
        (msg(type="x" * 100_000), "unknown_type"),
        (msg(), "bad_request"),
        (msg(type=5), "bad_request"),
        (b'{"type": "status"}', "bad_request"),
        (b'{"type": "status", "id": true}', "bad_request"),
        (msg(type="status", id="i" * 500), "bad_request"),
        (msg(type="status", extra=1), "bad_request"),
        (msg(type="generate", steps=4), "bad_request"),
        (gen(prompt="x" * 5000), "bad_request"),
        (gen(steps=-1), "bad_request"),
        (gen(steps=10**30), "bad_request"),
        (gen(steps="4"), "bad_request"),
        (gen(steps=4.5), "bad_request"),
        (gen(perp_neg=1), "bad_request"),
        (b'{"type": "generate", "id": 7, "prompt": "x", "guidance_scale": NaN}', "bad_request"),
        (b'{"type": "generate", "id": 7, "prompt": "x", "guidance_scale": -Infinity}', "bad_request"),
        (gen(resolution=12), "bad_request"),
        (gen(preset="ultra"), "bad_request"),
        (gen(method="magic"), "bad_request"),
        (gen(model="/no/such/model"), "bad_request"),
        (gen(prompt="   "), "bad_request"),
        (gen(export={"texture_size": 100}), "bad_request"),
        (gen(export={"colour": 1}), "bad_request"),
        (gen(export=[1]), "bad_request"),
        (msg(type="cancel", job="../../etc"), "not_found"),
        (msg(type="export", job="nope"), "not_found"),
        (msg(type="continue", job="nope", steps=0), "bad_request"),
        (msg(type="subscribe", job=3), "bad_request"),
        (msg(type="continue", job="nope", steps=3), "not_found"),
        (msg(type="delete_job", job=""), "not_found"),
        (msg(type="hello", token="t", protocol=1), "bad_request"),
    ]


@pytest.mark.e2e
def test_a_thousand_hostile_messages_leave_the_server_serving(server: Server):
    submitter, client, attacker = server.client(), server.client(), server.client()
    job = submitter.ask({"type": "generate", "prompt": "a fig", **SMALL})["job"]
    submitter.close()  # a client that goes away must not affect its job
    subscribed = client.ask({"type": "subscribe", "job": job})
    assert subscribed["event"] == "ok" and subscribed["job"] == job
    cases = _hostile()
    for i in range(998):
        line, code = cases[i % len(cases)]
        attacker.send_raw(line + b"\n")
        reply = attacker.recv()
        assert reply["event"] == "error" and reply["code"] == code, (line[:80], reply)
    for _ in range(2):  # too long for one message: answered, then that connection is closed
        big = server.client()
        big.send_raw(b"a" * (MAX_MESSAGE_BYTES + 1))
        assert big.recv()["code"] == "too_large" and big.recv() is None
        big.close()
    assert attacker.ask({"type": "status"})["event"] == "status"
    if subscribed["status"] != "done":
        assert client.events(job)[-1]["event"] == "done"
    assert {j["job"]: j["status"] for j in attacker.ask({"type": "list_jobs"})["jobs"]}[job] == "done"
    client.close()
    attacker.close()


@pytest.mark.e2e
def test_kill_restart_continue(tmp_path: Path):
    jobs = tmp_path / "jobs"
    first = Server(jobs)
    try:
        client = first.client()
        job = client.ask(
            {"type": "generate", "prompt": "a kiwi", **SMALL, "steps": 8, "checkpoint_every": 2, "preview_every": 100}
        )["job"]
        while (event := client.recv())["event"] != "progress" or event["step"] < 3:
            pass  # the step-2 checkpoint is on disk
        os.kill(first.proc.pid, signal.SIGKILL)
    finally:
        first.stop()
    second = Server(jobs)
    try:
        client = second.client()
        listed = {j["job"]: j for j in client.ask({"type": "list_jobs"})["jobs"]}[job]
        assert listed["status"] == "interrupted" and listed["step"] >= 2 and listed["total"] == 8
        reply = client.ask({"type": "continue", "job": job, "steps": 8 - listed["step"]})
        assert reply["event"] == "queued"
        events = client.events(job)
        assert events[-1] == {"event": "done", "job": job, "step": 8}
        kinds = [e["event"] for e in events]
        assert kinds[:2] == ["started", "loading"]  # a fresh server loads the model first
        first_step = next(e for e in events if e["event"] == "progress")
        assert first_step["step"] == listed["step"] + 1
        assert json.loads((jobs / job / "state.json").read_text())["status"] == "done"
    finally:
        second.stop()


@pytest.mark.e2e
def test_shutdown_cancels_the_running_job_and_exits(tmp_path: Path):
    server = Server(tmp_path / "jobs")  # its own: the shared one must stay up
    try:
        client = server.client()
        job = client.ask({"type": "generate", "prompt": "a lime", **SMALL, "steps": 500})["job"]
        while client.recv()["event"] != "progress":
            pass
        assert client.ask({"type": "shutdown"})["event"] == "ok"
        assert client.events(job)[-1]["event"] == "cancelled"
        assert client.recv() is None
        assert server.proc.wait(timeout=120) == 0
        assert not (server.jobs_dir / "server.token").exists()
        assert (server.jobs_dir / job / "checkpoints/last.pt").is_file()
    finally:
        server.stop()


def test_job_faults_in_process(tmp_path: Path):
    """Out of memory, a bug and a missing model each fail only their job; the queue goes on."""
    import gc
    import weakref
    from types import SimpleNamespace

    import torch

    from sdi_blender.errors import ModelUnavailable
    from sdi_blender.server.service.jobs import JobManager
    from sdi_blender.server.training.trainer import RunResult

    events: dict[str, list[dict]] = {}
    finished = threading.Semaphore(0)
    gate = threading.Event()
    outcomes = iter(
        [(torch.cuda.OutOfMemoryError, "CUDA out of memory. Tried to allocate 20 GiB"), (ValueError, "boom"), None]
    )
    trainers: list[weakref.ref] = []
    loads: list[str] = []

    def emit(job: str, event: dict) -> None:
        events.setdefault(job, []).append(event)
        if event["event"] in TERMINAL:
            finished.release()

    def load_prior(model: str, device: torch.device) -> SimpleNamespace:
        loads.append(model)
        if model != "tiny":
            raise ModelUnavailable(f"model '{model}' is not available")
        return SimpleNamespace(model_id=model, device=device)

    class FakeTrainer:
        def __init__(self, config, run, *, prior, callbacks, resume) -> None:
            self.steps, self.outcome, self.memory = config.steps, next(outcomes), bytearray(1 << 20)
            trainers.append(weakref.ref(self))

        def run(self, cancel) -> RunResult:
            gate.wait(30)
            if self.outcome is not None:
                kind, message = self.outcome
                raise kind(message)
            return RunResult("done", self.steps)

    manager = JobManager(
        tmp_path, emit, device=torch.device("cpu"), model="tiny", trainer_factory=FakeTrainer, prior_factory=load_prior
    )
    ids = [
        manager.submit("generate", {"prompt": p, "preset": "test", **extra})[0]
        for p, extra in [("oom", {}), ("bug", {}), ("gone", {"model": "other/model"}), ("ok", {}), ("never", {})]
    ]
    assert manager.cancel(ids[4]) == "cancelled"  # a queued job is removed at once
    gate.set()
    for _ in ids:
        assert finished.acquire(timeout=30)
    manager.shutdown()
    last = {job: events[job][-1] for job in ids}
    assert last[ids[0]]["code"] == "out_of_memory" and "resolution" in last[ids[0]]["hint"]
    assert last[ids[1]]["code"] == "internal" and "boom" in last[ids[1]]["message"]
    assert last[ids[2]]["code"] == "model_unavailable"
    assert last[ids[3]]["event"] == "done" and last[ids[4]]["event"] == "cancelled"
    statuses = {j["job"]: j["status"] for j in manager.list()}
    assert [statuses[j] for j in ids] == ["failed", "failed", "failed", "done", "cancelled"]
    saved = json.loads((tmp_path / ids[0] / "job.json").read_text())
    assert saved["status"] == "failed" and saved["error"]["code"] == "out_of_memory"
    assert "Traceback" in (tmp_path / ids[1] / "job.log").read_text()
    gc.collect()
    assert trainers[0]() is None  # the out-of-memory job's trainer was released
    assert loads == ["tiny", "other/model", "tiny"]  # kept between jobs, dropped for another model
