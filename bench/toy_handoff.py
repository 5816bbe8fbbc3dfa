"""Does SDI keep a right toy object? SDS trains it, then SDI (or SDS, the control) goes on.

Trains a toy object with SDS at the ``toy`` preset (600 steps), scores it, then switches
the run's method in its saved config (a diagnostic only: a resumed run may not change its
method) and trains ``--extra`` more steps at the schedules' final values, and scores again.
``--shading KEY=VALUE`` overrides the continuation's shading settings (e.g. diffuse_prob=0
for albedo renders only); ``--keep DIR`` keeps both runs there (``DIR/sds``, ``DIR/sds-then-<then>``) for
``bench/toy_drift.py``. Appends its result to ``bench/results/toy-handoff-<date>.json``.

    python bench/toy_handoff.py [--object 0] [--then sdi] [--extra 400] [--shading diffuse_prob=0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
from pathlib import Path

from sdi_blender.server.commands.generate import run_generate
from sdi_blender.server.evaluation.toy_score import score_run
from sdi_blender.server.toyworld.objects import TOY_OBJECTS
from sdi_blender.server.training import run_dir
from sdi_blender.server.training.plan import GenerateRequest

KEPT = ("iou", "feature_angle_deg", "colour_error", "psnr", "mask_iou")


def handoff(obj: int, then: str, extra: int, shading: dict[str, float], folder: Path) -> dict:
    first, run = folder / "sds", folder / f"sds-then-{then}"
    run_generate(
        GenerateRequest(
            out=first, prompt=TOY_OBJECTS[obj].prompt, preset="toy", device="cpu", settings={"method": "sds"}
        )
    )
    before = score_run(first)
    shutil.copytree(first, run)
    config_file = run / run_dir.CONFIG
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["method"] = then
    config["shading"].update(shading)
    config_file.write_text(json.dumps(config), encoding="utf-8")
    # On resume "steps" counts the steps to add (until 2026-12-03 this passed 600 + extra).
    run_generate(GenerateRequest(out=run, resume=True, device="cpu", settings={"steps": extra}))
    after = score_run(run)
    return {
        "object": obj,
        "prompt": TOY_OBJECTS[obj].prompt,
        "then": then,
        "extra_steps": extra,
        "shading": shading,
        "sds": {k: before[k] for k in KEPT},
        "after": {k: after[k] for k in KEPT},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", type=int, default=0)
    parser.add_argument("--then", choices=("sdi", "sds"), default="sdi", help="the continuation's method")
    parser.add_argument("--extra", type=int, default=400, help="steps after the SDS run's (the preset's 600)")
    parser.add_argument("--shading", nargs="*", default=[], help="KEY=VALUE shading overrides for the continuation")
    parser.add_argument("--keep", type=Path, default=None, help="keep the two runs in this folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    shading = {k: float(v) for k, v in (item.split("=", 1) for item in args.shading)}
    if args.keep is not None:
        result = handoff(args.object, args.then, args.extra, shading, args.keep)
    else:
        with tempfile.TemporaryDirectory() as folder:
            result = handoff(args.object, args.then, args.extra, shading, Path(folder))
    print(json.dumps(result, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"toy-handoff-{datetime.date.today()}.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*runs, result], indent=1) + "\n")


if __name__ == "__main__":
    main()
