"""The Blender add-on, headless (bpy 5.0 from PyPI), installed from the built zip.

Each scenario in tests/addon_scenarios.py runs once, in its own bpy process (bpy is one
global Blender per process), against a real server with the tiny model on CPU. A
session-scoped fixture runs a scenario and keeps what it recorded; each test below checks
one behaviour of it, so the tests fail independently while Blender starts once per scenario.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("bpy")  # only to skip where bpy is absent; the scenarios import it themselves

# Whole processes: Blender, the server, training and export.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("blender")]  # one worker: see pyproject.toml

REPO = Path(__file__).resolve().parents[1]
from scenario_runner import run_scenario  # noqa: E402


def _assert_panels_drew(drawn: dict, *expected: str) -> None:
    assert {"SDI_PT_main", "SDI_PT_advanced", "SDI_PT_history"} <= set(drawn)
    flat = [call for calls in drawn.values() for call in calls]
    for needle in expected:
        assert any(needle in str(call) for call in flat), (needle, drawn)


# --- generate → continue → re-export → import → render → disable ------------------------


@pytest.fixture(scope="session")
def refine(addon_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The generate_refine scenario, run once; each of its steps is recorded on its own."""
    return run_scenario("generate_refine", addon_zip, tmp_path_factory.mktemp("refine"))


def _step(r: dict, name: str) -> dict:
    """The scenario's result, once it is clear that step ``name`` ran without raising."""
    assert name not in r["failed"], f"step '{name}' raised:\n{r['failed'][name]}"
    return r


def _generated(r: dict) -> dict:
    """The object the scenario's generate imported."""
    assert _step(r, "generate")["generate"] == "FINISHED", r["generate"]
    return r["generated"]


def _continued(r: dict) -> dict:
    """The object after the scenario's continue."""
    assert _step(r, "continue")["continue"] == "FINISHED", r["continue"]
    return r["continued"]


def test_the_zip_registers_every_class(refine: dict) -> None:
    # Installed from the zip through Blender's extension API.
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
    } <= set(_step(refine, "registration")["registered"])


def test_the_zip_registers_every_operator(refine: dict) -> None:
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
    } <= set(_step(refine, "registration")["operators"])


def test_panels_draw_with_the_server_stopped(refine: dict) -> None:
    drawn = _step(refine, "panels_stopped")["panels_stopped"]
    _assert_panels_drew(drawn, "sdi.generate", "Server: stopped", "sdi.server_start")


def test_generate_imports_one_selected_active_mesh_named_after_the_prompt(refine: dict) -> None:
    obj = _generated(refine)
    assert obj["name"] == obj["mesh_name"] == "a red apple" and obj["type"] == "MESH"
    assert obj["selected"] and obj["active"] and obj["job"]


def test_generated_object_sits_at_the_3d_cursor(refine: dict) -> None:
    assert _generated(refine)["location"] == [0.5, -0.25, 0.0]


def test_generated_mesh_is_smooth_uv_mapped_and_textured_by_a_packed_image(refine: dict) -> None:
    obj = _generated(refine)
    assert obj["uv_layers"] == 1 and obj["smooth"] and obj["vertices"] > 100
    assert obj["base_color_from"] == ["TEX_IMAGE"] and obj["image_packed"] and obj["image_size"] == [256, 256]


def test_generated_mesh_fills_the_centred_unit_box(refine: dict) -> None:
    lo, hi = _generated(refine)["bbox"]  # the field's unit box, in metres, centred (Z up needs no turning)
    assert all(-0.6 < v < 0 for v in lo) and all(0 < v < 0.6 for v in hi)


def test_panels_draw_with_the_server_ready(refine: dict) -> None:
    drawn = _step(refine, "panels_ready")["panels_ready"]
    _assert_panels_drew(drawn, "Server: ready", "sdi.continue_job", "sdi.reexport")


def test_continue_gives_the_same_object_a_new_mesh(refine: dict) -> None:
    obj, cont = _generated(refine), _continued(refine)
    assert cont["name"] == "a red apple" and cont["job"] == obj["job"]
    assert cont["vertices"] != obj["vertices"] and cont["selected"] and cont["active"]
    before, after = refine["meshes_before_after"]
    assert before == after  # the old mesh is gone


