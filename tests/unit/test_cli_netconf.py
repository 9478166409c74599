"""`yunhan netconf`: what a rollback restores, and what a check counts as lost."""

from __future__ import annotations

from typing import Any

import pytest

from yunhan.cli.netconf import regressions, rollback_target
from yunhan.errors import NotFound
from yunhan.net.connectivity import Endpoint, Matrix, Pair, Result

A = {"routes": [{"prefix": "10.1.0.0/16", "blackhole": True}]}
B = {"routes": [{"prefix": "10.2.0.0/16", "blackhole": True}]}


def _e(n: int, outcome: str, config: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {"n": n, "outcome": outcome, "config": config, "previous_config": before}


def test_a_rollback_undoes_the_last_confirmed_change_or_restores_an_entry() -> None:
    entries = [_e(1, "confirmed", A, {}), _e(2, "rolled-back", {}, A), _e(3, "confirmed", B, A)]
    assert rollback_target(entries, None) == ("before #3", A)
    assert rollback_target(entries[:1], None) == ("before #1", {})
    assert rollback_target(entries, 3) == ("#3", B)
    assert rollback_target(entries, 0) == ("#0", {})
    with pytest.raises(NotFound, match="no journal entry #9"):
        rollback_target(entries, 9)
    with pytest.raises(NotFound, match="nothing to roll back"):
        rollback_target(entries[1:2], None)


def _m(reached: dict[tuple[str, str], bool]) -> Matrix:
    out = []
    for (s, d), ok in reached.items():
        src = Endpoint(s, "instance", s, "ns")
        dst = Endpoint(d, "idc-server", d, "ns")
        out.append(Result(Pair(src, dst), ok, None, 1))
    return Matrix(out)


def test_only_pairs_reached_before_and_not_after_are_lost() -> None:
    before = _m({("10.0.1.2", "192.168.100.10"): True, ("10.0.1.3", "192.168.100.10"): False})
    after = _m(
        {
            ("10.0.1.2", "192.168.100.10"): False,  # lost
            ("10.0.1.3", "192.168.100.10"): False,  # was never reached
            ("10.0.1.4", "192.168.100.10"): False,  # new: no baseline
        }
    )
    assert regressions(before, after) == ["10.0.1.2 -> 192.168.100.10 (192.168.100.10)"]
    assert regressions(before, before) == []
