"""Stable Diffusion 2.1-base's architecture with random weights, as a diffusers folder (no download)."""

from __future__ import annotations

from pathlib import Path

import torch


def sd21_base_configs(vocab_size: int = 49408) -> dict[str, dict]:
    """Constructor arguments of SD 2.1-base's UNet, VAE and text encoder (its config.json files)."""
    return {
        "unet": dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            use_linear_projection=True,
            norm_num_groups=32,
        ),
        "vae": dict(
            in_channels=3,
            out_channels=3,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=0.18215,
        ),
        "text_encoder": dict(
            vocab_size=vocab_size,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            projection_dim=512,
            hidden_act="gelu",
        ),
    }


def build_sd21_base(folder: Path, device: str, configs: dict[str, dict] | None = None) -> None:
    """Write an SD 2.1-base-architecture pipeline with random fp16 weights to ``folder``
    (``configs`` replaces :func:`sd21_base_configs`, for tests).

    The tokenizer is the tiny model's byte-level one (no merges): it yields token ids, which is
    all a random text encoder needs; the sequence length (77) is SD's.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.utils import logging as transformers_logging

    from sdi_blender.server.diffusion.tiny_model import SD_SCHEDULER, write_model_index, write_tiny_tokenizer

    for log in (diffusers_logging, transformers_logging):  # no casting notes or progress bars
        log.set_verbosity_error()
        log.disable_progress_bar()
    n_tokens = write_tiny_tokenizer(folder / "tokenizer")
    cfg = configs or sd21_base_configs()
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: seconds instead of minutes on the CPU
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text = CLIPTextModel(
            CLIPTextConfig(
                **cfg["text_encoder"], bos_token_id=n_tokens - 2, eos_token_id=n_tokens - 1, pad_token_id=n_tokens - 1
            )
        )
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        model.to("cpu", torch.float16).save_pretrained(folder / name)
    DDIMScheduler(**SD_SCHEDULER).save_pretrained(folder / "scheduler")
    write_model_index(folder)
