"""The pictures a run and an evaluation leave: captioned strips, titled loss curves, report.html.

Sample pictures go to tests/output/ (ignored by git) to be looked at.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy
import pytest
import torch
from PIL import Image

from sdi_blender.server.commands.distill2d import Distill2DConfig, distill2d
from sdi_blender.server.diffusion.guidance import annealed_timestep
from sdi_blender.server.evaluation.evaluate import RunEval, group_summary
from sdi_blender.server.evaluation.report import write_report
from sdi_blender.server.scene.cameras import CameraConfig, turntable_cameras
from sdi_blender.server.training import reports
from sdi_blender.server.util.images import grid, to_pil

OUTPUT = Path(__file__).parent / "output"
COLOURS = [(0.9, 0.3, 0.1), (0.2, 0.7, 0.3), (0.1, 0.3, 0.9), (0.9, 0.8, 0.1)]


def _solid(rgb: tuple[float, float, float], size: int = 48) -> torch.Tensor:
    return torch.tensor(rgb).view(3, 1, 1).expand(3, size, size).clone()


def _save(image: Image.Image | bytes, name: str) -> Image.Image:
    OUTPUT.mkdir(exist_ok=True)
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    image.save(OUTPUT / name)
    return image


def _bands(image: Image.Image, frame: int, count: int) -> list[bytes]:
    """The caption bands above the frames of a one-row strip whose frames are ``frame`` px."""
    top = image.height - frame
    return [image.crop((k * frame, 0, (k + 1) * frame, top)).tobytes() for k in range(count)]


def _has_text(band: bytes) -> bool:
    return min(band) < 100  # dark glyphs on the light band


def test_view_azimuths_are_the_turntable_cameras():
    assert reports.view_azimuths(8) == turntable_cameras(8, 4, 4, CameraConfig()).azimuth_deg.tolist()


def test_turntable_strip_captions_each_view_with_its_azimuth():
    views = [_solid(c) for c in COLOURS]
    image = _save(reports.turntable_image(views), "turntable.png")
    assert image.width == 4 * 48 and image.height > 48 + 10  # a caption band above the frames
    assert image.crop((0, image.height - 48, image.width, image.height)).tobytes() == to_pil(grid([views])).tobytes()
    bands = _bands(image, 48, 4)
    assert all(map(_has_text, bands)) and len(set(bands)) == 4  # "az 0°", "az 90°", … all differ


def test_snapshot_strip_titles_rows_and_captions_step_and_t():
    frames = [_solid(c, 64) for c in COLOURS[:3]]
    image = _save(
        reports.snapshot_strip([frames, frames], [[1, 5, 10]] * 2, [[980, 540, 20]] * 2, ["SDS", "SDI"]),
        "snapshots.png",
    )
    single = reports.snapshot_strip([frames], [[1, 5, 10]], [[980, 540, 20]])
    row = single.height  # the captions and frames of one row
    title = (image.height - 2 * row) // 2
    assert image.width == 3 * 64 and title > 10  # a title band above each row
    assert image.crop((0, title, 192, title + row)).tobytes() == single.tobytes()
    assert image.crop((0, 0, 192, title)).tobytes() != image.crop((0, title + row, 192, 2 * title + row)).tobytes()
    assert len(set(_bands(single, 64, 3))) == 3  # each frame its own step and t


def test_distill2d_keeps_the_timestep_of_each_snapshot(prior):
    cfg = Distill2DConfig("a red apple", method="sds", model="tiny", steps=2, frames=2)
    result = distill2d(cfg, prior)
    assert result.frame_steps == [0, 1]
    assert result.frame_timesteps == [annealed_timestep(s, 2, 0.98, 0.02, 1000) for s in (0, 1)]
    assert result.frame_timesteps[0] > result.frame_timesteps[1]


def _history(steps: int, offset: float) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(int(offset * 100))
    noise = torch.rand(steps, generator=g).tolist()
    return [
        {
            "step": s,
            "t": 980 - 900 * s / steps,
            "total": 1 / s + offset + 0.1 * n,
            "guidance": 0.5 / s + 0.1 * n,
            "orient": 0.01 * n,
            "sparsity": 0.1,
            "opaque": 0.3 - 0.001 * s,
            "z_variance": 0.02,
            "convex": -0.05 - 0.01 * n,
        }
        for s, n in zip(range(1, steps + 1), noise)
    ]


def test_loss_curves_are_titled_and_explain_the_convexity_term():
    import matplotlib.pyplot as plt

    fig = reports.curves_figure({"sds": _history(40, 0.2), "sdi": _history(40, 0.0)}, "“a red apple” · seed 0")
    try:
        assert fig._suptitle is not None and fig._suptitle.get_text() == "“a red apple” · seed 0"
        titles = {ax.get_title(loc="left").split(":")[0]: ax for ax in fig.axes if ax.get_visible()}
        assert set(titles) == set(reports.CURVES)  # every term and t, each on its own axis
        convex = titles["convex"]
        assert "< 0 where the surface bulges" in convex.get_title(loc="left")  # why it is negative
        assert any(list(line.get_ydata()) == [0.0, 0.0] for line in convex.get_lines())  # the zero line
        assert [t.get_text() for t in titles["total"].get_legend().get_texts()] == ["SDS", "SDI"]
        colours = {line.get_color() for line in titles["guidance"].get_lines()}
        assert colours == {reports.METHOD_COLOURS["sds"], reports.METHOD_COLOURS["sdi"]}
    finally:
        plt.close(fig)


def test_a_runs_loss_curve_is_titled_with_prompt_and_method(monkeypatch):
    seen = []
    figure = reports.curves_figure
    monkeypatch.setattr(reports, "curves_figure", lambda h, title: seen.append((list(h), title)) or figure(h, title))
    image = _save(reports.loss_curve_png(_history(30, 0.0), "a red apple", "sdi"), "loss_curve.png")
    assert seen == [(["sdi"], "“a red apple” · SDI")]
    assert image.width == 1220 and image.height > 300


def test_the_trainer_leaves_a_captioned_turntable_and_a_titled_loss_curve(trained_run):
    from sdi_blender.server.training import run_dir

    turntable = Image.open(trained_run / run_dir.TURNTABLE).convert("RGB")  # one 32 px view
    assert turntable.width == 32 and turntable.height > 32 + 10
    assert _has_text(_bands(turntable, 32, 1)[0])
    assert Image.open(trained_run / run_dir.LOSS_CURVE).width == 1220  # the titled figure's width


# -- report.html in headless Chromium -----------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1280, 900)
VIEWS, SIZE = 4, 64
PROBE = """<script>addEventListener("load", () => {
const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const texts = [...document.querySelectorAll("body *")].filter(e => [...e.childNodes].some(
  n => n.nodeType === 3 && n.textContent.trim()));
const out = {
  width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
  images: [...document.querySelectorAll("img[data-run]")].map(e => ({
    run: +e.dataset.run, view: +e.dataset.view, method: e.dataset.method, loaded: e.naturalWidth > 0,
    state: e.parentElement.className, box: box(e)})),
  curves: [...document.querySelectorAll("img.curve")].map(e => e.naturalWidth),
  smallest_font: Math.min(...texts.map(e => parseFloat(getComputedStyle(e).fontSize))),
};
const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
});</script>"""


def _disc(colour: tuple[float, float, float], size: int = SIZE) -> torch.Tensor:
    """A coloured disc on grey: the object a view would show."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < (size / 3) ** 2
    grey = torch.full((3, size, size), 0.85)
    return torch.where(inside, torch.tensor(colour).view(3, 1, 1), grey)


