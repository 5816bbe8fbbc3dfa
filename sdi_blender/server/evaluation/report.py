"""The evaluation's files: metrics.json, metrics.csv, report.html and contact.png.

Everything is written into a staging folder and swapped in whole, so a failed report
never leaves a half-written one (and a previous report survives a failure).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ...errors import UserError
from ..training.reports import captioned_grid, curves_png, view_azimuths
from ..util.fileio import staged_folder
from ..util.images import to_pil
from .evaluate import RunEval
from .report_page import comparisons, fmt, report_html, view_file


def check_report_dir(out: Path) -> None:
    """Refuse a folder that holds something other than an earlier report (never delete it)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "metrics.json").is_file())):
        raise UserError(f"'{out}' exists and is not an evaluation report", hint="choose another --out")


def write_report(results: Sequence[RunEval], groups: list[dict[str, Any]], out: Path, settings: dict[str, Any]) -> None:
    """Write the report folder ``out`` (replacing an earlier report there)."""
    check_report_dir(out)
    with staged_folder(out) as stage:
        _write_all(results, groups, stage, settings)


def _write_all(
    results: Sequence[RunEval], groups: list[dict[str, Any]], folder: Path, settings: dict[str, Any]
) -> None:
    metrics = {"settings": settings, "groups": groups, "runs": [r.summary() for r in results]}
    (folder / "metrics.json").write_text(json.dumps(_finite(metrics), indent=2), encoding="utf-8")
    _write_csv(results, folder / "metrics.csv")
    (folder / "views").mkdir()
    for k, r in enumerate(results):
        for i, view in enumerate(r.views):
            to_pil(view).save(folder / view_file(k, i))
    for c in comparisons(results):  # one figure per prompt and seed, the methods overlaid
        histories = c.histories()
        if histories:
            title = f"“{c.prompt}” · seed {c.seed}: " + " vs ".join(m.upper() for m in histories)
            (folder / c.curve).write_bytes(curves_png(histories, title))
    contact_sheet(results).save(folder / "contact.png")
    (folder / "report.html").write_text(report_html(results, groups, settings), encoding="utf-8")


def _write_csv(results: Sequence[RunEval], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["run", "prompt", "method", "seed", "step", "view", "clip_score", "clip_iqa", "opacity", "diverged"]
        )
        for r in results:
            for i, (c, q, o) in enumerate(zip(r.clip_score, r.clip_iqa, r.opacity)):
                writer.writerow(
                    [str(r.run), r.prompt, r.method, r.seed, r.step, i, f"{c:.4f}", f"{q:.4f}", f"{o:.4f}", r.diverged]
                )


def contact_sheet(results: Sequence[RunEval]) -> Image.Image:
    """One row per run under its label and means, one column per view under its azimuth."""
    azimuths = [[f"az {a:g}°" for a in view_azimuths(len(r.views))] for r in results]
    titles = [
        f"{r.label}  CLIP {fmt(r.summary()['clip_score'])}  IQA {fmt(r.summary()['clip_iqa'], 3)}"
        + ("  DIVERGED" if r.diverged else "" if r.finished else "  UNFINISHED")
        for r in results
    ]
    return captioned_grid([r.views for r in results], azimuths, titles)


def _finite(obj: Any) -> Any:
    """NaN/inf as null, so metrics.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
