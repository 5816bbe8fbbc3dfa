"""Prompt → right object, end to end: ``generate --model toyworld`` → ``export`` → the GLB in
Blender's frame, scored against the toy world's known answer, for SDI and SDS."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdi_blender.server.generate import GenerateRequest, run_generate
from sdi_blender.server.toy_objects import TOY_OBJECTS
from sdi_blender.server.toy_score import score_run

pytestmark = pytest.mark.e2e

OBJECTS = (0, 3)
"""The orange box with the ball on its front, and the mirror-asymmetric slab."""


@pytest.fixture(scope="module")
def toy_results(toy_prior, tmp_path_factory) -> dict:
    """Each object trained with each method at the toy preset, exported and scored."""
    results = {}
    for obj in OBJECTS:
        for method in ("sdi", "sds"):
            run = tmp_path_factory.mktemp(f"toy{obj}-{method}") / "run"
            run_generate(GenerateRequest(out=run, prompt=TOY_OBJECTS[obj].prompt, preset="toy",
                                         device="cpu", settings={"method": method}), prior=toy_prior)
            results[obj, method] = score_run(Path(run))
    return results


@pytest.mark.parametrize("method", ["sdi", "sds"])
@pytest.mark.parametrize("obj", OBJECTS)
def test_the_prompt_comes_out_as_the_right_object(toy_results, obj, method):
    scores = toy_results[obj, method]
    assert scores["iou"] >= 0.6, scores
    assert scores["feature_angle_deg"] <= 30.0, scores
    for part, error in scores["colour_error"].items():
        assert error <= 0.15, (part, scores)