def _fake_run(method: str, seed: int, k: int, status: str = "done", diverged: str = "") -> RunEval:
    colours = [(0.2 + 0.15 * i, 0.1 + 0.05 * k, 0.9 - 0.2 * i) for i in range(VIEWS)]
    steps = 40 if status == "done" else 17
    return RunEval(
        run=Path(f"/runs/{method}-seed{seed}"),
        prompt="a red apple",
        method=method,
        seed=seed,
        step=steps,
        clip_score=[20.0 + i + k for i in range(VIEWS)],
        clip_iqa=[0.4 + 0.01 * i for i in range(VIEWS)],
        opacity=[0.2] * VIEWS,
        diverged=diverged,
        status=status,
        total=40,
        preset="draft",
        views=[_disc(c) for c in colours],
        history=_history(steps, 0.1 * k),
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[RunEval]]:
    """A report of two seeds × SDS/SDI, the SDI of seed 1 cancelled half-way."""
    results = [
        _fake_run("sdi", 0, 0),  # out of order on purpose: the page puts SDS first
        _fake_run("sds", 0, 1),
        _fake_run("sds", 1, 2),
        _fake_run("sdi", 1, 3, status="cancelled"),
    ]
    out = tmp_path_factory.mktemp("report") / "report"
    write_report(results, group_summary(results), out, {"clip": "tiny", "views": VIEWS, "size": SIZE})
    return out, results


