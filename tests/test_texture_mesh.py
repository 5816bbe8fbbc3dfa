"""``sdi-blender texture``: a given mesh keeps its geometry and gets the prompt's colours.

The toy world gives a known answer: its objects are coloured primitives, so a mesh of those
primitives textured with the object's prompt must come out with each part's colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from sdi_blender import catalog
from sdi_blender.cli import main
from sdi_blender.server.evaluation.toy_meshes import toy_mesh
from sdi_blender.server.export.bake import bake_run
from sdi_blender.server.scene.cameras import camera_rays, orbit_cameras
from sdi_blender.server.scene.mesh_file import GLTF_FROM_WORLD, load_mesh
from sdi_blender.server.scene.mesh_surface import FIT_RADIUS, MeshSurface, SceneFit
from sdi_blender.server.toyworld.objects import TOY_OBJECTS
from sdi_blender.server.training.texture_fit import TextureRequest, TextureTrainer, plan_texture, start_texture_run

OBJ = TOY_OBJECTS[0]  # an orange box with a blue ball on its front


def _only_mesh(path: Path) -> trimesh.Trimesh:
    (mesh,) = trimesh.load_scene(str(path), process=False).geometry.values()
    return mesh


def _seen_faces(mesh: trimesh.Trimesh) -> np.ndarray:
    """Faces that orbit cameras over the training elevations see (the rest cannot be learnt)."""
    ele, azi = torch.meshgrid(torch.linspace(-10, 45, 4), torch.arange(0, 360, 30.0), indexing="ij")
    origins, dirs = camera_rays(orbit_cameras(ele.reshape(-1), azi.reshape(-1), 2.0, 50.0, 32, 32))
    hits = MeshSurface(mesh.vertices @ GLTF_FROM_WORLD, mesh.faces).cast(origins.reshape(-1, 3), dirs.reshape(-1, 3))
    seen = np.zeros(len(mesh.faces), bool)
    seen[hits.face.numpy()] = True
    return seen


def _part_colours(mesh: trimesh.Trimesh, texture: Path, part_of: np.ndarray) -> dict[str, np.ndarray]:
    """Each part's area-weighted mean colour, sampled from the texture at its seen faces' UV centres."""
    image = np.asarray(Image.open(texture).convert("RGB"), np.float64) / 255
    size = image.shape[0]
    centre = mesh.visual.uv[mesh.faces].mean(1)
    rows = np.clip(((1 - centre[:, 1]) * size).astype(int), 0, size - 1)
    cols = np.clip((centre[:, 0] * size).astype(int), 0, size - 1)
    colour, area, seen = image[rows, cols], mesh.area_faces, _seen_faces(mesh)
    out = {}
    for k, part in enumerate(OBJ.parts):
        sel = (part_of == k) & seen
        out[part.name] = (colour[sel] * area[sel, None]).sum(0) / area[sel].sum()
    return out


@pytest.mark.e2e
def test_texturing_a_toy_object_bakes_each_part_its_colour(toy_prior, tmp_path):
    mesh, part_of = toy_mesh(OBJ)
    source = tmp_path / "object.glb"
    source.write_bytes(mesh.export(file_type="glb"))
    run = tmp_path / "run"
    req = TextureRequest(
        source, OBJ.prompt, run, preset="toy", keep_placement=True, settings={"method": "sds", "steps": 300}
    )
    plan = plan_texture(req)
    start_texture_run(plan, run, overwrite=False)
    assert TextureTrainer(plan.config, run, plan.surface(), prior=toy_prior).run().status == "done"
    baked = bake_run(run, texture_size=256, device="cpu")

    assert baked.files["mesh"] == run / catalog.mesh_file("glb") and baked.info["uvs"] == "mesh"
    given, out = _only_mesh(source), _only_mesh(baked.files["mesh"])
    np.testing.assert_array_equal(out.vertices, given.vertices)
    np.testing.assert_array_equal(out.faces, given.faces)
    np.testing.assert_allclose(out.visual.uv, given.visual.uv, atol=1e-6)
    colours = _part_colours(given, baked.files["texture"], part_of)
    for part in OBJ.parts:
        error = np.abs(colours[part.name] - np.array(part.colour)).max()
        assert error <= 0.15, (part.name, colours[part.name].round(3), part.colour)


def test_a_mesh_is_centred_and_scaled_into_the_scene_and_written_back_in_its_own_frame(toy_prior, tmp_path):
    mesh, _ = toy_mesh(OBJ, uvs=False)
    mesh.apply_scale(40.0)  # centimetres, say, far from the origin
    mesh.apply_translation((300.0, -20.0, 55.0))
    source = tmp_path / "big.obj"
    source.write_text(trimesh.exchange.obj.export_obj(mesh), encoding="utf-8")
    plan = plan_texture(TextureRequest(source, OBJ.prompt, tmp_path / "run", preset="toy", settings={"steps": 2}))
    scene = plan.fit.to_scene(plan.mesh.world_vertices())
    np.testing.assert_allclose((scene.min(0) + scene.max(0)) / 2, 0.0, atol=1e-9)
    assert np.linalg.norm(scene, axis=1).max() == pytest.approx(FIT_RADIUS)
    assert plan.fit == SceneFit.of(load_mesh(source).world_vertices())

    start_texture_run(plan, tmp_path / "run", overwrite=False)
    TextureTrainer(plan.config, tmp_path / "run", plan.surface(), prior=toy_prior).run()
    baked = bake_run(tmp_path / "run", texture_size=64, device="cpu")
    out = _only_mesh(baked.files["mesh"])
    assert baked.info["uvs"] == "xatlas" and len(out.faces) == len(mesh.faces)
    # xatlas splits vertices on its seams; every one is still a vertex of the given mesh, in its frame.
    given = load_mesh(source).vertices.astype(np.float32)
    assert len(out.vertices) > len(given)
    nearest = np.abs(out.vertices[:, None, :] - given[None]).max(-1).min(1)
    assert nearest.max() < 1e-3


def _obj_text(faces: bool) -> str:
    text = "v 0 0 0\nv 1 0 0\nv 0 1 0\n"
    return text + ("f 1 2 3\n" if faces else "")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("thing.fbx", b"x", "unsupported mesh format '.fbx'"),
        ("missing.glb", None, "no mesh file"),
        ("broken.glb", b"glTF not really", "cannot read the mesh"),
        ("points.obj", _obj_text(False).encode(), "holds no triangle mesh"),
    ],
)
def test_bad_meshes_are_one_line_and_write_nothing(capsys, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "run"
    assert main(["texture", str(path), OBJ.prompt, "--model", "toyworld", "--preset", "toy", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_two_meshes_and_huge_meshes_are_refused(tmp_path):
    from sdi_blender.errors import UserError

    two = tmp_path / "two.glb"
    two.write_bytes(trimesh.Scene([trimesh.creation.box(), trimesh.creation.icosphere()]).export(file_type="glb"))
    with pytest.raises(UserError, match="holds 2 meshes"):
        load_mesh(two)
    one = tmp_path / "one.glb"
    one.write_bytes(trimesh.creation.icosphere(subdivisions=3).export(file_type="glb"))
    with pytest.raises(UserError, match="1,280 faces, more than the 1,000"):
        load_mesh(one, max_faces=1000)
    assert len(load_mesh(one).faces) == 1280


def test_rays_stop_at_the_nearest_surface():
    mesh, part_of = toy_mesh(OBJ, uvs=False)
    surface = MeshSurface(mesh.vertices @ GLTF_FROM_WORLD, mesh.faces)
    # From the front (+X) through the ball's centre: the ball's front, not the box behind it.
    hits = surface.cast(torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.9]]), torch.tensor([[-1.0, 0.0, 0.0]] * 2))
    assert hits.ray.tolist() == [0]
    assert part_of[hits.face[0]] == 1 and hits.points[0, 0].item() == pytest.approx(0.58, abs=0.01)
    assert hits.normals[0, 0].item() > 0.9  # facing the camera
