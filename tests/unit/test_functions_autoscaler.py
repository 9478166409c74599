"""The KPA-style scaler, replayed on a fake clock (tick = 0.5 s as the router's)."""

from __future__ import annotations

import pytest

from yunhan.errors import ValidationError
from yunhan.functions.autoscaler import Decision, Kpa, Policy

TICK = 0.5


def run(kpa: Kpa, start: float, seconds: float, concurrency: float, ready: int) -> Decision:
    """Feed `concurrency` for `seconds`, following the scaler's wishes as if workers came
    up at once; the last decision."""
    t = start
    d = kpa.decide(t, ready)
    while t < start + seconds:
        t += TICK
        kpa.record(t, concurrency)
        d = kpa.decide(t, ready)
        ready = d.want
    return d


def test_steady_load_settles_on_demand_over_target() -> None:
    kpa = Kpa(Policy(target=1.0, max_scale=20))
    d = run(kpa, 0.0, 120.0, 4.0, ready=1)
    assert d.want == 4
    assert not d.panic


def test_a_burst_panics_at_twice_the_capacity_and_scales_at_once() -> None:
    kpa = Kpa(Policy(target=1.0, max_scale=20))
    run(kpa, 0.0, 60.0, 1.0, ready=1)
    t = 60.0
    for _ in range(4):  # two seconds of 8 in flight against one worker
        t += TICK
        kpa.record(t, 8.0)
    d = kpa.decide(t, 1)
    assert d.panic
    assert d.want >= 2  # the panic window's demand, not the stable one's (~1.1)
    assert d.want > round(d.stable_demand + 0.5)


def test_panic_never_scales_down_and_ends_after_a_stable_window() -> None:
    kpa = Kpa(Policy(target=1.0, max_scale=20, stable_window=60, panic_window=6))
    d = run(kpa, 0.0, 10.0, 10.0, ready=1)
    assert d.panic and d.want == 10
    d = run(kpa, 10.0, 30.0, 0.5, ready=10)  # the load falls: still panicking, still 10
    assert d.panic and d.want == 10
    d = run(kpa, 40.0, 60.0, 0.5, ready=10)  # a whole stable window without the condition
    assert not d.panic
    assert d.want < 10


def test_scale_down_is_at_most_halving_per_step() -> None:
    kpa = Kpa(Policy(target=1.0, max_scale=20, stable_window=6, panic_window=6))
    run(kpa, 0.0, 20.0, 8.0, ready=1)
    t = 20.0
    for _ in range(20):
        t += TICK
        kpa.record(t, 0.2)
    assert kpa.decide(t, 8).want == 4


def test_scale_to_zero_waits_for_the_idle_grace() -> None:
    kpa = Kpa(Policy(target=1.0, stable_window=10, panic_window=2, idle_grace=5))
    d = run(kpa, 0.0, 10.0, 1.0, ready=1)
    assert d.want == 1
    d = run(kpa, 10.0, 10.5, 0.0, ready=1)  # a stable window of nothing: grace starts
    assert d.want == 1 and "idle grace" in d.why
    d = run(kpa, 20.5, 4.0, 0.0, ready=1)
    assert d.want == 1
    d = run(kpa, 24.5, 2.0, 0.0, ready=1)
    assert d.want == 0


def test_a_request_during_the_grace_keeps_the_worker() -> None:
    kpa = Kpa(Policy(target=1.0, stable_window=4, panic_window=2, idle_grace=5))
    run(kpa, 0.0, 4.0, 1.0, ready=1)
    run(kpa, 4.0, 7.0, 0.0, ready=1)  # zero wanted, grace running
    d = run(kpa, 11.0, 1.0, 1.0, ready=1)
    assert d.want == 1
    d = run(kpa, 12.0, 4.5, 0.0, ready=1)  # the grace starts over from here
    assert d.want == 1


def test_min_and_max_clamp() -> None:
    kpa = Kpa(Policy(target=1.0, min_scale=2, max_scale=3, stable_window=6, panic_window=6))
    assert run(kpa, 0.0, 20.0, 0.0, ready=2).want == 2
    d = run(kpa, 20.0, 20.0, 50.0, ready=2)
    assert d.want == 3 and "clamped" in d.why


def test_at_zero_a_held_request_wants_a_worker_at_once() -> None:
    kpa = Kpa(Policy(target=1.0))
    kpa.record(0.5, 1.0)
    assert kpa.decide(0.5, 0).want == 1


@pytest.mark.parametrize(
    "kw",
    [
        {"target": 0},
        {"target": 1, "min_scale": 3, "max_scale": 2},
        {"target": 1, "max_scale": 0},
        {"target": 1, "panic_window": 70},
    ],
)
def test_bad_policies_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Policy(**kw)  # type: ignore[arg-type]
