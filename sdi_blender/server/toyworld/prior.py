"""The toy world's prior: the exact denoiser of a known set of ground-truth pictures.

The data are the pictures x_i (prior weights π_i), each with a little pixel noise of its own,
x0 ~ Σ π_i N(x_i, σ²I) (σ = ``PICTURE_NOISE``). For x_t = √ᾱ x0 + √(1−ᾱ) ε the posterior
mean is closed-form, E[x0 | x_t] = Σ_i r_i (x_i + (√ᾱσ²/v)(x_t − √ᾱ x_i)) with
r = softmax(log π − ‖x_t − √ᾱ x_i‖² / 2v), v = ᾱσ² + 1 − ᾱ (σ = 0: the textbook exact
denoiser of the finite set), and ε̂ = (x_t − √ᾱ E[x0 | x_t]) / √(1−ᾱ). The pictures are the
toy objects (:mod:`~sdi_blender.server.toyworld.objects`) drawn by the independent ground-truth
renderer (:mod:`~sdi_blender.server.toyworld.render`) from the toy preset's training cameras, in
every shading mode the trainer uses and weighted as often as it uses each, on Stable
Diffusion's ᾱ schedule, in pixel space (a "latent" is the image itself, in [−1, 1] like SD's
VAE input).

Conditioning: a prompt selects its object's coloured (albedo and lit) pictures; a
view-dependent prompt ("…, front view") only those whose camera falls in that view's bucket,
exactly as Stable Diffusion is asked for a front view; Perp-Neg's mix of views is the mixture
of those buckets with the mix's weights, its negatives the other buckets. The unconditional
model is every picture. CFG combines the branches in the official conventions
(``prompts.guided_noise``). Why each choice: ``docs/toy-world.md``.

Built once (seconds) into the sdi-blender cache, like the ``tiny`` model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...catalog import TOYWORLD
from ..diffusion.prompts import OVERHEAD, PromptOptions, direction_index, guided_noise, perp_neg_mix
from ..diffusion.tiny_model import SD_SCHEDULER
from ..scene.cameras import CameraConfig
from ..scene.shading import SHADINGS, ShadingConfig
from ..util.cache import cached_build
from .objects import TOY_CAMERAS, TOY_OBJECTS, check_toy_prompt, toy_object
from .render import render_toy, sample_views

TOY_VERSION = 3
"""Bump when the objects, the renderer or the picture set change: it names the cache folder."""
IMAGE_SIZE = 32
"""Side of the pictures, so of the renders the prior judges."""
VIEWS_PER_OBJECT = 512
"""Cameras per object, each drawn in all three shading modes: over the toy cameras' two angles
(azimuth 360°, elevation −10…45°) about 6° apart."""
PICTURE_NOISE = 0.1
"""σ of the pictures' own pixel noise ([−1, 1] units): the data are N(x_i, σ²I) around the
pictures rather than the pictures exactly, so the denoiser stays exact (a Gaussian mixture's
posterior mean is closed-form) but its score is bounded near t = 0. With σ = 0 the denoiser
at SDI's first inversion step (ᾱ = 0.99915) returns ε̂ = (x − x_nearest)/0.029, ~34× a
render's distance to the nearest picture, and the inverted "noise" is far from Gaussian;
a trained network such as Stable Diffusion's is smooth there. See docs/toy-world.md."""
_SEED = 0
_NEGLIGIBLE = 1e-13  # a picture's posterior share below this changes no float32 result
_CHUNK = 128  # views rendered at once (bounds the renderer's memory)


@dataclass
class ToyPictures:
    """The picture set: images and what each one shows."""

    images: Tensor
    """[N, 3, S, S] in [−1, 1]."""
    masks: Tensor
    """[N, S, S] fraction of each pixel covered by the object."""
    obj: Tensor
    """[N] index into TOY_OBJECTS."""
    view: Tensor
    """[N] view bucket (prompts.DIRECTIONS index) of the unperturbed camera."""
    azimuth: Tensor
    """[N] azimuth of the unperturbed camera in degrees (for :func:`azimuth_bin`)."""
    mode: Tensor
    """[N] index into shading.SHADINGS."""


