"""Fleet patch rollout decisions (yunhan.controller.rollout) as pure functions: a status and
the clock in, the next status out. No store, no agents."""

from __future__ import annotations

from typing import Any

import pytest

from yunhan.controller.rollout import (
    Policy,
    decide,
    initial_status,
    order_targets,
    pause,
    resume,
    rollback,
    take_report,
)
from yunhan.errors import Conflict

T0 = 1_800_000_000.0


def _run(status: dict[str, Any], policy: Policy, now: float) -> dict[str, Any]:
    """Decide until nothing changes (a level-triggered loop reaches a fixed point)."""
    for _ in range(10):
        new = decide(status, policy, now).status
        if new == status:
            return new
        status = new
    raise AssertionError("no fixed point")


def _report(
    status: dict[str, Any], host: str, state: str, now: float, **results: int
) -> dict[str, Any]:
    return take_report(status, host, state, results, now).status


def _wants(status: dict[str, Any]) -> dict[str, str | None]:
    return {h: v["want"] for h, v in status["hosts"].items()}


def test_targets_spread_canaries_over_zones() -> None:
    hosts = [("b1", "zb"), ("a2", "za"), ("a1", "za"), ("c1", "zc"), ("a3", "za")]
    assert order_targets(hosts) == ["a1", "b1", "c1", "a2", "a3"]
    assert order_targets([]) == []


def test_canary_first_then_the_window_then_max_parallel_then_done() -> None:
    policy = Policy(canary=1, max_parallel=2, health_window=10)
    st = initial_status(["h1", "h2", "h3", "h4", "h5"], 1, T0)
    assert st["phase"] == "canary" and _wants(st)["h1"] == "apply"
    assert [w for w in _wants(st).values()].count("apply") == 1
    assert _run(st, policy, T0 + 100) == st  # the canary has not applied: nothing moves
    st = _report(st, "h1", "applied", T0, applied=3)
    assert _run(st, policy, T0 + 9.999)["phase"] == "canary"
    st = _run(st, policy, T0 + 10)
    assert st["phase"] == "rolling"
    assert _wants(st) == {"h1": "apply", "h2": "apply", "h3": "apply", "h4": None, "h5": None}
    st = _report(st, "h2", "applied", T0 + 11, applied=1)
    st = _run(st, policy, T0 + 20)  # h2 still in its window: still two in flight
    assert _wants(st)["h4"] is None
    st = _run(st, policy, T0 + 21)
    assert _wants(st)["h4"] == "apply" and _wants(st)["h5"] is None
    for h in ("h3", "h4"):
        st = _report(st, h, "applied", T0 + 22, applied=1)
    st = _run(st, policy, T0 + 32)
    assert _wants(st)["h5"] == "apply" and st["phase"] == "rolling"
    st = _report(st, "h5", "applied", T0 + 33)
    st = _run(st, policy, T0 + 43)
    assert st["phase"] == "done" and st["finished_at"] is not None
    assert st["counts"]["applied"] == 6
    assert decide(st, policy, T0 + 1000).status == st  # done stays done


def test_no_canary_and_no_target() -> None:
    policy = Policy(canary=0, max_parallel=3, health_window=0)
    st = initial_status(["h1", "h2"], 0, T0)
    assert st["phase"] == "rolling" and set(_wants(st).values()) == {None}
    st = _run(st, policy, T0)
    assert _wants(st) == {"h1": "apply", "h2": "apply"}
    empty = _run(initial_status([], 1, T0), Policy(), T0)
    assert empty["phase"] == "done" and empty["counts"]["applied"] == 0


@pytest.mark.parametrize("trouble", ["died", "failed"])
def test_trouble_rolls_back_everywhere_asked_then_rolled_back(trouble: str) -> None:
    policy = Policy(canary=1, max_parallel=2, health_window=5)
    st = initial_status(["h1", "h2", "h3", "h4"], 1, T0)
    st = _report(st, "h1", "applied", T0, applied=1)
    st = _run(st, policy, T0 + 5)
    assert _wants(st)["h3"] == "apply"
    if trouble == "died":
        st = _report(st, "h2", "applied", T0 + 6, applied=1, died=1)
    else:
        st = _report(st, "h3", "failed", T0 + 6)
    step = decide(st, policy, T0 + 6)
    st = step.status
    assert st["phase"] == "rolling_back" and step.events[0][0] == "PatchRollingBack"
    assert _wants(st) == {"h1": "rollback", "h2": "rollback", "h3": "rollback", "h4": None}
    assert "h2" in st["message"] if trouble == "died" else "h3" in st["message"]
    for h in ("h1", "h2"):
        st = _report(st, h, "rolled_back", T0 + 7, rolled_back=1)
    assert _run(st, policy, T0 + 7)["phase"] == "rolling_back"  # h3 has not said
    st = _report(st, "h3", "rolled_back", T0 + 8)
    st = _run(st, policy, T0 + 8)
    assert st["phase"] == "rolled_back" and st["finished_at"] is not None
    # a rollback that fails ends the rollout failed
    st2 = rollback(_report(initial_status(["h1"], 1, T0), "h1", "applied", T0, applied=1),
                   "p", T0).status  # fmt: skip
    st2 = _report(st2, "h1", "failed", T0 + 1)
    assert _run(st2, policy, T0 + 1)["phase"] == "failed"


