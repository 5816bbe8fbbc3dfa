"""The built-in ``tiny`` model: a miniature Stable-Diffusion-architecture pipeline.

It has the same components, subfolders and file formats as a real Stable Diffusion
repository (UNet2DConditionModel, AutoencoderKL with an 8x down-sampling VAE,
CLIPTextModel, a CLIP BPE tokenizer and SD's DDIM scheduler config), but random
weights drawn from a fixed seed and a few thousand parameters per block. It is written
once to an on-disk cache and then loaded through the very ``from_pretrained`` path a
real model takes, so tests exercise the real loading code without any download.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..util.cache import cached_build

# Bump when the architecture or the build recipe changes: it names the cache folder.
TINY_MODEL_VERSION = 1
TINY_SEED = 0
SD_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
"""Stable Diffusion 2.1-base's DDIM scheduler config (scaled-linear betas, 1000 steps, leading
spacing): the tiny model's and the toy world's noise schedule."""


def tiny_model_path() -> Path:
    """The tiny pipeline's directory, built on first use."""
    return cached_build(f"tiny-v{TINY_MODEL_VERSION}", build_tiny_pipeline, "model_index.json")


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable-unicode table for byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_tiny_tokenizer(folder: Path) -> int:
    """Write a CLIP tokenizer with byte-level symbols and no merges; return its vocab size.

    Without merges every word is spelled out byte by byte, which is all a randomly
    initialised text encoder needs, and the files are the ones a real SD repo ships.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return len(vocab)


TINY_VAE: dict = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16, 16, 16),  # four blocks: the same x8 factor as SD
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=0.18215,
)
"""The tiny model's VAE (``AutoencoderKL`` arguments): SD's architecture, ×8, a few channels."""


def write_model_index(folder: Path) -> None:
    """The ``model_index.json`` of a Stable-Diffusion pipeline folder (UNet, VAE, CLIP text
    encoder and tokenizer, DDIM scheduler; no safety checker)."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def build_tiny_pipeline(folder: Path) -> None:
    """Write the tiny pipeline to ``folder`` in diffusers' on-disk layout."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = write_tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(
        sample_size=8,  # latent side; x8 VAE -> 64x64 images
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        use_linear_projection=True,  # as SD 2.x
        norm_num_groups=8,
    )
    vae = AutoencoderKL(**TINY_VAE)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    scheduler = DDIMScheduler(**SD_SCHEDULER)
    # ignores: diffusers' __init__ types its exports as the torch-less dummy classes
    unet.save_pretrained(folder / "unet")  # type: ignore[attr-defined]
    vae.save_pretrained(folder / "vae")  # type: ignore[attr-defined]
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")  # type: ignore[attr-defined]
    write_model_index(folder)
