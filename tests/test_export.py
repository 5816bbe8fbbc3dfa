"""``export``: a run's field → GLB/OBJ with a baked texture, without touching the run.

``run`` (tests/conftest.py) is each test's own copy of the session's two-step tiny run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh

from sdi_blender.cli import main
from sdi_blender.errors import UserError
from sdi_blender.server.export.pipeline import TO_GLTF, ExportSettings, export_run
from sdi_blender.server.training import run_dir

FAST = ExportSettings(resolution=48, texture_size=128)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_of_a_tiny_run_writes_a_textured_glb(run):
    result = export_run(run, FAST, device="cpu")
    glb = result.files["mesh"]
    assert glb == run / "export" / "mesh.glb"
    info = json.loads((run / "export" / "export.json").read_text())
    assert info["vertices"] > 100 and info["faces"] > 100 and info["texture_size"] == 128
    assert {"threshold", "watertight", "seconds"} <= set(info)
    stages = ("load", "sample", "threshold", "marching_cubes", "unwrap", "rasterize", "bake", "dilate", "write")
    assert set(stages) <= set(info["seconds"]) and info["seconds"]["total"] >= sum(info["seconds"][s] for s in stages)
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.faces) == info["faces"]
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    assert mesh.visual.material.baseColorTexture.size == (128, 128)
    # The blob: a centred object about a metre across, sitting on the origin.
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert 0.3 < radius.mean() < 0.7 and np.abs(mesh.vertices.mean(0)).max() < 0.1


def test_glb_round_trips_uvs_and_texture(run, tmp_path):
    result = export_run(run, FAST, device="cpu")
    mesh = trimesh.load(result.files["mesh"], force="mesh")
    image = np.asarray(mesh.visual.material.baseColorTexture.convert("RGB"))
    assert image.shape == (128, 128, 3) and image.std() > 0  # a real bake, not a flat fill
    assert (mesh.visual.uv >= 0).all() and (mesh.visual.uv <= 1).all()


def test_second_export_leaves_the_optimisation_alone(run):
    watched = [run / run_dir.CONFIG, run / run_dir.CHECKPOINT, run / run_dir.METRICS]
    before = [_digest(p) for p in watched]
    export_run(run, FAST, device="cpu")
    export_run(run, ExportSettings(resolution=32, texture_size=64, format="obj"), device="cpu")
    assert [_digest(p) for p in watched] == before
    names = sorted(p.name for p in (run / "export").iterdir())
    assert names == ["albedo.png", "export.json", "mesh.glb", "mesh.mtl", "mesh.obj"]  # the GLB stays
    assert "Kd 1.0" in (run / "export" / "mesh.mtl").read_text()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no staging left
    formats = json.loads((run / "export" / "export.json").read_text())["formats"]
    assert formats == {
        "glb": {"mesh": "mesh.glb"},
        "obj": {"mesh": "mesh.obj", "material": "mesh.mtl", "texture": "albedo.png"},
    }


def test_a_new_export_of_one_format_replaces_that_format_only(run):
    export_run(run, ExportSettings(resolution=32, texture_size=64, format="obj"), device="cpu")
    glb = export_run(run, FAST, device="cpu").files["mesh"]
    first = glb.read_bytes()
    export_run(run, ExportSettings(resolution=40, texture_size=64), device="cpu")  # GLB again, finer
    assert glb.read_bytes() != first and (run / "export" / "mesh.obj").is_file()


def test_overwriting_a_run_clears_its_export(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    export_run(copy, FAST, device="cpu")
    run_dir.prepare_new_run(copy, overwrite=True)
    assert not (copy / "export").exists()


def test_orientation_turns_the_front_to_blender_front():
    # Blender's glTF importer maps glTF (x, y, z) to Blender (x, -z, y).
    def to_blender(p):
        g = TO_GLTF @ np.asarray(p, float)
        return np.array([g[0], -g[2], g[1]])

    np.testing.assert_allclose(to_blender([1, 0, 0]), [0, -1, 0])  # front (+X) → Front view (−Y)
    np.testing.assert_allclose(to_blender([0, 0, 1]), [0, 0, 1])  # up stays up
    assert np.linalg.det(TO_GLTF) == pytest.approx(1.0)  # a rotation: windings kept


@pytest.mark.parametrize(
    "settings, message",
    [
        (ExportSettings(texture_size=1000), "power of two"),
        (ExportSettings(texture_size=16384), "power of two"),
        (ExportSettings(resolution=2048), "between 16 and 1024"),
        (ExportSettings(format="fbx"), "unknown format"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(UserError, match=message):
        settings.validate()


def test_empty_surface_suggests_a_threshold_and_keeps_the_old_export(run, capsys):
    export_run(run, FAST, device="cpu")
    before = _digest(run / "export" / "mesh.glb")
    code = main(
        ["export", str(run), "--resolution", "32", "--texture-size", "64", "--threshold", "1e9", "--device", "cpu"]
    )
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("sdi-blender: error:") and "threshold" in lines[-1]
    assert _digest(run / "export" / "mesh.glb") == before


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--texture-size", "1000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "power of two" in err[0]
    assert not any(tmp_path.iterdir())
