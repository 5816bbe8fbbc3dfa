"""Evaluation: eval / compare / distill2d --clip with the tiny CLIP, on synthetic and tiny runs."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from sdi_blender.cli import main
from sdi_blender.server.evaluation.clip_metrics import ClipJudge
from sdi_blender.server.evaluation.evaluate import evaluate, group_summary
from sdi_blender.server.scene.background import EnvironmentBackground
from sdi_blender.server.scene.field import ImplicitVolume
from sdi_blender.server.training import run_dir
from sdi_blender.server.training.config import make_config

SIZE, VIEWS = 32, 3


def synthetic_run(
    folder: Path,
    seed: int = 0,
    blob: tuple[float, float] | None = None,
    status: str = "done",
    message: str = "",
    checkpoint: bool = True,
    history: list | None = None,
) -> Path:
    """A run folder as the trainer leaves it, with an untrained field whose density is
    Magic3D's blob (default: a ball), or ``blob`` = (scale, std) to make it empty or full."""
    settings = {"seed": seed, "renderer.num_samples_per_ray": 16}
    if blob is not None:
        settings.update({"field.density_blob_scale": blob[0], "field.density_blob_std": blob[1]})
    config = make_config("a red apple", "test", model="tiny", **settings)
    folder.mkdir(parents=True)
    run_dir.atomic_write(folder / run_dir.CONFIG, config.to_json())
    run_dir.write_state(folder, status, 5, config.steps, message)
    if checkpoint:
        torch.manual_seed(seed)
        state = {
            "format": 1,
            "step": 5,
            "config": json.loads(config.to_json()),
            "field": ImplicitVolume(config.field).state_dict(),
            "background": EnvironmentBackground(config.background).state_dict(),
            "renderer": None,
            "history": history
            if history is not None
            else [{"step": s, "t": 900 - s, "total": 1.0 / s, "guidance": 0.5 / s} for s in range(1, 6)],
        }
        (folder / "checkpoints").mkdir()
        torch.save(state, folder / run_dir.CHECKPOINT)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "ball": synthetic_run(root / "ball"),
        "empty": synthetic_run(root / "empty", seed=1, blob=(-100.0, 1000.0)),
        "full": synthetic_run(root / "full", seed=2, blob=(100.0, 1000.0)),
        "nan": synthetic_run(root / "nan", seed=3, status="failed", message="loss became NaN/inf at step 4 (guidance)"),
        "nan_early": synthetic_run(
            root / "nan_early",
            seed=4,
            status="failed",
            checkpoint=False,
            message="loss became NaN/inf at step 1 (guidance)",
        ),
    }


def _eval_options(out: Path) -> list[str]:
    """The tiny CLIP, two small views on the CPU, results in ``out``."""
    return ["--clip", "tiny", "--views", "2", "--size", str(SIZE), "--device", "cpu", "--out", str(out)]


def test_divergence_is_detected_on_synthetic_runs(runs, model_cache):
    results = {r.run.name: r for r in evaluate(list(runs.values()), "tiny", VIEWS, SIZE, "cpu")}
    assert results["ball"].diverged == ""
    assert 0.05 < math.fsum(results["ball"].opacity) / VIEWS < 0.9
    assert results["empty"].diverged.startswith("empty density")
    assert results["full"].diverged.startswith("exploded density")
    assert results["nan"].diverged == "loss became NaN/inf"
    assert results["nan_early"].diverged.endswith("before the first checkpoint")
    assert all(len(r.clip_score) == len(r.clip_iqa) == len(r.views) == VIEWS for r in results.values())
    (group,) = group_summary(list(results.values()))  # one prompt, one method, five seeds
    assert group["runs"] == 5 and group["diverged"] == 4 and group["diverged_share"] == pytest.approx(0.8)
    # The means leave the diverged runs out: they are the ball's.
    assert group["clip_score"] == pytest.approx(math.fsum(results["ball"].clip_score) / VIEWS)


def test_scores_are_the_judges_on_the_rendered_views(runs, model_cache):
    (result,) = evaluate([runs["ball"]], "tiny", VIEWS, SIZE, "cpu")
    judge = ClipJudge("tiny")
    views = torch.stack(result.views)
    assert result.clip_score == pytest.approx(judge.clip_score(views, "a red apple").tolist(), abs=1e-5)
    assert result.clip_iqa == pytest.approx(judge.clip_iqa(views).tolist(), abs=1e-6)
    assert result.views[0].shape == (3, SIZE, SIZE)
    assert not torch.equal(result.views[0], result.views[1])  # different azimuths of one lit ball


