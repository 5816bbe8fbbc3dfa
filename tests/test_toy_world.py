"""The toy world: ground-truth renderer conventions, the exact denoiser, the prior interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdi_blender.errors import UserError
from sdi_blender.server.diffusion.guidance import NoisePredictor, ScoreDistillation
from sdi_blender.server.diffusion.interface import Prior
from sdi_blender.server.diffusion.prompts import PromptOptions
from sdi_blender.server.evaluation.toy_score import turntable_views
from sdi_blender.server.scene.shading import ShadingConfig
from sdi_blender.server.toyworld.objects import TOY_OBJECTS, TOY_PROMPTS, check_toy_prompt
from sdi_blender.server.toyworld.prior import shading_probabilities
from sdi_blender.server.toyworld.render import BACKGROUND, orbit_views, render_toy


@pytest.fixture(scope="module")
def toy(toy_prior):
    return toy_prior


def _front_and_side(obj_index: int, size: int = 48):
    views = turntable_views(4, 0.0, 2.0, 60.0)  # azimuth 0 (front, +X), 90 (+Y), 180, 270
    images, masks = render_toy(TOY_OBJECTS[obj_index], views, size, ("albedo",), ShadingConfig())
    return images[0], masks


def test_ground_truth_shows_the_front_feature_where_the_conventions_put_it():
    """Seen from +X (azimuth 0) the blue ball on the box's front is in the middle; seen from +Y
    (azimuth 90) the +X side is on the image's left; row 0 is the top."""
    images, masks = _front_and_side(0)
    blue = torch.tensor([0.1, 0.3, 0.9])[:, None, None]
    is_blue = (images - blue).abs().amax(1) < 0.05  # [4, S, S]
    ys, xs = torch.nonzero(is_blue[0], as_tuple=True)
    assert abs(xs.float().mean() - 23.5) < 2 and abs(ys.float().mean() - 23.5) < 3
    _, xs_side = torch.nonzero(is_blue[1], as_tuple=True)
    assert xs_side.float().mean() < 20  # +X appears on the left, seen from +Y
    _, xs_other = torch.nonzero(is_blue[3], as_tuple=True)
    assert xs_other.float().mean() > 28  # and on the right, seen from −Y
    assert not is_blue[2].any()  # hidden behind the box, seen from the back
    assert masks[0, 0, 0] == 0 and (images[0][:, 0, 0] == BACKGROUND).all()


def test_ground_truth_is_upright_and_the_right_side_is_minus_y():
    images, _ = _front_and_side(2)  # green pillar: tall, so upright means rows
    green = (images[0] - torch.tensor([0.1, 0.65, 0.2])[:, None, None]).abs().amax(0) < 0.05
    ys, xs = torch.nonzero(green, as_tuple=True)
    assert (ys.max() - ys.min()) > 2 * (xs.max() - xs.min())
    images, _ = _front_and_side(3)  # the slab's ball on its right (−Y)
    yellow = (images[0] - torch.tensor([0.95, 0.85, 0.1])[:, None, None]).abs().amax(0) < 0.05
    _, xs = torch.nonzero(yellow, as_tuple=True)
    assert xs.float().mean() < 20  # seen from the front, the object's right is our left


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
    """E[x0 | x_t] straight from the formula for data N(x_i, σ²I), over every picture at once."""
    x, pics, s2 = x_t.reshape(-1).double(), toy.flat.double(), toy.picture_noise**2
    var = a * s2 + 1 - a
    d2 = (x[None] - math.sqrt(a) * pics).square().sum(-1)
    r = torch.softmax(logw - d2 / (2 * var), 0)
    # Each component's posterior mean: x_i + (√ᾱ σ² / var)(x_t − √ᾱ x_i).
    return r @ (pics + math.sqrt(a) * s2 / var * (x[None] - math.sqrt(a) * pics))


def _row_log_prior(toy, obj: int | None, view: int | None = None) -> torch.Tensor:
    """Per picture: log of how often the trainer renders its shading mode, over the branch's
    pictures (a prompt's are its coloured ones; the unconditional model has all)."""
    pics = toy.pictures
    member = torch.ones_like(pics.obj, dtype=torch.bool) if obj is None else (pics.obj == obj) & (pics.mode != 1)
    if view is not None:
        member &= pics.view == view
    mode_prob = torch.tensor(shading_probabilities(ShadingConfig()), dtype=torch.float64)
    return torch.where(member, mode_prob[pics.mode].log(), -math.inf)


