"""The benchmarks' code paths on CPU: gpu_step.py without CUDA and as a smoke run, the
SD 2.1-base architecture it builds, cpu_step.py's reference hash grid, and workflow_pictures.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / "gpu_step.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,  # the smoke run takes minutes on a loaded 2-core machine
        env={**os.environ, **env},
    )


@pytest.mark.e2e
def test_gpu_bench_without_cuda_says_so_in_one_line_and_exits_0(model_cache):
    proc = _run([], CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().count("\n") == 0 and "no CUDA device" in proc.stdout


@pytest.mark.e2e
def test_gpu_bench_smoke_run_on_cpu_exercises_every_part(model_cache, tmp_path):
    out = tmp_path / "dry.json"
    proc = _run(["--smoke", "--out", str(out)], CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["preset"] == "test"
    assert set(result["bare"]["unet_ms_best"]) == {"4", "2"} and result["bare"]["vae_fwd_bwd_ms_best"] > 0
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {
        "sdi-perpneg",
        "sdi",
        "sds-perpneg",
        "sds",
        "sdi-perpneg-compiled",
        "sdi-perpneg-channels-first",
        "sdi-perpneg-vae-checkpointing",
        "sdi-perpneg-torch-grid",
    }
    for row in rows.values():
        assert "error" not in row, row
        assert row["steps"] == 2 and row["step_over_bound"] > 0 and row["minutes_per_10k_steps"] > 0
        assert set(row["mean_ms"]) == {"render", "vae", "inversion", "prediction", "update", "other", "step"}
    assert rows["sds"]["unet_calls_mean"] == 1 and rows["sdi"]["unet_calls_mean"] > 1
    assert rows["sdi-perpneg-vae-checkpointing"]["speed"]["vae_checkpointing"] is True
    assert rows["sdi-perpneg-torch-grid"]["hash_kernel"] == "torch" and rows["sdi"]["hash_kernel"] == "auto"
    for name in ("sdi", "sdi-perpneg", "sds", "sds-perpneg"):  # the headline figures, at the top
        assert result[name]["ratio_to_bound"] == rows[name]["step_over_bound"]
        assert result[name]["minutes_per_10k"] == rows[name]["minutes_per_10k_steps"]
        assert result[name]["peak_vram_gb"] is None  # no GPU memory on a CPU
    grid = {r["name"]: r for r in result["hash_grid"]}
    assert set(grid["hash-torch"]["ms"]) == {"forward_backward", "with_normals"}
    assert grid["hash-triton"]["skipped"].startswith("triton does not run on cpu")
    lines = proc.stdout.splitlines()  # one summary line per row
    assert all(sum(line.startswith(name + " ") for line in lines) == 1 for name in [*rows, *grid])


def test_the_headline_figures_convert_to_gb_and_a_failed_row_is_none():
    from gpu_step import headline

    row = {"name": "sdi", "step_over_bound": 1.25, "minutes_per_10k_steps": 12.0, "peak_reserved_gib": 15.0}
    out = headline([row, {"name": "sds", "error": "OutOfMemoryError: ..."}])
    assert out["sdi"] == {
        "ratio_to_bound": 1.25,
        "peak_vram_gb": pytest.approx(16.106, abs=1e-3),
        "minutes_per_10k": 12.0,
    }
    assert out["sds"] is None and out["sds-perpneg"] is None


def test_the_hash_grid_rows_time_the_torch_grid_and_skip_triton_off_cuda():
    from bare_calls import time_ms
    from hash_rows import hash_rows

    rows = {r["name"]: r for r in hash_rows(torch.device("cpu"), 256, 1, time_ms)}
    assert rows["hash-torch"]["points"] == 256 and all(ms > 0 for ms in rows["hash-torch"]["ms"].values())
    assert "error" not in rows["hash-torch"] and "skipped" in rows["hash-triton"]


def test_the_benchmark_model_has_sd21_base_parameter_counts():
    """The configs give exactly SD 2.1-base's parameter counts (built on the meta device)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from sd21_random import sd21_base_configs
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd21_base_configs()
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel(**cfg["unet"]),
            "vae": AutoencoderKL(**cfg["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
        }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert counts == {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}


def test_bench_schedule_positions_and_unet_calls():
    from gpu_step import positions, unet_calls

    steps = positions(32, 10_000)
    assert len(steps) == 32 and steps == sorted(steps) and 0 <= steps[0] and steps[-1] < 10_000
    assert sum(s % 16 == 0 for s in steps) == 2  # one in 16 steps updates the occupancy grid
    assert unet_calls("sds", 980) == 1
    assert unet_calls("sdi", 980) == 12 and unet_calls("sdi", 250) == 5  # 11 or 4 hops + 1


def test_cpu_bench_reference_grid_matches_the_encoding():
    from cpu_step import reference_encoding

    from sdi_blender.server.scene.encoding import HashGridEncoding

    torch.manual_seed(0)
    enc = HashGridEncoding(
        n_levels=6, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0, start_level=5
    )  # dense and hashed levels, one still locked
    with torch.no_grad():
        enc.params.uniform_(-1, 1)
    assert 0 < enc.n_dense < 5
    x = torch.rand(300, 3, requires_grad=True)
    fast, ref = enc(x), reference_encoding(enc, x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), [x, enc.params])
    g_ref = torch.autograd.grad(ref.square().sum(), [x, enc.params])
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_the_benchmark_model_folder_loads_through_the_product_path(model_cache, tmp_path):
    """build_sd21_base's folder (here with miniature configs) loads as a StableDiffusionPrior."""
    from sd21_random import build_sd21_base, sd21_base_configs

    from sdi_blender.server.diffusion.prior import StableDiffusionPrior

    cfg = sd21_base_configs()
    cfg["unet"].update(
        sample_size=8,
        block_out_channels=(32, 32, 64, 64),
        attention_head_dim=(2, 2, 4, 4),
        cross_attention_dim=32,
        norm_num_groups=8,
        layers_per_block=1,
    )
    cfg["vae"].update(block_out_channels=(8, 16, 16, 16), norm_num_groups=8, layers_per_block=1)
    cfg["text_encoder"].update(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32
    )
    build_sd21_base(tmp_path / "model", "cpu", cfg)
    prior = StableDiffusionPrior(str(tmp_path / "model"), device="cpu")
    assert (prior.latent_size, prior.image_size) == (8, 64)
    emb = prior.encode_prompt("a ripe strawberry")
    assert emb.views.shape == (4, 77, 32) and torch.isfinite(emb.views).all()


@pytest.mark.e2e
def test_workflow_pictures_run_on_cpu_and_stay_small(model_cache, tmp_path):
    """bench/workflow_pictures.py, two of its pictures at 2 steps (the README's come from 200)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "workflow_pictures.py"), "--only", "texture", "proxy", "--steps", "2"]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("texture", "proxy"):
        assert 0 < (tmp_path / f"workflow-{name}.png").stat().st_size < 200_000
    committed = sorted((BENCH.parent / "docs" / "images").glob("workflow-*.png"))
    assert [p.stem for p in committed] == [
        "workflow-blockout",
        "workflow-proxy",
        "workflow-texture",
        "workflow-variations",
    ]
    assert all(p.stat().st_size < 200_000 for p in committed)
