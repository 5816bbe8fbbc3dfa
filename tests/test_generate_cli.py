"""``sdi-blender generate``: the tiny test preset end to end, resume, and bad input."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sdi_blender.cli import main
from sdi_blender.errors import program
from sdi_blender.server.training import run_dir

SMALL = [
    "--model",
    "tiny",
    "--preset",
    "test",
    "--device",
    "cpu",
    "--resolution",
    "32",
    "--steps",
    "4",
    "--preview-every",
    "2",
    "--checkpoint-every",
    "2",
]


@pytest.mark.e2e
def test_generate_test_preset_end_to_end(tmp_path: Path):
    run = tmp_path / "apple"
    script = Path(sys.executable).parent / "sdi-blender"
    proc = subprocess.run(
        [str(script), "generate", "a red apple", "--model", "tiny", "--preset", "test", "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "30/30" in proc.stderr  # the progress bar reached the end
    config = json.loads((run / run_dir.CONFIG).read_text())
    assert (config["steps"], config["resolution"], config["method"]) == (30, 64, "sdi")
    turntable = Image.open(run / run_dir.TURNTABLE)  # four views under their azimuth captions
    assert turntable.width == 4 * 64 and 64 < turntable.height < 2 * 64
    assert Image.open(run / run_dir.LOSS_CURVE).size[0] > 100
    assert sorted(p.name for p in (run / run_dir.PREVIEWS).iterdir()) == [
        "step_000010.png",
        "step_000020.png",
        "step_000030.png",
    ]


def test_resume_with_more_steps_and_a_new_prompt(tmp_path: Path):
    run = tmp_path / "r"
    assert main(["generate", "a red apple", *SMALL, "--out", str(run)]) == 0
    assert main(["generate", "--resume", str(run), "--steps", "2", "--prompt", "a green apple"]) == 0
    config = json.loads((run / run_dir.CONFIG).read_text())
    assert config["prompt"] == "a green apple" and config["steps"] == 6
    assert json.loads((run / run_dir.STATE).read_text())["step"] == 6
    assert len((run / run_dir.METRICS).read_text().splitlines()) == 6


def _start_line(line: str) -> bool:
    """The lines a run prints before anything slow (what it is, its estimate, the model loading):
    a check that fails once the run is known (e.g. its checkpoint) follows them."""
    return line.startswith(("SDI '", "SDS '", "estimated: ", "loading the model "))


def _bad(capsys, argv, message, tmp_path=None):
    before = sorted(tmp_path.rglob("*")) if tmp_path else None
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not _start_line(line)]
    assert len(lines) == 1 and lines[0].startswith("sdi-blender: error:"), lines  # one line, no traceback
    assert message in lines[0], lines[0]
    if tmp_path:
        assert sorted(tmp_path.rglob("*")) == before  # nothing created or overwritten


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resolution", "60"], "multiple of 8"),
        (["--steps", "0"], "steps must be positive"),
        (["--steps", "-5"], "steps must be positive"),
        (["--model", "/no/such/model"], "does not exist"),
    ],
)
def test_bad_settings(capsys, tmp_path, extra, message):
    _bad(capsys, ["generate", "x", *SMALL, *extra, "--out", str(tmp_path / "run")], message, tmp_path)


def test_unwritable_run_folder(capsys, tmp_path):
    _bad(capsys, ["generate", "x", *SMALL, "--out", "/proc/sdi-run"], "not writable")
    (tmp_path / "file").write_text("x")
    _bad(capsys, ["generate", "x", *SMALL, "--out", str(tmp_path / "file")], "is a file", tmp_path)


def test_existing_run_is_refused_unless_overwrite(capsys, tmp_path):
    run = tmp_path / "r"
    assert main(["generate", "a red apple", *SMALL, "--out", str(run)]) == 0
    capsys.readouterr()
    stamp = (run / run_dir.CHECKPOINT).stat().st_mtime_ns
    _bad(capsys, ["generate", "a pear", *SMALL, "--out", str(run)], "already holds a run", tmp_path)
    assert (run / run_dir.CHECKPOINT).stat().st_mtime_ns == stamp
    assert main(["generate", "a pear", *SMALL, "--out", str(run), "--overwrite"]) == 0
    assert json.loads((run / run_dir.CONFIG).read_text())["prompt"] == "a pear"


def test_foreign_folder_is_refused(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    _bad(capsys, ["generate", "x", *SMALL, "--out", str(tmp_path)], "holds no run", tmp_path)


def test_bad_resumes(capsys, tmp_path):
    _bad(capsys, ["generate", "--resume", str(tmp_path / "none")], "holds no run to resume")
    run = tmp_path / "r"
    assert main(["generate", "a red apple", *SMALL, "--out", str(run)]) == 0
    capsys.readouterr()
    _bad(capsys, ["generate", "--resume", str(run)], "already complete", tmp_path)
    _bad(
        capsys,
        ["generate", "--resume", str(run), "--preset", "paper", "--steps", "1"],
        "--steps or --preset when resuming, not both",
        tmp_path,
    )
    _bad(
        capsys,
        ["generate", "--resume", str(run), "--resolution", "64", "--steps", "1"],
        "cannot change resolution",
        tmp_path,
    )
    config = json.loads((run / run_dir.CONFIG).read_text())
    config["field"]["n_levels"] = 8
    (run / run_dir.CONFIG).write_text(json.dumps(config))
    _bad(capsys, ["generate", "--resume", str(run), "--steps", "1"], "incompatible", tmp_path)
    _bad(capsys, ["generate", "x", "--out", str(run), "--resume", str(run)], "exactly one of")


@pytest.mark.parametrize("abort_at_call", [1, 4])
def test_a_second_ctrl_c_leaves_nothing_or_a_resumable_run(tmp_path: Path, capsys, monkeypatch, abort_at_call):
    """Abort (the second Ctrl-C) before the first checkpoint: nothing stays, so --out works again;
    after one: the run stays, marked interrupted, and --resume continues it."""
    from sdi_blender.server.commands import generate

    calls = [0]

    def cancel(self) -> bool:  # the trainer asks before each step; the user aborts on call N
        calls[0] += 1
        if calls[0] == abort_at_call:
            raise KeyboardInterrupt
        return False

    monkeypatch.setattr(generate._CancelOnInterrupt, "__call__", cancel)
    run = tmp_path / "r"
    assert main(["generate", "a red apple", *SMALL, "--out", str(run)]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    monkeypatch.undo()
    if abort_at_call == 1:
        assert err.endswith("interrupted before the first checkpoint; nothing was kept")
        assert not (run / run_dir.CONFIG).exists()
        assert main(["generate", "a red apple", *SMALL, "--out", str(run)]) == 0  # no --overwrite needed
    else:
        assert run_dir.read_state(run)["status"] == "interrupted"
        command = shlex.split(err.split(" with: ", 1)[1])  # the hint, run as written
        assert command[0] == program("sdi-blender") and command[1:] == ["generate", "--resume", str(run)]
        assert main([*command[1:], "--device", "cpu"]) == 0
        assert run_dir.read_state(run)["status"] == "done"
