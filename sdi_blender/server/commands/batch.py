"""The ``batch`` command: every (prompt, seed) of a jobs file as one Ray task, then ``eval`` over all.

Everything is checked before Ray starts (:func:`plan_batch`): the jobs file, the seeds, every run's
settings, the folders and the CLIP. Each task asks Ray for one GPU where the cluster has GPUs (one
CPU otherwise) and trains and exports one run folder ``OUT/<name>-seed<k>``
(:mod:`.batch_task`). A failed, out-of-memory or killed task is recorded in ``OUT/batch.json``
(rewritten atomically after every task) and the others go on. Running the same command again keeps
the runs done with the same settings, resumes those cut short from their checkpoints, and trains
the rest (:func:`~.reuse.reuse_action`, as ``compare`` does). ``OUT`` must be on storage that every
node of the cluster sees at the same path.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import catalog
from ...errors import UserError
from ..diffusion.model_source import check_model_name
from ..evaluation.clip_metrics import DEFAULT_CLIP, resolve_clip_folder
from ..evaluation.evaluate import evaluate, group_summary
from ..evaluation.report import check_report_dir, write_report
from ..export.pipeline import ExportSettings
from ..training import run_dir
from ..training.config import make_config
from ..util.devices import resolve_device
from ..util.fileio import atomic_write
from ..util.ray_cluster import connect, host_port, ray_module, slot_resources
from .batch_file import BatchJob, parse_seeds, read_jobs
from .batch_task import EXPORT, BatchTask, TaskResult, did, mark_interrupted, run_task
from .reuse import KEEP, reuse_action

SUMMARY = "batch.json"
REPORT = "report"
_RESUME_HINT = "run the same command again to resume it from its checkpoint"


@dataclass
class BatchRequest:
    """What the user asked for; a job's own values win over these."""

    jobs_file: Path
    out: Path
    """The batch folder: the run folders, batch.json and the report."""
    seeds: str = "0"
    """The seeds of jobs that name none, as ``--seeds`` takes them."""
    preset: str | None = None
    """None: the default preset."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Training overrides for every run (method, model, steps, resolution, checkpoint_every)."""
    ray: str = "auto"
    """auto (a local Ray, or the one RAY_ADDRESS names) or a cluster's address, HOST:PORT."""
    device: str = "auto"
    """auto (a GPU per task where the cluster has them) or cpu."""
    export: ExportSettings = field(default_factory=ExportSettings)
    clip: str = DEFAULT_CLIP
    views: int = 8
    size: int = 256


def default_out(jobs_file: Path) -> Path:
    """batch/<the jobs file's name without suffix>."""
    return Path("batch") / jobs_file.stem


def run_batch(req: BatchRequest) -> int:
    """Check, run every task, evaluate; returns how many tasks failed."""
    req = dataclasses.replace(req, out=req.out.expanduser().resolve())  # workers start elsewhere
    tasks = plan_batch(req)
    started = connect(req.ray, "batch")
    try:
        results = run_tasks(tasks, req)
    finally:
        if started:
            ray_module().shutdown()
    failed = sum(r.status == "failed" for r in results)
    report = _write_report(tasks, req)
    _Summary(req, tasks, results).write(report)
    if failed:
        print(f"{failed} of {len(tasks)} runs failed (see {req.out / SUMMARY}); {_RESUME_HINT}", file=sys.stderr)
    return failed


# -- before anything starts -----------------------------------------------------------------
def plan_batch(req: BatchRequest) -> list[BatchTask]:
    """Every task of the batch, each checked, with what to do with its run folder; writes nothing."""
    if req.device not in ("auto", "cpu"):
        raise UserError(f"batch runs on 'auto' or 'cpu', not '{req.device}'", hint="auto uses a GPU per task")
    req.export.validate()
    if req.ray != "auto":
        host_port(req.ray)
    jobs, seeds = read_jobs(req.jobs_file), parse_seeds(req.seeds)
    tasks = [_task(job, seed, req) for job in jobs for seed in job.seeds or seeds]
    check_report_dir(req.out / REPORT)  # before hours of training, not after
    resolve_clip_folder(req.clip)
    return tasks


def _task(job: BatchJob, seed: int, req: BatchRequest) -> BatchTask:
    preset = job.preset or req.preset or catalog.DEFAULT_PRESET
    mine = {"method": job.method, "model": job.model, "negative_prompt": job.negative_prompt, "seed": seed}
    settings = {**req.settings, **{k: v for k, v in mine.items() if v is not None}}
    try:
        if settings.get("model"):
            check_model_name(settings["model"])
            if Path(settings["model"]).expanduser().is_dir():  # a worker's working folder is not ours
                settings["model"] = str(Path(settings["model"]).expanduser().resolve())
        config = make_config(job.prompt, preset, **settings)
        config.validate()
        settings.update(method=config.method, model=config.model)  # as batch.json lists them
        name = f"{job.name}-seed{seed}"
        run = req.out / name
        action = reuse_action(run, config)
        if action != KEEP:
            run_dir.check_new_run(run, overwrite=True)  # writable, and not a file
    except UserError as exc:
        raise UserError(f"{job.where}: {exc.message}", exc.hint) from None
    if action == KEEP and _needs_export(run, req.export.format):
        action = EXPORT
    return BatchTask(name, run, job.prompt, preset, settings, action, req.export)


