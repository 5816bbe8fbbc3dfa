"""The evaluation's files: metrics.json, metrics.csv, report.html and contact.png.

Everything is written into a staging folder and swapped in whole, so a failed report
never leaves a half-written one (and a previous report survives a failure).
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import UserError
from ..training.reports import loss_curve_png
from ..util.fileio import staged_folder
from ..util.images import grid, label, to_pil
from .evaluate import RunEval


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
            to_pil(view).save(folder / "views" / f"run{k}_view{i}.png")
        if r.history:
            (folder / "views" / f"run{k}_loss.png").write_bytes(loss_curve_png(r.history))
    contact_sheet(results).save(folder / "contact.png")
    (folder / "report.html").write_text(_html(results, groups, settings), encoding="utf-8")


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


def contact_sheet(results: Sequence[RunEval]):
    """One row per run, one column per view, each row captioned with the run and its means."""
    image = to_pil(grid([r.views for r in results]))
    height = results[0].views[0].shape[1]
    for k, r in enumerate(results):
        caption = f"{r.label}  CLIP {_fmt(r.summary()['clip_score'])}  IQA {_fmt(r.summary()['clip_iqa'], 3)}"
        image = label(image, caption + ("  DIVERGED" if r.diverged else ""), (2, k * height + 1))
    return image


def _html(results: Sequence[RunEval], groups: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    esc = html.escape
    rows = []
    for k, r in enumerate(results):
        cells = "".join(
            f'<td><img src="views/run{k}_view{i}.png"><br>CLIP {_fmt(c)} · IQA {_fmt(q, 3)}</td>'
            for i, (c, q) in enumerate(zip(r.clip_score, r.clip_iqa))
        )
        curve = f'<img class="curve" src="views/run{k}_loss.png">' if r.history else ""
        status = f'<b class="bad">diverged: {esc(r.diverged)}</b>' if r.diverged else "ok"
        rows.append(
            f"<tr><th>{esc(r.label)}<br><small>{esc(r.prompt)}</small><br>step {r.step} · {status}"
            f"<br>CLIP {_fmt(r.summary()['clip_score'])} · IQA {_fmt(r.summary()['clip_iqa'], 3)}"
            f"</th>{cells}<td>{curve}</td></tr>"
        )
    summary = "".join(
        f"<tr><td>{esc(g['prompt'])}</td><td>{g['method'].upper()}</td><td>{g['runs']}</td>"
        f"<td>{g['diverged_share']:.0%}</td><td>{_fmt(g['clip_score'])}</td>"
        f"<td>{_fmt(g['clip_iqa'], 3)}</td></tr>"
        for g in groups
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>SDI evaluation</title>
<style>body{{font-family:sans-serif}} td,th{{padding:4px;text-align:center;vertical-align:top;font-size:12px}}
img{{width:160px;image-rendering:pixelated}} img.curve{{width:320px}} .bad{{color:#b00}}</style></head><body>
<h1>Evaluation</h1>
<p>CLIP {esc(str(settings.get("clip")))}, {settings.get("views")} views of {settings.get("size")} px at the
evaluation camera. CLIP score: 100 · max(cos, 0) against the run's prompt; IQA: CLIP-IQA probability of
"Good photo." over "Bad photo.". Means leave diverged runs out.</p>
<table border="1"><tr><th>prompt</th><th>method</th><th>runs</th><th>diverged</th><th>CLIP score</th>
<th>CLIP-IQA</th></tr>{summary}</table>
<h2>Runs, view by view</h2>
<table border="1">{"".join(rows)}</table>
</body></html>
"""


def _fmt(value: float, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _finite(obj: Any) -> Any:
    """NaN/inf as null, so metrics.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