def test_continue_keeps_the_transform_and_modifiers(refine: dict) -> None:
    cont = _continued(refine)
    assert cont["location"] == [1.0, 2.0, 3.0] and cont["modifiers"] == ["Subdivision"]


def test_reexport_replaces_the_texture_and_keeps_the_object(refine: dict) -> None:
    r = _step(refine, "reexport")
    assert r["reexport"] == "FINISHED", r["reexport"]
    again = r["reexported"]
    assert again["image_size"] == [512, 512] and again["image_packed"]
    assert again["location"] == [1.0, 2.0, 3.0] and again["modifiers"] == ["Subdivision"]


def test_refresh_lists_the_job_as_done(refine: dict) -> None:
    job = _generated(refine)["job"]
    r = _step(refine, "refresh")
    assert r["refresh"] == "FINISHED" and r["history"] == [[job, "done"]]


def test_import_job_adds_a_copy_at_the_3d_cursor(refine: dict) -> None:
    job = _generated(refine)["job"]
    r = _step(refine, "import_job")
    assert r["import_job"] == "FINISHED", r["import_job"]
    copy = r["reimported"]
    assert copy["name"] == "a red apple.001" and copy["job"] == job and copy["location"] == [0.5, -0.25, 0.0]


def test_history_panel_and_list_draw_the_job(refine: dict) -> None:
    r = _step(refine, "panels_history")
    _assert_panels_drew(r["panels_history"], "sdi.import_job")
    assert ["label", "a red apple"] in r["list_rows"]


def test_the_imported_object_renders(refine: dict) -> None:
    assert Path(_step(refine, "render")["render"]).stat().st_size > 1000


def test_disabling_the_addon_stops_its_server(refine: dict) -> None:
    assert _step(refine, "disable")["server_exit"] is not None


# --- cancel ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cancelled(addon_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_scenario("cancel", addon_zip, tmp_path_factory.mktemp("cancel"))


def test_an_interactive_generate_shows_its_progress(cancelled: dict) -> None:
    r = cancelled
    assert r["reply"] == "FINISHED" and r["progressed"] and r["state_busy"] == "busy"
    _assert_panels_drew(r["panels_busy"], "progress", "/ 500", "sdi.cancel", "Server: busy")
    _assert_panels_drew(r["panels_busy"], "on cpu, 500 steps at 64²")  # the server's start line


def test_the_preview_arrives_and_loads(cancelled: dict) -> None:
    # Headless Blender has no icons, so the preview cannot be drawn here.
    step, size = cancelled["preview"]
    assert step == 10 and size[0] > 0


def test_cancel_ends_the_job_and_leaves_the_scene_unchanged(cancelled: dict) -> None:
    r = cancelled
    assert r["cancel"] == "FINISHED" and r["ended"]
    assert r["after"] == r["before"] and r["state"] == "ready"
    assert "cancelled" in r["stdout"]
    _assert_panels_drew(r["panels_after"], "sdi.generate")


def test_quitting_blender_stops_its_server(cancelled: dict) -> None:
    assert _gone(cancelled["server_pid"])  # Blender quit (the process ended): its server went with it


