"""The text-to-3D trainer on the tiny model: gradients, blob init, checkpoints, resume, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdi_blender.errors import UserError
from sdi_blender.server.training import run_dir
from sdi_blender.server.training.config import TrainConfig, make_config
from sdi_blender.server.training.trainer import LossDiverged, Trainer, TrainerCallbacks


def small_config(**overrides) -> TrainConfig:
    """Smaller than the test preset, so each unit test takes seconds."""
    settings = {
        "resolution": 32,
        "renderer.num_samples_per_ray": 16,
        "field.log2_hashmap_size": 12,
        "steps": 6,
        "preview_every": 3,
        "checkpoint_every": 3,
        "preview_size": 16,
        "turntable_views": 2,
        "model": "tiny",
        **overrides,
    }
    return make_config("a red apple", "test", **settings)


def _trainer(prior, tmp_path: Path, config=None, **kw) -> Trainer:
    run_dir.prepare_new_run(tmp_path, overwrite=False)
    return Trainer(config or small_config(), tmp_path, prior=prior, **kw)


def test_gradients_reach_field_and_background(prior, tmp_path):
    trainer = _trainer(prior, tmp_path)
    _, terms = trainer.train_step()
    terms["guidance"].backward()
    grads = [p.grad for p in trainer.field.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.background.parameters())


def test_blob_init_renders_a_centred_object(prior, tmp_path):
    trainer = _trainer(prior, tmp_path)
    from sdi_blender.server.scene.cameras import turntable_cameras

    cams = turntable_cameras(1, 32, 32, trainer.config.cameras)
    with torch.no_grad():
        opacity = trainer.renderer(cams, "albedo").opacity[0, :, :, 0]
    assert opacity[16, 16] > 0.9 and opacity[0, 0] < 0.05 and opacity[-1, -1] < 0.05
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    w = opacity / opacity.sum()
    assert abs((w * ys).sum() - 15.5) < 1 and abs((w * xs).sum() - 15.5) < 1


class _Recorder(TrainerCallbacks):
    def __init__(self, cancel_at: int | None = None):
        self.progress, self.previews, self.checkpoints = [], [], []
        self.cancel_at = cancel_at

    def on_progress(self, p):
        self.progress.append(p)

    def on_preview(self, step, png):
        self.previews.append((step, png))

    def on_checkpoint(self, step, path):
        self.checkpoints.append(step)

    def cancel(self) -> bool:
        return self.cancel_at is not None and bool(self.progress) and self.progress[-1].step >= self.cancel_at


def test_run_reports_progress_previews_checkpoints_and_reports(prior, tmp_path):
    rec = _Recorder()
    result = _trainer(prior, tmp_path, callbacks=rec).run()
    assert result.status == "done" and result.step == 6
    assert [p.step for p in rec.progress] == [1, 2, 3, 4, 5, 6]
    p = rec.progress[-1]
    assert p.total == 6 and p.eta_s == 0 and p.elapsed_s > 0
    assert set(p.losses) >= {"guidance", "orient", "sparsity", "opaque", "z_variance", "convex", "total"}
    assert [s for s, _ in rec.previews] == [3, 6] and rec.previews[0][1][:4] == b"\x89PNG"
    assert rec.checkpoints == [3, 6]
    for name in (run_dir.CONFIG, run_dir.CHECKPOINT, run_dir.LOSS_CURVE, run_dir.TURNTABLE, "previews/step_000003.png"):
        assert (tmp_path / name).is_file(), name
    assert len((tmp_path / run_dir.METRICS).read_text().splitlines()) == 6
    assert json.loads((tmp_path / run_dir.STATE).read_text())["status"] == "done"
    assert TrainConfig.from_json((tmp_path / run_dir.CONFIG).read_text()) == small_config()


def _params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in [*trainer.field.parameters(), *trainer.background.parameters()]]


def test_resume_continues_exactly_like_an_uninterrupted_run(prior, tmp_path):
    straight = _trainer(prior, tmp_path / "a")
    straight.run()
    rec = _Recorder(cancel_at=3)
    first = _trainer(prior, tmp_path / "b", callbacks=rec)
    assert first.run(rec.cancel).status == "cancelled"
    resumed = Trainer(small_config(), tmp_path / "b", prior=prior, resume=True)
    assert resumed.step == 3
    resumed.run()
    for a, b in zip(_params(straight), _params(resumed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [h["total"] for h in straight.history] == [h["total"] for h in resumed.history]


def test_cancel_stops_within_one_step_and_leaves_a_valid_checkpoint(prior, tmp_path):
    rec = _Recorder(cancel_at=2)
    trainer = _trainer(prior, tmp_path, callbacks=rec)
    result = trainer.run(rec.cancel)
    assert result.status == "cancelled" and result.step == 2
    state = torch.load(tmp_path / run_dir.CHECKPOINT, weights_only=False)
    assert state["step"] == 2
    assert json.loads((tmp_path / run_dir.STATE).read_text())["status"] == "cancelled"
    again = Trainer(small_config(), tmp_path, prior=prior, resume=True)
    for a, b in zip(_params(trainer), _params(again)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(prior, tmp_path, monkeypatch):
    trainer = _trainer(prior, tmp_path, small_config(checkpoint_every=2))
    real = Trainer.train_step

    def poisoned(self):
        t, terms = real(self)
        if self.step == 3:
            terms["total"] = terms["total"] * float("nan")
        return t, terms

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    with pytest.raises(LossDiverged, match="step 4.*last good checkpoint \\(step 2\\)"):
        trainer.run()
    assert torch.load(tmp_path / run_dir.CHECKPOINT, weights_only=False)["step"] == 2
    assert json.loads((tmp_path / run_dir.STATE).read_text())["status"] == "failed"


def test_resuming_an_incompatible_checkpoint_is_refused(prior, tmp_path):
    _trainer(prior, tmp_path).run()
    changed = small_config(**{"field.log2_hashmap_size": 13})
    with pytest.raises(UserError, match="incompatible.*field"):
        Trainer(changed, tmp_path, prior=prior, resume=True)


def test_schedules_are_stretched_to_the_run_length():
    config = small_config(steps=100)
    assert config.schedule_steps == 100
    assert config.paper_step(10) == 1000 and config.paper_step(100) == 10_000
    assert config.paper_step(150) == 10_000  # refinement steps stay at the schedules' ends


def test_step_timer_times_every_stage_of_a_step(prior, tmp_path):
    from sdi_blender.server.util.step_timer import StepTimer

    timer = StepTimer("cpu")
    trainer = _trainer(prior, tmp_path, timer=timer)
    for _ in range(2):
        trainer.optimise_step()
        trainer.report_progress()
    steps = timer.results()
    assert len(steps) == 2 and [h["step"] for h in trainer.history] == [1, 2]
    stages = {"grid", "render", "vae", "inversion", "prediction", "vae_backward", "render_backward", "update"}
    for ms in steps:
        assert set(ms) == stages | {"step"} and all(v >= 0 for v in ms.values())
        assert sum(ms[k] for k in stages) <= ms["step"]


def test_timing_changes_no_result(prior, tmp_path):
    from sdi_blender.server.util.step_timer import StepTimer

    plain = _trainer(prior, tmp_path / "a")
    timed = _trainer(prior, tmp_path / "b", timer=StepTimer("cpu"))
    for trainer in (plain, timed):
        for _ in range(2):
            trainer.optimise_step()
            trainer.report_progress()
    for a, b in zip(_params(plain), _params(timed)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _FakeEvent:
    """A CUDA event stand-in: arrived or not, and whether someone waited for it."""

    def __init__(self, done: bool):
        self.done, self.waited = done, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = True


def test_loss_values_are_read_when_they_arrive_and_at_most_two_steps_late():
    from sdi_blender.server.training.loss_fetch import LossFetch

    fetch = LossFetch(torch.device("cpu"), max_lag=2)
    events = [_FakeEvent(done) for done in (True, False, False, False)]

    def push(step: int) -> None:
        fetch.pending.append((step, 900, ["total"], torch.tensor([float(step)]), events[step - 1]))

    push(1)
    push(2)
    # Two outstanding (not more than max_lag): step 1 is read because it has arrived; step 2
    # has not, and nobody waits for it.
    assert [(s, v) for s, _, v in fetch.ready()] == [(1, {"total": 1.0})]
    assert not events[1].waited
    push(3)
    push(4)
    # Three outstanding: step 2 is now too late, so it is waited for; 3 and 4 are kept.
    assert [s for s, _, _ in fetch.ready()] == [2]
    assert events[1].waited and not events[2].waited and not events[3].waited
    assert fetch.ready() == []  # two outstanding, neither arrived: no wait
    assert not events[2].waited and not events[3].waited
    assert [(s, v) for s, _, v in fetch.ready(wait=True)] == [(3, {"total": 3.0}), (4, {"total": 4.0})]
    assert not fetch.pending
