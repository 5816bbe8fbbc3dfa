"""Why a right toy object drifts under SDI: what each method's targets do near the truth.

For trained toy runs (``--run``, repeatable; e.g. ``bench/toy_handoff.py --keep DIR`` leaves an
SDS run and its SDI continuation), draws cameras from the run's training distribution, renders
albedo and computes each method's one-step target x̂0 at t with the run's guidance. Against
x_n, the prompt's albedo picture nearest the render r:

* ``restoring`` λ = ⟨x̂0 − x_n, r − x_n⟩ / ‖r − x_n‖²: 0 when the target goes back to the
  picture, 1 when it keeps the render's deviation from it;
* ``sideways``: rms of the rest of x̂0 − x_n (where the target jumps to, [−1, 1] units);
* ``azimuth_error_deg``: azimuth of the picture with the largest posterior share against the camera's;
* ``lit_share``: the posterior share of the prompt's lit (diffuse-shaded) pictures;
* ``colour``: mean RGB (0–1) of the object's pixels in the render and in the target.

``--views-per-object N`` builds a denser picture set than the cached 512 (a diagnostic).
Writes ``bench/results/toy-drift-<date>.json``.

    python bench/toy_drift.py --run RUN [--run RUN2] [--timesteps 250 500] [--views-per-object 2048]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from sdi_blender.server.diffusion.guidance import METHODS, ScoreDistillation
from sdi_blender.server.diffusion.prompts import PromptOptions, wrap_azimuth
from sdi_blender.server.scene.cameras import sample_cameras
from sdi_blender.server.scene.shading import SHADINGS
from sdi_blender.server.toyworld.prior import ToyWorldPrior, build_pictures
from sdi_blender.server.training.checkpoint import load_renderer

CAMERAS = 24
LIT = SHADINGS.index("diffuse")
ALBEDO = SHADINGS.index("albedo")


def _target_figures(
    prior: ToyWorldPrior,
    obj: int,
    azimuth: torch.Tensor,
    shares: torch.Tensor,
    render: torch.Tensor,
    target: torch.Tensor,
) -> dict:
    """λ, sideways rms, top picture's azimuth error and lit share of one target (render, target:
    [D] in [−1, 1]; shares: [N] the conditional posterior over the pictures; azimuth: the camera's)."""
    pics = prior.pictures
    prompt_albedo = (pics.mode == ALBEDO) & (pics.obj == obj)
    dist = (prior.flat - render).square().sum(-1).masked_fill(~prompt_albedo, float("inf"))
    nearest = prior.flat[int(dist.argmin())]
    dev, moved = render - nearest, target - nearest
    lam = float(moved @ dev / (dev @ dev).clamp_min(1e-12))
    return {
        "restoring": lam,
        "sideways": float((moved - lam * dev).square().mean().sqrt()),
        "azimuth_error_deg": float(wrap_azimuth(pics.azimuth[int(shares.argmax())] - azimuth).abs()),
        "lit_share": float(shares[pics.mode == LIT].sum()),
    }


def measure(run: Path, prior: ToyWorldPrior, timesteps: list[int], seed: int) -> dict:
    renderer, cfg, step, _ = load_renderer(run, torch.device("cpu"))
    emb = prior.encode_prompt(
        cfg.prompt, options=PromptOptions(view_dependent=cfg.view_dependent, perp_neg=cfg.perp_neg)
    )
    gen, size = torch.Generator().manual_seed(seed), prior.image_size
    rows: dict[str, list[dict]] = {f"{m} t={t}": [] for t in timesteps for m in METHODS}
    render_colours = []
    for k in range(CAMERAS):
        cams = sample_cameras(cfg.cameras, 1, size, size, gen)
        with torch.no_grad():
            out = renderer(cams, "albedo", gen, stratified=False)
        rgb = out.rgb.permute(0, 3, 1, 2)  # [1, 3, S, S] in [0, 1]
        x0 = prior.encode_images(rgb)
        mask = out.opacity[0, :, :, 0] > 0.5
        render_colours.append(rgb[0, :, mask].mean(1))
        predictor = prior.predictor(emb, cams.elevation_deg, cams.azimuth_deg)
        for t in timesteps:
            for method in METHODS:
                guide = ScoreDistillation(
                    predictor,
                    method,
                    guidance_scale=cfg.guidance_scale,
                    inversion_guidance_scale=cfg.inversion_guidance_scale,
                    inversion_eta=cfg.inversion_eta,
                )
                st = guide.step(x0, t, torch.Generator().manual_seed(k))
                shares = predictor.conditional_shares(st.x_noisy, torch.tensor([t]))[0]
                row = _target_figures(prior, emb.obj, cams.azimuth_deg[0], shares, x0.flatten(), st.target.flatten())
                row["colour"] = ((st.target[0, :, mask] + 1) / 2).mean(1).tolist()  # unclamped
                rows[f"{method} t={t}"].append(row)
    return {
        "run": run.name,
        "prompt": cfg.prompt,
        "method_trained": cfg.method,
        "run_step": step,
        "render_colour": [round(c, 3) for c in torch.stack(render_colours).mean(0).tolist()],
        "targets": {name: _mean(r) for name, r in rows.items()},
    }


def _mean(rows: list[dict]) -> dict:
    out = {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in rows[0] if k != "colour"}
    out["colour"] = [round(sum(r["colour"][c] for r in rows) / len(rows), 3) for c in range(3)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a trained toy run (repeatable)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[250, 500])
    parser.add_argument("--views-per-object", type=int, default=0, help="a denser picture set (default: the cached)")
    parser.add_argument("--seed", type=int, default=7, help="draws the cameras")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    pictures = build_pictures(views_per_object=args.views_per_object) if args.views_per_object else None
    prior = ToyWorldPrior(pictures=pictures)
    result = {
        "views_per_object": args.views_per_object or "cached",
        "runs": [measure(run, prior, args.timesteps, args.seed) for run in args.run],
    }
    print(json.dumps(result, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"toy-drift-{datetime.date.today()}.json"
    runs = json.loads(path.read_text())["results"] if path.exists() else []
    path.write_text(json.dumps({"results": [*runs, result]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
