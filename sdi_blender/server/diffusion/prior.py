"""The 2D diffusion prior: a Stable-Diffusion-family model as a guided noise predictor.

Loads the UNet, VAE, text encoder, tokenizer and scheduler of a diffusers repository
(a hub id, a local directory or the built-in ``tiny`` model, all through the same
``from_pretrained`` calls), encodes prompts once per job, and offers

* :meth:`StableDiffusionPrior.predictor` - a :class:`~sdi_blender.server.diffusion.guidance.NoisePredictor`
  for a prompt and (optionally) cameras: CFG with cond and uncond in one batched UNet
  call, plus view-dependent prompts and Perp-Neg when cameras are given;
* :meth:`StableDiffusionPrior.encode_images` / :meth:`decode_latents` - the VAE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...catalog import DEFAULT_MODEL
from ...errors import UserError
from ..util.devices import default_device, default_dtype, to_device
from .hub import fetch_model, quiet_hf_logging, unavailable
from .model_source import resolve_model_source
from .prompts import PromptOptions, direction_index, guided_noise, perp_neg_mix, view_prompts

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile modes :attr:`SpeedConfig.compile_unet` accepts besides "auto" and "off"."""


@dataclass
class SpeedConfig:
    """How the diffusion model runs on the GPU: knobs for speed and memory, not for results.

    Each changes rounding at most (checked against the plain path in ``tests/test_prior.py``);
    ``bench/gpu_step.py`` measures what each is worth.
    """

    channels_last: bool = True
    """UNet and VAE in channels-last (NHWC) memory format on CUDA, the layout of cuDNN's
    tensor-core convolutions (no transposes around each convolution); ignored on CPU."""
    compile_unet: str = "off"
    """torch.compile the UNet: "off", "auto" (mode "default" on CUDA, off elsewhere) or a
    mode of :data:`COMPILE_MODES`. Off until a GPU run of bench/gpu_step.py shows it pays
    (each prompt-batch shape compiles separately, for about a minute). If compiling fails,
    the UNet runs uncompiled after a one-line warning."""
    vae_checkpointing: bool = False
    """Gradient checkpointing in the VAE encoder: its activations are recomputed in the
    backward pass instead of kept (less memory, one more encoder forward per step)."""

    def validate(self) -> None:
        if self.compile_unet not in ("auto", "off", *COMPILE_MODES):
            raise UserError(
                f"unknown compile mode '{self.compile_unet}'",
                hint=f"choose auto, off or one of {', '.join(COMPILE_MODES)}",
            )

    def compile_mode(self, device: torch.device) -> str | None:
        """The torch.compile mode to use on ``device``, or None for none."""
        if self.compile_unet == "auto":
            return "default" if device.type == "cuda" else None
        return None if self.compile_unet == "off" else self.compile_unet


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


