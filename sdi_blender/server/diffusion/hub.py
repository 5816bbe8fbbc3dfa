"""Fetching models from the Hugging Face hub (or its cache), and the error when one is missing."""

from __future__ import annotations

import os

from ...errors import ModelUnavailable


def quiet_hf_logging() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


# The files a Stable-Diffusion-family repository needs here: full-precision safetensors
# only (repos also carry .bin, fp16 variants and multi-GB single-file checkpoints).
MODEL_FILES = [
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "*/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "*.safetensors.index.json",
    "*/diffusion_pytorch_model-0*.safetensors",
    "*/model-0*.safetensors",
]


MODEL_ALTERNATIVES = "pass --model with a local diffusers directory, or --model tiny to test offline"


def unavailable(model_id: str, what: str, alternatives: str = MODEL_ALTERNATIVES) -> ModelUnavailable:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return ModelUnavailable(
        f"model '{model_id}' is not available: {what}" + (" (HF_HUB_OFFLINE is set)" if offline else ""),
        hint=f"fetch it once on a connected machine with `hf download {model_id}`, or {alternatives}",
    )


def fetch_model(
    model_id: str, source: str, allow_patterns: list[str] | None = None, alternatives: str = MODEL_ALTERNATIVES
) -> str:
    """A local directory holding the model: ``source`` itself, or its Hugging Face cache snapshot.

    ``snapshot_download`` honours the HF cache and ``HF_HUB_OFFLINE`` and downloads only
    what is missing (``allow_patterns``, default :data:`MODEL_FILES`); it fails fast and
    quietly when the hub cannot be reached. ``alternatives`` ends the error's hint.
    """
    if os.path.isdir(source):
        return source
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return snapshot_download(source, allow_patterns=allow_patterns or MODEL_FILES)
    except (OSError, ValueError, HfHubHTTPError) as exc:
        raise unavailable(model_id, "not in the Hugging Face cache and not downloadable", alternatives) from exc