def _chromium(page: Path, profile: Path, *args: str) -> str:
    import subprocess

    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True).stdout


def test_report_page_is_self_contained(report):
    out, results = report
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page and "@import" not in page  # nothing fetched
    assert "SDS vs SDI: “a red apple”" in page and "seeds 0, 1 · preset draft" in page
    assert "unfinished: cancelled at step 17 of 40" in page
    for k in range(len(results)):
        assert all((out / f"views/run{k}_view{i}.png").is_file() for i in range(VIEWS))
    assert (out / "views/group0_loss.png").is_file() and (out / "views/group1_loss.png").is_file()


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="no /usr/bin/chromium (python vendor_setup.py --dev installs it)")
def test_report_lays_the_methods_side_by_side_in_chromium(report, tmp_path):
    out, results = report
    probe = out / "probe.html"  # beside report.html, so its relative images resolve
    probe.write_text((out / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(probe, tmp_path / "profile", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--dump-dom")
    probed = dom.split('<pre id="probe">')[1].split("</pre>")[0]
    layout = json.loads(probed.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert layout["width"] <= WINDOW[0] and layout["smallest_font"] >= 12  # no side scrolling, legible text
    assert layout["curves"] == [1220, 1220]  # both loss figures loaded, shown at full size
    images = {(i["run"], i["view"]): i for i in layout["images"]}
    assert len(images) == len(results) * VIEWS and all(i["loaded"] for i in images.values())
    for sds, sdi in ((1, 0), (2, 3)):  # per seed: SDS left of SDI at every azimuth, in one row
        for view in range(VIEWS):
            left, right = images[sds, view]["box"], images[sdi, view]["box"]
            assert (images[sds, view]["method"], images[sdi, view]["method"]) == ("sds", "sdi")
            assert left[1] == right[1] and 0 <= right[0] - left[2] <= 12, (left, right)
    assert {i["state"] for k, i in images.items() if k[0] == 3} == {"cell sdi unfinished"}

    height = min(int(layout["height"]), 6000)
    shot = tmp_path / "report.png"
    _chromium(out / "report.html", tmp_path / "profile", f"--window-size={WINDOW[0]},{height}", f"--screenshot={shot}")
    image = _save(Image.open(shot).convert("RGB"), "report.png")
    assert image.size == (WINDOW[0], height)
    assert numpy.asarray(image).std() > 20  # not blank
    for (k, view), info in images.items():  # each view's disc is where the page placed its image
        x0, y0, x1, y1 = info["box"]
        centre = image.getpixel((round((x0 + x1) / 2), round((y0 + y1) / 2 + 2)))
        expected = tuple(round(255 * c) for c in results[k].views[view][:, SIZE // 2, SIZE // 2].tolist())
        assert max(abs(a - b) for a, b in zip(centre, expected)) <= 3, (k, view, centre, expected)
