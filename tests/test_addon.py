"""The Blender add-on, headless (bpy 5.0 from PyPI), installed from the built zip.

Each scenario in tests/addon_scenarios.py runs in its own bpy process (bpy is one global
Blender per process) against a real server with the tiny model on CPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdi_blender.client import LocalServer

pytest.importorskip("bpy")  # only to skip where bpy is absent; the scenarios import it themselves

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "tests" / "output"  # renders for a person to look at (git-ignored)


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, str(REPO / "vendor_setup.py"), "--build-addon", "--dist", str(dist)],
        check=True,
        capture_output=True,
    )
    (zip_path,) = dist.glob("sdi_blender-*.zip")
    return zip_path


def run_scenario(name: str, addon_zip: Path, work: Path, **env: str) -> dict:
    OUTPUT.mkdir(exist_ok=True)
    environ = dict(
        os.environ,
        BLENDER_USER_RESOURCES=str(work / "blender"),
        SDI_TEST_OUTPUT=str(OUTPUT),
        SDI_SERVER_PYTHON=sys.executable,
        PYTHONPATH=str(REPO / "tests"),
        **env,
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "addon_scenarios.py"), name, str(addon_zip), str(work)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    result["stdout"] = proc.stdout
    return result


def _assert_panels_drew(drawn: dict, *expected: str) -> None:
    assert {"SDI_PT_main", "SDI_PT_advanced", "SDI_PT_history"} <= set(drawn)
    flat = [call for calls in drawn.values() for call in calls]
    for needle in expected:
        assert any(needle in str(call) for call in flat), (needle, drawn)


def test_generate_continue_reexport_import_render(addon_zip: Path, tmp_path: Path) -> None:
    r = run_scenario("generate_refine", addon_zip, tmp_path)
    # Installed from the zip through Blender's extension API, every class registered.
    assert {
        "SDI_PT_main",
        "SDI_PT_advanced",
        "SDI_PT_refine",
        "SDI_PT_history",
        "SDI_UL_jobs",
        "SDI_OT_generate",
        "SDI_OT_cancel",
        "SDI_OT_continue_job",
        "SDI_OT_reexport",
        "SDI_OT_import_job",
        "SDI_OT_server_start",
        "SDI_OT_server_stop",
    } <= set(r["registered"])
    assert {
        "generate",
        "cancel",
        "continue_job",
        "reexport",
        "import_job",
        "import_run",
        "refresh_jobs",
        "server_start",
        "server_stop",
        "check_python",
    } <= set(r["operators"])
    _assert_panels_drew(r["panels_stopped"], "sdi.generate", "Server: stopped", "sdi.server_start")
    assert r["generate"] == "FINISHED"
    obj = r["generated"]
    assert obj["name"] == obj["mesh_name"] == "a red apple" and obj["type"] == "MESH"
    assert obj["location"] == [0.5, -0.25, 0.0]  # at the 3D cursor
    assert obj["selected"] and obj["active"] and obj["job"]
    assert obj["uv_layers"] == 1 and obj["smooth"] and obj["vertices"] > 100
    assert obj["base_color_from"] == ["TEX_IMAGE"] and obj["image_packed"] and obj["image_size"] == [256, 256]
    lo, hi = obj["bbox"]  # the field's unit box, in metres, centred (Z up needs no turning)
    assert all(-0.6 < v < 0 for v in lo) and all(0 < v < 0.6 for v in hi)
    _assert_panels_drew(r["panels_ready"], "Server: ready", "sdi.continue_job", "sdi.reexport")

    assert r["continue"] == "FINISHED"
    cont = r["continued"]  # the same object, a new mesh; transform and modifiers kept
    assert cont["name"] == "a red apple" and cont["job"] == obj["job"]
    assert cont["location"] == [1.0, 2.0, 3.0] and cont["modifiers"] == ["Subdivision"]
    assert cont["vertices"] != obj["vertices"] and cont["selected"] and cont["active"]
    assert r["meshes_before_after"][0] == r["meshes_before_after"][1]  # the old mesh is gone

    assert r["reexport"] == "FINISHED"
    again = r["reexported"]
    assert again["image_size"] == [512, 512] and again["location"] == [1.0, 2.0, 3.0]
    assert again["modifiers"] == ["Subdivision"] and again["image_packed"]

    assert r["refresh"] == "FINISHED" and r["history"] == [[obj["job"], "done"]]
    assert r["import_job"] == "FINISHED"
    assert r["reimported"]["name"] == "a red apple.001" and r["reimported"]["job"] == obj["job"]
    assert r["reimported"]["location"] == [0.5, -0.25, 0.0]
    _assert_panels_drew(r["panels_history"], "sdi.import_job")
    assert ["label", "a red apple"] in r["list_rows"]
    assert Path(r["render"]).stat().st_size > 1000
    assert r["server_exit"] is not None  # disabling the add-on stopped its server


def test_cancel_leaves_the_scene_unchanged(addon_zip: Path, tmp_path: Path) -> None:
    r = run_scenario("cancel", addon_zip, tmp_path)
    assert r["reply"] == "FINISHED" and r["progressed"] and r["state_busy"] == "busy"
    _assert_panels_drew(r["panels_busy"], "progress", "/ 500", "sdi.cancel", "Server: busy")
    # The preview arrived and loaded; headless Blender has no icons, so it cannot be drawn here.
    assert r["preview"][0] == 10 and r["preview"][1][0] > 0
    assert r["cancel"] == "FINISHED" and r["ended"]
    assert r["after"] == r["before"] and r["state"] == "ready"
    assert "cancelled" in r["stdout"]
    _assert_panels_drew(r["panels_after"], "sdi.generate")
    assert _gone(r["server_pid"])  # Blender quit (the process ended): its server went with it


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_server_killed_mid_job_reports_and_leaves_the_scene(addon_zip: Path, tmp_path: Path) -> None:
    r = run_scenario("server_killed", addon_zip, tmp_path)
    assert r["progressed"] and r["ended"]
    assert r["after"] == r["before"]
    ((level, message),) = r["reports"]
    assert level == "ERROR" and "server stopped unexpectedly" in message and "server.stderr" in message
    assert r["state"] == "error"
    _assert_panels_drew(r["panels_error"], "Server: error", "sdi.server_start", "sdi.generate")


@pytest.fixture
def remote_server(tmp_path: Path):
    server = LocalServer(tmp_path / "remote-jobs", model="tiny", device="cpu")
    yield server
    server.stop()


def test_errors_are_reports_and_leave_the_scene(addon_zip: Path, tmp_path: Path, remote_server) -> None:
    foreign = tmp_path / "foreign-python"  # a Python that cannot import the server
    foreign.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    foreign.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    r = run_scenario(
        "errors",
        addon_zip,
        tmp_path,
        SDI_FOREIGN_PYTHON=str(foreign),
        SDI_FREE_PORT=str(free_port),
        SDI_REMOTE=f"{remote_server.host}:{remote_server.port}:{remote_server.token}",
    )
    expect = {
        "no_python": "no server Python is set",
        "missing_python": "is not an executable file",
        "foreign_python": "No module named",
        "empty_prompt": "write a prompt first",
        "bad_preset": "unknown preset 'ultra'",
        "bad_model": "no/such-model",
        "unreachable": f"cannot reach the server at 127.0.0.1:{free_port}",
        "wrong_token": "token",
    }
    for case, needle in expect.items():
        assert r[case].startswith("error: Error: SDI:") and needle in r[case], (case, r[case])
    assert "Preferences" in r["no_python"]  # the hint says where to set it
    assert r["check_python"] == "FINISHED"
    assert r["after"] == r["before"]
    _assert_panels_drew(r["panels_error"], "Server: error")
    assert ("operator", "sdi.check_python") in [tuple(c) for c in r["prefs_drawn"]]


@pytest.mark.e2e
def test_toy_world_object_arrives_in_blender_the_right_way_round(addon_zip: Path, tmp_path: Path) -> None:
    """A toy prompt → the server → Blender's own glTF import: the orange box with its blue
    ball toward Blender's front (−Y), scored on the geometry and colours Blender holds."""
    import numpy as np
    import trimesh

    from sdi_blender.server.evaluation.toy_score import blender_mesh_scores
    from sdi_blender.server.toyworld.objects import TOY_OBJECTS

    r = run_scenario("toy_object", addon_zip, tmp_path)
    assert r["generate"] == "FINISHED", r["generate"]
    assert r["generated"]["name"] == TOY_OBJECTS[0].prompt and r["generated"]["image_packed"]
    mesh = trimesh.Trimesh(np.array(r["mesh"]["vertices"]), np.array(r["mesh"]["faces"]), process=False)
    scores = blender_mesh_scores(mesh, np.array(r["mesh"]["colours"]), TOY_OBJECTS[0])
    assert scores["iou"] >= 0.6, scores
    assert scores["feature_angle_deg"] <= 30.0, scores
    assert max(scores["colour_error"].values()) <= 0.15, scores
    assert Path(r["render"]).stat().st_size > 1000