def _needs_export(run: Path, fmt: str) -> bool:
    """A run done (not diverged) whose mesh is missing."""
    return run_dir.read_state(run).get("status") == "done" and not (run / catalog.mesh_file(fmt)).is_file()


# -- on Ray ---------------------------------------------------------------------------------
def run_tasks(tasks: list[BatchTask], req: BatchRequest) -> list[TaskResult]:
    """Run the tasks that are not kept on Ray, with a bar over all and a line per task."""
    from tqdm import tqdm

    ray = ray_module("batch")
    resources, device, _ = slot_resources(ray, req.device)  # "cpu" where no GPU: Ray hides none from a CPU task
    results = [TaskResult(t.name, "pending", did(t.action)) for t in tasks]
    summary = _Summary(req, tasks, results)
    summary.write()
    remote = ray.remote(run_task)
    pending = {
        remote.options(name=t.name, max_retries=0, **resources).remote(t, device): i
        for i, t in enumerate(tasks)
        if t.action != KEEP
    }
    bar = tqdm(total=len(tasks), unit="run", desc="batch", file=sys.stderr, dynamic_ncols=True)
    try:
        for i, task in enumerate(tasks):
            if task.action == KEEP:
                _record(summary, i, _kept(task), bar)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ref)
            _record(summary, i, _outcome(ray, ref, tasks[i]), bar)
    except KeyboardInterrupt:
        for ref, i in pending.items():
            ray.cancel(ref, force=True)
            mark_interrupted(tasks[i].run, "the batch was interrupted")
        summary.write()
        raise KeyboardInterrupt("interrupted; run the same command again to resume the unfinished runs") from None
    finally:
        bar.close()
    return results


def _outcome(ray: Any, ref: Any, task: BatchTask) -> TaskResult:
    """The task's result, or a failed one when its worker died (a crash, Ray's OOM killer)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        code = "out_of_memory" if isinstance(exc, ray.exceptions.OutOfMemoryError) else "worker_died"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        mark_interrupted(task.run, message)
        step = run_dir.read_state(task.run).get("step", 0)
        error = {"code": code, "message": message, "hint": _RESUME_HINT}
        return TaskResult(task.name, "failed", did(task.action), step=step, error=error)


def _kept(task: BatchTask) -> TaskResult:
    state = run_dir.read_state(task.run)
    status = "done" if state.get("status") == "done" else "diverged"
    return TaskResult(task.name, status, did(KEEP), step=state.get("step", 0), from_step=state.get("step", 0))


def _record(summary: _Summary, i: int, result: TaskResult, bar: Any) -> None:
    summary.results[i] = result
    summary.write()
    bar.update(1)
    bar.write(f"[{bar.n}/{bar.total}] {_line(result)}", file=sys.stderr)


def _line(r: TaskResult) -> str:
    """One task's status line."""
    if r.action == "kept":
        return f"{r.name}: kept ({r.status} already with these settings, step {r.step})"
    if r.error is not None:  # failed, or diverged
        return f"{r.name}: {r.status} at step {r.step} ({r.error['code']}): {r.error['message']}; {r.error['hint']}"
    start = f" from step {r.from_step}" if r.from_step else ""
    what = "exported" if r.action == "exported" else f"{r.action}{start} to step {r.step} and exported"
    return f"{r.name}: {what} in {r.seconds:.0f} s on {r.node} ({r.device})"


# -- the record and the report --------------------------------------------------------------
@dataclass
class _Summary:
    """``OUT/batch.json``: the settings, and per task its run and how it went."""

    req: BatchRequest
    tasks: list[BatchTask]
    results: list[TaskResult]

    def write(self, report: Path | None = None) -> None:
        runs = [
            {
                "run": str(t.run),
                "prompt": t.prompt,
                "preset": t.preset,
                **{k: t.settings.get(k) for k in ("method", "model", "seed")},
                **r.to_dict(),
            }
            for t, r in zip(self.tasks, self.results)
        ]
        counts = {s: sum(r.status == s for r in self.results) for s in ("done", "diverged", "failed", "pending")}
        data = {
            "jobs_file": str(self.req.jobs_file),
            "settings": {"seeds": self.req.seeds, "preset": self.req.preset, **self.req.settings},
            "counts": counts,
            "report": str(report) if report else None,
            "runs": runs,
        }
        atomic_write(self.req.out / SUMMARY, json.dumps(data, indent=2))


def _write_report(tasks: list[BatchTask], req: BatchRequest) -> Path | None:
    """``eval`` over every run that has something to score, into ``OUT/report``."""
    runs = [t.run for t in tasks if _scorable(t.run)]
    if not runs:
        print("no run has a checkpoint to evaluate; no report", file=sys.stderr)
        return None
    out = req.out / REPORT
    results = evaluate(runs, req.clip, req.views, req.size, resolve_device(req.device))
    settings = {"clip": req.clip, "views": req.views, "size": req.size, "batch": str(req.jobs_file)}
    write_report(results, group_summary(results), out, settings)
    print(f"wrote {out}/report.html ({len(runs)} runs)", file=sys.stderr)
    return out


def _scorable(run: Path) -> bool:
    """What ``eval`` takes: a run with a checkpoint, or one whose loss diverged before its first."""
    return (run / run_dir.CHECKPOINT).is_file() or run_dir.read_state(run).get("status") == "failed"
