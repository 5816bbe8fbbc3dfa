"""Issue 16's artist workflows in headless Blender, on the toy world (tests/workflow_scenarios.py).

One scenario runs once (one Blender, one server, a few steps per job); each test checks one
behaviour of what it recorded, so they fail independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("bpy")

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("blender")]  # one worker: see pyproject.toml

from scenario_runner import run_scenario  # noqa: E402

PROXY = "SDI proxy"


@pytest.fixture(scope="session")
def wf(addon_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("workflows")
    (work / "tmp").mkdir()  # the add-on's temporary meshes: this scenario's own
    r = run_scenario("workflows", addon_zip, work, script="workflow_scenarios.py", TMPDIR=str(work / "tmp"))
    (work / "result.json").write_text(json.dumps({k: v for k, v in r.items() if k != "stdout"}, default=str))
    return r


def _step(r: dict, name: str) -> dict:
    assert name not in r["failed"], f"step '{name}' raised:\n{r['failed'][name]}"
    return r


def _close(a: list, b: list, tol: float) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# --- Watch it grow, on Generate from Selected ------------------------------------------------


def test_a_training_job_shows_one_proxy_replaced_in_place(wf: dict) -> None:
    r = _step(wf, "grow_from_selected")
    assert r["from_selected"] == "FINISHED", r["from_selected"]
    proxies = r["grow_proxies"]
    assert len(proxies) >= 2, proxies
    for seen in proxies:  # one object, one mesh, in its own collection
        assert seen["objects"] == [PROXY] and seen["meshes"] == [PROXY] and seen["in"] == [PROXY], seen
        assert seen["collections"] == [PROXY] and seen["vertices"] > 8 and seen["colours"] == ["Col"]
    assert len({seen["vertices"] for seen in proxies}) > 1  # a new mesh each time: the field changed


def test_the_proxy_grows_where_the_result_will_be(wf: dict) -> None:
    # Its box in the blockout's frame is the blockout's (the run starts from its inside).
    r = _step(wf, "grow_from_selected")
    (blo, bhi) = r["blockout"]["bbox"]
    for seen in r["grow_proxies"]:
        lo, hi = seen["bbox"]
        assert _close(lo + hi, blo + bhi, 0.15), (lo, hi, blo, bhi)


def test_the_proxy_goes_when_the_result_arrives(wf: dict) -> None:
    after = _step(wf, "grow_from_selected")["grow_after"]
    assert not any(after[k] for k in ("objects", "meshes", "materials", "collections")), after


def test_a_cancelled_job_leaves_no_proxy(wf: dict) -> None:
    r = _step(wf, "cancel_growing")
    assert r["cancel_reply"] == "FINISHED" and r["cancel_proxies"], r["cancel_proxies"]
    assert r["cancel_proxies"][-1]["objects"] == [PROXY]  # it was there when cancelled
    assert r["cancel"] == "FINISHED" and r["cancel_ended"]
    after = r["cancel_after"]
    assert not any(after[k] for k in ("objects", "meshes", "materials", "collections")), after
    assert sum(name.startswith("an orange box") for name in r["cancel_objects"]) == 1  # only the first job's


# --- Stop and Keep ------------------------------------------------------------------------------


def test_stop_and_keep_imports_the_object_as_it_is(wf: dict) -> None:
    r = _step(wf, "stop_and_keep")
    assert r["keep_reply"] == "FINISHED" and r["keep_proxies"] and r["keep_proxies"][-1]["objects"] == [PROXY]
    assert r["keep"] == "FINISHED" and r["keep_ended"]
    ((name, job),) = r["keep_added"]  # one object, the result: no proxy left among them
    assert name.startswith("an orange box") and job == r["keep_run"]["job"]
    mat = r["keep_material"]
    assert mat["base_color_from"] == ["TEX_IMAGE"] and mat["image"][1] and mat["image"][2]  # packed, loaded


def test_stop_and_keep_ends_early_with_a_full_export(wf: dict) -> None:
    run = _step(wf, "stop_and_keep")["keep_run"]
    assert 0 < run["state"]["step"] < run["state"]["total"] == 200, run["state"]
    assert {"mesh.glb", "export.json"} <= set(run["export"]), run["export"]


def test_stop_and_keep_leaves_no_proxy(wf: dict) -> None:
    after = _step(wf, "stop_and_keep")["keep_after"]
    assert not any(after[k] for k in ("objects", "meshes", "materials", "collections")), after


# --- Generate from Selected --------------------------------------------------------------------


def test_generate_from_selected_puts_the_result_on_the_blockouts_transform(wf: dict) -> None:
    r = _step(wf, "grow_from_selected")
    obj = r["from_selected_result"]
    assert obj["job"] and obj["name"].startswith("an orange box")
    assert _close(sum(obj["matrix"], []), sum(obj["blockout_matrix"], []), 1e-5)
    (loc, rot, scale, mode), (bloc, brot, bscale, bmode) = obj["transform"], r["blockout"]["transform"]
    assert mode == bmode and _close(loc + rot + scale, bloc + brot + bscale, 1e-5), (obj["transform"], bmode)


def test_generate_from_selected_fills_the_blockouts_box(wf: dict) -> None:
    # In the blockout's own frame (off its origin by more than a metre, uneven sides): a result
    # left centred, unscaled or turned would miss it by far more than a few grid cells.
    r = _step(wf, "grow_from_selected")
    (lo, hi), (blo, bhi) = r["from_selected_result"]["bbox"], r["blockout"]["bbox"]
    assert _close(lo + hi, blo + bhi, 0.15), (lo, hi, blo, bhi)


# --- Texture Selected --------------------------------------------------------------------------


def test_texture_selected_keeps_the_mesh_transform_and_modifiers(wf: dict) -> None:
    r = _step(wf, "texture_selected")
    assert r["texture"] == "FINISHED", r["texture"]
    before, after = r["texture_before"], r["texture_after"]
    for key in ("vertices", "polygons", "uvs", "active_uv", "transform", "modifiers", "mesh"):
        assert after[key] == before[key], key


def test_texture_selected_bakes_into_the_active_slot_only(wf: dict) -> None:
    r = _step(wf, "texture_selected")
    slots = r["texture_after"]["slots"]
    assert r["texture_before"]["slots"] == ["Kept", "Replaced"]
    assert slots[0] == "Kept" and slots[1] not in ("Kept", "Replaced")
    mat = r["texture_material"]
    assert mat["base_color_from"] == ["TEX_IMAGE"]
    size, packed, has_data = mat["image"]
    assert size == [256, 256] and packed and has_data
    assert mat["uv_map"] == r["texture_before"]["active_uv"]  # the object's own UVs
    assert mat["pixels_vary"]  # a painted image, not one flat colour


def test_texture_selected_on_a_camera_is_one_report_and_no_change(wf: dict) -> None:
    r = _step(wf, "texture_refused")
    assert r["camera"].startswith("error: Error: SDI:") and "camera, not a mesh" in r["camera"], r["camera"]
    assert r["camera"].count("SDI:") == 1 and r["camera_unchanged"]


def test_a_cancelled_texture_leaves_the_object_as_it_was(wf: dict) -> None:
    r = _step(wf, "texture_cancelled")
    assert r["texture_cancel_reply"] == "FINISHED" and r["texture_cancel_progressed"]
    assert r["texture_cancel"] == "FINISHED" and r["texture_cancel_ended"]
    mesh_same, data_same = r["texture_cancel_unchanged"]
    assert mesh_same and data_same  # no UV map, material or image added


def test_jobs_from_the_scene_send_their_meshes_and_leave_no_temporary_file(wf: dict) -> None:
    # The requests carry the meshes (a server on another machine can read them): the server keeps
    # each in its job's folder; generate from selected and the three texture jobs sent one each.
    assert wf["temp_files"] == []
    sent = wf["sent_meshes"]
    assert sorted(sent.values()) == ["sent-mesh.obj"] * 4, sent
    assert wf["from_selected_result"]["job"] in sent


def test_texture_selected_on_a_mesh_without_uvs_keeps_the_uv_map_it_baked_into(wf: dict) -> None:
    r = _step(wf, "texture_without_uvs")
    assert r["no_uv_texture"] == "FINISHED", r["no_uv_texture"]
    before, after, mat = r["no_uv_before"], r["no_uv_after"], r["no_uv_material"]
    assert before["uvs"] == {} and list(after["uvs"]) == ["SDI UV"] and after["active_uv"] == "SDI UV"
    assert mat["uv_map"] == "SDI UV" and r["no_uv_uvs_in_unit_square"]
    assert mat["base_color_from"] == ["TEX_IMAGE"] and mat["image"] == [[256, 256], True, True]
    assert mat["pixels_vary"]


def test_texture_selected_on_a_mesh_without_uvs_changes_nothing_else(wf: dict) -> None:
    r = _step(wf, "texture_without_uvs")
    before, after = r["no_uv_before"], r["no_uv_after"]
    for key in ("vertices", "polygons", "transform", "modifiers", "mesh"):
        assert after[key] == before[key], key
    assert before["slots"] == ["Shell", "Inner"] and after["slots"][1] == "Inner"  # the active slot (0) only
    assert after["slots"][0] == "Unwrapped SDI"
    assert r["no_uv_scene_added"] == {
        "objects": [],
        "meshes": [],
        "materials": ["Unwrapped SDI"],
        "images": ["Unwrapped SDI albedo"],
    }
    assert not any(r["no_uv_scene_removed"].values()) and r["no_uv_others_unchanged"]


# --- Variations, Promote, Keep Only This -------------------------------------------------------


def test_variations_run_one_job_per_seed_with_a_preview_each(wf: dict) -> None:
    r = _step(wf, "variations")
    assert r["variations"] == "FINISHED" and r["variations_waiting"] == 1 and r["variations_ended"], r["variations"]
    rows = r["variation_rows"]
    assert [seed for _, seed, _ in rows] == [3, 4] and all(step == 4 for *_, step in rows)
    assert len({job for job, *_ in rows}) == 2
    assert all(size and size[0] > 0 and size[1] > 0 for size in r["variation_icons"]), r["variation_icons"]
    assert r["variation_objects_added"] == 0  # a turntable to choose by, no object yet
    drawn = [tuple(c) for calls in r["variation_panels"].values() for c in calls]
    assert ("operator", "sdi.promote_variation") in drawn and ("label", "seed 4 · 4 steps") in drawn


def test_promote_continues_the_chosen_variation_only(wf: dict) -> None:
    r = _step(wf, "variations")
    assert r["promote"] == "FINISHED", r["promote"]
    (chosen, _, _), (other, _, _) = r["variation_rows"]
    assert r["variation_rows_promoted"] == [[chosen, 8], [other, 4]]
    assert r["jobs_promoted"] == {chosen: ["done", 8], other: ["done", 4]}
    assert r["promoted_object"][1] == chosen


def test_keep_only_this_deletes_the_other_variation(wf: dict) -> None:
    r = _step(wf, "variations")
    (chosen, _, _), _ = r["variation_rows"]
    assert r["keep_only"] == "FINISHED"
    assert r["variation_rows_kept"] == [chosen] and r["jobs_kept"] == [chosen] and r["job_dirs_kept"] == [chosen]