def test_without_auto_rollback_trouble_pauses_and_resume_accepts_it() -> None:
    policy = Policy(canary=1, health_window=0, auto_rollback=False)
    st = initial_status(["h1", "h2"], 1, T0)
    st = _report(st, "h1", "applied", T0, applied=2, died=1)
    st = _run(st, policy, T0)
    assert st["phase"] == "paused" and "died on host h1" in st["message"]
    assert _wants(st)["h2"] is None
    st = resume(st, "p")
    assert st["phase"] == "canary"
    st = _run(st, policy, T0)
    assert st["phase"] == "rolling"  # the accepted death did not stop it again
    st = _run(_report(st, "h2", "applied", T0, applied=1), policy, T0)
    assert st["phase"] == "done"
    st2 = initial_status(["h1", "h2"], 1, T0)
    st2 = _report(st2, "h1", "applied", T0, applied=1, died=1)
    st2 = resume(_run(st2, policy, T0), "p")
    st2 = _report(st2, "h1", "applied", T0, applied=1, died=2)  # another one died
    assert _run(st2, policy, T0)["phase"] == "paused"


def test_a_canary_where_everything_refused_pauses() -> None:
    policy = Policy(canary=1, health_window=0)
    st = initial_status(["h1", "h2"], 1, T0)
    st = _report(st, "h1", "applied", T0, refused=3)
    st = _run(st, policy, T0)
    assert st["phase"] == "paused" and "every process on canary host h1 refused" in st["message"]
    # refusals on a non-canary host are counted, not fatal
    st3 = initial_status(["h1", "h2"], 1, T0)
    st3 = _report(st3, "h1", "applied", T0, applied=1)
    st3 = _run(st3, policy, T0)
    st3 = _report(st3, "h2", "applied", T0, refused=2)
    st3 = _run(st3, policy, T0)
    assert st3["phase"] == "done" and st3["counts"]["refused"] == 2


def test_pause_resume_rollback_by_the_operator() -> None:
    policy = Policy(canary=1, max_parallel=1, health_window=0)
    st = initial_status(["h1", "h2", "h3"], 1, T0)
    st = _report(st, "h1", "applied", T0, applied=1)
    st = pause(st, "p")
    assert st["phase"] == "paused" and pause(st, "p") == st
    st = _run(st, policy, T0 + 50)
    assert _wants(st)["h2"] is None  # paused: nobody new
    st = _run(resume(st, "p"), policy, T0 + 50)
    assert st["phase"] == "rolling" and _wants(st)["h2"] == "apply"
    st = _report(st, "h2", "applying", T0 + 51)
    st = pause(st, "p")
    st = _report(st, "h2", "applied", T0 + 52, applied=1)  # in flight: it finishes
    st = _run(st, policy, T0 + 60)
    assert st["phase"] == "paused" and _wants(st)["h3"] is None
    assert resume(st, "p")["phase"] == "rolling"  # past the canary stage
    st = rollback(st, "p", T0 + 61).status
    assert st["phase"] == "rolling_back" and _wants(st)["h3"] is None
    assert rollback(st, "p", T0 + 62).status == st  # already rolling back
    with pytest.raises(Conflict, match="no rollout to pause"):
        pause(st, "p")
    with pytest.raises(Conflict, match="nothing to resume"):
        resume(st, "p")
    nothing = _run(initial_status(["h1"], 0, T0), policy, T0)
    nothing = _run(_report(nothing, "h1", "applied", T0), policy, T0)
    assert nothing["phase"] == "done"
    with pytest.raises(Conflict, match="not applied"):
        rollback(nothing, "p", T0)


def test_a_new_process_does_not_restart_the_window() -> None:
    st = initial_status(["h1"], 1, T0)
    st = _report(st, "h1", "applied", T0, applied=1)
    first = st["hosts"]["h1"]["applied_at"]
    st = _report(st, "h1", "applied", T0 + 3, applied=2)
    assert st["hosts"]["h1"]["applied_at"] == first and st["counts"]["applied"] == 2
    assert _run(st, Policy(health_window=5), T0 + 5)["phase"] == "done"
