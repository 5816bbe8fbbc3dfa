"""CLIP metrics on the tiny random CLIP: loading, CLIP score, CLIP-IQA, sizes, batching, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdi_blender.errors import ModelUnavailable, UserError
from sdi_blender.server.evaluation import clip_metrics
from sdi_blender.server.evaluation.clip_metrics import (
    BATCH_SIZE,
    CLIP_FILES,
    DEFAULT_CLIP,
    IQA_ANCHORS,
    ClipJudge,
    build_tiny_clip,
    tiny_clip_path,
)

# CLIP's normalisation constants (OpenAI CLIP, as in every CLIP preprocessor config).
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def judge(model_cache: Path) -> ClipJudge:
    return ClipJudge("tiny")


@pytest.fixture(scope="module")
def reference(judge: ClipJudge):
    """The tiny CLIP and tokenizer loaded independently of ClipJudge."""
    from transformers import CLIPModel, CLIPTokenizer

    path = tiny_clip_path()
    return CLIPModel.from_pretrained(path).eval(), CLIPTokenizer.from_pretrained(path)


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    # Multiples of 1/255, so 8-bit steps inside a processor are exact.
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed)) / 255.0


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _hand_image_embeddings(model, images32: torch.Tensor) -> torch.Tensor:
    """Embeddings of images already at the tiny CLIP's 32x32: preprocessing is just mean/std."""
    with torch.no_grad():
        feats = _features(model.get_image_features(pixel_values=(images32 - CLIP_MEAN) / CLIP_STD))
    return feats / feats.norm(dim=-1, keepdim=True)


def _hand_text_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    tokens = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        feats = _features(model.get_text_features(**tokens))
    return feats / feats.norm(dim=-1, keepdim=True)


def test_tiny_clip_is_built_into_the_cache_and_loaded_like_a_checkpoint(judge, model_cache, tmp_path):
    path = tiny_clip_path()
    assert path.parent == model_cache / "models"
    assert {p.name for p in path.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "vocab.json",
        "merges.txt",
    }
    model = judge.model
    assert judge.model_id == "tiny" and judge.device == torch.device("cpu")
    assert model.dtype == torch.float32 and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.config.vision_config.image_size == 32 and model.config.projection_dim == 16
    assert judge.processor.crop_size["height"] == 32
    # A second build is bit-identical, and leaves the caller's RNG alone.
    state = torch.get_rng_state()
    build_tiny_clip(tmp_path)
    assert torch.equal(torch.get_rng_state(), state)
    cached, rebuilt = load_file(path / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert cached.keys() == rebuilt.keys()
    assert all(torch.equal(cached[k], rebuilt[k]) for k in cached)


def test_clip_score_is_100_times_the_clamped_cosine(judge, reference):
    model, tokenizer = reference
    images = _images(5, 32, 32)
    cos = _hand_image_embeddings(model, images) @ _hand_text_embeddings(model, tokenizer, ["a red apple"])[0]
    expected = 100 * cos.clamp(min=0)
    score = judge.clip_score(images, "a red apple")
    assert score.shape == (5,) and score.device.type == "cpu"
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-4)
    assert (score >= 0).all()


def test_clip_iqa_is_the_softmax_over_good_and_bad_photo(judge, reference):
    assert IQA_ANCHORS == ("Good photo.", "Bad photo.")
    model, tokenizer = reference
    images = _images(4, 32, 32, seed=1)
    cos = _hand_image_embeddings(model, images) @ _hand_text_embeddings(model, tokenizer, list(IQA_ANCHORS)).T
    scale = model.logit_scale.exp().item()
    good, bad = (scale * cos).unbind(-1)
    expected = torch.exp(good) / (torch.exp(good) + torch.exp(bad))
    iqa = judge.clip_iqa(images)
    assert judge.logit_scale == pytest.approx(scale)
    torch.testing.assert_close(iqa, expected, rtol=1e-4, atol=1e-5)
    assert ((iqa >= 0) & (iqa <= 1)).all()


def test_embeddings_are_unit_norm_for_any_image_size(judge):
    for h, w in ((64, 64), (100, 80)):
        emb = judge.image_embeddings(_images(3, h, w))
        assert emb.shape == (3, 16)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    text = judge.text_embeddings(["a", "a much longer prompt " * 20])  # truncated to 77 tokens
    assert text.shape == (2, 16)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        judge.image_embeddings(torch.rand(3, 64, 64))


def test_large_batches_match_one_image_at_a_time(judge):
    images = _images(BATCH_SIZE + 3, 64, 64, seed=2)
    batched = judge.clip_score(images, "a chair")
    single = torch.cat([judge.clip_score(img[None], "a chair") for img in images])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(judge.clip_iqa(images), torch.cat([judge.clip_iqa(i[None]) for i in images]))


def test_hub_id_offline_is_one_line_and_downloads_nothing():
    from huggingface_hub import constants

    with pytest.raises(ModelUnavailable) as info:
        ClipJudge("sdi-test-nonexistent/clip")
    line = info.value.one_line()
    assert "\n" not in line and "'sdi-test-nonexistent/clip'" in line
    assert "hf download sdi-test-nonexistent/clip" in line and "--clip tiny" in line
    assert info.value.code == "model_unavailable"
    assert not (Path(constants.HF_HUB_CACHE) / "models--sdi-test-nonexistent--clip").exists()
    assert DEFAULT_CLIP == "openai/clip-vit-large-patch14"


def test_hub_fetch_asks_only_for_the_files_clip_needs(monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        raise OSError("offline")

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    with pytest.raises(ModelUnavailable):
        ClipJudge(DEFAULT_CLIP)
    assert calls == [(DEFAULT_CLIP, {"allow_patterns": CLIP_FILES})]
    assert "model.safetensors" in CLIP_FILES and not any(".bin" in p for p in CLIP_FILES)


def test_local_directory_loads_and_scores_the_same(judge, tmp_path):
    judge.model.save_pretrained(tmp_path)
    judge.tokenizer.save_pretrained(tmp_path)
    judge.processor.save_pretrained(tmp_path)
    local = ClipJudge(str(tmp_path))
    assert local.model_id == str(tmp_path)
    images = _images(2, 48, 40, seed=3)
    torch.testing.assert_close(local.clip_score(images, "a lamp"), judge.clip_score(images, "a lamp"))
    torch.testing.assert_close(local.clip_iqa(images), judge.clip_iqa(images))


def test_bad_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError) as info:
        ClipJudge(str(tmp_path / "missing" / "clip"))
    assert "does not exist" in info.value.one_line() and "CLIP model directory" in info.value.one_line()
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailable) as info:
        ClipJudge(str(tmp_path))
    assert "incomplete or unreadable" in info.value.one_line() and "--clip tiny" in info.value.one_line()
    assert clip_metrics.TINY_CLIP_VERSION >= 1
