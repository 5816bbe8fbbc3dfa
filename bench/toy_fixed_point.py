"""Is the true object where SDI and SDS stop? Their targets for a perfect render.

A render that is already right (the toy object's own picture from the independent ray
caster, albedo) is noised by each method and denoised in one step with the ``toy``
preset's guidance. If the method's target stays near the render, the truth is (nearly) a
fixed point and a miss comes from the path there, not from where the method points.
Printed per camera, timestep and method: the rms of the noise ε the method used (1 for
Gaussian noise), the rms of each target against the render, and the rms of the targets'
mean (draws differ by SDS's noise, SDI's eta noise and δ). Writes
``bench/results/toy-fixed-point-<date>.json``.

    python bench/toy_fixed_point.py [--object 0] [--inversion-guidance -2 -8] [--shading albedo diffuse]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from sdi_blender.server.diffusion.guidance import ScoreDistillation
from sdi_blender.server.diffusion.prompts import PromptOptions
from sdi_blender.server.scene.shading import SHADINGS, ShadingConfig
from sdi_blender.server.toyworld.objects import TOY_OBJECTS
from sdi_blender.server.toyworld.prior import ToyWorldPrior
from sdi_blender.server.toyworld.render import orbit_views, render_toy
from sdi_blender.server.training.config import PRESETS

AZIMUTHS = (0.0, 40.0, 90.0, 200.0)
TIMESTEPS = (800, 500, 300)
DRAWS = 6


def _rms(x: torch.Tensor) -> float:
    return round(float(x.pow(2).mean().sqrt()), 3)


def measure(obj: int, method: str, inversion_guidance: float, prior: ToyWorldPrior, mode: str) -> list[dict]:
    prompt = TOY_OBJECTS[obj].prompt
    emb = prior.encode_prompt(prompt, options=PromptOptions(view_dependent=True, perp_neg=False))
    rows = []
    for az in AZIMUTHS:
        el, a = torch.tensor([15.0]), torch.tensor([az])
        views = orbit_views(el, a, 2.0, 50.0)
        x0 = render_toy(TOY_OBJECTS[obj], views, prior.image_size, (mode,), ShadingConfig())[0][0] * 2 - 1
        guide = ScoreDistillation(
            prior.predictor(emb, el, a),
            method,
            guidance_scale=PRESETS["toy"]["guidance_scale"],
            inversion_guidance_scale=inversion_guidance,
        )
        for t in TIMESTEPS:
            steps = [guide.step(x0, t, torch.Generator().manual_seed(s)) for s in range(DRAWS)]
            targets = torch.cat([s.target for s in steps])
            rows.append(
                {
                    "azimuth": az,
                    "t": t,
                    "noise_rms": round(sum(_rms(s.noise) for s in steps) / DRAWS, 2),
                    "target_rms": _rms(targets - x0),
                    "mean_target_rms": _rms(targets.mean(0, keepdim=True) - x0),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", type=int, default=0)
    default_inv = PRESETS["toy"]["inversion_guidance_scale"]
    parser.add_argument("--inversion-guidance", type=float, nargs="+", default=[default_inv])
    parser.add_argument("--shading", choices=SHADINGS, nargs="+", default=["albedo"], help="how the render is shaded")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    prior = ToyWorldPrior()
    result: dict = {"object": args.object, "prompt": TOY_OBJECTS[args.object].prompt, "runs": {}}
    for mode in args.shading:
        result["runs"][f"{mode} sds"] = measure(args.object, "sds", default_inv, prior, mode)
        for g in args.inversion_guidance:
            result["runs"][f"{mode} sdi inversion {g:g}"] = measure(args.object, "sdi", g, prior, mode)
    for name, rows in result["runs"].items():
        for r in rows:
            print(
                f"{name:>32}  az {r['azimuth']:5.0f}  t {r['t']}  ε rms {r['noise_rms']:.2f}  "
                f"target {r['target_rms']:.3f}  mean target {r['mean_target_rms']:.3f}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"toy-fixed-point-{datetime.date.today()}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
