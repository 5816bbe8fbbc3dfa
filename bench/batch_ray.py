"""Batch on Ray against one process: throughput (tasks per minute) and Ray's overhead per task.

The same N tasks (``sdi-blender batch``'s: the ``test`` preset with the ``tiny`` model, a few
steps, a small export) run three ways, each into a fresh folder:

1. ``serial``: in this process, one after another (:func:`run_task`, the model loaded once), with
   one torch thread, as each Ray task has (Ray sets OMP_NUM_THREADS to its one CPU);
2. ``ray-1``: on a local Ray with one CPU, so one task at a time: what it takes over ``serial``,
   per task, is Ray's overhead (scheduling, starting a worker, its imports, its model load);
3. ``ray-all``: on a local Ray with every CPU: the throughput a batch gets here.

Ray's start (``ray.init``) is timed apart from the tasks. Times on a shared machine are noisy: the
ways take turns ``--repeats`` times and each keeps its fastest (load from other processes only
ever adds time). Prints the figures and writes ``bench/results/batch-ray-<date>.json``.

    python bench/batch_ray.py [--tasks 4] [--steps 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from sdi_blender.server.commands import batch_task
from sdi_blender.server.commands.batch import BatchRequest, plan_batch, run_tasks
from sdi_blender.server.export.pipeline import ExportSettings
from sdi_blender.server.training.priors import load_prior

RESULTS = Path(__file__).resolve().parent / "results"


def _request(folder: Path, tasks: int, steps: int) -> BatchRequest:
    jobs = folder / "jobs.txt"
    jobs.write_text("a red apple\n", encoding="utf-8")
    return BatchRequest(
        jobs_file=jobs,
        out=folder / "out",
        seeds=f"0-{tasks - 1}",
        preset="test",
        settings={"model": "tiny", "steps": steps, "resolution": 32},
        device="cpu",
        export=ExportSettings(resolution=32, texture_size=64),
        clip="tiny",
    )


def _figures(seconds: float, tasks: int, inner: list[float]) -> dict:
    return {
        "seconds": round(seconds, 2),
        "tasks_per_min": round(60 * tasks / seconds, 2),
        "task_seconds_mean": round(sum(inner) / len(inner), 2),
    }


def time_serial(req: BatchRequest) -> dict:
    """Every task in this process, one after another; the model's load is counted once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    batch_task._prior.clear()
    try:
        start = time.perf_counter()
        results = [batch_task.run_task(task, "cpu") for task in plan_batch(req)]
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert all(r.status == "done" for r in results), [r.error for r in results]
    return _figures(seconds, len(results), [r.seconds for r in results])


def time_ray(req: BatchRequest, cpus: int) -> dict:
    """The tasks on a local Ray of ``cpus`` CPUs, started here (its start timed apart)."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    init_s = time.perf_counter() - start
    try:
        tasks = plan_batch(req)
        start = time.perf_counter()
        results = run_tasks(tasks, req)
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    assert all(r.status == "done" for r in results), [r.error for r in results]
    return {
        "cpus": cpus,
        "init_seconds": round(init_s, 2),
        **_figures(seconds, len(results), [r.seconds for r in results]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4, help="tasks per way (default 4)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per task (default 4)")
    parser.add_argument("--repeats", type=int, default=2, help="turns of the three ways (default 2)")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/batch-ray-<date>.json)")
    args = parser.parse_args()
    load_prior("tiny", device="cpu")  # builds the tiny model into the cache: not a task's cost
    cpus = os.cpu_count() or 1
    timers = {"serial": time_serial, "ray-1": lambda req: time_ray(req, 1), "ray-all": lambda req: time_ray(req, cpus)}
    ways: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for turn in range(args.repeats):
            for name, time_it in timers.items():
                work = Path(folder) / f"{name}-{turn}"
                work.mkdir()
                figures = time_it(_request(work, args.tasks, args.steps))
                print(f"{name} (turn {turn + 1}): {figures}", flush=True)
                if name not in ways or figures["seconds"] < ways[name]["seconds"]:
                    ways[name] = figures
    overhead = (ways["ray-1"]["seconds"] - ways["serial"]["seconds"]) / args.tasks
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": cpus, "platform": platform.platform(), "torch": torch.__version__},
        "tasks": args.tasks,
        "steps": args.steps,
        "repeats": args.repeats,
        "ways": ways,
        "ray_overhead_per_task_seconds": round(overhead, 2),
        "speedup_all_cpus_over_serial": round(ways["serial"]["seconds"] / ways["ray-all"]["seconds"], 2),
    }
    print(
        f"Ray's overhead per task (ray-1 − serial): {overhead:.1f} s; throughput {ways['ray-all']['tasks_per_min']} "
        f"tasks/min on {cpus} CPUs against {ways['serial']['tasks_per_min']} in one process"
    )
    out = args.out or RESULTS / f"batch-ray-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
