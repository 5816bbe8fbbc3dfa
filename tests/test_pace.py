"""The progress ETA ignores the warm-up steps (a slow first step must not predict a slow run)."""

from __future__ import annotations

from sdi_blender.server.util.step_timer import Pace


def test_the_eta_is_measured_after_the_warm_up() -> None:
    now = [0.0]
    pace = Pace(first_step=0, warmup=2, clock=lambda: now[0])
    durations = [40.0, 5.0] + [1.0] * 10  # step 1 compiles and loads: 40 s; then 1 s a step
    eta = []
    for step, seconds in enumerate(durations, start=1):
        now[0] += seconds
        eta.append(pace.update(step, total=100)[1])
    assert eta[0] == 40.0 * 99  # nothing better known yet
    assert eta[-1] == 1.0 * (100 - len(durations))  # the steady pace, not (56 s / 12 steps)
    elapsed, _ = pace.update(len(durations), 100)
    assert elapsed == sum(durations)


def test_a_resumed_run_counts_from_where_it_resumed() -> None:
    now = [0.0]
    pace = Pace(first_step=500, warmup=1, clock=lambda: now[0])
    for step in range(501, 511):
        now[0] += 2.0
        _, eta = pace.update(step, total=1000)
    assert eta == 2.0 * 490