@pytest.mark.parametrize("t", [1, 250, 600, 980])
def test_the_denoiser_is_the_exact_posterior_mean(toy, t):
    a = float(toy.alphas_cumprod[t])
    g = torch.Generator().manual_seed(t)
    x0 = toy.flat[1234]
    x_t = (math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(x0.shape, generator=g))[None]
    weights = torch.stack(
        [toy.group_weights(0), toy.group_weights(None), toy.group_weights(2, torch.tensor([0.0, 1.0, 0.0, 0.0]))]
    )[:, None]
    got = toy.posterior_mean(x_t, torch.tensor([a], dtype=torch.float64), weights)
    for k, logw in enumerate([_row_log_prior(toy, 0), _row_log_prior(toy, None), _row_log_prior(toy, 2, 1)]):
        torch.testing.assert_close(got[k, 0].double(), _naive_mean(toy, x_t, a, logw), atol=2e-4, rtol=0)


def test_with_no_picture_noise_a_clean_picture_denoises_to_itself(toy):
    x0 = toy.flat[777][None]
    a = toy.alphas_cumprod[1].double()[None]
    toy.picture_noise, kept = 0.0, toy.picture_noise
    try:
        out = toy.posterior_mean(x0 * a.sqrt().float(), a, toy.group_weights(None)[None, None])
    finally:
        toy.picture_noise = kept
    torch.testing.assert_close(out[0], x0, atol=1e-4, rtol=0)


def test_picture_noise_keeps_sdi_inverted_noise_gaussian_sized(toy):
    """Off the pictures, σ = 0 makes the exact score blow up near t = 0 (ε̂ ≈ residual/0.029):
    SDI's inverted noise is then ~10× a Gaussian's; with the pictures' own noise it is ≈ 1."""
    emb = toy.encode_prompt(TOY_PROMPTS[0], options=PromptOptions(perp_neg=False))
    pred = toy.predictor(emb, torch.tensor([10.0]), torch.tensor([30.0]))
    x0 = toy.flat[5][None].reshape(1, 3, 32, 32) * 0.7  # a render near, not on, a picture
    guide = ScoreDistillation(pred, "sdi", guidance_scale=0.0, inversion_guidance_scale=0.0)
    std = guide.step(x0, 600, torch.Generator().manual_seed(0)).noise.std()
    toy.picture_noise, kept = 0.0, toy.picture_noise
    try:
        sharp = guide.step(x0, 600, torch.Generator().manual_seed(0)).noise.std()
    finally:
        toy.picture_noise = kept
    assert 0.7 < std < 1.4 and sharp > 4


@pytest.mark.parametrize("opts", [PromptOptions(), PromptOptions(perp_neg=False), PromptOptions(view_dependent=False)])
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
    from sdi_blender.server.toyworld.prior import build_pictures

    a, b = build_pictures(views_per_object=4), build_pictures(views_per_object=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.view, b.view)
    assert a.images.shape == (len(TOY_OBJECTS) * 4 * 3, 3, 32, 32)


class _ToyField(torch.nn.Module):
    """A toy object as a density field for the NeRF renderer: opaque inside its parts."""

    def __init__(self, obj) -> None:
        super().__init__()
        self.obj, self.dummy = obj, torch.nn.Parameter(torch.zeros(()))

    def _sdf(self, x: torch.Tensor) -> torch.Tensor:
        from sdi_blender.server.evaluation.toy_score import part_distance

        return torch.as_tensor(np.stack([part_distance(p, x.detach().double().numpy()) for p in self.obj.parts]))

    def density(self, x):
        return 400.0 * (self._sdf(x).min(0).values < 0).to(x)

    def forward(self, x, with_normals=False):
        from types import SimpleNamespace

        nearest = self._sdf(x).argmin(0)
        albedo = torch.tensor([p.colour for p in self.obj.parts], dtype=x.dtype)[nearest]
        return SimpleNamespace(density=self.density(x), albedo=albedo, normal=torch.nn.functional.normalize(x, dim=-1))