def build_pictures(
    size: int = IMAGE_SIZE,
    views_per_object: int = VIEWS_PER_OBJECT,
    cameras: CameraConfig | None = None,
    shading: ShadingConfig | None = None,
) -> ToyPictures:
    """Render every toy object from ``views_per_object`` training cameras in every mode."""
    cameras, shading = cameras or CameraConfig(**TOY_CAMERAS), shading or ShadingConfig()
    parts: dict[str, list[Tensor]] = {k: [] for k in ("images", "masks", "obj", "view", "azimuth", "mode")}
    for o, obj in enumerate(TOY_OBJECTS):
        views = sample_views(cameras, views_per_object, seed=_SEED + o)
        bucket = direction_index(views.elevation_deg.float(), views.azimuth_deg.float(), PromptOptions())
        for s in range(0, views_per_object, _CHUNK):
            chunk = type(views)(*(getattr(views, f)[s : s + _CHUNK] for f in views.__dataclass_fields__))
            images, masks = render_toy(obj, chunk, size, SHADINGS, shading)
            m, n = images.shape[:2]
            parts["images"].append(images.reshape(m * n, 3, size, size) * 2 - 1)
            parts["masks"].append(masks.repeat(m, 1, 1))
            parts["obj"].append(torch.full((m * n,), o))
            parts["view"].append(bucket[s : s + _CHUNK].repeat(m))
            parts["azimuth"].append(chunk.azimuth_deg.float().repeat(m))
            parts["mode"].append(torch.arange(m).repeat_interleave(n))
    return ToyPictures(**{k: torch.cat(v) for k, v in parts.items()})


def toy_world_path() -> Path:
    """The cached picture set, built on first use."""
    return cached_build(f"toyworld-v{TOY_VERSION}", _write_pictures, "pictures.pt")


def _write_pictures(folder: Path) -> None:
    pics = build_pictures()
    state = {k: getattr(pics, k) for k in pics.__dataclass_fields__}
    state["images"], state["masks"] = state["images"].half(), state["masks"].half()
    torch.save(state, folder / "pictures.pt")


def load_pictures() -> ToyPictures:
    state = torch.load(toy_world_path() / "pictures.pt", map_location="cpu", weights_only=True)
    return ToyPictures(**{k: v.float() if v.is_floating_point() else v for k, v in state.items()})


@dataclass(frozen=True)
class Group:
    """A contiguous block of pictures of one object, view bucket and kind of shading."""

    obj: int
    view: int
    mode: int
    """Index into shading.SHADINGS."""
    start: int
    end: int

    @property
    def coloured(self) -> bool:
        """Albedo or lit-diffuse pictures (the prompt's colours show), not textureless grey."""
        return SHADINGS[self.mode] != "textureless"


@dataclass
class ToyEmbeddings:
    """A toy "prompt encoding": which object, and how views condition it."""

    obj: int
    options: PromptOptions


