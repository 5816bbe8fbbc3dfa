"""The toy world: ground-truth renderer conventions, the exact denoiser, the prior interface."""

from __future__ import annotations

import math

import pytest
import torch

from sdi_blender.errors import UserError
from sdi_blender.server.guidance import NoisePredictor, ScoreDistillation
from sdi_blender.server.priors import Prior
from sdi_blender.server.prompts import PromptOptions
from sdi_blender.server.shading import ShadingConfig
from sdi_blender.server.toy_objects import TOY_OBJECTS, TOY_PROMPTS, check_toy_prompt
from sdi_blender.server.toy_render import BACKGROUND, render_toy
from sdi_blender.server.toy_score import turntable_views


@pytest.fixture(scope="module")
def toy(model_cache):
    from sdi_blender.server.priors import load_prior

    return load_prior("toyworld", device="cpu")


def _front_and_side(obj_index: int, size: int = 48):
    views = turntable_views(4, 0.0, 2.0, 60.0)  # azimuth 0 (front, +X), 90 (+Y), 180, 270
    images, masks = render_toy(TOY_OBJECTS[obj_index], views, size, ("albedo",), ShadingConfig())
    return images[0], masks


def test_ground_truth_shows_the_front_feature_where_the_conventions_put_it():
    """Seen from +X (azimuth 0) the blue ball on the box's front is in the middle; seen from +Y
    (azimuth 90) the +X side is on the image's left; row 0 is the top."""
    images, masks = _front_and_side(0)
    blue = torch.tensor([0.1, 0.3, 0.9])[:, None, None]
    is_blue = (images - blue).abs().amax(1) < 0.05                                  # [4, S, S]
    ys, xs = torch.nonzero(is_blue[0], as_tuple=True)
    assert abs(xs.float().mean() - 23.5) < 2 and abs(ys.float().mean() - 23.5) < 3
    _, xs_side = torch.nonzero(is_blue[1], as_tuple=True)
    assert xs_side.float().mean() < 20          # +X appears on the left, seen from +Y
    _, xs_other = torch.nonzero(is_blue[3], as_tuple=True)
    assert xs_other.float().mean() > 28         # and on the right, seen from −Y
    assert not is_blue[2].any()                 # hidden behind the box, seen from the back
    assert masks[0, 0, 0] == 0 and (images[0][:, 0, 0] == BACKGROUND).all()


def test_ground_truth_is_upright_and_the_right_side_is_minus_y():
    images, _ = _front_and_side(2)              # green pillar: tall, so upright means rows
    green = (images[0] - torch.tensor([0.1, 0.65, 0.2])[:, None, None]).abs().amax(0) < 0.05
    ys, xs = torch.nonzero(green, as_tuple=True)
    assert (ys.max() - ys.min()) > 2 * (xs.max() - xs.min())
    images, _ = _front_and_side(3)              # the slab's ball on its right (−Y)
    yellow = (images[0] - torch.tensor([0.95, 0.85, 0.1])[:, None, None]).abs().amax(0) < 0.05
    _, xs = torch.nonzero(yellow, as_tuple=True)
    assert xs.float().mean() < 20               # seen from the front, the object's right is our left


def test_toy_prompts_are_checked_with_one_line_listing_them():
    check_toy_prompt("toyworld", TOY_PROMPTS[0])
    check_toy_prompt("tiny", "anything at all")
    with pytest.raises(UserError) as info:
        check_toy_prompt("toyworld", "a ripe strawberry")
    line = info.value.one_line()
    assert "\n" not in line and all(p in line for p in TOY_PROMPTS)
    with pytest.raises(UserError, match="negative"):
        check_toy_prompt("toyworld", TOY_PROMPTS[0], "blurry")


def test_the_toy_world_and_stable_diffusion_share_the_prior_interface(toy, prior):
    assert isinstance(toy, Prior) and isinstance(prior, Prior)
    assert toy.image_size == toy.latent_size == 32 and toy.latent_channels == 3
    rgb = torch.rand(1, 3, 32, 32, requires_grad=True)
    toy.encode_images(rgb).sum().backward()
    torch.testing.assert_close(rgb.grad, torch.full_like(rgb, 2.0))
    torch.testing.assert_close(toy.decode_latents(toy.encode_images(rgb.detach())), rgb.detach())
    emb = toy.encode_prompt(TOY_PROMPTS[1])
    assert isinstance(toy.predictor(emb), NoisePredictor)