@pytest.mark.parametrize("obj", range(len(TOY_OBJECTS)))
def test_the_pipeline_renders_a_toy_object_as_the_ground_truth_draws_it(obj):
    """The trainer's cameras and NeRF renderer, fed the true object as a density field, agree
    with the independent ray caster view for view: conventions match, nothing is mirrored."""
    from sdi_blender.server.scene.cameras import orbit_cameras
    from sdi_blender.server.scene.renderer import RendererConfig, VolumeRenderer

    field = _ToyField(TOY_OBJECTS[obj])
    renderer = VolumeRenderer(
        field,
        lambda d: torch.full_like(d, BACKGROUND),
        1.0,
        RendererConfig(num_samples_per_ray=192, occupancy_grid=False),
    )
    azimuths = torch.tensor([0.0, 90.0, 200.0, 300.0])
    cams = orbit_cameras(torch.full((4,), 20.0), azimuths, 2.0, 50.0, 32, 32)
    with torch.no_grad():
        ours = renderer(cams, "albedo").rgb.permute(0, 3, 1, 2)
    views = orbit_views(torch.full((4,), 20.0), azimuths, 2.0, 50.0)
    truth, _ = render_toy(TOY_OBJECTS[obj], views, 32, ("albedo",), ShadingConfig())
    psnr = -10 * torch.log10((ours - truth[0]).square().mean(dim=(1, 2, 3)))
    assert (psnr > 22).all(), psnr
    mirrored = -10 * torch.log10((ours.flip(-1) - truth[0]).square().mean(dim=(1, 2, 3)))
    assert (mirrored < psnr - 3).any(), (psnr, mirrored)  # the views tell a mirror apart


def test_eval_of_a_toy_world_run_adds_psnr_and_mask_iou_against_the_truth(tmp_path, model_cache):
    """An untrained toy run (its blob) is evaluated against the known object: worse than a
    perfect score, finite, and carried into metrics.json's per-run and per-group numbers."""
    import json as json_

    from sdi_blender.server.evaluation.evaluate import evaluate, group_summary
    from sdi_blender.server.scene.background import EnvironmentBackground
    from sdi_blender.server.scene.field import ImplicitVolume
    from sdi_blender.server.training import run_dir
    from sdi_blender.server.training.config import make_config

    config = make_config(TOY_PROMPTS[0], "toy")
    run = tmp_path / "run"
    run.mkdir()
    run_dir.atomic_write(run / run_dir.CONFIG, config.to_json())
    run_dir.write_state(run, "done", 1, config.steps)
    (run / "checkpoints").mkdir()
    torch.save(
        {
            "format": 1,
            "step": 1,
            "config": json_.loads(config.to_json()),
            "field": ImplicitVolume(config.field).state_dict(),
            "background": EnvironmentBackground(config.background).state_dict(),
            "renderer": None,
            "history": [{"step": 1, "t": 980, "total": 1.0}],
        },
        run / run_dir.CHECKPOINT,
    )
    (result,) = evaluate([run], "tiny", views=2, size=32)
    assert 5 < result.truth["psnr"] < 40 and 0 <= result.truth["mask_iou"] < 0.9
    summary = result.summary()
    assert summary["psnr"] == result.truth["psnr"] and "mask_iou" in summary
    assert group_summary([result])[0]["psnr"] == pytest.approx(result.truth["psnr"])


