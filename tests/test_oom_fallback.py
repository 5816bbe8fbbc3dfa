"""Out of memory in a training step: the trainer lowers its render chunk, then its samples per
ray, retries the step from the state before it, says so, and gives up only with nothing left."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_trainer import small_config

from sdi_blender.server.scene.renderer import RendererConfig, lower_memory
from sdi_blender.server.training import run_dir
from sdi_blender.server.training.trainer import Trainer, TrainerCallbacks

RAYS = 32 * 32  # small_config's render: one camera at 32 px


class _Notices(TrainerCallbacks):
    def __init__(self) -> None:
        self.notices: list[tuple[int, str]] = []

    def on_notice(self, step: int, message: str) -> None:
        self.notices.append((step, message))


def _trainer(prior, folder: Path, chunk: int, samples: int = 16) -> tuple[Trainer, _Notices]:
    settings = {
        "renderer.chunk_rays": chunk,
        "renderer.min_chunk_rays": 256,
        "renderer.num_samples_per_ray": samples,
        "renderer.min_samples_per_ray": 4,
    }
    run_dir.prepare_new_run(folder, overwrite=False)
    notices = _Notices()
    return Trainer(small_config(**settings), folder, prior=prior, callbacks=notices), notices


def _inject_oom(trainer: Trainer, fails: int, above_chunk: int = 0, above_samples: int = 0) -> list[tuple[int, int]]:
    """Make the trainer's renderer raise CUDA's out-of-memory error on its first ``fails``
    training renders (stratified) with more than ``above_chunk`` rays per chunk or more than
    ``above_samples`` samples per ray; returns the (chunk, samples) of every training render."""
    renderer, real, calls = trainer.renderer, trainer.renderer.forward, []

    def forward(*args, stratified: bool = False, **kwargs):
        if stratified:
            cfg = renderer.config
            calls.append((cfg.chunk_rays, cfg.num_samples_per_ray))
            failed = sum(1 for c, s in calls[:-1] if c > above_chunk or s > above_samples)
            if (cfg.chunk_rays > above_chunk or cfg.num_samples_per_ray > above_samples) and failed < fails:
                next(trainer.field.parameters()).sum().backward()  # a partial gradient is left behind
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, stratified=stratified, **kwargs)

    renderer.forward = forward  # type: ignore[method-assign]
    return calls


def _state(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.optimizer.param_groups[0]["params"]]


def test_lower_memory_halves_the_chunk_then_the_samples_down_to_their_floors() -> None:
    cfg = RendererConfig(chunk_rays=3000, min_chunk_rays=1000, num_samples_per_ray=100, min_samples_per_ray=40)
    said = []
    while (change := lower_memory(cfg)) is not None:
        said.append(change)
    assert said == [
        "render chunk 3000 → 1500",
        "render chunk 1500 → 1000",
        "samples per ray 100 → 50",
        "samples per ray 50 → 40",
    ]
    assert (cfg.chunk_rays, cfg.num_samples_per_ray) == (1000, 40)


def test_a_step_that_runs_out_of_memory_is_retried_with_a_smaller_chunk_exactly_once(prior, tmp_path) -> None:
    """A step that runs out at chunk 1024 and 512 ends exactly as a step at chunk 256."""
    faulty, notices = _trainer(prior, tmp_path / "faulty", chunk=RAYS)
    calls = _inject_oom(faulty, fails=2, above_chunk=256)
    reference, _ = _trainer(prior, tmp_path / "reference", chunk=256)
    for trainer in (faulty, reference):
        trainer.optimise_step()
        trainer.report_progress(wait=True)
    assert calls == [(1024, 16), (512, 16), (256, 16)]
    assert notices.notices == [
        (1, "out of memory; retrying the step with render chunk 1024 → 512"),
        (1, "out of memory; retrying the step with render chunk 512 → 256"),
    ]
    # Same weights, Adam moments and step counts as never having failed: the failed attempts
    # left no gradients, no optimiser update, no extra draw from the generators.
    for a, b in zip(_state(faulty), _state(reference)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for p, q in zip(faulty.field.parameters(), reference.field.parameters()):
        sa, sb = faulty.optimizer.state[p], reference.optimizer.state[q]
        assert int(sa["step"]) == int(sb["step"]) == 1
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-5, atol=1e-12)
    assert faulty.step == 1 and [h["step"] for h in faulty.history] == [1]  # reported once
    assert [h["total"] for h in faulty.history] == pytest.approx([h["total"] for h in reference.history], rel=1e-5)
    saved = json.loads((tmp_path / "faulty" / run_dir.CONFIG).read_text())
    assert saved["renderer"]["chunk_rays"] == 256  # a resumed run keeps the setting that fits


def test_after_the_chunk_the_samples_are_lowered_and_then_the_error_is_raised(prior, tmp_path) -> None:
    trainer, notices = _trainer(prior, tmp_path, chunk=512)
    before = _state(trainer)
    calls = _inject_oom(trainer, fails=10**6, above_chunk=0)  # never fits
    with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate"):
        trainer.optimise_step()
    assert calls == [(512, 16), (256, 16), (256, 8), (256, 4)]
    assert [m for _, m in notices.notices] == [
        "out of memory; retrying the step with render chunk 512 → 256",
        "out of memory; retrying the step with samples per ray 16 → 8",
        "out of memory; retrying the step with samples per ray 8 → 4",
    ]
    assert trainer.step == 0 and not trainer.optimizer.state  # Adam never ran
    assert all(torch.equal(a, b) for a, b in zip(before, _state(trainer)))
    assert not trainer._losses.pending


def test_other_errors_are_not_retried(prior, tmp_path) -> None:
    trainer, notices = _trainer(prior, tmp_path, chunk=512)
    trainer.renderer.forward = lambda *a, **k: (_ for _ in ()).throw(ValueError("boom"))  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="boom"):
        trainer.optimise_step()
    assert not notices.notices and trainer.config.renderer.chunk_rays == 512


def test_the_cli_prints_what_the_fallback_changed_above_its_bar(capsys) -> None:
    from sdi_blender.server.commands.generate import _ProgressBar

    bar = _ProgressBar(10, 0)
    bar.on_notice(3, "out of memory; retrying the step with render chunk 512")
    bar.bar.close()
    assert "step 3: out of memory; retrying the step with render chunk 512" in capsys.readouterr().err


def test_the_server_sends_what_the_fallback_changed_as_a_job_event() -> None:
    from sdi_blender import protocol
    from sdi_blender.server.service.events import JobEvents

    sent: list[tuple[str, dict]] = []
    JobEvents("J1", lambda job, event: sent.append((job, event))).on_notice(7, "render chunk lowered to 512")
    ((job, event),) = sent
    assert job == "J1" and protocol.malformed(event) is None
    assert event == {"event": "warning", "job": "J1", "step": 7, "message": "render chunk lowered to 512"}
