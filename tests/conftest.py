"""Shared test set-up: offline, a private model cache, the tiny model on CPU, and the session's
shared fixtures (the trained tiny run, the running server, the add-on zip).

Test modules never import from one another: what several use lives here, or in a helper
module (server_harness.py, setup_script.py, analytic.py) that is not a test module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# No test downloads anything: the hub client must never go online.
os.environ["HF_HUB_OFFLINE"] = "1"
# xdist workers share the cores: each takes its share of threads, and so do the servers and
# Blenders it starts (they inherit this). Oversubscribed OpenMP threads spin and run many times slower.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))
sys.path.insert(0, str(Path(__file__).parent))  # for the helper modules beside this file
REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def trained_run(prior, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step tiny run: the field is still close to its centred blob of radius ≈ 0.5.

    Trained once per session and never written to; tests take ``run``, their own copy.
    """
    from sdi_blender.server.training import run_dir
    from sdi_blender.server.training.config import make_config
    from sdi_blender.server.training.trainer import Trainer

    path = tmp_path_factory.mktemp("trained") / "run"
    config = make_config(
        "a red apple",
        "test",
        model="tiny",
        steps=2,
        resolution=32,
        **{"renderer.num_samples_per_ray": 16, "field.log2_hashmap_size": 12, "turntable_views": 1, "preview_size": 16},
    )
    run_dir.prepare_new_run(path, overwrite=False)
    Trainer(config, path, prior=prior).run()
    return path


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of the trained run, to export into (or spoil) without affecting others."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path):
    """One server process (tiny model, CPU) shared by the tests that only talk to it.

    Tests leave it up and idle: one that stops, kills or restarts a server starts its own.
    """
    from server_harness import Server

    srv = Server(tmp_path_factory.mktemp("server") / "jobs")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The add-on zip as it ships, built once by ``vendor_setup.py --build-addon``."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, str(REPO / "vendor_setup.py"), "--build-addon", "--dist", str(dist)],
        check=True,
        capture_output=True,
    )
    (zip_path,) = dist.glob("sdi_blender-*.zip")
    return zip_path


@pytest.fixture(scope="session")
def toy_scenario(addon_zip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The toy world through Blender: the panel's generate of the orange box (SDS, toy preset)
    on a real server, imported and rendered (tests/addon_scenarios.py ``toy_object``). Run once:
    the add-on test checks what Blender holds, the end-to-end test scores the server's run
    folder (``run``), so the one toy training serves both."""
    pytest.importorskip("bpy")
    from scenario_runner import run_scenario

    work = tmp_path_factory.mktemp("toy-addon")
    result = run_scenario("toy_object", addon_zip, work)
    (run,) = [p.parent for p in (work / "jobs").glob("*/config.json")]
    return {**result, "run": run}


@pytest.fixture
def c():
    """The add-on's controller with no server, for feeding it messages (controller_feed.feed)."""
    from sdi_blender.addon.controller import Controller

    controller = Controller()
    yield controller
    controller.shutdown(timeout=5)