def _load_components(model_id: str, folder: str, dtype: torch.dtype) -> dict:
    """Every component through ``from_pretrained``, from a local folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw: dict[str, Any] = {"local_files_only": True}
    try:
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **kw),
            "scheduler": DDIMScheduler.from_pretrained(folder, subfolder="scheduler", **kw),
            "text_encoder": CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype, **kw),
            "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, **kw),
            "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, **kw),
        }
    except (OSError, ValueError) as exc:
        raise unavailable(model_id, f"its files in '{folder}' are incomplete or unreadable") from exc


class StableDiffusionPrior:
    """A frozen Stable-Diffusion-family model: text encoder, UNet, VAE and ᾱ schedule."""

    def __init__(
        self, model: str = DEFAULT_MODEL, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        self.model_id = model
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        quiet_hf_logging()
        parts = _load_components(model, fetch_model(model, resolve_model_source(model)), self.dtype)
        self.tokenizer = parts["tokenizer"]
        self.text_encoder = parts["text_encoder"].to(self.device).eval().requires_grad_(False)
        self.unet = parts["unet"].to(self.device).eval().requires_grad_(False)
        self.vae = parts["vae"].to(self.device).eval().requires_grad_(False)
        self.alphas_cumprod: Tensor = parts["scheduler"].alphas_cumprod.to(self.device, torch.float32)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.memory_format = torch.contiguous_format
        self._compiled: Any = None  # the compiled UNet, or None to run it eagerly
        self._compile_mode: str | None = None

    @property
    def latent_size(self) -> int:
        """The UNet's native latent side (64 for SD 2.1-base)."""
        return int(self.unet.config.sample_size)

    @property
    def latent_channels(self) -> int:
        """Channels of the UNet's latents (4 for SD 2.1-base)."""
        return int(self.unet.config.in_channels)

    @property
    def image_size(self) -> int:
        """The native image side (512 for SD 2.1-base)."""
        return self.latent_size * self.vae_scale

    # -- text ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """[N, L, D] last hidden states of the text encoder, padded to its max length."""
        ids = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def encode_prompt(
        self, prompt: str, negative_prompt: str = "", options: PromptOptions | None = None
    ) -> PromptEmbeddings:
        """Encode the prompt, the negative prompt and the view prompts in one batch."""
        emb = self.encode_text([prompt, negative_prompt, *view_prompts(prompt)])
        return PromptEmbeddings(prompt=emb[:1], negative=emb[1:2], views=emb[2:], options=options or PromptOptions())

    def predictor(
        self, embeddings: PromptEmbeddings, elevation_deg: Tensor | None = None, azimuth_deg: Tensor | None = None
    ) -> GuidedPredictor:
        """A noise predictor for the prompt; with cameras, view-dependent and Perp-Neg as set."""
        return GuidedPredictor(self, embeddings, elevation_deg, azimuth_deg)

    # -- speed knobs --------------------------------------------------------------------
    def apply_speed(self, speed: SpeedConfig) -> None:
        """Set the knobs of ``speed`` for this device (idempotent; each run calls it)."""
        speed.validate()
        self.set_channels_last(speed.channels_last and self.device.type == "cuda")
        self.set_vae_checkpointing(speed.vae_checkpointing)
        self.set_unet_compile(speed.compile_mode(self.device))

    def set_channels_last(self, on: bool) -> None:
        """UNet and VAE weights (and their inputs) in channels-last or the default format."""
        fmt = torch.channels_last if on else torch.contiguous_format
        if fmt != self.memory_format:
            self.unet.to(memory_format=fmt)
            self.vae.to(memory_format=fmt)
            self.memory_format = fmt

    def set_vae_checkpointing(self, on: bool) -> None:
        """Gradient checkpointing of the VAE (diffusers applies it only while grad is enabled,
        i.e. to the encoder in the training step)."""
        if on != self.vae.is_gradient_checkpointing:
            self.vae.enable_gradient_checkpointing() if on else self.vae.disable_gradient_checkpointing()

    def set_unet_compile(self, mode: str | None) -> None:
        """torch.compile the UNet in ``mode`` (None: run it eagerly). Compiling happens lazily,
        at the first call; the compiled module is kept while the mode stays the same."""
        if mode != self._compile_mode:
            self._compiled = None if mode is None else torch.compile(self.unet, mode=mode, dynamic=False)
            self._compile_mode = mode

    # -- UNet ---------------------------------------------------------------------------
    def unet_eps(self, x: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """Raw ε prediction in the model's dtype, returned in x's dtype."""
        dtype = x.dtype
        x, text = x.to(self.dtype, memory_format=self.memory_format), text.to(self.dtype)
        out = self._compiled_unet(x, t, text) if self._compiled is not None else None
        if out is None:
            out = self.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
        return out.to(dtype)

    def _compiled_unet(self, x: Tensor, t: Tensor, text: Tensor) -> Tensor | None:
        """The compiled UNet's prediction, or None (for good) if compiling or running it failed."""
        cuda_graphs = self._compile_mode == "reduce-overhead"
        try:
            if cuda_graphs:  # each call is a new graph replay; the last one's output is dead
                torch.compiler.cudagraph_mark_step_begin()
            out = self._compiled(x, t, encoder_hidden_states=text, return_dict=False)[0]
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            logger.warning(
                "torch.compile of the UNet failed (%s: %s); running it uncompiled", type(exc).__name__, first
            )
            self._compiled = None
            return None
        # A CUDA graph's output buffer is overwritten by the next replay: keep a copy.
        return out.clone() if cuda_graphs else out

    # -- VAE ----------------------------------------------------------------------------
    def encode_images(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Differentiable VAE encoding of [B, 3, H, W] images in [0, 1] to scaled latents."""
        image = (rgb * 2 - 1).to(self.dtype, memory_format=self.memory_format)
        posterior = self.vae.encode(image).latent_dist
        return (posterior.sample(generator) * self.vae.config.scaling_factor).to(rgb.dtype)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """[B, 3, H, W] images in [0, 1] from scaled latents."""
        image = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.dtype)).sample
        return ((image.float() + 1) / 2).clamp(0, 1)


class GuidedPredictor:
    """Classifier-free guidance for one prompt and batch of cameras (a ``NoisePredictor``),
    in the official conventions (:func:`~sdi_blender.server.diffusion.prompts.guided_noise`).

    All prompt variants go through the UNet in a single batched call: [cond, uncond]
    for plain CFG, [cond, uncond, neg₁, neg₂] with Perp-Neg.
    """

    def __init__(
        self,
        prior: StableDiffusionPrior,
        emb: PromptEmbeddings,
        elevation_deg: Tensor | None,
        azimuth_deg: Tensor | None,
    ) -> None:
        self.prior = prior
        self.alphas_cumprod = prior.alphas_cumprod
        self.neg_weights: Tensor | None = None
        opts = emb.options
        if azimuth_deg is None or not opts.view_dependent:
            n = 1 if azimuth_deg is None else azimuth_deg.shape[0]
            self.text = [emb.prompt.expand(n, -1, -1), emb.negative.expand(n, -1, -1)]
            return
        # The prompt mix is computed on the host (pass host cameras to avoid a copy back) and
        # sent to the device without blocking: see to_device.
        assert elevation_deg is not None, "view-dependent prompts need the cameras' elevations too"
        elevation_deg, azimuth_deg = elevation_deg.cpu(), azimuth_deg.cpu()
        dev = emb.views.device
        uncond = emb.negative.expand(azimuth_deg.shape[0], -1, -1)
        if not opts.perp_neg:
            view = to_device(direction_index(elevation_deg, azimuth_deg, opts), dev)
            self.text = [emb.views[view], uncond]
            return
        mix = perp_neg_mix(elevation_deg, azimuth_deg, opts)
        cond = torch.einsum("bv,vld->bld", to_device(mix.positive, dev).to(emb.views.dtype), emb.views)
        # Index −1 (overhead: no negatives) points at the negative prompt with weight 0.
        table = torch.cat([emb.views, emb.negative])
        negatives = to_device(mix.negatives, dev)
        self.text = [cond, uncond, *(table[negatives[:, k]] for k in range(2))]
        self.neg_weights = to_device(mix.weights, prior.device)

    def predict_noise(self, x_t: Tensor, t: Tensor, guidance_scale: float) -> Tensor:
        b, k = x_t.shape[0], len(self.text)
        text = torch.cat([e.expand(b, -1, -1) if e.shape[0] == 1 else e for e in self.text])
        if text.shape[0] != k * b:
            raise ValueError(
                f"latent batch {b} does not match the {text.shape[0] // k} cameras this predictor was made for"
            )
        eps = self.prior.unet_eps(torch.cat([x_t] * k), torch.cat([t] * k), text).float()
        eps_cond, eps_uncond, *eps_negs = eps.chunk(k)
        return guided_noise(eps_cond, eps_uncond, guidance_scale, eps_negs, self.neg_weights).to(x_t.dtype)
