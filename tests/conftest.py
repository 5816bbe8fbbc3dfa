"""Shared test set-up: offline, a private model cache, the tiny model on CPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# No test downloads anything: the hub client must never go online.
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))  # for tests/analytic.py


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session cache, so the tiny model is built by the code under test."""
    path = tmp_path_factory.mktemp("sdi-cache")
    old = os.environ.get("SDI_BLENDER_CACHE")
    os.environ["SDI_BLENDER_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SDI_BLENDER_CACHE", None)
    else:
        os.environ["SDI_BLENDER_CACHE"] = old


@pytest.fixture(scope="session")
def prior(model_cache: Path):
    """The tiny Stable-Diffusion-architecture prior on CPU (fp32)."""
    pytest.importorskip("torch")
    from sdi_blender.server.diffusion.prior import StableDiffusionPrior

    return StableDiffusionPrior("tiny", device="cpu")


@pytest.fixture(scope="session")
def toy_prior(model_cache: Path):
    """The toy world's exact-denoiser prior on CPU (built into the session cache once)."""
    pytest.importorskip("torch")
    from sdi_blender.server.training.priors import load_prior

    return load_prior("toyworld", device="cpu")
