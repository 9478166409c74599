"""Chaos in the suite: bench/chaos.py for 5 minutes (YUNHAN_CHAOS_MINUTES to change it).

A 2-zone lab region carries cross-zone pings and TCP streams and a stream of instance
creates and deletes while a random server or agent is killed with SIGKILL every 3-10 s;
no packet may be lost, no stream reset, every accepted write must converge, no address be
given twice, and `yunhan down` must leave nothing behind.
"""

from __future__ import annotations

import os

import pytest

from bench.chaos import run

pytestmark = [pytest.mark.root, pytest.mark.chaos]


@pytest.mark.timeout(1200)
def test_chaos_changes_nothing_tenants_see() -> None:
    minutes = float(os.environ.get("YUNHAN_CHAOS_MINUTES") or 5)
    res = run(minutes)
    print(res.line())
    assert res.kills >= minutes * 60 / 10 - 1, res.line()
    assert res.accepted > 0 and res.packets > 0 and res.tcp_lines > 0, res.line()
    assert res.lost == 0, res.line()
    assert res.tcp_errors == [], res.tcp_errors
    assert res.duplicate_ips == [], res.duplicate_ips
    assert res.not_converged == [], res.not_converged
    assert res.leaked == [], res.leaked