def _gone(pid: int, timeout: float = 60.0) -> bool:
    """Whether the process ended, waiting up to ``timeout`` (only so that a leak cannot hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


# --- the server killed mid-job -------------------------------------------------------------


@pytest.fixture(scope="session")
def killed(addon_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_scenario("server_killed", addon_zip, tmp_path_factory.mktemp("killed"))


def test_a_killed_server_is_one_error_report_naming_its_log(killed: dict) -> None:
    assert killed["progressed"] and killed["ended"]
    ((level, message),) = killed["reports"]
    assert level == "ERROR" and "server stopped unexpectedly" in message and "server.stderr" in message


def test_a_killed_server_leaves_the_scene_unchanged(killed: dict) -> None:
    assert killed["ended"] and killed["after"] == killed["before"]


def test_a_killed_server_shows_the_error_state(killed: dict) -> None:
    assert killed["state"] == "error"
    _assert_panels_drew(killed["panels_error"], "Server: error", "sdi.server_start", "sdi.generate")


# --- bad set-ups ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def errors(addon_zip: Path, tmp_path_factory: pytest.TempPathFactory, server) -> dict:
    """The errors scenario; the session's shared server (tests/conftest.py) is the remote one."""
    work = tmp_path_factory.mktemp("errors")
    foreign = work / "foreign-python"  # a Python that cannot import the server
    foreign.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    foreign.chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    r = run_scenario(
        "errors",
        addon_zip,
        work,
        SDI_FOREIGN_PYTHON=str(foreign),
        SDI_FREE_PORT=str(free_port),
        SDI_REMOTE=f"{server.host}:{server.port}:{server.token}",
    )
    r["free_port"] = free_port
    return r


BAD_SETUPS = {
    "no_python": "no server Python is set",
    "missing_python": "is not an executable file",
    "foreign_python": "No module named",
    "empty_prompt": "write a prompt first",
    "bad_preset": "unknown preset 'ultra'",
    "bad_model": "no/such-model",  # a hub id not in the cache: with Online Access off, not downloaded
    "unreachable": "cannot reach the server at 127.0.0.1:{free_port}",
    "wrong_token": "token",
}


@pytest.mark.parametrize("case", BAD_SETUPS)
def test_a_bad_setup_is_an_error_report(errors: dict, case: str) -> None:
    needle = BAD_SETUPS[case].format(free_port=errors["free_port"])
    assert errors[case].startswith("error: Error: SDI:") and needle in errors[case], errors[case]


def test_no_python_says_where_to_set_it(errors: dict) -> None:
    assert "Preferences" in errors["no_python"]


def test_a_model_that_is_not_local_says_how_to_allow_online_access(errors: dict) -> None:
    # Headless Blender has Online Access off: the job asks for local files only.
    assert (
        "downloads are not allowed" in errors["bad_model"] and "Preferences ▸ System ▸ Network" in errors["bad_model"]
    )
    assert "--model" not in errors["bad_model"]  # Blender's words, not the command line's


def test_check_python_finishes(errors: dict) -> None:
    assert errors["check_python"] == "FINISHED"


def test_a_job_without_the_servers_mesh_key_imports_nothing(errors: dict) -> None:
    assert errors["apply_without_mesh"] == ["ERROR", "SDI: the job ended without a mesh"]


def test_bad_setups_leave_the_scene_unchanged(errors: dict) -> None:
    assert errors["after"] == errors["before"]


def test_the_error_state_draws_in_the_panels_and_preferences(errors: dict) -> None:
    _assert_panels_drew(errors["panels_error"], "Server: error")
    assert ("operator", "sdi.check_python") in [tuple(c) for c in errors["prefs_drawn"]]


# --- the panel in each state, without a server -----------------------------------------------


