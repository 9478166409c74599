"""controller.vips: epochs fence claims in any arrival order; flap damping (pure)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from yunhan.controller.vips import (
    Damping,
    Holder,
    change_holder,
    decide_claim,
    initial_status,
    settle,
)

NO_DAMPING = Damping(changes=10_000, window=1.0)


def _claim(status: dict[str, Any], who: str, seen: int, now: float = 0.0) -> tuple[str, Any]:
    outcome, change = decide_claim(
        status, True, True, seen, Holder(who, "az", "h"), now, NO_DAMPING
    )
    return outcome, change


@given(
    claims=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 6)), min_size=1, max_size=25
    ),
    order=st.randoms(use_true_random=False),
)
def test_stale_claims_lose_whatever_the_arrival_order(
    claims: list[tuple[str, int]], order: Any
) -> None:
    """Whatever order reports arrive in: every accepted change had seen the current epoch
    (or a later one) and bumps it by exactly one; a claim that had seen an older epoch
    never wins, so once a claim has won, no claim made before it was known wins after it."""
    order.shuffle(claims)
    status = initial_status()
    for who, seen in claims:
        before = status["epoch"]
        outcome, change = _claim(status, who, seen)
        if seen < before:
            assert outcome == "stale" and change is None
        if change is None:
            continue
        assert outcome == "won" and seen >= before
        assert change.status["epoch"] == before + 1
        assert change.status["holder"] == who
        assert change.status["history"][-1]["epoch"] == before + 1
        status = change.status
    assert len(status["history"]) <= 20
    epochs = [h["epoch"] for h in status["history"]]
    assert epochs == sorted(set(epochs))  # strictly increasing


def test_the_old_holder_s_late_claim_loses_to_the_new_one() -> None:
    s = initial_status()
    _, ch = _claim(s, "a", 0)
    s = ch.status  # a holds it, epoch 1
    _, ch = _claim(s, "b", 1)
    s = ch.status  # b took over having seen epoch 1: epoch 2
    assert _claim(s, "a", 1) == ("stale", None)  # a's report from before b's took over
    assert _claim(s, "b", 2) == ("held", None)  # b repeats itself: nothing changes
    outcome, ch = _claim(s, "a", 2)  # a claims again, knowing epoch 2: it wins
    assert outcome == "won" and ch.status["epoch"] == 3


def test_not_allowed_and_elsewhere_claims_change_nothing() -> None:
    s = initial_status()
    h = Holder("x", None, None)
    assert decide_claim(s, False, True, 0, h, 0.0, NO_DAMPING) == ("not_allowed", None)
    assert decide_claim(s, True, False, 0, h, 0.0, NO_DAMPING) == ("not_here", None)


def test_damping_keeps_delivery_until_a_quiet_window() -> None:
    d = Damping(changes=2, window=10.0)
    s = initial_status()
    t = 100.0
    for n, who in enumerate(["a", "b"]):
        ch = change_holder(s, Holder(who, None, None), t + n, "claim", d)
        assert not ch.damped
        s = ch.status
    assert s["delivered_to"] == "b"
    ch = change_holder(s, Holder("a", None, None), t + 2, "claim", d)
    assert ch.damped and ch.status["delivered_to"] == "b" and ch.status["holder"] == "a"
    s = ch.status
    ch = change_holder(s, Holder("c", None, None), t + 5, "claim", d)
    assert not ch.damped and ch.status["delivered_to"] == "b"  # still damped, not re-begun
    s = ch.status
    assert settle(s, t + 14.9, d) is None
    done = settle(s, t + 15, d)
    assert done is not None and done["delivered_to"] == "c" and done["damped_since"] is None
    # changes spread wider than the window never damp
    s = initial_status()
    for n in range(10):
        ch = change_holder(s, Holder("ab"[n % 2], None, None), t + 11 * n, "claim", d)
        assert not ch.damped
        s = ch.status


def test_a_traffic_claim_wins_only_while_nobody_holds_the_vip() -> None:
    """An instance sending from the VIP without announcing it: it gets an unheld VIP, but
    never takes it from a holder (an old holder's stray packets after a failover)."""
    s = initial_status()

    def traffic(status: dict[str, Any], who: str, seen: int) -> tuple[str, Any]:
        return decide_claim(status, True, True, seen, Holder(who, "az", "h"), 0.0, NO_DAMPING,
                            "traffic")  # fmt: skip

    outcome, ch = traffic(s, "a", 0)
    assert outcome == "won" and ch.status["holder"] == "a"
    assert ch.status["history"][-1]["cause"] == "traffic"
    s = ch.status
    assert traffic(s, "b", 1) == ("taken", None)  # a holds it
    assert traffic(s, "a", 1) == ("held", None)
    assert traffic(s, "b", 0) == ("stale", None)
    _, ch = _claim(s, "b", 1)  # b announces it: b takes over
    assert traffic(ch.status, "a", 2) == ("taken", None)  # a's last packets do not take it back
