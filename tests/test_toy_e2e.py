"""Prompt → right object, end to end: a toy-world generate → ``export`` → the GLB in Blender's
frame, scored against the toy world's known answer, for SDI and SDS.

The orange box with SDS is trained once per session by the add-on's toy scenario (the panel →
the server → the trainer; ``toy_scenario`` in conftest) and scored here from that run folder;
the other cases train through the ``generate`` back-end."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from sdi_blender.server.commands.generate import run_generate
from sdi_blender.server.evaluation.toy_score import score_run
from sdi_blender.server.toyworld.objects import TOY_OBJECTS
from sdi_blender.server.training.plan import GenerateRequest

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("blender")]  # one worker: see pyproject.toml

OBJECTS = (0, 1, 2)
"""The orange box with the ball on its front, the red ball with the box on its front, and the
green pillar with the box on its back."""

# Measured with the toy preset (seed 0; bench/results/toy-world-2026-12-02.json) and kept in
# docs/toy-world.md, which says why SDI's colours miss with this prior. They are not run: each
# costs a minute of the suite's 10 to report a known miss.
KNOWN_MISSES = {
    (0, "sdi"): "IoU 0.60, ball 12° from its place, ball colour off by 0.43",
    (1, "sdi"): "IoU 0.76, box 20° from its place, box colour off by 0.34, ball by 0.26",
    (2, "sdi"): "IoU 0.54, box 3° from its place, box colour off by 0.33, pillar by 0.20",
}


def _case(obj: int, method: str):
    miss = KNOWN_MISSES.get((obj, method))
    marks = [pytest.mark.xfail(run=False, reason=f"known miss: {miss}")] if miss else []
    return pytest.param(obj, method, marks=marks, id=f"{obj}-{method}")


@pytest.fixture(scope="module")
def results() -> dict:
    """Scores by (object, method), written to tests/output/toy_scores.json as they arrive."""
    return {}


def _train_and_score(toy_prior, folder: Path, obj: int, method: str) -> dict:
    run = folder / "run"
    run_generate(
        GenerateRequest(
            out=run, prompt=TOY_OBJECTS[obj].prompt, preset="toy", device="cpu", settings={"method": method}
        ),
        prior=toy_prior,
    )
    return score_run(run)


def _scores(request, toy_prior, folder: Path, obj: int, method: str) -> dict:
    if (obj, method) == SHARED and importlib.util.find_spec("bpy") is not None:
        run = folder / "run"  # a copy: scoring exports into the run folder
        shutil.copytree(request.getfixturevalue("toy_scenario")["run"], run)
        return score_run(run)
    return _train_and_score(toy_prior, folder, obj, method)


SHARED = (0, "sds")
"""The case the add-on's toy scenario trains (where bpy is installed)."""


@pytest.mark.parametrize(("obj", "method"), [_case(o, m) for o in OBJECTS for m in ("sdi", "sds")])
def test_the_prompt_comes_out_as_the_right_object(request, toy_prior, tmp_path, results, obj, method):
    scores = results[obj, method] = _scores(request, toy_prior, tmp_path, obj, method)
    out = Path(__file__).parent / "output"  # for a person to read (git-ignored)
    out.mkdir(exist_ok=True)
    (out / "toy_scores.json").write_text(json.dumps({f"{o}-{m}": s for (o, m), s in results.items()}, indent=2))
    assert scores["iou"] >= 0.6, scores
    assert scores["feature_angle_deg"] <= 30.0, scores
    for part, error in scores["colour_error"].items():
        assert error <= 0.15, (part, scores)
