"""``generate --seeds``: one normal run per seed, a contact sheet, and promoting one by resuming it."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sdi_blender import catalog
from sdi_blender.cli import main
from sdi_blender.server.training import run_dir

PROMPT = "an orange box with a blue ball on its front"
TOY = ["--model", "toyworld", "--preset", "toy", "--device", "cpu", "--steps", "8", "--checkpoint-every", "4"]


@pytest.mark.e2e
def test_two_variations_then_promoting_one_leaves_the_other_alone(toy_prior, tmp_path, capsys):
    out = tmp_path / "vars"
    assert main(["generate", PROMPT, *TOY, "--seeds", "3-4", "--out", str(out)]) == 0
    runs = [out / catalog.variation_folder(seed) for seed in (3, 4)]
    for seed, run in zip((3, 4), runs):
        assert run_dir.read_state(run)["status"] == "done" and run_dir.read_state(run)["step"] == 8
        assert json.loads((run / run_dir.CONFIG).read_text())["seed"] == seed
    turntable = Image.open(runs[0] / run_dir.TURNTABLE)
    sheet = Image.open(out / catalog.VARIATIONS_SHEET)
    # one row per seed, each under its title band
    assert sheet.width == turntable.width and 2 * turntable.height < sheet.height < 2.6 * turntable.height
    first = (runs[0] / run_dir.CHECKPOINT).read_bytes()
    assert first != (runs[1] / run_dir.CHECKPOINT).read_bytes()  # the seeds differ

    capsys.readouterr()
    assert main(["generate", "--resume", str(runs[1]), "--steps", "4"]) == 0
    assert run_dir.read_state(runs[1])["step"] == 12
    assert (runs[0] / run_dir.CHECKPOINT).read_bytes() == first
    assert run_dir.read_state(runs[0])["step"] == 8


def test_resuming_to_a_bigger_preset_trains_to_its_step_count(toy_prior, tmp_path):
    from sdi_blender.server.training.plan import GenerateRequest, plan_run

    run = tmp_path / "r"
    assert main(["generate", PROMPT, *TOY, "--steps", "2", "--out", str(run)]) == 0
    config, resume = plan_run(GenerateRequest(out=run, resume=True, preset="toy"))
    assert resume and config.steps == catalog.PRESETS["toy"].steps and config.resolution == 32


@pytest.mark.parametrize(
    ("seeds", "message"),
    [("3-1", "runs backwards"), ("a-b", "must look like"), ("0-16", "at most 16 seeds"), ("2,2", "twice")],
)
def test_bad_seeds_are_one_line(capsys, tmp_path, seeds, message):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", PROMPT, *TOY, "--seeds", seeds, "--out", str(tmp_path / "v")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "v").exists()


def test_seeds_with_resume_or_seed_are_refused(capsys, tmp_path):
    assert main(["generate", "--resume", str(tmp_path), "--seeds", "0-1"]) == 2
    assert "seeds start new runs" in capsys.readouterr().err
    assert main(["generate", PROMPT, *TOY, "--seed", "1", "--seeds", "0-1", "--out", str(tmp_path / "v")]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()
