"""Start from my blockout: a run whose density starts as a rough mesh of the toy object's main
part reaches a higher IoU against the truth, after the same steps, than the default blob."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
trimesh = pytest.importorskip("trimesh")

from sdi_blender.errors import UserError  # noqa: E402
from sdi_blender.server.training.init_mesh import InitMesh, placement, plan_init_mesh  # noqa: E402

PROMPT = "an orange box with a blue ball on its front"
STEPS = 20


def _blockout(folder: Path) -> Path:
    """The orange box alone (no ball), as an OBJ in glTF's axes: world (x, y, z) → (y, z, x)."""
    box = trimesh.creation.box(extents=(0.8, 0.56, 0.64))  # the box's half-extents (0.32, 0.4, 0.28)
    box.apply_translation((0.0, 0.0, -0.08))  # its centre, world x = −0.08
    path = folder / "blockout.obj"
    box.export(path)
    return path


def test_the_blockout_is_placed_and_its_placement_undoes_the_fit(tmp_path: Path) -> None:
    init = InitMesh(path=str(_blockout(tmp_path)))
    plan_init_mesh(init)
    assert init.centre == pytest.approx((-0.08, 0.0, 0.0), abs=1e-6) and 0.9 < init.scale < 1.2
    where = placement(init)
    assert where is not None and where["centre"] == pytest.approx([0.0, 0.08, 0.0], abs=1e-6)
    assert where["scale"] == pytest.approx(1 / init.scale)
    assert placement(InitMesh()) is None


def test_a_mesh_that_encloses_nothing_is_one_line(tmp_path: Path) -> None:
    from sdi_blender.server.scene.field import FieldConfig, ImplicitVolume
    from sdi_blender.server.training.init_mesh import fit_field

    plane = tmp_path / "plane.obj"
    trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.0]], [[0, 1, 2], [1, 3, 2]]).export(plane)
    with pytest.raises(UserError, match="encloses no volume"):
        fit_field(ImplicitVolume(FieldConfig(radius=1.0, log2_hashmap_size=12)), InitMesh(path=str(plane)), 0)


def test_a_blockout_start_beats_the_blob_after_the_same_steps(toy_prior, tmp_path: Path) -> None:
    from sdi_blender.server.evaluation.toy_score import score_run
    from sdi_blender.server.training import run_dir
    from sdi_blender.server.training.config import make_config
    from sdi_blender.server.training.trainer import Trainer

    blockout = str(_blockout(tmp_path))
    iou = {}
    for name, init in (("blob", ""), ("blockout", blockout)):
        out = tmp_path / name
        config = make_config(PROMPT, "toy", steps=STEPS, method="sds", **{"init_mesh.path": init})
        run_dir.prepare_new_run(out, overwrite=False)
        Trainer(config, out, prior=toy_prior).run()
        iou[name] = score_run(out, views=2, size=32)["iou"]
    # The criterion: higher than the blob after the same steps. Measured 2026-12-02
    # (seed 0, 20 SDS steps): blob 0.47, blockout 0.72, scored in the blockout's frame.
    assert iou["blockout"] > iou["blob"], iou
