"""Why SDI misses in the toy world: which view each method's target shows.

Trains one toy object with SDI at the ``toy`` preset (or reads ``--run``), then for 12
cameras around it (elevation 15°) computes the SDI and the SDS target x̂0 of its render at
several timesteps and finds, among the object's true pictures at 216 known angles, the
one nearest each target. The azimuth error of that picture against the camera says
whether the target shows the view the camera sees (0°) or another one (90° is chance).
Writes ``bench/results/toy-targets-<date>.json`` and a sheet (render | truth | SDI | SDS).

    python bench/toy_targets.py [--run RUN] [--object 0] [--sheet PNG]
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

import torch

from sdi_blender.server.commands.generate import run_generate
from sdi_blender.server.diffusion.guidance import METHODS, ScoreDistillation
from sdi_blender.server.diffusion.prompts import PromptOptions, wrap_azimuth
from sdi_blender.server.scene.cameras import orbit_cameras
from sdi_blender.server.scene.renderer import as_image, render_views
from sdi_blender.server.scene.shading import ShadingConfig
from sdi_blender.server.toyworld.objects import TOY_OBJECTS, toy_object
from sdi_blender.server.toyworld.prior import ToyWorldPrior
from sdi_blender.server.toyworld.render import orbit_views, render_toy
from sdi_blender.server.training.checkpoint import load_renderer
from sdi_blender.server.training.plan import GenerateRequest

TIMESTEPS = (800, 600, 400, 300)
AZIMUTHS = tuple(float(a) for a in range(0, 360, 30))
DRAWS = 3  # noise draws per camera (SDS's i.i.d. noise, SDI's eta noise and δ)


def _truth(obj, elevation: torch.Tensor, azimuth: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, S, S] albedo pictures in [−1, 1] from the independent ray caster."""
    return render_toy(obj, orbit_views(elevation, azimuth, 2.0, 50.0), size, ("albedo",), ShadingConfig())[0][0] * 2 - 1


def measure(run: Path, sheet: Path | None) -> dict:
    renderer, cfg, step, _ = load_renderer(run, torch.device("cpu"))
    prior, obj = ToyWorldPrior(), toy_object(cfg.prompt)
    emb = prior.encode_prompt(cfg.prompt, options=PromptOptions(view_dependent=True, perp_neg=False))
    cand_az = torch.arange(0, 360, 5.0).repeat(3)
    cand_el = torch.tensor([0.0, 15.0, 30.0]).repeat_interleave(72)
    cands = _truth(obj, cand_el, cand_az, prior.image_size).flatten(1)
    errors = {t: {m: [] for m in METHODS} for t in TIMESTEPS}
    rows = []
    for az in AZIMUTHS:
        el, a = torch.tensor([15.0]), torch.tensor([az])
        with torch.no_grad():
            image = as_image(
                render_views(renderer, orbit_cameras(el, a, 2.0, 50.0, prior.image_size, prior.image_size))[0]
            )
        x0, predictor = image[None] * 2 - 1, prior.predictor(emb, el, a)
        row = [x0[0], _truth(obj, el, a, prior.image_size)[0]]
        for t in TIMESTEPS:
            for m in METHODS:
                guide = ScoreDistillation(
                    predictor,
                    m,
                    guidance_scale=cfg.guidance_scale,
                    inversion_guidance_scale=cfg.inversion_guidance_scale,
                )
                for s in range(DRAWS):
                    target = guide.step(x0, t, torch.Generator().manual_seed(s)).target[0]
                    nearest = (cands - target.flatten()).square().sum(1).argmin()
                    errors[t][m].append(float(wrap_azimuth(cand_az[nearest] - az).abs()))
                    if t == 400 and s == 0:
                        row.append(target)
        rows.append(torch.cat(row, -1))
    if sheet is not None:
        _save_sheet(torch.cat(rows[::3], -2), sheet)
    return {
        "run_step": step,
        "prompt": cfg.prompt,
        "method_trained": cfg.method,
        "mean_azimuth_error_deg": {
            str(t): {m: round(sum(v) / len(v), 1) for m, v in e.items()} for t, e in errors.items()
        },
    }


def _save_sheet(images: torch.Tensor, out: Path) -> None:
    from PIL import Image

    pixels = ((images.permute(1, 2, 0) + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    picture = Image.fromarray(pixels)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.resize((picture.width * 4, picture.height * 4), Image.NEAREST).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a trained toy run (default: train one)")
    parser.add_argument("--object", type=int, default=0)
    parser.add_argument("--method", choices=METHODS, default="sdi", help="how the run is trained")
    parser.add_argument("--sheet", type=Path, default=None, help="write render | truth | SDI | SDS rows here")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run = args.run
        if run is None:
            run = Path(folder) / "run"
            run_generate(
                GenerateRequest(
                    out=run,
                    prompt=TOY_OBJECTS[args.object].prompt,
                    preset="toy",
                    device="cpu",
                    settings={"method": args.method},
                )
            )
        result = measure(run, args.sheet)
    print(json.dumps(result, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"toy-targets-{datetime.date.today()}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
