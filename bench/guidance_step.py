"""Time one score-distillation step (2D: latent → guidance → Adam) for SDS and SDI.

Prints median milliseconds per step and the SDI/SDS ratio (the official implementation
reports SDI ≈ 1.5× SDS per 3D step, where rendering and the VAE dominate), and writes
``bench/results/<device>-<date>-guidance.json``. Ratios, not absolute times, are
comparable across runs on a noisy machine.

    python bench/guidance_step.py [--model tiny] [--steps 30] [--t 500]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from sdi_blender.server.diffusion.guidance import ScoreDistillation
from sdi_blender.server.diffusion.prior import StableDiffusionPrior


def time_steps(prior: StableDiffusionPrior, method: str, steps: int, t: int) -> list[float]:
    gen = torch.Generator(prior.device).manual_seed(0)
    size = prior.latent_size
    latent = torch.randn((1, 4, size, size), generator=gen, device=prior.device).requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=0.1)
    guidance = ScoreDistillation(prior.predictor(prior.encode_prompt("a photograph of a ninja")), method)
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        loss, _ = guidance.loss(latent, t, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if prior.device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return times[2:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--t", type=int, default=500, help="timestep (SDI inverts t // 100 grid steps)")
    args = ap.parse_args()
    prior = StableDiffusionPrior(args.model)
    ms = {m: statistics.median(time_steps(prior, m, args.steps, args.t)) for m in ("sds", "sdi")}
    device = torch.cuda.get_device_name() if prior.device.type == "cuda" else platform.processor() or "cpu"
    result = {
        "model": args.model,
        "device": device,
        "torch": torch.__version__,
        "t": args.t,
        "steps": args.steps,
        "ms_per_step": ms,
        "sdi_over_sds": ms["sdi"] / ms["sds"],
        "unet_calls_per_step": {"sds": 1, "sdi": 1 + len(range(1, args.t, 100)) + 1},
    }
    for m, v in ms.items():
        print(f"{m.upper()}: {v:8.2f} ms/step")
    print(f"SDI/SDS: {result['sdi_over_sds']:.2f}x (UNet calls {result['unet_calls_per_step']})")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    tag = "cuda" if prior.device.type == "cuda" else "cpu"
    path = out / f"{tag}-{datetime.date.today():%Y-%m-%d}-guidance.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
