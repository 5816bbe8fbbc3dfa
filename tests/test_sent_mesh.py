"""Meshes that requests carry (``mesh_data``, ``init_mesh_data``), so that the server may be on
another machine: stored in the job's own folder, refused with their code when they do not unpack,
and a texture job that runs from them to the end on a real server."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from pathlib import Path

import pytest
import trimesh
from fake_jobs import fake_manager
from server_harness import Server

from sdi_blender.errors import UserError
from sdi_blender.protocol import ProtocolError, mesh_data
from sdi_blender.server.service.jobs import JobManager
from sdi_blender.server.service.sent_mesh import SENT_MESH


def _box_obj() -> bytes:
    """A closed box without UVs, as OBJ text (what the add-on sends for a blockout)."""
    return trimesh.creation.box(extents=(1.0, 0.6, 0.8)).export(file_type="obj").encode()


def _manager(jobs: Path, configs: list | None = None, ended: threading.Semaphore | None = None, **kw) -> JobManager:
    def emit(job: str, event: dict) -> None:
        if ended is not None and event["event"] in ("done", "cancelled", "error"):
            ended.release()

    return fake_manager(jobs, emit, configs=configs, **kw)


def test_a_sent_blockout_is_kept_in_its_job_folder_and_job_json_names_it(tmp_path: Path) -> None:
    configs: list = []
    ended = threading.Semaphore(0)
    manager = _manager(tmp_path / "jobs", configs, ended)
    raw = _box_obj()
    job, _ = manager.submit("generate", {"prompt": "a box", "preset": "test", "init_mesh_data": mesh_data(raw, "obj")})
    assert ended.acquire(timeout=60)
    manager.shutdown()
    stored = tmp_path / "jobs" / job / f"{SENT_MESH}.obj"
    assert stored.read_bytes() == raw
    saved = json.loads((tmp_path / "jobs" / job / "job.json").read_text())["request"]
    assert saved["init_mesh"] == str(stored) and "init_mesh_data" not in saved
    (config,) = configs  # what the trainer was given: the stored mesh, placed
    assert config.init_mesh.path == str(stored) and config.init_mesh.scale > 0
    assert "base64" not in (tmp_path / "jobs" / job / "job.log").read_text()


def test_a_sent_mesh_that_is_refused_leaves_no_job_folder(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "jobs")
    bad_base64 = {"format": "obj", "base64": "####"}
    not_a_mesh = mesh_data(b"this is not a mesh\n", "obj")
    bomb = {"format": "obj", "gzip": True, "base64": base64.b64encode(gzip.compress(bytes(65 * 2**20))).decode()}
    codes = []
    for kind, field, value in (
        ("texture", "mesh_data", bad_base64),
        ("generate", "init_mesh_data", bomb),
        ("texture", "mesh_data", not_a_mesh),
        ("generate", "init_mesh_data", not_a_mesh),
    ):
        with pytest.raises((ProtocolError, UserError)) as info:
            manager.submit(kind, {"prompt": "a box", "preset": "test", field: value})
        codes.append(info.value.code)
    manager.shutdown()
    assert codes == ["bad_mesh_data", "mesh_too_large", "bad_request", "bad_request"]
    assert [p.name for p in (tmp_path / "jobs").iterdir() if p.is_dir()] == []
    assert manager.list() == []


def test_a_server_open_to_other_machines_takes_meshes_as_contents_only(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "jobs", model_roots=())
    path = tmp_path / "box.obj"
    path.write_bytes(_box_obj())
    for kind, field in (("texture", "mesh"), ("generate", "init_mesh")):
        with pytest.raises(UserError, match="takes the mesh as '.*_data', not as a path"):
            manager.submit(kind, {"prompt": "a box", "preset": "test", field: str(path)})
    manager.submit("generate", {"prompt": "a box", "preset": "test", "init_mesh_data": mesh_data(_box_obj(), "obj")})
    manager.shutdown()


@pytest.mark.e2e
def test_a_texture_job_runs_from_the_sent_mesh_on_a_real_server(server: Server) -> None:
    client = server.client()
    request = {"type": "texture", "prompt": "a red box", "preset": "test", "resolution": 32, "steps": 2}
    reply = client.ask({**request, "texture_size": 64, "mesh_data": mesh_data(_box_obj(), "obj")})
    assert reply["event"] == "queued", reply
    events = client.events(reply["job"])
    assert events[-1]["event"] == "done", events[-1]
    (exported,) = [e for e in events if e["event"] == "exported"]
    assert Path(exported["files"]["mesh"]).is_file() and Path(exported["files"]["texture"]).is_file()
    job_dir = server.jobs_dir / reply["job"]
    texture = json.loads((job_dir / "texture.json").read_text())
    assert Path(texture["mesh"]) == (job_dir / f"{SENT_MESH}.obj").resolve()
    # What does not unpack is one error event with its code, and the connection goes on.
    bad = client.ask({**request, "mesh_data": {"format": "obj", "gzip": True, "base64": "AAAA"}})
    assert bad["event"] == "error" and bad["code"] == "bad_mesh_data", bad
    assert client.ask({"type": "status"})["event"] == "status"
    client.close()
