"""End-of-run pictures: loss curves, the turntable strip and the snapshot strip.

Every frame of a strip gets its caption in a band above it (azimuth, or step and t) rather
than over the picture, so a label never hides the object and stays readable on a small frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..util.images import grid, png_bytes, to_pil

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# The panels: each loss term (the history holds them unweighted) and the timestep schedule,
# titled with what they measure.
CURVES: dict[str, str] = {
    "total": "total: weighted sum of the terms",
    "guidance": "guidance: score-distillation loss",
    "orient": "orient: back-facing normals",
    "sparsity": "sparsity: mean opacity",
    "opaque": "opaque: entropy of the opacity",
    "z_variance": "z_variance: depth spread on rays",
    "convex": "convex: convexity prior, minimised\n< 0 where the surface bulges",
    "t": "t: diffusion timestep",
}
COLUMNS = 4
"""Panels side by side: the eight fit two rows of a 1220 px figure (a report page's width)."""
METHOD_COLOURS = {"sds": "#c8500a", "sdi": "#1d5fa8"}
"""One colour per method, in the curves and the HTML report alike."""
TEXT, BAND = (20, 20, 20), (240, 240, 240)


def view_azimuths(n: int) -> list[float]:
    """The azimuths (degrees) of n turntable views, as ``scene.cameras.turntable_cameras`` places them."""
    return [360.0 * i / n for i in range(n)]


# -- strips ---------------------------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _fitted_font(lines: Sequence[str], width: int, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The largest font up to ``size`` (at least 9 px) in which every line fits ``width``."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    while size > 9 and max(draw.textlength(line, font=_font(size)) for line in lines) > width:
        size -= 1
    return _font(size)


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` (a long word stays whole)."""
    draw, lines = ImageDraw.Draw(Image.new("RGB", (1, 1))), [""]
    for word in text.split(" "):
        trial = f"{lines[-1]} {word}".strip()
        if lines[-1] and draw.textlength(trial, font=font) > width:
            lines.append(word)
        else:
            lines[-1] = trial
    return lines


def _band(width: int, lines: Sequence[str], font, centred: bool) -> Image.Image:
    """A light band holding ``lines`` of text."""
    line_h = round(font.size * 1.25) if hasattr(font, "size") else 12
    band = Image.new("RGB", (width, line_h * len(lines) + 4), BAND)
    draw = ImageDraw.Draw(band)
    for k, line in enumerate(lines):
        x = width // 2 if centred else 4
        draw.text((x, 2 + k * line_h), line, fill=TEXT, font=font, anchor="ma" if centred else "la")
    return band


def _stack(parts: Sequence[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), BAND)
    for k, part in enumerate(parts):
        out.paste(part, (0, sum(p.height for p in parts[:k])))
    return out


def captioned_grid(
    rows: Sequence[Sequence[Tensor]],
    captions: Sequence[Sequence[str]],
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """Rows of equally sized [3, H, W] frames, each under its caption ("\\n" splits lines), each
    row under its title when ``titles`` is given; the frames' pixels are kept untouched."""
    width = rows[0][0].shape[2]
    parts = []
    for r, (frames, texts) in enumerate(zip(rows, captions)):
        split = [t.split("\n") for t in texts]
        font = _fitted_font([line for lines in split for line in lines], width - 4, max(12, min(width // 12, 18)))
        depth = max(len(lines) for lines in split)
        bands = [_band(width, lines + [""] * (depth - len(lines)), font, True) for lines in split]
        row_w = width * len(frames)
        if titles is not None:
            title_font = _font(max(12, min(row_w // 30, 18)))
            parts.append(_band(row_w, _wrap(titles[r], title_font, row_w - 8), title_font, False))
        caption_row = Image.new("RGB", (row_w, bands[0].height))
        for k, band in enumerate(bands):
            caption_row.paste(band, (k * width, 0))
        parts += [caption_row, to_pil(grid([list(frames)]))]
    return _stack(parts)


def titled(image: Image.Image, title: str) -> Image.Image:
    """``image`` under a title band, as :func:`captioned_grid` titles its rows."""
    font = _font(max(12, min(image.width // 30, 18)))
    return _stack([_band(image.width, _wrap(title, font, image.width - 8), font, False), image.convert("RGB")])


def turntable_image(views: Sequence[Tensor]) -> Image.Image:
    """Turntable views ([3, H, W] in [0, 1]) side by side, each captioned with its azimuth."""
    return captioned_grid([views], [[f"az {a:g}°" for a in view_azimuths(len(views))]])


def strip_png(views: list[Tensor]) -> bytes:
    """The turntable strip as PNG bytes (:func:`turntable_image`)."""
    return png_bytes(turntable_image(views))


def snapshot_strip(
    frames: Sequence[Sequence[Tensor]],
    steps: Sequence[Sequence[int]],
    timesteps: Sequence[Sequence[int]],
    titles: Sequence[str] | None = None,
) -> Image.Image:
    """Snapshots along an optimisation, one row per run, each frame captioned with its step
    (1-based) and the diffusion timestep t of that step."""
    captions = [[f"step {s}\nt {t}" for s, t in zip(ss, ts)] for ss, ts in zip(steps, timesteps)]
    return captioned_grid(frames, captions, titles)


# -- loss curves ----------------------------------------------------------------------------
def loss_curve_png(history: list[dict[str, float]], prompt: str = "", method: str = "") -> bytes:
    """One run's loss curves, titled with its prompt and method."""
    title = " · ".join(filter(None, [f"“{prompt}”" if prompt else "", method.upper()]))
    return curves_png({method: history}, title)


def curves_png(histories: Mapping[str, list[dict[str, float]]], title: str) -> bytes:
    """The loss curves of several runs (keyed by method) overlaid, one panel per term."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to PNG
    import matplotlib.pyplot as plt

    fig = curves_figure(histories, title)
    png = png_bytes(fig, dpi=100)
    plt.close(fig)
    return png


def curves_figure(histories: Mapping[str, list[dict[str, float]]], title: str) -> Figure:
    """One panel per loss term (raw values faint, a running mean bold) and one for t, per method."""
    import matplotlib.pyplot as plt

    present = {k for h in histories.values() for k in (h[0] if h else {})}
    names = [n for n in CURVES if n in present]
    rows = max(-(-len(names) // COLUMNS), 1)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(12.2, 0.7 + 2.3 * rows), sharex=True, squeeze=False)
    for ax, name in zip(axes.flat, names):
        for method, history in histories.items():
            _plot_term(ax, history, name, METHOD_COLOURS.get(method), method.upper() or None)
        ax.set_title(CURVES[name], fontsize=10, loc="left")
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.25)
        if name == "convex":
            ax.axhline(0.0, color="#666666", lw=0.8, ls="--")
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=10)
    if len(histories) > 1:
        axes[0, 0].legend(fontsize=10, loc="upper right")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.tight_layout()
    return fig


def _plot_term(ax: Axes, history: list[dict[str, float]], name: str, colour: str | None, label: str | None) -> None:
    rows = [h for h in history if name in h]
    steps, values = [h["step"] for h in rows], [h[name] for h in rows]
    if name == "t":  # a schedule, not a noisy loss: no smoothing
        ax.plot(steps, values, lw=1.2, color=colour, label=label)
        return
    (mean,) = ax.plot(steps, _running_mean(values, max(len(values) // 50, 1)), lw=1.3, color=colour, label=label)
    ax.plot(steps, values, lw=0.6, alpha=0.3, color=mean.get_color(), zorder=mean.get_zorder() - 1)


def _running_mean(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out
