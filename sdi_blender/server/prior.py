"""The 2D diffusion prior: a Stable-Diffusion-family model as a guided noise predictor.

Loads the UNet, VAE, text encoder, tokenizer and scheduler of a diffusers repository
(a hub id, a local directory or the built-in ``tiny`` model, all through the same
``from_pretrained`` calls), encodes prompts once per job, and offers

* :meth:`StableDiffusionPrior.predictor` - a :class:`~sdi_blender.server.guidance.NoisePredictor`
  for a prompt and (optionally) cameras: CFG with cond and uncond in one batched UNet
  call, plus view-dependent prompts and Perp-Neg when cameras are given;
* :meth:`StableDiffusionPrior.encode_images` / :meth:`decode_latents` - the VAE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ModelUnavailable, UserError
from .model_source import DEFAULT_MODEL, resolve_model_source
from .prompts import PromptOptions, direction_index, perp_neg_mix, perpendicular_component, view_prompts


@dataclass
class PromptEmbeddings:
    """Text embeddings of one job's prompts, computed once."""

    prompt: Tensor
    """[1, L, D] the plain prompt."""
    negative: Tensor
    """[1, L, D] the negative prompt ("" by default): CFG's unconditional branch."""
    views: Tensor
    """[4, L, D] the prompt with each view suffix (side, front, back, overhead)."""
    options: PromptOptions


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; a CUDA device that is missing is an error."""
    if name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device '{name}'", hint="use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available", hint="use --device cpu")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (the paper's setting); fp32 elsewhere, where fp16 is slow or missing."""
    return torch.float16 if device.type == "cuda" else torch.float32


def _quiet_hf_logging() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


# The files a Stable-Diffusion-family repository needs here: full-precision safetensors
# only (repos also carry .bin, fp16 variants and multi-GB single-file checkpoints).
MODEL_FILES = [
    "model_index.json", "scheduler/*", "tokenizer/*", "*/config.json",
    "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors", "*.safetensors.index.json",
    "*/diffusion_pytorch_model-0*.safetensors", "*/model-0*.safetensors",
]


def _unavailable(model_id: str, what: str) -> ModelUnavailable:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return ModelUnavailable(
        f"model '{model_id}' is not available: {what}" + (" (HF_HUB_OFFLINE is set)" if offline else ""),
        hint=f"fetch it once on a connected machine with `hf download {model_id}`, "
             "or pass --model with a local diffusers directory, or --model tiny to test offline",
    )


def fetch_model(model_id: str, source: str) -> str:
    """A local directory holding the model: ``source`` itself, or its Hugging Face cache snapshot.

    ``snapshot_download`` honours the HF cache and ``HF_HUB_OFFLINE`` and downloads only
    what is missing; it fails fast and quietly when the hub cannot be reached.
    """
    if os.path.isdir(source):
        return source
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return snapshot_download(source, allow_patterns=MODEL_FILES)
    except (OSError, ValueError, HfHubHTTPError) as exc:
        raise _unavailable(model_id, "not in the Hugging Face cache and not downloadable") from exc


