"""report.html: runs of one prompt and seed side by side, view by view.

The page is self-contained (inline CSS, system fonts, images relative to it in ``views/``), so
it opens offline from the report folder. Runs are grouped by (prompt, seed); within a group the
methods sit next to each other at every azimuth, the baseline (SDS) first.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..training.reports import METHOD_COLOURS, view_azimuths
from .evaluate import RunEval

METHOD_ORDER = ("sds", "sdi")
"""The baseline first, as ``compare`` trains them."""
VIEW_PX = 140
"""Displayed size of a view: four SDS | SDI pairs to a 1280 px wide window."""


@dataclass
class Comparison:
    """The runs of one prompt and seed, in method order, with their indices in the results."""

    index: int
    prompt: str
    seed: int
    members: list[tuple[int, RunEval]]

    @property
    def curve(self) -> str:
        """The loss-curve file of the group, relative to the report."""
        return f"views/group{self.index}_loss.png"

    def histories(self) -> dict[str, list[dict[str, float]]]:
        """The members' loss histories keyed by method (by run name where a method repeats)."""
        methods = [r.method for _, r in self.members]
        return {
            r.method if methods.count(r.method) == 1 else r.run.name: r.history for _, r in self.members if r.history
        }


def comparisons(results: Sequence[RunEval]) -> list[Comparison]:
    """The results grouped by (prompt, seed), groups in order of first appearance."""
    groups: dict[tuple[str, int], list[tuple[int, RunEval]]] = {}
    for k, r in enumerate(results):
        groups.setdefault((r.prompt, r.seed), []).append((k, r))
    return [
        Comparison(j, p, s, sorted(m, key=lambda kr: (_rank(kr[1].method), kr[1].run.name)))
        for j, ((p, s), m) in enumerate(groups.items())
    ]


def _rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def view_file(k: int, i: int) -> str:
    """Run ``k``'s view ``i``, relative to the report."""
    return f"views/run{k}_view{i}.png"


def title(results: Sequence[RunEval]) -> str:
    """What was compared: the methods and the prompt (or how many prompts)."""
    methods = " vs ".join(m.upper() for m in _methods(results))
    prompts = list(dict.fromkeys(r.prompt for r in results))
    what = f"“{prompts[0]}”" if len(prompts) == 1 else f"{len(prompts)} prompts"
    return f"{methods}: {what}"


def subtitle(results: Sequence[RunEval], settings: dict[str, Any]) -> str:
    """Seeds, presets, run counts and the evaluation settings, in one line."""
    seeds = sorted({r.seed for r in results})
    presets = sorted({r.preset for r in results if r.preset})
    unfinished = sum(not r.finished and not r.diverged for r in results)
    diverged = sum(bool(r.diverged) for r in results)
    parts = [
        ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds)),
        ("preset " if len(presets) == 1 else "presets ") + ", ".join(presets) if presets else "",
        f"{len(results)} runs ({unfinished} unfinished, {diverged} diverged)",
        f"{settings.get('views')} views of {settings.get('size')} px",
        f"CLIP {settings.get('clip')}",
    ]
    return " · ".join(p for p in parts if p)


