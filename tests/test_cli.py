"""The ``sdi-blender distill2d`` command: end to end on the tiny model, and bad input."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from sdi_blender.cli import main

TINY = ["--model", "tiny", "--device", "cpu"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the installed ``sdi-blender`` console script of this environment."""
    script = Path(sys.executable).parent / "sdi-blender"
    assert script.exists(), "the package is not installed (run vendor_setup.py)"
    return subprocess.run(
        [str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )


@pytest.mark.e2e
def test_distill2d_tiny_50_steps_end_to_end(tmp_path: Path):
    out = tmp_path / "apple.png"
    proc = _run("distill2d", "a red apple", *TINY, "--steps", "50", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (64, 64)
    strip = Image.open(tmp_path / "apple_strip.png")  # frames under their step/t captions
    assert strip.width == 8 * 64 and 64 < strip.height < 2 * 64
    assert "SDI" in proc.stderr and "50/50" in proc.stderr  # the progress bar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apple.png", "apple_strip.png"]


def test_compare_writes_sds_and_sdi_side_by_side(tmp_path: Path):
    out = tmp_path / "cmp.png"
    assert main(["distill2d", "a ninja", *TINY, "--steps", "6", "--frames", "3", "--compare", "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.size == (128, 64)
    left, right = image.crop((0, 16, 64, 64)), image.crop((64, 16, 128, 64))
    assert left.tobytes() != right.tobytes()  # SDS and SDI differ from the same seed
    strip = Image.open(tmp_path / "cmp_strip.png")  # a titled, captioned row per method
    assert strip.width == 3 * 64 and 2 * 64 < strip.height < 4 * 64


def test_same_seed_same_image_other_seed_other_image(tmp_path: Path):
    paths = {}
    for name, seed in [("a", "3"), ("b", "3"), ("c", "4")]:
        paths[name] = tmp_path / f"{name}.png"
        assert main(["distill2d", "a ninja", *TINY, "--steps", "4", "--seed", seed, "--out", str(paths[name])]) == 0
    data = {k: Image.open(p).tobytes() for k, p in paths.items()}
    assert data["a"] == data["b"] != data["c"]


BAD_INPUT = [
    (["--method", "vsd"], "invalid choice: 'vsd'"),
    (["--steps", "0"], "steps must be between 1"),
    (["--steps", "-3"], "steps must be between 1"),
    (["--t-max", "1000"], "timesteps out of range"),
    (["--t-min", "0"], "timesteps out of range"),
    (["--t-min", "500", "--t-max", "400"], "timesteps out of range"),
    (["--model", "/no/such/model"], "model path '/no/such/model' does not exist"),
    (["--out", "/no/such/dir/x.png"], "output folder '/no/such/dir' does not exist"),
    (["--out", "/proc/sdi-test.png"], "cannot write to '/proc'"),
    (["--out", "{tmp}"], "is a directory"),
    (["--out", "{tmp}/x.gif"], "unsupported output format"),
    (["--lr", "0"], "learning rate must be positive"),
    (["--frames", "0"], "frames must be at least 1"),
    (["--device", "banana"], "unknown device 'banana'"),
    pytest.param(
        ["--device", "cuda:0"],
        "CUDA is not available",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    ),
]


@pytest.mark.parametrize("extra, message", BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(extra, message, tmp_path, capsys):
    extra = [a.format(tmp=tmp_path) for a in extra]
    out = ["--out", str(tmp_path / "img.png")] if "--out" not in extra else []
    before = set(tmp_path.iterdir())
    with pytest.raises(SystemExit) if "invalid choice" in message else _no_raise():
        code = main(["distill2d", "a prompt", "--model", "tiny", "--steps", "2", *out, *extra])
        assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("sdi-blender: error:")
    assert set(tmp_path.iterdir()) == before


def test_empty_prompt_is_rejected(tmp_path, capsys):
    assert main(["distill2d", "   ", *TINY, "--out", str(tmp_path / "x.png")]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.e2e
def test_bad_input_through_the_console_has_no_traceback(tmp_path: Path):
    proc = _run("distill2d", "", *TINY, "--out", str(tmp_path / "x.png"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sdi-blender: error: the prompt is empty; describe what the image should show"
    ]
    proc = _run("distill2d", "x", "--method", "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unavailable_model_is_one_line(tmp_path, capsys):
    code = main(
        ["distill2d", "x", "--model", "sdi-test-nonexistent/model", "--device", "cpu", "--out", str(tmp_path / "x.png")]
    )
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "hf download sdi-test-nonexistent/model" in lines[0]
    assert not any(tmp_path.iterdir())
    hf = shlex.split(lines[0].split("`")[1])[0]  # the hint's command runs as written
    assert shutil.which(hf), hf


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["generate", "x", "--stepz", "5"], "did you mean --steps?"),
        (["export", "run", "--resolutoin", "64"], "did you mean --resolution?"),
        (["generate", "a", "red", "apple"], 'quote a prompt of several words: "a ripe strawberry"'),
    ],
)
def test_usage_errors_suggest_the_next_step(argv, hint, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and err.strip().endswith(hint)


def test_abbreviated_options_are_not_guessed(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "x", "--step", "5", "--out", "nowhere"])  # --steps abbreviated
    assert "unrecognized arguments: --step" in capsys.readouterr().err