def _naive_mean(toy, x_t: torch.Tensor, a: float, logw: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] straight from the formula, over every picture at once."""
    x = x_t.reshape(-1).double()
    d2 = (x[None] - math.sqrt(a) * toy.flat.double()).square().sum(-1)
    return torch.softmax(logw - d2 / (2 * (1 - a)), 0) @ toy.flat.double()


def _row_log_prior(toy, obj: int | None, view: int | None = None) -> torch.Tensor:
    pics = toy.pictures
    member = torch.ones_like(pics.obj, dtype=torch.bool) if obj is None else pics.obj == obj
    if view is not None:
        member &= pics.view == view
    return torch.where(member, 0.0, -math.inf).double()


@pytest.mark.parametrize("t", [1, 250, 600, 980])
def test_the_denoiser_is_the_exact_posterior_mean(toy, t):
    a = float(toy.alphas_cumprod[t])
    g = torch.Generator().manual_seed(t)
    x0 = toy.flat[1234]
    x_t = (math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(x0.shape, generator=g))[None]
    weights = torch.stack([toy.group_weights(0), toy.group_weights(None),
                           toy.group_weights(2, torch.tensor([0.0, 1.0, 0.0, 0.0]))])[:, None]
    got = toy.posterior_mean(x_t, torch.tensor([a], dtype=torch.float64), weights)
    for k, logw in enumerate([_row_log_prior(toy, 0), _row_log_prior(toy, None), _row_log_prior(toy, 2, 1)]):
        torch.testing.assert_close(got[k, 0].double(), _naive_mean(toy, x_t, a, logw), atol=2e-4, rtol=0)


def test_a_clean_picture_denoises_to_itself(toy):
    x0 = toy.flat[777][None]
    a = toy.alphas_cumprod[1].double()[None]
    out = toy.posterior_mean(x0 * a.sqrt().float(), a, toy.group_weights(None)[None, None])
    torch.testing.assert_close(out[0], x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("opts", [PromptOptions(), PromptOptions(perp_neg=False),
                                  PromptOptions(view_dependent=False)])
@pytest.mark.parametrize("method", ["sdi", "sds"])
def test_sdi_and_sds_run_on_the_toy_world_with_cfg_and_view_prompts(toy, opts, method):
    emb = toy.encode_prompt(TOY_PROMPTS[0], options=opts)
    pred = toy.predictor(emb, torch.tensor([10.0, 30.0]), torch.tensor([0.0, 120.0]))
    x0 = toy.encode_images(torch.rand(2, 3, 32, 32))
    step = ScoreDistillation(pred, method).step(x0, 600, torch.Generator().manual_seed(0))
    assert torch.isfinite(step.target).all() and step.target.shape == x0.shape


def test_front_view_prompt_denoises_toward_front_pictures(toy):
    """A noisy front picture of object 0, asked for "…, front view", comes back as one."""
    pics = toy.pictures
    rows = torch.nonzero((pics.obj == 0) & (pics.view == 1) & (pics.mode == 0)).flatten()
    x0 = toy.flat[rows[0]][None].reshape(1, 3, 32, 32)
    emb = toy.encode_prompt(TOY_PROMPTS[0], options=PromptOptions(perp_neg=False))
    pred = toy.predictor(emb, torch.tensor([10.0]), torch.tensor([0.0]))
    t, a = 300, toy.alphas_cumprod[300]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    eps = pred.predict_noise(x_t, torch.tensor([t]), 0.0)  # s = 0: the conditional model alone
    x0_hat = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    assert (x0_hat - x0).abs().mean() < 0.05


def test_pictures_are_built_deterministically():
    from sdi_blender.server.toy_prior import build_pictures

    a, b = build_pictures(views_per_object=4), build_pictures(views_per_object=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.view, b.view)
    assert a.images.shape == (len(TOY_OBJECTS) * 4 * 3, 3, 32, 32)