def test_eval_command_writes_the_report(runs, tmp_path, model_cache, capsys):
    out = tmp_path / "report"
    picked = [runs["ball"], runs["empty"], runs["nan_early"]]
    code = main(
        [
            "eval",
            *map(str, picked),
            "--clip",
            "tiny",
            "--views",
            str(VIEWS),
            "--size",
            str(SIZE),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    # A bar per run, redrawn after every view; the run that failed before a checkpoint renders none.
    bars = re.split(r"(?=eval run \d/3 )", err)
    for k, run in enumerate(picked, start=1):
        shown = "".join(b for b in bars if b.startswith(f"eval run {k}/3 {run.name}: "))
        views = [i for i in range(VIEWS + 1) if f"| {i}/{VIEWS} [" in shown]
        assert views == (list(range(VIEWS + 1)) if k < 3 else [0]), err
    metrics = json.loads((out / "metrics.json").read_text())  # strict JSON: NaN became null
    assert [r["diverged"] for r in metrics["runs"]] == [False, True, True]
    assert [len(r["views"]) for r in metrics["runs"]] == [VIEWS] * 3
    assert metrics["runs"][2]["clip_score"] is None and metrics["settings"]["clip"] == "tiny"
    assert metrics["groups"][0]["diverged_share"] == pytest.approx(2 / 3)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 3 * VIEWS and rows[0]["run"] == str(runs["ball"])
    assert float(rows[0]["clip_score"]) == pytest.approx(metrics["runs"][0]["views"][0]["clip_score"], abs=1e-3)
    page = (out / "report.html").read_text()
    for k in range(3):
        assert f'src="views/run{k}_view{VIEWS - 1}.png"' in page
        assert (out / "views" / f"run{k}_view0.png").is_file()
    assert (out / "views" / "group0_loss.png").is_file() and "diverged: empty density" in page
    contact = Image.open(out / "contact.png")  # a row per run under its title and azimuths
    assert contact.width == VIEWS * SIZE and contact.height > 3 * SIZE
    # Again into the same folder: the old report is replaced whole.
    assert (
        main(
            [
                "eval",
                str(runs["ball"]),
                *_eval_options(out),
            ]
        )
        == 0
    )
    assert len(json.loads((out / "metrics.json").read_text())["runs"]) == 1
    assert not (out / "views" / "run2_view0.png").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["eval", "/nonexistent/run", "--clip", "tiny"], "not a run with a checkpoint"),
        (["eval", "RUN", "--clip", "tiny", "--views", "0"], "at least 1 view"),
        (["eval", "RUN", "--clip", "no/such-clip"], "no/such-clip"),
        (["eval", "RUN", "--clip", "tiny", "--out", "NOT_A_REPORT"], "is not an evaluation report"),
        (["compare", "x", "--seeds", "0", "--model", "tiny", "--clip", "tiny"], "seeds must be"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(args, needle, runs, tmp_path, capsys, model_cache):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    args = [str(runs["ball"]) if a == "RUN" else str(foreign) if a == "NOT_A_REPORT" else a for a in args]
    before = sorted(p.name for p in runs["ball"].iterdir())
    assert main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert sorted(p.name for p in runs["ball"].iterdir()) == before
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]


def test_compare_trains_both_methods_and_reports(tmp_path, model_cache, capsys):
    out = tmp_path / "cmp"
    args = [
        "compare",
        "a red apple",
        "--seeds",
        "1",
        "--preset",
        "test",
        "--steps",
        "3",
        "--model",
        "tiny",
        *_eval_options(out),
    ]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1/2: SDS seed 0" in err and "2/2: SDI seed 0" in err  # a header per run
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert [(r["method"], r["seed"]) for r in metrics["runs"]] == [("sds", 0), ("sdi", 0)]
    for method in ("sds", "sdi"):
        config = json.loads((out / f"{method}-seed0" / run_dir.CONFIG).read_text())
        assert (config["method"], config["seed"], config["steps"], config["model"]) == (method, 0, 3, "tiny")
    capsys.readouterr()
    assert main(args) == 0  # a second call keeps the finished runs and only evaluates
    assert capsys.readouterr().err.count("done already with these settings, kept") == 2
    args[args.index("--steps") + 1] = "4"  # other settings: the runs are trained again, not kept
    assert main(args) == 0
    assert "kept" not in capsys.readouterr().err
    for method in ("sds", "sdi"):
        assert json.loads((out / f"{method}-seed0" / run_dir.CONFIG).read_text())["steps"] == 4


def test_distill2d_compare_feeds_the_same_metrics(tmp_path, model_cache, capsys):
    out = tmp_path / "d2.png"
    assert (
        main(
            [
                "distill2d",
                "a red apple",
                "--model",
                "tiny",
                "--steps",
                "3",
                "--frames",
                "1",
                "--compare",
                "--clip",
                "tiny",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "d2_metrics.json").read_text())
    assert set(metrics["methods"]) == {"sds", "sdi"} and metrics["clip"] == "tiny"
    assert all(0 <= m["clip_iqa"] <= 1 and m["clip_score"] >= 0 for m in metrics["methods"].values())
    err = capsys.readouterr().err
    assert "SDS: CLIP score" in err and "SDI: CLIP score" in err


def test_unfinished_runs_are_marked_and_left_out_of_the_means():
    from sdi_blender.server.evaluation.evaluate import RunEval, group_summary

    def result(seed: int, score: float, status: str = "done", step: int = 10, diverged: str = "") -> RunEval:
        return RunEval(
            Path(f"r{seed}"), "p", "sdi", seed, step, [score], [0.5], [0.3], diverged, status=status, total=10
        )

    runs = [result(0, 30.0), result(1, 10.0, status="cancelled", step=4), result(2, 0.0, diverged="NaN")]
    (group,) = group_summary(runs)
    assert group["clip_score"] == 30.0  # only the finished, healthy run
    assert (group["runs"], group["unfinished"], group["diverged"]) == (3, 1, 1)
    assert runs[1].summary()["finished"] is False and runs[1].summary()["status"] == "cancelled"