def _load_components(model_id: str, folder: str, dtype: torch.dtype) -> dict:
    """Every component through ``from_pretrained``, from a local folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"local_files_only": True}
    try:
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **kw),
            "scheduler": DDIMScheduler.from_pretrained(folder, subfolder="scheduler", **kw),
            "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype, **kw),
            "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, **kw),
            "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, **kw),
        }
    except (OSError, ValueError) as exc:
        raise _unavailable(model_id, f"its files in '{folder}' are incomplete or unreadable") from exc


class StableDiffusionPrior:
    """A frozen Stable-Diffusion-family model: text encoder, UNet, VAE and ᾱ schedule."""

    def __init__(self, model: str = DEFAULT_MODEL, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.model_id = model
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        _quiet_hf_logging()
        parts = _load_components(model, fetch_model(model, resolve_model_source(model)), self.dtype)
        self.tokenizer = parts["tokenizer"]
        self.scheduler_config = dict(parts["scheduler"].config)
        self.text_encoder = parts["text_encoder"].to(self.device).eval().requires_grad_(False)
        self.unet = parts["unet"].to(self.device).eval().requires_grad_(False)
        self.vae = parts["vae"].to(self.device).eval().requires_grad_(False)
        self.alphas_cumprod: Tensor = parts["scheduler"].alphas_cumprod.to(self.device, torch.float32)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        """The UNet's native latent side (64 for SD 2.1-base)."""
        return int(self.unet.config.sample_size)

    @property
    def image_size(self) -> int:
        """The native image side (512 for SD 2.1-base)."""
        return self.latent_size * self.vae_scale

    # -- text ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """[N, L, D] last hidden states of the text encoder, padded to its max length."""
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def encode_prompt(self, prompt: str, negative_prompt: str = "",
                      options: PromptOptions | None = None) -> PromptEmbeddings:
        """Encode the prompt, the negative prompt and the view prompts in one batch."""
        emb = self.encode_text([prompt, negative_prompt, *view_prompts(prompt)])
        return PromptEmbeddings(prompt=emb[:1], negative=emb[1:2], views=emb[2:],
                                options=options or PromptOptions())

    def predictor(self, embeddings: PromptEmbeddings, elevation_deg: Tensor | None = None,
                  azimuth_deg: Tensor | None = None) -> GuidedPredictor:
        """A noise predictor for the prompt; with cameras, view-dependent and Perp-Neg as set."""
        return GuidedPredictor(self, embeddings, elevation_deg, azimuth_deg)

    # -- UNet ---------------------------------------------------------------------------
    def unet_eps(self, x: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """Raw ε prediction in the model's dtype, returned in x's dtype."""
        out = self.unet(x.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype)).sample
        return out.to(x.dtype)

    # -- VAE ----------------------------------------------------------------------------
    def encode_images(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Differentiable VAE encoding of [B, 3, H, W] images in [0, 1] to scaled latents."""
        posterior = self.vae.encode((rgb * 2 - 1).to(self.dtype)).latent_dist
        return (posterior.sample(generator) * self.vae.config.scaling_factor).to(rgb.dtype)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """[B, 3, H, W] images in [0, 1] from scaled latents."""
        image = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.dtype)).sample
        return ((image.float() + 1) / 2).clamp(0, 1)


class GuidedPredictor:
    """Classifier-free guidance for one prompt and batch of cameras (a ``NoisePredictor``).

    All prompt variants go through the UNet in a single batched call: [cond, uncond]
    for plain CFG, [cond, uncond, neg₁, neg₂] with Perp-Neg.
    """

    def __init__(self, prior: StableDiffusionPrior, emb: PromptEmbeddings,
                 elevation_deg: Tensor | None, azimuth_deg: Tensor | None) -> None:
        self.prior = prior
        self.alphas_cumprod = prior.alphas_cumprod
        self.neg_weights: Tensor | None = None
        opts = emb.options
        if azimuth_deg is None or not opts.view_dependent:
            n = 1 if azimuth_deg is None else azimuth_deg.shape[0]
            self.text = [emb.prompt.expand(n, -1, -1), emb.negative.expand(n, -1, -1)]
            return
        elevation_deg, azimuth_deg = elevation_deg.cpu(), azimuth_deg.cpu()
        uncond = emb.negative.expand(azimuth_deg.shape[0], -1, -1)
        if not opts.perp_neg:
            self.text = [emb.views[direction_index(elevation_deg, azimuth_deg, opts)], uncond]
            return
        mix = perp_neg_mix(elevation_deg, azimuth_deg, opts)
        cond = torch.einsum("bv,vld->bld", mix.positive.to(emb.views), emb.views)
        # Index −1 (overhead: no negatives) points at the negative prompt with weight 0.
        table = torch.cat([emb.views, emb.negative])
        negs = [table[mix.negatives[:, k]] for k in range(2)]
        self.text = [cond, uncond, *negs]
        self.neg_weights = mix.weights.to(prior.device)

    def predict_noise(self, x_t: Tensor, t: Tensor, guidance_scale: float) -> Tensor:
        b, k = x_t.shape[0], len(self.text)
        text = torch.cat([e.expand(b, -1, -1) if e.shape[0] == 1 else e for e in self.text])
        if text.shape[0] != k * b:
            raise ValueError(f"latent batch {b} does not match the {text.shape[0] // k} cameras "
                             "this predictor was made for")
        eps = self.prior.unet_eps(torch.cat([x_t] * k), torch.cat([t] * k), text).float()
        eps_cond, eps_uncond, *eps_negs = eps.chunk(k)
        e_pos = eps_cond - eps_uncond
        if self.neg_weights is not None:  # Perp-Neg (Armandpour et al. 2023, eq. 8)
            for i, eps_neg in enumerate(eps_negs):
                w = self.neg_weights[:, i].view(-1, 1, 1, 1)
                e_pos = e_pos + w * perpendicular_component(eps_neg - eps_uncond, eps_cond - eps_uncond)
        return (eps_uncond + guidance_scale * e_pos).to(x_t.dtype)
