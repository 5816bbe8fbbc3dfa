"""CLIP metrics for evaluating runs: CLIP score against the prompt and CLIP-IQA quality.

* CLIP score (Hessel et al. 2021, "CLIPScore", in the torchmetrics convention):
  ``100 · max(cos(image, text), 0)``.
* CLIP-IQA (Wang et al. 2023, "Exploring CLIP for Assessing the Look and Feel of Images"):
  the softmax over the antonym prompts :data:`IQA_ANCHORS` of ``logit_scale · cos``, read as
  the probability of "Good photo.".

:class:`ClipJudge` loads a ``transformers`` CLIP checkpoint - a hub id (default
:data:`DEFAULT_CLIP`), a local directory, or ``tiny``: a small random CLIP built locally from a
fixed seed, for tests and offline smoke checks (its scores mean nothing). Like the ``tiny``
diffusion model, it is written once to the cache and loaded through ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...catalog import TINY
from ..diffusion.hub import fetch_model, quiet_hf_logging, unavailable
from ..diffusion.model_source import check_model_name
from ..diffusion.tiny_model import TINY_SEED, write_tiny_tokenizer
from ..util.cache import cached_build

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""A public ViT-L/14 CLIP (the one Stable Diffusion 1.x conditions on)."""
IQA_ANCHORS = ("Good photo.", "Bad photo.")
"""CLIP-IQA's antonym prompt pair; the score is the probability of the first."""
BATCH_SIZE = 16
"""Images (or texts) per forward pass: bounds memory whatever the number of views."""
TINY_CLIP_VERSION = 1  # bump when the tiny CLIP's recipe changes: it names the cache folder
TINY_CLIP_SIZE = 32

# What CLIPModel, its tokenizer and its image processor read: no .bin, TF or Flax weights.
CLIP_FILES = [
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "model.safetensors",
]
_ALTERNATIVES = "pass --clip with a local CLIP directory, or --clip tiny to test offline"


def tiny_clip_path() -> Path:
    """The tiny CLIP's directory, built on first use."""
    return cached_build(f"clip-tiny-v{TINY_CLIP_VERSION}", build_tiny_clip, "preprocessor_config.json")


def build_tiny_clip(folder: Path) -> None:
    """Write a small random CLIPModel, its tokenizer and image processor to ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    vocab_size = write_tiny_tokenizer(folder)
    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    vision = dict(
        image_size=TINY_CLIP_SIZE,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    with torch.random.fork_rng(devices=[]):  # a fixed seed without disturbing the caller's RNG
        torch.manual_seed(TINY_SEED)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": TINY_CLIP_SIZE}, crop_size={"height": TINY_CLIP_SIZE, "width": TINY_CLIP_SIZE}
    ).save_pretrained(folder)


def resolve_clip_folder(model: str) -> str:
    """A local directory holding the CLIP ``model``: built (tiny), given, or fetched from the hub."""
    check_model_name(
        model, hint=f"give a CLIP model directory, a hub id such as {DEFAULT_CLIP}, or 'tiny'", builtins=(TINY,)
    )
    if model == TINY:
        return str(tiny_clip_path())
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    return fetch_model(model, model, allow_patterns=CLIP_FILES, alternatives=_ALTERNATIVES)


def _pooled(out: Any) -> Tensor:
    # transformers < 5 returns the projected features; 5.x an output whose pooler_output they are.
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipJudge:
    """A frozen fp32 CLIP scoring images against text. Results are returned on the CPU."""

    def __init__(self, model: str = DEFAULT_CLIP, device: str | torch.device = "cpu") -> None:
        quiet_hf_logging()  # first: importing the image processor may warn about its backend
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        self.model_id = model
        self.device = torch.device(device)
        folder = resolve_clip_folder(model)
        kw: dict[str, Any] = {"local_files_only": True}
        try:
            self.processor = CLIPImageProcessor.from_pretrained(folder, **kw)
            self.tokenizer = CLIPTokenizer.from_pretrained(folder, **kw)
            clip = CLIPModel.from_pretrained(folder, dtype=torch.float32, **kw)
        except (OSError, ValueError) as exc:
            raise unavailable(model, f"its files in '{folder}' are incomplete or unreadable", _ALTERNATIVES) from exc
        # ignore: transformers' @wraps(nn.Module.to) types the bound to() as the unbound one
        self.model = clip.to(self.device).eval().requires_grad_(False)  # type: ignore[arg-type]

    @property
    def logit_scale(self) -> float:
        """The model's own learned temperature ``exp(logit_scale)``: 100 for trained CLIPs."""
        return float(self.model.logit_scale.exp())

    @torch.no_grad()
    def _embed(self, items: list[Any], encode: Callable[[list[Any]], Tensor]) -> Tensor:
        feats = [_pooled(encode(items[i : i + BATCH_SIZE])).float().cpu() for i in range(0, len(items), BATCH_SIZE)]
        return F.normalize(torch.cat(feats), dim=-1)

    def _encode_images(self, images: list[Tensor]) -> Any:
        # The checkpoint's own processor: resize the short side, centre crop, CLIP mean/std.
        # The inputs are already in [0, 1], so no 1/255 rescale.
        pixels = self.processor(
            images=images, do_rescale=False, input_data_format="channels_first", return_tensors="pt"
        )["pixel_values"]
        return self.model.get_image_features(pixel_values=pixels.to(self.device))

    def _encode_texts(self, texts: list[str]) -> Any:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return self.model.get_text_features(**tokens.to(self.device))

    def image_embeddings(self, images: Tensor) -> Tensor:
        """[N, D] unit-norm embeddings of ``images`` [N, 3, H, W] in [0, 1], of any size."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N, 3, H, W], got {tuple(images.shape)}")
        # Clamp: float rounding just outside [0, 1] would wrap when a processor goes through 8 bits.
        return self._embed(list(images.detach().float().clamp(0, 1).cpu()), self._encode_images)

    def text_embeddings(self, texts: list[str]) -> Tensor:
        """[M, D] unit-norm embeddings of ``texts`` (truncated to the tokenizer's 77 tokens)."""
        return self._embed(list(texts), self._encode_texts)

    def clip_score(self, images: Tensor, prompt: str) -> Tensor:
        """[N] CLIP score of each image against ``prompt``: ``100 · max(cos, 0)``.

        This is torchmetrics' ``CLIPScore``; Hessel et al.'s CLIP-S uses ``2.5 · max(cos, 0)``
        instead (the same ranking, 40x smaller). Trained CLIPs give roughly 15-35.
        """
        cos = self.image_embeddings(images) @ self.text_embeddings([prompt])[0]
        return 100.0 * cos.clamp(min=0)

    def clip_iqa(self, images: Tensor) -> Tensor:
        """[N] CLIP-IQA quality in [0, 1]: P("Good photo.") against "Bad photo.".

        The two logits are ``logit_scale · cos(image, anchor)`` with the model's own
        :attr:`logit_scale` (100 for trained CLIP, as in CLIP-IQA and torchmetrics), so the
        result is the model's zero-shot classification between the anchors.
        """
        cos = self.image_embeddings(images) @ self.text_embeddings(list(IQA_ANCHORS)).T
        return (self.logit_scale * cos).softmax(dim=-1)[:, 0]
