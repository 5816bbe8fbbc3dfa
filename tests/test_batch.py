"""batch: a jobs file's (prompt, seed) runs as tasks on a local Ray (the toy world, a few steps),
a killed task resumed by the rerun, and bad jobs files refused in one line before Ray starts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from sdi_blender.cli import main
from sdi_blender.server.commands import batch
from sdi_blender.server.commands.batch_file import parse_seeds
from sdi_blender.server.commands.batch_task import CRASH_ENV
from sdi_blender.server.commands.reuse import KEEP, RESUME, TRAIN, reuse_action
from sdi_blender.server.training import run_dir
from sdi_blender.server.training.config import make_config

pytestmark = pytest.mark.xdist_group("ray")  # one worker: see pyproject.toml

CRASHED, CRASH_STEP = "ball-seed1", 3
"""The task whose worker the test hook kills at step 3, after its checkpoint at step 2."""
FAST = [
    *("--preset", "toy", "--steps", "4", "--checkpoint-every", "2"),
    *("--mesh-resolution", "32", "--texture-size", "64", "--views", "1", "--size", "16", "--clip", "tiny"),
    *("--device", "cpu"),
]
JOBS = [
    {"prompt": "an orange box with a blue ball on its front", "name": "box"},
    {"prompt": "a red ball with a yellow box on its front", "name": "ball", "method": "sds"},
]


@pytest.fixture(scope="module")
def local_ray(toy_prior):
    """One local Ray for the module (after the toy world is built into the session's cache); its
    workers inherit the environment: the cache's place and the test hook."""
    ray = pytest.importorskip("ray")
    os.environ[CRASH_ENV] = f"{CRASHED}:{CRASH_STEP}"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        object_store_memory=100 * 2**20,
    )
    yield ray
    ray.shutdown()
    del os.environ[CRASH_ENV]