def test_cli_offers_every_preset_and_names_toy_prompts_on_a_bad_one(tmp_path, capsys):
    from sdi_blender.cli import main
    from sdi_blender.server.training.config import PRESETS

    assert main(["generate", "a ripe strawberry", "--preset", "toy", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and TOY_PROMPTS[0] in err[0] and not (tmp_path / "run").exists()
    for preset in PRESETS:  # the command line accepts every preset the trainer has
        with pytest.raises(SystemExit):
            main(["generate", "--preset", preset, "--help"])
        assert "invalid choice" not in capsys.readouterr().err


def test_view_bins_condition_on_the_cameras_azimuth_bin(toy):
    """The diagnostic camera-aware prior: a camera at azimuth 0 is given only pictures whose
    camera lies within ±15° of it (12 bins), where the view bucket gives ±45°."""
    from sdi_blender.server.toyworld.prior import ToyWorldPrior, azimuth_bin

    assert azimuth_bin(torch.tensor([14.0, 16.0, -14.0, -16.0, 190.0, 345.5]), 12).tolist() == [0, 1, 0, 11, 6, 0]
    fine = ToyWorldPrior(view_bins=12)
    emb = fine.encode_prompt(TOY_PROMPTS[0], options=PromptOptions(perp_neg=False))
    pred = fine.predictor(emb, torch.tensor([10.0]), torch.tensor([0.0]))
    mass = pred.branches[0][0]  # [G] conditional mass per group
    near = torch.cat([fine.pictures.azimuth[g.start : g.end] for g, m in zip(fine.groups, mass) if m > 0])
    wrapped = (near + 180) % 360 - 180
    assert near.numel() > 0 and wrapped.abs().max() <= 15.0
    with pytest.raises(ValueError, match="Perp-Neg"):
        fine.predictor(fine.encode_prompt(TOY_PROMPTS[0]), torch.tensor([10.0]), torch.tensor([0.0]))


def test_the_toy_presets_inversion_mirrors_its_guidance_about_the_unconditional_model():
    """The paper's SDI pairs CFG s with inversion guidance −s in the form ε_u + s·(ε_c − ε_u)
    (its Perp-Neg default). The toy preset predicts with the conditional alone (weight 1 on
    ε_c − ε_u), so its inversion must weigh it −1, away from the prompt; mirrored in the plain
    convention instead (0 and 0), the inversion would be the conditional model too."""
    from sdi_blender.server.diffusion.prompts import guided_noise
    from sdi_blender.server.training.config import make_config

    config = make_config(TOY_PROMPTS[0], "toy")
    assert not config.perp_neg
    eps_u, eps_c = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    weight = lambda s: float(guided_noise(eps_c, eps_u, s))  # noqa: E731 (the weight on ε_c − ε_u)
    assert weight(config.guidance_scale) == 1.0
    assert weight(config.inversion_guidance_scale) == -weight(config.guidance_scale)


def test_the_toy_presets_guidance_weight_keeps_the_papers_balance_with_the_regularisers():
    """The paper's regulariser weights are set against guidance that weighs ε_c − ε_u by 8.5
    (CFG 7.5, plain convention); the toy's weighs it by 1, so its guidance loss weighs 8.5."""
    from sdi_blender.server.diffusion.prompts import guided_noise
    from sdi_blender.server.training.config import TrainConfig, make_config

    toy, paper = make_config(TOY_PROMPTS[0], "toy"), TrainConfig(prompt="x")
    eps_u, eps_c = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    weight = lambda s: float(guided_noise(eps_c, eps_u, s))  # noqa: E731
    assert toy.losses.guidance == weight(paper.guidance_scale) / weight(toy.guidance_scale) == 8.5
    assert toy.losses.at(0) == {**paper.losses.at(0), "guidance": 8.5}  # the regularisers are the paper's


def test_conditional_shares_name_the_pictures_a_target_is_made_of_and_a_picture_set_can_be_given():
    """Near a picture of the prompt (small t) the conditional posterior is that picture; the
    shares sum to 1 over the prompt's pictures only; a prior built on another picture set
    (the drift bench's denser diagnostic) uses it instead of the cached one."""
    from sdi_blender.server.toyworld.prior import ToyWorldPrior, build_pictures

    small = ToyWorldPrior(pictures=build_pictures(views_per_object=6))
    assert small.pictures.images.shape[0] == 6 * len(TOY_OBJECTS) * 3  # three shading modes
    emb = small.encode_prompt(TOY_PROMPTS[1], options=PromptOptions(view_dependent=False))
    pred = small.predictor(emb)
    row = int(torch.nonzero((small.pictures.obj == 1) & (small.pictures.mode == 0))[0])
    t = torch.tensor([20])
    a = small.alphas_cumprod[t]
    x_t = a.sqrt() * small.pictures.images[row][None]
    shares = pred.conditional_shares(x_t, t)[0]
    assert int(shares.argmax()) == row and shares[row] > 0.99
    assert math.isclose(float(shares.sum()), 1.0, rel_tol=1e-6)
    assert float(shares[small.pictures.obj != 1].sum()) == 0.0
    eps = pred.predict_noise(x_t, t, 0.0)  # the conditional model: x̂0 is that picture's
    x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
    assert (x0[0] - small.pictures.images[row]).abs().max() < 0.05
