"""A job's model loading as its events show it: downloads by file and byte, Cancel during a
download, and a job that may not download (Blender's Online Access off). The hub is faked: no
test downloads anything."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.file_download import DryRunFileInfo

from sdi_blender.server.diffusion import hub
from sdi_blender.server.service.events import Throttle
from sdi_blender.server.service.jobs import JobManager

MODEL = "sdi-test/not-a-real-model"
FILES = [("model_index.json", False), ("unet/diffusion_pytorch_model.safetensors", True), ("vae/x.safetensors", True)]


class FakeHub:
    """snapshot_download and hf_hub_download as huggingface_hub calls them, without a network:
    each missing file arrives in ten chunks through the tqdm class it is given."""

    def __init__(self, cached: bool = True) -> None:
        self.cached, self.calls, self.folder = cached, [], ""

    def snapshot_download(self, repo: str, **kw: Any) -> Any:
        self.calls.append(("snapshot_download", kw))
        if kw.get("dry_run"):
            return [DryRunFileInfo("abc123", 100, name, "", not missing, missing) for name, missing in FILES]
        if kw.get("local_files_only") and not self.cached:
            raise LocalEntryNotFoundError("not in the cache")
        return self.folder

    def hf_hub_download(self, repo: str, filename: str, revision: str, tqdm_class: Any) -> str:
        self.calls.append(("hf_hub_download", filename))
        bar = tqdm_class(total=100, initial=0, desc=filename, unit="B")
        for _ in range(10):
            bar.update(10)
        bar.close()
        return filename


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHub:
    fake = FakeHub()
    fake.folder = str(tmp_path / "snapshot")
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake.snapshot_download)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake.hf_hub_download)
    return fake


def run_job(tmp_path: Path, request: dict, on_event=lambda manager, event: None) -> list[dict]:
    """One generate job on a JobManager whose model loader fetches through the hub; its events."""
    events: list[dict] = []
    ended = threading.Event()
    holder: dict[str, JobManager] = {}

    def emit(job: str, event: dict) -> None:
        events.append(event)
        on_event(holder["manager"], event)
        if event["event"] in ("done", "cancelled", "error"):
            ended.set()

    def prior_factory(model: str, device: Any) -> Any:
        hub.fetch_model(model, model)  # what StableDiffusionPrior does first
        raise AssertionError("the fake hub's model cannot be loaded; the job must end before")

    manager = holder["manager"] = JobManager(
        tmp_path / "jobs", emit, device=torch.device("cpu"), model=MODEL, prior_factory=prior_factory
    )
    try:
        manager.submit("generate", {"prompt": "a red apple", "preset": "test", **request})
        assert ended.wait(60), events
    finally:
        manager.shutdown()
    return events


def test_downloads_are_reported_by_file_and_cancel_stops_them(fake_hub: FakeHub, tmp_path: Path) -> None:
    def cancel_on_second_file(manager: JobManager, event: dict) -> None:
        if event["event"] == "download" and event["file"].startswith("vae/"):
            manager.cancel(event["job"])

    events = run_job(tmp_path, {}, cancel_on_second_file)
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["started", "loading"] and kinds[-1] == "cancelled", kinds
    started = events[0]
    assert (started["device"], started["model"], started["preset"]) == ("cpu", MODEL, "test")
    assert (started["steps"], started["resolution"], started["estimate"]) == (30, 64, "hours")
    assert started["run"] == str(tmp_path / "jobs" / started["job"])
    downloads = [(e["file"], e["done"], e["total"]) for e in events if e["event"] == "download"]
    # Each file's first chunk and its end get through the throttle; the cached file is not fetched.
    assert downloads[0] == ("unet/diffusion_pytorch_model.safetensors", 10, 100)
    assert downloads[-2:] == [("unet/diffusion_pytorch_model.safetensors", 100, 100), ("vae/x.safetensors", 10, 100)]
    fetched = [c[1] for c in fake_hub.calls if c[0] == "hf_hub_download"]
    assert fetched == ["unet/diffusion_pytorch_model.safetensors", "vae/x.safetensors"]
    # Cancelled mid-file: the snapshot was never asked for, and no run folder was started.
    assert not any(c[0] == "snapshot_download" and c[1].get("local_files_only") for c in fake_hub.calls)
    assert not (tmp_path / "jobs" / started["job"] / "state.json").exists()


def test_a_job_that_may_not_download_uses_the_cache_only(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.cached = False
    events = run_job(tmp_path, {"allow_downloads": False})
    error = events[-1]
    assert error["event"] == "error" and (error["code"], error["reason"]) == ("model_unavailable", "offline")
    assert "downloads are not allowed" in error["message"] and MODEL in error["message"]
    assert fake_hub.calls == [("snapshot_download", {"allow_patterns": hub.MODEL_FILES, "local_files_only": True})]
    assert not any(e["event"] == "download" for e in events)


def test_the_throttle_lets_through_new_keys_ends_and_one_report_per_interval() -> None:
    now = [0.0]
    throttle = Throttle(every_s=1.0, clock=lambda: now[0])
    assert throttle.ready("a") and not throttle.ready("a")
    now[0] = 0.5
    assert not throttle.ready("a") and throttle.ready("a", final=True) and throttle.ready("b")
    now[0] = 1.6
    assert throttle.ready("b") and not throttle.ready("b")


def test_status_memory_reports_the_free_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdi_blender.server.service.server import memory_info

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (5 * 2**30, 24 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 2 * 2**30)
    memory = memory_info(torch.device("cuda"))
    assert memory == {"kind": "cuda", "allocated": 2**30, "reserved": 2 * 2**30, "free": 5 * 2**30, "total": 24 * 2**30}
    assert "free" not in memory_info(torch.device("cpu"))  # off a GPU: nothing to suggest a preset by
