"""Throughput and latency of the server's socket protocol (tiny model, CPU).

Prints and writes ``bench/results/protocol-<date>.json``:
* request round trips per second (``status`` answered while idle, and while a job runs);
* job events per second delivered to a subscribed client during a short job;
* latency from a trainer step to its ``progress`` event at the client (the event's server
  timestamp against the arrival time; both on this machine's clock).

    python bench/protocol.py [--steps 20]
"""

from __future__ import annotations

import argparse
import datetime
import json
import queue
import statistics
import tempfile
import time
from pathlib import Path

from sdi_blender.client import LocalServer


def round_trips(client, seconds: float = 2.0) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        client.request("status")
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as jobs:
        server = LocalServer(Path(jobs), model="tiny", device="cpu")
        try:
            with server.connect() as client, server.connect() as poller:
                idle_rps = round_trips(poller)
                client.request("generate", prompt="a red apple", preset="test", steps=args.steps, resolution=32)["job"]
                busy_rps = round_trips(poller)
                latencies, count, first, last = [], 0, None, None
                while True:
                    event = client.events.get(timeout=600)
                    now = time.time()
                    count += 1
                    first, last = first or now, now
                    if event.get("event") == "progress" and "time" in event:
                        latencies.append((now - event["time"]) * 1000)
                    if event.get("event") in {"done", "cancelled", "error"}:
                        break
        except queue.Empty:
            raise SystemExit("the job produced no events for 10 minutes") from None
        finally:
            server.stop()
    result = {
        "status_round_trips_per_s": {"idle": idle_rps, "busy": busy_rps},
        "job_events": count,
        "job_events_per_s": count / max(last - first, 1e-9),
        "progress_latency_ms": {
            "median": statistics.median(latencies) if latencies else None,
            "max": max(latencies) if latencies else None,
        },
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / f"protocol-{datetime.date.today():%Y-%m-%d}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
