"""``serve --ray``: a real server subprocess on a local two-slot Ray (the tiny model, CPU actors):
jobs in parallel, cancel and continue, a lost worker, and the one-line refusals."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import TERMINAL, Server

from sdi_blender.cli import main

pytestmark = pytest.mark.xdist_group("ray")  # one worker: see pyproject.toml

SMALL = {"preset": "test", "resolution": 32, "preview_every": 1000}
LONG = 400
"""Steps of a job that must still run while another one starts and ends (it is cancelled)."""


@pytest.fixture(scope="module")
def ray_address(prior) -> Iterator[str]:
    """One local Ray of two CPU slots for the module, started after the tiny model is built (its
    actors would otherwise build it at once) and after the session's cache is set (they inherit it)."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        object_store_memory=100 * 2**20,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_server(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("ray") / "jobs", ("--ray", ray_address))
    yield server
    server.stop()


class Events:
    """Every message one connection receives, in order: events of several jobs at once interleave."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.all: list[dict[str, Any]] = []
        self._taken: set[int] = set()

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        reply = self.client.ask(message)
        self._drain()
        return reply

    def wait(self, job: str, kinds: tuple[str, ...], min_step: int = 0) -> dict[str, Any]:
        """The first event of ``job`` among ``kinds`` (at ``min_step`` or later) not waited for before."""
        seen = 0
        while True:
            for i in range(seen, len(self.all)):
                e = self.all[i]
                if e.get("job") == job and e["event"] in kinds and e.get("step", 0) >= min_step:
                    if i not in self._taken:
                        self._taken.add(i)
                        return e
            seen = len(self.all)
            message = self.client.recv()
            assert message is not None, "connection closed"
            self.all.append(message)

    def of(self, job: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.all[since:] if e.get("job") == job and "id" not in e]

    def _drain(self) -> None:
        self.all += self.client.backlog  # what came before the reply
        self.client.backlog.clear()


def _kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def _steps(events: list[dict[str, Any]]) -> list[int]:
    return [e["step"] for e in events if e["event"] == "progress"]


@pytest.mark.e2e
def test_jobs_run_in_parallel_cancel_and_continue_with_one_load_per_worker(ray_server: Server):
    client = ray_server.client()
    events = Events(client)
    long_job = events.ask({"type": "generate", "prompt": "a pear", **SMALL, "steps": LONG})["job"]
    short = events.ask({"type": "generate", "prompt": "a red apple", **SMALL, "steps": 3})
    assert short["event"] == "queued" and short["position"] == 1  # the long job runs (or waits) first
    assert events.wait(short["job"], TERMINAL)["event"] == "done"
    # The short job started and ended while the long one ran: their running intervals overlap.
    long_so_far = _kinds(events.of(long_job))
    assert "started" in long_so_far and not set(TERMINAL) & set(long_so_far), long_so_far
    short_events = events.of(short["job"])
    assert _steps(short_events) == [1, 2, 3] and (ray_server.jobs_dir / short["job"] / "state.json").is_file()

    status = events.ask({"type": "status"})
    for _ in range(100):  # a worker's model is recorded when the pool collects its task's result
        if status["model"] is not None:
            break
        time.sleep(0.1)
        status = events.ask({"type": "status"})
    assert status["running"] == long_job and status["model"] == "tiny"
    events.wait(long_job, ("progress",), min_step=2)
    assert events.ask({"type": "cancel", "job": long_job})["result"] == "cancelling"
    asked_at = max(_steps(events.of(long_job)))
    end = events.wait(long_job, TERMINAL)
    assert end["event"] == "cancelled" and end["step"] <= asked_at + 1, end
    state = json.loads((ray_server.jobs_dir / long_job / "state.json").read_text())
    assert (state["status"], state["step"]) == ("cancelled", end["step"])
    long_events = events.of(long_job)

    mark = len(events.all)
    assert events.ask({"type": "continue", "job": long_job, "steps": 2})["event"] == "queued"
    assert events.wait(long_job, TERMINAL)["event"] == "done"
    resumed = events.of(long_job, since=mark)
    assert resumed[0]["event"] == "started" and resumed[0]["steps"] == 2  # from the checkpoint on
    assert _steps(resumed) == [end["step"] + 1, end["step"] + 2]

    started = {e["job"]: e for e in long_events + short_events if e["event"] == "started"}
    assert started[long_job]["worker"] != started[short["job"]]["worker"]  # a worker each
    loads = [e for e in events.all if e["event"] == "loading"]
    assert len(loads) == 2, loads  # once per worker: the continue found its worker's model loaded
    listed = {j["job"]: j for j in events.ask({"type": "list_jobs"})["jobs"]}
    assert listed[long_job]["status"] == "done" and listed[short["job"]]["status"] == "done"
    client.close()


@pytest.mark.e2e
def test_a_lost_worker_interrupts_its_job_and_continue_resumes_it(ray_server: Server):
    import ray

    from sdi_blender.server.service.ray_pool import NAMESPACE

    client = ray_server.client()
    events = Events(client)
    request = {"type": "generate", "prompt": "a mug", **SMALL, "steps": LONG, "checkpoint_every": 2}
    job = events.ask(request)["job"]
    started = events.wait(job, ("started",))
    events.wait(job, ("progress",), min_step=3)  # past a checkpoint
    ray.kill(ray.get_actor(started["worker"], namespace=NAMESPACE), no_restart=False)  # as an OOM kill would
    end = events.wait(job, TERMINAL)
    assert end["event"] == "error" and end["code"] == "interrupted", end
    assert "worker" in end["message"] and "continue" in end["hint"]
    listed = {j["job"]: j for j in events.ask({"type": "list_jobs"})["jobs"]}
    assert listed[job]["status"] == "interrupted"
    checkpoint = json.loads((ray_server.jobs_dir / job / "state.json").read_text())["step"]
    assert checkpoint >= 2

    mark = len(events.all)
    events.ask({"type": "continue", "job": job, "steps": 1})
    assert events.wait(job, TERMINAL)["event"] == "done"
    assert _steps(events.of(job, since=mark)) == [checkpoint + 1]
    client.close()


def test_a_bad_ray_address_is_one_line_before_listening(tmp_path: Path, capsys):
    for address, needle in (("nohost", "is not HOST:PORT"), ("127.0.0.1:1", "cannot connect to the Ray cluster")):
        assert main(["serve", "--ray", address, "--jobs-dir", str(tmp_path / "jobs"), "--device", "cpu"]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert "listening" not in captured.out


def test_serve_ray_without_ray_says_how_to_install_it(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    assert main(["serve", "--ray", "--jobs-dir", str(tmp_path / "jobs"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sdi-blender[ray]" in err[0] and "vendor_setup.py --dev" in err[0], err