def _jobs(tmp_path: Path, content: object, suffix: str = ".json") -> Path:
    path = tmp_path / f"jobs{suffix}"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_a_killed_task_leaves_the_others_done_and_the_rerun_resumes_it(local_ray, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["batch", str(_jobs(tmp_path, JOBS)), "--seeds", "0-1", "--out", str(out), *FAST]
    assert main(args) == 1  # one task failed
    err = capsys.readouterr().err
    summary = json.loads((out / "batch.json").read_text())
    runs = {r["name"]: r for r in summary["runs"]}
    assert set(runs) == {"box-seed0", "box-seed1", "ball-seed0", CRASHED}
    assert summary["counts"] == {"done": 3, "diverged": 0, "failed": 1, "pending": 0}
    crashed = runs.pop(CRASHED)
    assert crashed["status"] == "failed" and crashed["error"]["code"] == "worker_died"
    assert f"{CRASHED}: failed at step 2 (worker_died)" in err
    state = run_dir.read_state(out / CRASHED)
    assert (state["status"], state["step"]) == ("interrupted", 2)  # its checkpoint's step
    for name, r in runs.items():
        assert (r["status"], r["action"], r["step"]) == ("done", "trained", 4), name
        assert (out / name / "export" / "mesh.glb").is_file()
    assert runs["ball-seed0"]["method"] == "sds" and runs["box-seed0"]["method"] == "sdi"
    report = json.loads((out / "report" / "metrics.json").read_text())
    assert sorted(r["status"] for r in report["runs"]) == ["done", "done", "done", "interrupted"]

    assert main(args) == 0  # the rerun: three kept, the killed one resumed
    err = capsys.readouterr().err
    assert err.count("kept (done already with these settings") == 3
    assert f"{CRASHED}: resumed from step 2 to step 4" in err
    resumed = {r["name"]: r for r in json.loads((out / "batch.json").read_text())["runs"]}[CRASHED]
    # from_step is where the trainer itself started: the checkpoint's step, not 0
    assert (resumed["status"], resumed["action"], resumed["from_step"], resumed["step"]) == ("done", "resumed", 2, 4)
    history = [json.loads(line)["step"] for line in (out / CRASHED / run_dir.METRICS).read_text().splitlines()]
    assert history == [1, 2, 3, 4]  # the first attempt's steps 1-2 and the resumed 3-4
    assert (out / CRASHED / "export" / "mesh.glb").is_file()
    report = json.loads((out / "report" / "metrics.json").read_text())
    assert len(report["runs"]) == 4 and all(r["finished"] for r in report["runs"])


@pytest.mark.parametrize(
    "content, suffix, extra, needle",
    [
        ([{"name": "x"}], ".json", [], "jobs.json job 1 has no prompt"),
        ([{"prompt": "a", "preset": "drafty"}], ".json", [], "unknown preset 'drafty'; did you mean draft?"),
        ([{"prompt": "a", "name": "x"}, {"prompt": "b", "name": "x"}], ".json", [], "'x' is taken by job 1"),
        ("a red apple\n# the same folder name:\nA red apple!\n", ".txt", [], "line 3: the name 'a-red-apple'"),
        ([{"prompt": "a", "seed": 1}], ".json", [], "unknown key 'seed'; did you mean 'seeds'?"),
        ("# only a comment\n\n", ".txt", [], "holds no prompts"),
        ("  \n", ".json", [], "is empty"),
        ("[]", ".json", [], "non-empty list of jobs"),
        ('[{"prompt": "a",}]', ".json", [], "is not valid JSON"),
        ("a red apple\n", ".txt", ["--seeds", "3-1"], "--seeds: the seed range 3-1 runs backwards"),
        ([{"prompt": "a", "seeds": "x"}], ".json", [], "job 1 seeds: seeds must look like 0-3"),
        ([{"prompt": "a red apple", "model": "toyworld"}], ".json", [], "job 1: the toy world has no object"),
        ("a red apple\n", ".csv", [], "neither .txt nor .json"),
    ],
)
def test_a_bad_jobs_file_is_one_line_before_ray_starts(content, suffix, extra, needle, tmp_path, capsys, monkeypatch):
    def no_ray(address: str) -> bool:
        raise AssertionError("Ray started before the jobs file was checked")

    monkeypatch.setattr(batch, "connect", no_ray)
    out = tmp_path / "out"
    assert main(["batch", str(_jobs(tmp_path, content, suffix)), "--out", str(out), *extra, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not out.exists()


def test_a_missing_jobs_file_is_one_line(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "none.txt"), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert "no batch file" in capsys.readouterr().err


def test_a_mistyped_option_gets_the_nearest(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(tmp_path / "jobs.txt"), "--seed", "3"])
    assert exc.value.code == 2 and "did you mean --seeds?" in capsys.readouterr().err


def test_seed_ranges():
    assert parse_seeds("0-3") == (0, 1, 2, 3)
    assert parse_seeds("5") == (5,)
    assert parse_seeds("0,2,7-9") == (0, 2, 7, 8, 9)
    assert len(parse_seeds("0-999")) == 1000  # a batch may have more seeds than generate's variations


def test_reuse_keeps_done_runs_resumes_cut_short_ones_and_retrains_changed_ones(tmp_path):
    config = make_config("a red apple", "test", model="tiny", steps=4)
    run = tmp_path / "run"
    assert reuse_action(run, config) == TRAIN  # nothing there
    run_dir.atomic_write(run / run_dir.CONFIG, config.to_json())
    run_dir.atomic_write(run / run_dir.CHECKPOINT, b"")
    run_dir.write_state(run, "done", 4, 4)
    assert reuse_action(run, config) == KEEP
    assert reuse_action(run, make_config("a red apple", "test", model="tiny", steps=5)) == TRAIN
    run_dir.write_state(run, "interrupted", 2, 4)
    assert reuse_action(run, config) == RESUME
    (run / run_dir.CHECKPOINT).unlink()
    assert reuse_action(run, config) == TRAIN