class ToyWorldPrior:
    """The exact denoiser of the toy pictures, in the :class:`~sdi_blender.server.training.priors.Prior` shape.

    The pictures are kept sorted into groups (object × view bucket), each a contiguous block;
    every branch of the guidance (conditional, unconditional, Perp-Neg's negatives) is a prior
    over pictures that is uniform within each group, so one pass over the pictures per
    prediction (per-group log-sum-exp and weighted sums) serves all branches at once.
    """

    def __init__(
        self,
        device: torch.device | str | None = None,
        shading: ShadingConfig | None = None,
        picture_noise: float = PICTURE_NOISE,
        view_bins: int = 0,
        pictures: ToyPictures | None = None,
    ) -> None:
        """``view_bins`` > 0 is a diagnostic, not the toy world of the issue: a view-dependent
        prompt then selects the pictures in the camera's azimuth bin (``view_bins`` bins of
        360°/``view_bins``, centred on 0°) instead of its view bucket, a camera-aware prior
        (``bench/toy_world.py --view-bins``; docs/toy-world.md). ``pictures``: another picture
        set than the cached one (e.g. :func:`build_pictures` with more views, a diagnostic)."""
        from diffusers import DDIMScheduler

        self.picture_noise = picture_noise
        self.model_id = TOYWORLD
        self.device = torch.device(device or "cpu")
        self.dtype = torch.float32
        pics = pictures if pictures is not None else load_pictures()
        self.view_bins, self.n_views = view_bins, view_bins or OVERHEAD + 1
        if view_bins:
            pics = replace(pics, view=azimuth_bin(pics.azimuth, view_bins))
        modes, nv = len(SHADINGS), self.n_views
        order = torch.argsort((pics.obj * nv + pics.view) * modes + pics.mode, stable=True)
        self.pictures = ToyPictures(*(getattr(pics, f)[order] for f in pics.__dataclass_fields__))
        self.flat = self.pictures.images.reshape(order.shape[0], -1).to(self.device)  # [N, D]
        self.sq_norms = self.flat.double().square().sum(-1)  # [N]
        key = ((self.pictures.obj * nv + self.pictures.view) * modes + self.pictures.mode).tolist()
        self.groups = [
            Group(
                k // modes // nv,
                k // modes % nv,
                k % modes,
                key.index(k),
                len(key) - key[::-1].index(k),
            )
            for k in sorted(set(key))
        ]
        self.mode_prob = shading_probabilities(shading or ShadingConfig())
        self.group_of_row = torch.cat([torch.full((g.end - g.start,), i) for i, g in enumerate(self.groups)]).to(
            self.device
        )[None]  # [1, N]
        self.log_sizes = torch.tensor(
            [math.log(g.end - g.start) for g in self.groups], dtype=torch.float64, device=self.device
        )  # [G]
        sched = DDIMScheduler(**SD_SCHEDULER)
        # ignore: diffusers' __init__ types its exports as the torch-less dummy classes
        self.alphas_cumprod = sched.alphas_cumprod.to(self.device, torch.float32)  # type: ignore[attr-defined]

    image_size = property(lambda self: int(self.pictures.images.shape[-1]))
    latent_size = image_size
    latent_channels = property(lambda self: 3)

    def apply_speed(self, speed: Any) -> None:
        """Nothing to tune: the denoiser is a few matrix products."""

    def encode_prompt(
        self, prompt: str, negative_prompt: str = "", options: PromptOptions | None = None
    ) -> ToyEmbeddings:
        check_toy_prompt(TOYWORLD, prompt, negative_prompt)
        return ToyEmbeddings(TOY_OBJECTS.index(toy_object(prompt)), options or PromptOptions())

    def predictor(
        self, embeddings: ToyEmbeddings, elevation_deg: Tensor | None = None, azimuth_deg: Tensor | None = None
    ) -> ToyPredictor:
        return ToyPredictor(self, embeddings, elevation_deg, azimuth_deg)

    def encode_images(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Pixel space: [0, 1] → [−1, 1], differentiable."""
        return rgb * 2 - 1

    def decode_latents(self, latents: Tensor) -> Tensor:
        return ((latents + 1) / 2).clamp(0, 1)

    # -- the denoiser ----------------------------------------------------------------------------
    def group_weights(self, obj: int | None, view_mix: Tensor | None = None) -> Tensor:
        """[G] prior mass of each group.

        Each picture weighs as often as the trainer renders its shading mode (``mode_prob``:
        mostly albedo). ``obj`` None: the unconditional model, every picture. Otherwise the
        prompt's pictures that show its colours (albedo and lit), or those of its view buckets
        mixed by ``view_mix`` [n_views]; a mix that lands only on empty buckets (e.g. overhead,
        outside the training elevations) falls back to all its views. A prompt naming colours
        captions coloured pictures: the grey textureless ones belong to the unconditional model
        only (as Stable Diffusion finds a grey render of "an orange box" unlikely), which also
        keeps the grey initial blob from settling on grey pictures.
        """

        def mass_of(g: Group) -> float:
            if obj is None:
                return 1.0
            if g.obj != obj or not g.coloured:
                return 0.0
            return 1.0 if view_mix is None else float(view_mix[g.view])

        mass = torch.tensor(
            [(g.end - g.start) * float(self.mode_prob[g.mode]) * mass_of(g) for g in self.groups], dtype=torch.float64
        )
        if mass.sum() <= 0:
            return self.group_weights(obj)
        return mass / mass.sum()

    def _variance(self, a: Tensor) -> Tensor:
        """v = ᾱσ² + 1 − ᾱ [B]: the variance of x_t about √ᾱ x_i, a picture's own noise included."""
        return a * self.picture_noise**2 + (1 - a)

    def posterior_shares(self, x_t: Tensor, a: Tensor, weights: Tensor) -> Tensor:
        """[K, B, N] posterior share of every picture given x_t [B, D] at ᾱ = a [B] under K priors
        ``weights`` [K, B, G] (float64).

        With ℓ_i = −‖x_t − √ᾱ x_i‖²/2v, per group g (n_g pictures, prior mass w_g) the
        maximum m_g and Z_g = Σ_{i∈g} exp(ℓ_i − m_g); each prior then puts mass
        α_g = softmax_g(log w_g − log n_g + m_g + log Z_g) on group g, spread over its pictures as
        exp(ℓ_i − m_g)/Z_g. Float64 and per-group maxima keep every branch from underflowing
        (at small t, ℓ spans thousands). A handful of whole-tensor operations, no loop.
        """
        b, gid = x_t.shape[0], self.group_of_row.expand(x_t.shape[0], -1)  # [B, N]
        cross = (x_t @ self.flat.T).double()  # [B, N]
        d2 = (
            x_t.double().square().sum(-1, keepdim=True) - 2 * a.sqrt()[:, None] * cross + a[:, None] * self.sq_norms
        ).clamp_min(0)
        loglik = -d2 / (2 * self._variance(a))[:, None]
        n_groups = len(self.groups)
        peak = loglik.new_full((b, n_groups), -math.inf).scatter_reduce(1, gid, loglik, "amax")
        within = (loglik - peak.gather(1, gid)).exp()  # [B, N]
        total = loglik.new_zeros(b, n_groups).scatter_add(1, gid, within)  # [B, G]
        alpha = torch.softmax(weights.log() - self.log_sizes + peak + total.log(), -1)  # [K, B, G]
        return (alpha / total).gather(2, gid.expand(weights.shape[0], -1, -1)) * within  # [K, B, N]

    def posterior_mean(self, x_t: Tensor, a: Tensor, weights: Tensor) -> Tensor:
        """E[x0 | x_t] [K, B, D] for x_t [B, D] at ᾱ = a [B] under K priors ``weights`` [K, B, G]:
        the pictures weighed by :meth:`posterior_shares`, each moved toward x_t by its own noise."""
        b = x_t.shape[0]
        share = self.posterior_shares(x_t, a, weights).reshape(-1, self.flat.shape[0])
        # Below mid t nearly every picture's share is < 1e-13 (exactly 0 in float32 sums of
        # ≤ 10⁵ terms): multiply only the pictures that count.
        used = torch.nonzero(share.amax(0) > _NEGLIGIBLE).flatten()
        if used.numel() < share.shape[-1] // 2:
            out = share[:, used].to(x_t.dtype) @ self.flat[used]
        else:
            out = share.to(x_t.dtype) @ self.flat
        # Each picture is N(x_i, σ²I): its posterior mean given x_t moves toward x_t by c.
        pull = (a.sqrt() * self.picture_noise**2 / self._variance(a)).to(x_t.dtype)[:, None]  # [B, 1]
        out = out.reshape(weights.shape[0], b, -1)
        return out * (1 - pull * a.sqrt().to(x_t.dtype)[:, None]) + pull * x_t


class ToyPredictor:
    """The guided exact denoiser for one toy prompt and batch of cameras (a ``NoisePredictor``)."""

    def __init__(
        self, prior: ToyWorldPrior, emb: ToyEmbeddings, elevation_deg: Tensor | None, azimuth_deg: Tensor | None
    ) -> None:
        self.prior, self.alphas_cumprod = prior, prior.alphas_cumprod
        self.neg_weights: Tensor | None = None
        opts, o = emb.options, emb.obj
        uncond = prior.group_weights(None)
        if azimuth_deg is None or not opts.view_dependent:
            self.branches = [prior.group_weights(o)[None], uncond[None]]  # each [1 or B, G]
            return
        assert elevation_deg is not None, "view-dependent prompts need the cameras' elevations too"
        elev, azim = elevation_deg.cpu(), azimuth_deg.cpu()
        if prior.view_bins and opts.perp_neg:
            raise ValueError("the toy world's azimuth bins (view_bins) have no Perp-Neg mix; turn perp_neg off")
        if not opts.perp_neg:
            bins = azimuth_bin(azim, prior.view_bins) if prior.view_bins else direction_index(elev, azim, opts)
            views = bins.tolist()
            one_hot = [_one_hot(v, prior.n_views) for v in views]
            self.branches = [torch.stack([prior.group_weights(o, m) for m in one_hot]), uncond[None]]
            return
        mix = perp_neg_mix(elev, azim, opts)
        cond = torch.stack([prior.group_weights(o, p) for p in mix.positive])
        negs = [
            torch.stack(
                [
                    uncond if v < 0 else prior.group_weights(o, _one_hot(v, prior.n_views))
                    for v in mix.negatives[:, k].tolist()
                ]
            )
            for k in range(mix.negatives.shape[1])
        ]
        self.branches = [cond, uncond[None], *negs]
        self.neg_weights = mix.weights.to(prior.device)

    def _inputs(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(ᾱ [B] float64, x_t as [B, D], every branch's weights [K, B, G]) on the prior's device."""
        b = x_t.shape[0]
        if any(w.shape[0] not in (1, b) for w in self.branches):
            raise ValueError(f"latent batch {b} does not match the cameras this predictor was made for")
        a = self.alphas_cumprod[t].double().to(self.prior.device)
        weights = torch.stack([w.expand(b, -1) for w in self.branches]).to(self.prior.device)
        return a, x_t.reshape(b, -1).float(), weights

    def conditional_shares(self, x_t: Tensor, t: Tensor) -> Tensor:
        """[B, N] the conditional model's posterior share of every picture (``prior.pictures``
        order) given x_t [B, C, H, W] at timesteps t [B]: which pictures a target is made of."""
        a, flat, weights = self._inputs(x_t, t)
        return self.prior.posterior_shares(flat, a, weights[:1])[0]

    def predict_noise(self, x_t: Tensor, t: Tensor, guidance_scale: float) -> Tensor:
        a, flat, weights = self._inputs(x_t, t)
        x0 = self.prior.posterior_mean(flat, a, weights)  # [K, B, D]
        root_a, root_1ma = a.sqrt()[:, None].float(), (1 - a).sqrt()[:, None].float()
        eps = ((flat - root_a * x0) / root_1ma).reshape(-1, *x_t.shape)  # [K, B, C, H, W]
        eps_cond, eps_uncond, *eps_negs = eps.unbind(0)
        return guided_noise(eps_cond, eps_uncond, guidance_scale, eps_negs, self.neg_weights).to(x_t.dtype)


def shading_probabilities(cfg: ShadingConfig) -> list[float]:
    """How often the trainer renders each of SHADINGS after the ambient-only phase
    (``shading.pick_shading``): albedo 1 − p, textureless p·q, diffuse p·(1 − q)."""
    p, q = cfg.diffuse_prob, cfg.textureless_prob
    probs = {"albedo": 1 - p, "textureless": p * q, "diffuse": p * (1 - q)}
    return [probs[mode] for mode in SHADINGS]


def azimuth_bin(azimuth_deg: Tensor, bins: int) -> Tensor:
    """[N] index of each azimuth's bin among ``bins`` bins of 360°/``bins``, bin 0 centred on 0°."""
    width = 360.0 / bins
    return torch.div((azimuth_deg.float() + width / 2) % 360.0, width, rounding_mode="floor").long() % bins


def _one_hot(view: int, n_views: int) -> Tensor:
    mix = torch.zeros(n_views)
    mix[view] = 1.0
    return mix
