"""The README's pictures of the four artist workflows, made from toy-world runs on a CPU.

Each workflow runs on the toy world's orange box with a blue ball on its front, with SDS (the
method that reaches the toy's answer today, ``docs/toy-world.md``), by the library code the CLI
and the server use, and is drawn at the evaluation camera:

* ``workflow-texture.png``: the object's true geometry as a mesh (grey), then that mesh textured
  from the prompt (``texture``, the panel's Texture Selected);
* ``workflow-blockout.png``: the blockout (the box without its ball), the run started from it
  (``generate --init-mesh``, Generate from Selected) and, for comparison, one from the default
  blob after the same steps;
* ``workflow-variations.png``: the variations' contact sheet (``training/variations.py``), then
  one of them promoted (continued for more steps);
* ``workflow-proxy.png``: the live proxy meshes one run sends while it trains (the server's own
  ``service/proxy.proxy_arrays``), drawn as the viewport would show them, over its steps.

    python bench/workflow_pictures.py [--out docs/images] [--steps 200]
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdi_blender.server.evaluation.toy_meshes import main_part, toy_mesh
from sdi_blender.server.evaluation.toy_score import turntable_views
from sdi_blender.server.scene.cameras import camera_rays, orbit_cameras
from sdi_blender.server.scene.mesh_surface import MeshSurface
from sdi_blender.server.service.proxy import proxy_arrays
from sdi_blender.server.toyworld.objects import TOY_OBJECTS, ToyObject
from sdi_blender.server.toyworld.render import render_toy
from sdi_blender.server.training import run_dir
from sdi_blender.server.training.config import TrainConfig, make_config
from sdi_blender.server.training.init_mesh import InitMesh, plan_init_mesh
from sdi_blender.server.training.plan import GenerateRequest, plan_run
from sdi_blender.server.training.priors import load_prior
from sdi_blender.server.training.reports import captioned_grid, titled, view_azimuths
from sdi_blender.server.training.texture_fit import TextureRequest, TextureTrainer, plan_texture, start_texture_run
from sdi_blender.server.training.trainer import Trainer, TrainerCallbacks
from sdi_blender.server.training.variations import contact_sheet, plan_variations
from sdi_blender.server.util.images import write_image_atomic

OBJ = TOY_OBJECTS[0]
VIEWS, SIZE = 4, 128
"""Turntable views per row and their size in pixels."""
SEEDS = [0, 1, 2]


def _azimuth_captions() -> list[str]:
    return [f"az {a:g}°" for a in view_azimuths(VIEWS)]


def truth_views(obj: ToyObject, config: TrainConfig) -> list[torch.Tensor]:
    """``obj`` drawn grey (the ground-truth ray caster, textureless) at the evaluation turntable."""
    cams = config.cameras
    views = turntable_views(VIEWS, cams.eval_elevation, cams.eval_distance, cams.eval_fovy)
    images, _ = render_toy(obj, views, SIZE, ("textureless",), config.shading)
    return list(images[0])


def train(out: Path, prior: Any, callbacks: TrainerCallbacks | None = None, **settings: object) -> Trainer:
    """A new toy-preset SDS run of the object in ``out``, trained to the end."""
    config = make_config(OBJ.prompt, "toy", method="sds", **settings)
    run_dir.prepare_new_run(out, overwrite=False)
    trainer = Trainer(config, out, prior=prior, callbacks=callbacks)
    trainer.run()
    return trainer


def texture_picture(work: Path, prior: Any, steps: int) -> Image.Image:
    mesh, _ = toy_mesh(OBJ)
    source = work / "object.glb"
    source.write_bytes(mesh.export(file_type="glb"))
    settings = {"method": "sds", "steps": steps}
    req = TextureRequest(source, OBJ.prompt, work / "texture", preset="toy", keep_placement=True, settings=settings)
    plan = plan_texture(req)
    start_texture_run(plan, req.out, overwrite=False)
    trainer = TextureTrainer(plan.config, req.out, plan.surface(), prior=prior)
    trainer.run()
    rows = [truth_views(OBJ, plan.config), trainer.render_views(VIEWS, SIZE)]
    titles = ["the mesh: the toy object's true geometry, no texture", f"textured from the prompt (SDS, {steps} steps)"]
    return captioned_grid(rows, [_azimuth_captions()] * 2, titles)


def blockout_picture(work: Path, prior: Any, steps: int) -> Image.Image:
    blockout = main_part(OBJ)
    path = work / "blockout.obj"
    toy_mesh(blockout, uvs=False)[0].export(path)
    init = InitMesh(path=str(path))
    plan_init_mesh(init)  # where the run puts it: centred and scaled into the scene
    placed = replace(
        blockout,
        parts=tuple(
            replace(
                p,
                centre=tuple((np.asarray(p.centre) - init.centre) * init.scale),
                size=tuple(np.asarray(p.size) * init.scale),
            )
            for p in blockout.parts
        ),
    )
    started = train(work / "from-blockout", prior, steps=steps, **{"init_mesh.path": str(path)})
    blob = train(work / "from-blob", prior, steps=steps)
    rows = [truth_views(placed, started.config), started.render_views(VIEWS, SIZE), blob.render_views(VIEWS, SIZE)]
    titles = [
        "the blockout: the box without its ball",
        f"generated from the blockout (SDS, {steps} steps)",
        "for comparison: from the default blob (same steps)",
    ]
    return captioned_grid(rows, [_azimuth_captions()] * 3, titles)


def variations_picture(work: Path, prior: Any, steps: int) -> Image.Image:
    settings = {"method": "sds", "steps": steps, "preview_size": SIZE}  # turntables of SIZE² views
    req = GenerateRequest(work / "variations", OBJ.prompt, preset="toy", settings=settings)
    runs = []
    for run_req, config in plan_variations(req, SEEDS):
        run_dir.prepare_new_run(run_req.out, overwrite=False)
        Trainer(config, run_req.out, prior=prior).run()
        runs.append(run_req.out)
    sheet = contact_sheet(runs, SEEDS)
    chosen = runs[1]
    config, _ = plan_run(GenerateRequest(chosen, resume=True, settings={"steps": steps}))
    Trainer(config, chosen, prior=prior, resume=True).run()
    with Image.open(chosen / run_dir.TURNTABLE) as image:
        promoted = titled(image, f"seed {SEEDS[1]} promoted: continued to {config.steps} steps")
    out = Image.new("RGB", (max(sheet.width, promoted.width), sheet.height + 8 + promoted.height), (255, 255, 255))
    out.paste(sheet, (0, 0))
    out.paste(promoted, (0, sheet.height + 8))
    return out


class _Proxies(TrainerCallbacks):
    """The proxy mesh the server would send at each ``on_field``, decoded as the add-on does."""

    def __init__(self) -> None:
        self.meshes: list[tuple[int, dict[str, np.ndarray]]] = []

    def on_field(self, step: int, field: Any) -> None:
        arrays = proxy_arrays(field, float(field.config.radius))
        if arrays is not None:
            self.meshes.append((step, _decode(arrays)))


def _decode(arrays: dict[str, str]) -> dict[str, np.ndarray]:
    def read(key: str, dtype: str, width: int) -> np.ndarray:
        return np.frombuffer(base64.b64decode(arrays[key]), dtype=dtype).reshape(-1, width)

    return {
        "vertices": read("vertices", "<f4", 3),
        "faces": read("faces", "<i4", 3),
        "colours": read("colours", "u1", 3),
    }


def draw_mesh(
    mesh: dict[str, np.ndarray], config: TrainConfig, azimuth: float = 35.0, fovy: float = 40.0
) -> torch.Tensor:
    """A vertex-coloured mesh (Blender's axes) as [3, SIZE, SIZE]: each face its vertices' mean
    colour, lit from the camera, on white, from the evaluation camera's place turned to
    ``azimuth``, zoomed in to ``fovy`` (the proxy is the object, not the scene)."""
    blender = mesh["vertices"].astype(np.float64)
    world = np.stack([-blender[:, 1], blender[:, 0], blender[:, 2]], axis=-1)  # undo (x, y, z) → (y, −x, z)
    cams = config.cameras
    view = orbit_cameras(
        torch.tensor([cams.eval_elevation]), torch.tensor([azimuth]), cams.eval_distance, fovy, SIZE, SIZE
    )
    origins, dirs = (r.reshape(-1, 3) for r in camera_rays(view))
    hits = MeshSurface(world, mesh["faces"]).cast(origins, dirs)
    colour = torch.as_tensor(mesh["colours"][mesh["faces"][hits.face.numpy()]].mean(1) / 255, dtype=torch.float32)
    light = 0.35 + 0.65 * (-(hits.normals * dirs[hits.ray]).sum(-1, keepdim=True)).clamp(0, 1)
    image = torch.ones(SIZE * SIZE, 3)
    image[hits.ray] = (colour * light).clamp(0, 1)
    return image.reshape(SIZE, SIZE, 3).permute(2, 0, 1)


def proxy_picture(work: Path, prior: Any, steps: int) -> Image.Image:
    proxies = _Proxies()
    trainer = train(work / "proxy", prior, proxies, steps=steps)
    shown = proxies.meshes[::2][:5]
    final = proxy_arrays(trainer.field, float(trainer.config.field.radius))
    assert final is not None, "the run made no surface"
    frames = [draw_mesh(mesh, trainer.config) for _, mesh in shown] + [draw_mesh(_decode(final), trainer.config)]
    captions = [f"step {step}" for step, _ in shown] + [f"step {steps}: done"]
    title = f"the live proxy (a coarse mesh, vertex colours) over one SDS run's {steps} steps"
    return captioned_grid([frames], [captions], [title])


PICTURES = {
    "texture": texture_picture,
    "blockout": blockout_picture,
    "variations": variations_picture,
    "proxy": proxy_picture,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "images")
    parser.add_argument("--steps", type=int, default=200, help="SDS steps per run (texture: 1.5×)")
    parser.add_argument("--only", nargs="*", choices=sorted(PICTURES), default=sorted(PICTURES))
    args = parser.parse_args()
    prior = load_prior("toyworld", device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.only:
            started = time.monotonic()
            work = Path(folder) / name
            work.mkdir()
            steps = args.steps * 3 // 2 if name == "texture" else args.steps
            image = PICTURES[name](work, prior, steps)
            path = args.out / f"workflow-{name}.png"
            write_image_atomic(image, path)
            kb = path.stat().st_size / 1024
            print(
                f"{path}: {image.width}×{image.height}, {kb:.0f} KB, {time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )


if __name__ == "__main__":
    main()