@pytest.fixture(scope="session")
def panel(addon_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_scenario("panel", addon_zip, tmp_path_factory.mktemp("panel"))


def _calls(r: dict, name: str) -> list:
    """Every draw call of the scenario's step ``name`` (its panels), once it ran without raising."""
    drawn = _step(r, name)[f"panels_{name}"]
    return [tuple(call) for calls in drawn.values() for call in calls]


def test_the_idle_panel_is_labelled_and_has_a_random_seed(panel: dict) -> None:
    calls = [tuple(c) for calls in panel["panels_idle"].values() for c in calls]
    assert {("label", "Prompt"), ("label", "Negative Prompt"), ("operator", "sdi.random_seed")} <= set(calls)
    assert {("label", "Optimisation"), ("label", "Mesh"), ("operator", "sdi.server_start")} <= set(calls)
    outcome, seed = _step(panel, "seed")["random_seed"]
    assert outcome == "FINISHED" and seed != 0


def test_the_running_job_shows_its_start_line(panel: dict) -> None:
    assert ("label", "about 7 min on cpu, 500 steps at 64²") in _calls(panel, "loading")


@pytest.mark.parametrize(
    "state, call",
    [
        ("loading", ("label", "Loading the model sdi-test/model…")),
        ("download", ("progress", "Downloading unet/w.safetensors: 500 / 1,000 MB")),
        ("export", ("progress", "Exporting: sample")),
    ],
)
def test_each_phase_of_a_job_has_its_status_line(panel: dict, state: str, call: tuple) -> None:
    calls = _calls(panel, state)
    assert call in calls and ("operator", "sdi.cancel") in calls
    assert not any(kind == "progress" and text.startswith("Step") for kind, text in calls)  # not "Step 500 / 500"


def test_a_download_without_data_shows_as_stalled(panel: dict) -> None:
    texts = [text for kind, text in _calls(panel, "stalled") if kind == "progress"]
    assert any(t.startswith("Download stalled: no data for 9") for t in texts), texts  # 60 s + 30 s


def test_cancel_works_while_downloading(panel: dict) -> None:
    assert _step(panel, "cancel_downloading")["cancel_downloading"] == ["FINISHED", True]


def test_the_last_error_stays_in_a_wrapped_box_until_dismissed(panel: dict) -> None:
    calls = _calls(panel, "error_box")
    assert ("operator", "sdi.dismiss_error") in calls
    lines = [text for kind, text in calls if kind == "label" and ("machine" in text or "Online" in text)]
    assert len(lines) >= 4 and all(len(line) <= 40 for line in lines)  # 40: headless has no region width
    assert panel["dismiss"] == "FINISHED"
    assert ("operator", "sdi.dismiss_error") not in _calls(panel, "dismissed")


def test_too_little_gpu_memory_suggests_a_preset_that_fits(panel: dict) -> None:
    calls = _calls(panel, "preset_advice")
    assert any(kind == "label" and text.endswith("20.0 GB free: try Draft") for kind, text in calls), calls
    assert ("operator", "sdi.use_preset") in calls and panel["use_preset"] == ["FINISHED", "draft"]


def test_the_model_is_a_menu_and_old_free_text_is_migrated(panel: dict) -> None:
    from sdi_blender import catalog

    r = _step(panel, "model_menu")
    assert r["model_items"] == [*catalog.MODELS, "LOCAL"] and r["device_items"] == list(catalog.DEVICES)
    assert r["preset_items"] == {name: p.label for name, p in catalog.PRESETS.items()}
    folder = next(k for k in r["migrated"] if k.startswith("/"))
    assert r["migrated"]["toyworld"] == ["toyworld", "toyworld", "", ""]
    assert r["migrated"][folder] == [folder, "LOCAL", folder, ""]
    assert r["migrated"]["some-org/some-model"][:2] == ["some-org/some-model", "LOCAL"]
    drawn = [name for kind, name in r["prefs_drawn"] if kind == "prop"]
    assert {"model_choice", "model_folder", "stall_seconds"} <= set(drawn) and "model" not in drawn


# --- the toy world ---------------------------------------------------------------------------


def test_toy_world_object_arrives_in_blender_the_right_way_round(toy_scenario: dict) -> None:
    """A toy prompt → the server → Blender's own glTF import: the orange box with its blue
    ball toward Blender's front (−Y), scored on the geometry and colours Blender holds."""
    import numpy as np
    import trimesh

    from sdi_blender.server.evaluation.toy_score import blender_mesh_scores
    from sdi_blender.server.toyworld.objects import TOY_OBJECTS

    r = toy_scenario
    assert r["generate"] == "FINISHED", r["generate"]
    assert r["generated"]["name"] == TOY_OBJECTS[0].prompt and r["generated"]["image_packed"]
    mesh = trimesh.Trimesh(np.array(r["mesh"]["vertices"]), np.array(r["mesh"]["faces"]), process=False)
    scores = blender_mesh_scores(mesh, np.array(r["mesh"]["colours"]), TOY_OBJECTS[0])
    assert scores["iou"] >= 0.6, scores
    assert scores["feature_angle_deg"] <= 30.0, scores
    assert max(scores["colour_error"].values()) <= 0.15, scores
    assert Path(r["render"]).stat().st_size > 1000
