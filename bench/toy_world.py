"""The toy world's figures: every toy object with SDI and SDS, trained, exported and scored.

For each object and method: ``generate`` at the ``toy`` preset (``--model toyworld``) → GLB
export → volumetric IoU, orienting-feature angle and per-part colour error in Blender's
frame, PSNR and mask IoU of 8 evaluation views against the ground truth, and the seconds
of training and export. Seconds on a shared machine are noisy: compare SDI with SDS inside
one run (they take turns per object). Writes ``bench/results/toy-world-<date>.json``.

    python bench/toy_world.py [--seeds 1] [--objects 0 1 2 3] [--steps N] [--view-bins 12] [--set KEY=JSON]

``--view-bins N`` is the diagnostic of docs/toy-world.md: the prior conditioned on the camera's
azimuth bin (N bins) instead of the view prompt's bucket; it writes ``toy-world-bins<N>-<date>.json``.
``--set`` changes a run setting (e.g. ``inversion_guidance_scale=-1`` or ``shading.diffuse_prob=0``;
a shading setting also reweighs the prior's pictures, so it sees the shading the trainer
renders); any ``--set`` adds ``variant-`` to the file name.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from sdi_blender.server.commands.generate import run_generate
from sdi_blender.server.evaluation.toy_score import score_run
from sdi_blender.server.scene.shading import ShadingConfig
from sdi_blender.server.toyworld.objects import TOY_OBJECTS
from sdi_blender.server.toyworld.prior import ToyWorldPrior
from sdi_blender.server.training.plan import GenerateRequest


def _pair(folder: Path, obj: int, out: Path) -> None:
    """The SDS (top) and SDI (bottom) turntables of one object, enlarged for people to see."""
    from PIL import Image

    rows = [Image.open(folder / f"{obj}-{m}-0" / "turntable.png").convert("RGB") for m in ("sds", "sdi")]
    sheet = Image.new("RGB", (rows[0].width, rows[0].height * 2))
    for i, row in enumerate(rows):
        sheet.paste(row, (0, i * row.height))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.resize((sheet.width * 4, sheet.height * 4), Image.NEAREST).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--objects", type=int, nargs="*", default=list(range(len(TOY_OBJECTS))))
    parser.add_argument("--steps", type=int, default=None, help="override the toy preset's steps")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--pictures",
        type=Path,
        default=None,
        help="also write each object's SDS and SDI turntables (one row each) here",
    )
    parser.add_argument("--view-bins", type=int, default=0, help="condition on N azimuth bins (a diagnostic)")
    parser.add_argument("--methods", nargs="*", default=["sdi", "sds"], choices=["sdi", "sds"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a run setting")
    args = parser.parse_args()
    extra = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    shading = ShadingConfig(**{k.removeprefix("shading."): v for k, v in extra.items() if k.startswith("shading.")})
    prior = ToyWorldPrior(shading=shading, view_bins=args.view_bins)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for obj in args.objects:
            for seed in range(args.seeds):
                for method in args.methods:
                    run = Path(folder) / f"{obj}-{method}-{seed}"
                    start = time.perf_counter()
                    run_generate(
                        GenerateRequest(
                            out=run,
                            prompt=TOY_OBJECTS[obj].prompt,
                            preset="toy",
                            device="cpu",
                            settings={"method": method, "seed": seed, "steps": args.steps, **extra},
                        ),
                        prior=prior,
                    )
                    train_s = time.perf_counter() - start
                    scores = score_run(run)
                    rows.append({"object": obj, "seed": seed, "train_seconds": round(train_s, 1), **scores})
                    print(json.dumps(rows[-1]), flush=True)
                if args.pictures is not None and seed == 0 and len(args.methods) == 2:
                    _pair(Path(folder), obj, args.pictures / f"toy-{obj}-sds-vs-sdi.png")
    bins = f"bins{args.view_bins}-" if args.view_bins else ""
    variant = "variant-" if extra else ""
    out = args.out / f"toy-world-{bins}{variant}{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "view_bins": args.view_bins,
        "settings": extra,
    }
    out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