def report_html(results: Sequence[RunEval], groups: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """The whole page."""
    head = html.escape(title(results))
    small = "pixelated" if (settings.get("size") or VIEW_PX) < VIEW_PX else "auto"
    sections = "\n".join(_section(c) for c in comparisons(results))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{head}</title>
<style>{_css(small)}</style></head><body>
<h1>{head}</h1>
<p class="sub">{html.escape(subtitle(results, settings))}</p>
{_summary(groups)}
<p class="note">CLIP score: 100 · max(cos, 0) of each view against the run's prompt. CLIP-IQA: the
probability of “Good photo.” over “Bad photo.”. Means leave diverged and unfinished runs out.
Dashed amber outline: unfinished run; red outline: diverged run.</p>
{sections}
</body></html>
"""


def _methods(results: Sequence[RunEval]) -> list[str]:
    return sorted(dict.fromkeys(r.method for r in results), key=_rank)


def _css(rendering: str) -> str:
    colours = "".join(f".{m}{{--c:{c}}}" for m, c in METHOD_COLOURS.items())
    return f"""
body{{font:15px/1.4 system-ui,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:20px 24px;color:#1b1b1b;
max-width:1232px}}
h1{{font-size:24px;margin:0 0 2px}} h2{{font-size:18px;margin:26px 0 4px}} .sub{{margin:0 0 14px;color:#444}}
table{{border-collapse:collapse;font-size:14px}} th,td{{border:1px solid #ccc;padding:3px 10px;text-align:right}}
th{{background:#f2f2f2}} td.l,th.l{{text-align:left}} .note{{font-size:13px;color:#444;max-width:1000px}}
{colours} .tag{{display:inline-block;padding:0 6px;border-radius:3px;background:var(--c);color:#fff;
font-weight:600;font-size:13px}}
.run{{margin:2px 0;font-size:14px}} .badge{{padding:0 6px;border-radius:3px;font-size:13px;font-weight:600}}
.badge.unfinished{{background:#fff1c2;color:#6b4e00}} .badge.diverged{{background:#fde2e4;color:#8b0016}}
.views{{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}}
figure.view{{margin:0;padding:5px 6px;border:1px solid #ddd;border-radius:4px}}
figure.view figcaption{{font-size:13px;font-weight:600;margin:0 0 3px}}
.pair{{display:flex;gap:4px}} .cell{{width:{VIEW_PX}px;font-size:12px;line-height:1.3}}
.cell img{{display:block;width:{VIEW_PX}px;height:{VIEW_PX}px;box-sizing:border-box;border-top:5px solid var(--c);
image-rendering:{rendering}}}
.cell.unfinished img{{outline:3px dashed #d99a00;outline-offset:-3px}}
.cell.diverged img{{outline:3px solid #b00020;outline-offset:-3px}}
img.curve{{display:block;max-width:100%;margin-top:6px}}"""


def _summary(groups: list[dict[str, Any]]) -> str:
    extra = [k for k in ("psnr", "mask_iou") if any(k in g for g in groups)]
    head = "".join(f"<th>{k}</th>" for k in ("runs", "unfinished", "diverged", "CLIP score", "CLIP-IQA", *extra))
    rows = "".join(
        f'<tr><td class="l">{html.escape(g["prompt"])}</td><td class="l">{_tag(g["method"])}</td>'
        f"<td>{g['runs']}</td><td>{g['unfinished']}</td><td>{g['diverged']} ({g['diverged_share']:.0%})</td>"
        f"<td>{fmt(g['clip_score'])}</td><td>{fmt(g['clip_iqa'], 3)}</td>"
        + "".join(f"<td>{fmt(g.get(k, math.nan))}</td>" for k in extra)
        + "</tr>"
        for g in sorted(groups, key=lambda g: (g["prompt"], _rank(g["method"])))
    )
    return f'<table class="summary"><tr><th class="l">prompt</th><th class="l">method</th>{head}</tr>{rows}</table>'


def _section(c: Comparison) -> str:
    runs = "".join(_run_line(r) for _, r in c.members)
    n = max(len(r.views) for _, r in c.members)
    views = "".join(
        f'<figure class="view"><figcaption>az {a:g}°</figcaption><div class="pair">'
        + "".join(_cell(k, r, i) for k, r in c.members if i < len(r.views))
        + "</div></figure>"
        for i, a in enumerate(view_azimuths(n))
    )
    curve = f'<img class="curve" src="{c.curve}" alt="loss curves">' if any(r.history for _, r in c.members) else ""
    return (
        f'<section class="group"><h2>“{html.escape(c.prompt)}” · seed {c.seed}</h2>{runs}'
        f'<div class="views">{views}</div>{curve}</section>'
    )


def _run_line(r: RunEval) -> str:
    summary = r.summary()
    return (
        f'<p class="run">{_tag(r.method)} <code>{html.escape(r.run.name)}</code> · step {r.step} of {r.total}'
        f" · CLIP {fmt(summary['clip_score'])} · IQA {fmt(summary['clip_iqa'], 3)} {_badge(r)}</p>"
    )


def _cell(k: int, r: RunEval, i: int) -> str:
    state = _state(r)
    alt = f"{r.method.upper()} {r.run.name}, view {i}"
    return (
        f'<div class="cell {html.escape(r.method)} {state}"><img src="{view_file(k, i)}" alt="{html.escape(alt)}" '
        f'data-run="{k}" data-view="{i}" data-method="{html.escape(r.method)}">'
        f"<b>{r.method.upper()}</b> CLIP {fmt(r.clip_score[i])}<br>IQA {fmt(r.clip_iqa[i], 3)}"
        + (f"<br>{state}" if state else "")
        + "</div>"
    )


def _state(r: RunEval) -> str:
    return "diverged" if r.diverged else "" if r.finished else "unfinished"


def _badge(r: RunEval) -> str:
    if r.diverged:
        return f'<span class="badge diverged">diverged: {html.escape(r.diverged)}</span>'
    if not r.finished:
        what = f"unfinished: {r.status} at step {r.step} of {r.total}"
        return f'<span class="badge unfinished">{html.escape(what)}</span>'
    return ""


def _tag(method: str) -> str:
    return f'<span class="tag {html.escape(method)}">{html.escape(method.upper())}</span>'


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"
