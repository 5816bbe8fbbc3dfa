"""The built-in tiny model: real SD layout, deterministic, cached, loads like a real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdi_blender.server.diffusion import tiny_model
from sdi_blender.server.diffusion.model_source import resolve_model_source
from sdi_blender.server.util import cache


def test_tiny_model_has_the_stable_diffusion_layout(model_cache: Path):
    path = Path(resolve_model_source("tiny"))
    assert path.is_relative_to(model_cache)
    index = json.loads((path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (path / sub).is_dir()
    sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    assert sched["beta_schedule"] == "scaled_linear"
    assert (sched["beta_start"], sched["beta_end"], sched["num_train_timesteps"]) == (0.00085, 0.012, 1000)
    assert sched["steps_offset"] == 1 and sched["set_alpha_to_one"] is False


def test_tiny_model_is_built_once_and_then_cached(model_cache: Path):
    path = tiny_model.tiny_model_path()
    stamp = (path / "model_index.json").stat().st_mtime_ns
    assert tiny_model.tiny_model_path() == path
    assert (path / "model_index.json").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tiny-")]  # no staging left


def test_tiny_model_build_is_deterministic(tmp_path: Path):
    from safetensors.torch import load_file

    tiny_model.build_tiny_pipeline(tmp_path / "a")
    tiny_model.build_tiny_pipeline(tmp_path / "b")
    for sub, name in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ]:
        a, b = load_file(tmp_path / "a" / sub / name), load_file(tmp_path / "b" / sub / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_model_loads_as_a_whole_diffusers_pipeline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model_source("tiny"), safety_checker=None)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    ids = pipe.tokenizer(["a red apple"], padding="max_length", return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    assert ids[0, 0] == pipe.tokenizer.bos_token_id


def test_tiny_tokenizer_spells_words_byte_by_byte(tmp_path: Path):
    from transformers import CLIPTokenizer

    tiny_model.write_tiny_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(tmp_path)
    assert tok.convert_ids_to_tokens(tok("ab c").input_ids) == [
        "<|startoftext|>",
        "a",
        "b</w>",
        "c</w>",
        "<|endoftext|>",
    ]


def test_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("SDI_BLENDER_CACHE", str(tmp_path / "c"))
    assert cache.cache_root() == tmp_path / "c"
    monkeypatch.delenv("SDI_BLENDER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.cache_root() == tmp_path / "x" / "sdi-blender"
