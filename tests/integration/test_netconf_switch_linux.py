"""The lab's NETCONF switch in a real namespace: netconfd (yuma123) behind sshd, driven by
ncclient; the driver applies the running configuration to the kernel, the server rolls an
unconfirmed commit back by itself, and the data plane outlives the driver."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ncclient.operations import RPCError
from netlab import ip, sh, teardown

from tests.polling import wait_for
from yunhan.lab import netconfsw, switchd
from yunhan.net import switchcfg

pytestmark = pytest.mark.root

BREAK = switchcfg.parse(
    {
        "routes": [{"prefix": "10.0.0.0/16", "blackhole": True}],
        "acl": [{"seq": 10, "source": "10.1.0.0/16", "protocol": "icmp"}],
    }
)
GOOD = switchcfg.parse({"routes": [{"prefix": "10.2.0.0/16", "blackhole": True, "metric": 7}]})


@dataclass(frozen=True)
class Site:
    name: str
    netns: str
    cidrs: tuple[str, ...] = ("192.168.100.0/24",)


@pytest.fixture
def site(
    uniq: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[Site, netconfsw.SwitchPaths]]:
    prefix = uniq("nc")
    s = Site("dc1", f"{prefix}-r")
    try:
        sh("ip", "netns", "add", s.netns)
        ip(s.netns, "link", "set", "lo", "up")
        p = netconfsw.start(s, tmp_path, prefix)  # type: ignore[arg-type]
        yield s, p
    finally:
        netconfsw.stop(s, tmp_path)  # type: ignore[arg-type]
        teardown(prefix)


def _routes(ns: str) -> str:
    return ip(ns, "route", "show", "proto", str(switchcfg.SWITCH_PROTO)).strip()


def _commit(m: object, cfg: switchcfg.SwitchConfig, timeout: int, persist: str) -> None:
    m.edit_config(target="candidate", config=switchcfg.to_xml(cfg))  # type: ignore[attr-defined]
    m.commit(confirmed=True, timeout=str(timeout), persist=persist)  # type: ignore[attr-defined]


def test_an_unconfirmed_commit_is_rolled_back_by_the_switch(
    site: tuple[Site, netconfsw.SwitchPaths],
) -> None:
    s, p = site
    assert netconfsw.running(s)  # type: ignore[arg-type]
    assert netconfsw.applied(p)["digest"] == switchcfg.SwitchConfig().digest()
    m = netconfsw.connect(s, p)  # type: ignore[arg-type]
    try:
        assert any("confirmed-commit:1.1" in c for c in m.server_capabilities)
        t0 = time.monotonic()
        _commit(m, BREAK, 3, "p1")
        assert netconfsw.wait_applied(p, BREAK.digest(), 3) is not None
        assert _routes(s.netns) == "blackhole 10.0.0.0/16 metric 10"
        nft = sh("ip", "netns", "exec", s.netns, "nft", "list", "table", "ip", "yunhan_switch")
        assert (
            'ip saddr 10.1.0.0/16 meta l4proto icmp counter packets 0 bytes 0 drop comment "acl 10"'
            in nft
        )
        # Nothing more is sent: the server's timer puts the previous configuration back.
        back = netconfsw.wait_applied(p, switchcfg.SwitchConfig().digest(), 10)
        assert back is not None
        took = time.monotonic() - t0
        print(f"rolled back and applied {took:.2f} s after a commit with a 3 s timeout")
        # netconfd keeps the deadline in whole seconds and its timer ticks once a second,
        # when it idles: the rollback comes from a second early to a few seconds late.
        assert 3 - 1 <= took < 3 + 4
        assert _routes(s.netns) == ""
        assert switchd.running_config(m) == switchcfg.SwitchConfig()
    finally:
        m.close_session()


def test_a_confirmed_commit_stays_and_a_late_confirmation_commits_nothing(
    site: tuple[Site, netconfsw.SwitchPaths],
) -> None:
    s, p = site
    m = netconfsw.connect(s, p)  # type: ignore[arg-type]
    try:
        _commit(m, GOOD, 3, "good")
        m.commit(persist_id="good")
        time.sleep(4)  # past the timeout: confirmed, it stays
        assert switchd.running_config(m) == GOOD
        assert _routes(s.netns) == "blackhole 10.2.0.0/16 metric 7"
        _commit(m, BREAK, 2, "late")
        # (watched by the driver's file: asking netconfd would postpone its timer)
        assert netconfsw.wait_applied(p, BREAK.digest(), 3) is not None
        assert netconfsw.wait_applied(p, GOOD.digest(), 8) is not None
        with pytest.raises(RPCError):
            m.commit(persist_id="late")  # too late: refused, not a commit of the candidate
        assert switchd.running_config(m) == GOOD
    finally:
        m.close_session()


def test_a_configuration_the_model_refuses_changes_nothing(
    site: tuple[Site, netconfsw.SwitchPaths],
) -> None:
    s, p = site
    m = netconfsw.connect(s, p)  # type: ignore[arg-type]
    try:
        bad = switchcfg.to_xml(GOOD).replace("10.2.0.0/16", "10.2.0.0/99")
        with pytest.raises(RPCError):
            m.edit_config(target="candidate", config=bad)
            m.commit()
        m.discard_changes()
        assert switchd.running_config(m) == switchcfg.SwitchConfig()
    finally:
        m.close_session()


def test_the_data_plane_outlives_the_driver_and_the_server_keeps_its_configuration(
    site: tuple[Site, netconfsw.SwitchPaths], tmp_path: Path
) -> None:
    s, p = site
    m = netconfsw.connect(s, p)  # type: ignore[arg-type]
    try:
        _commit(m, GOOD, 30, "keep")
        m.commit(persist_id="keep")
    finally:
        m.close_session()
    assert netconfsw.wait_applied(p, GOOD.digest(), 5) is not None
    pids = netconfsw._procs(s.netns)
    os.kill(pids["switchd"], signal.SIGKILL)
    os.kill(pids["netconfd"], signal.SIGKILL)
    wait_for(lambda: "netconfd" not in netconfsw._procs(s.netns), 5, "netconfd gone")
    assert _routes(s.netns) == "blackhole 10.2.0.0/16 metric 7"  # still forwarding as set
    p2 = netconfsw.start(s, tmp_path, "again")  # type: ignore[arg-type]
    assert netconfsw.wait_applied(p2, GOOD.digest(), 10) is not None
    m = netconfsw.connect(s, p2)  # type: ignore[arg-type]
    try:
        assert switchd.running_config(m) == GOOD  # netconfd loaded what it had saved
    finally:
        m.close_session()
    netconfsw.stop(s, None)  # type: ignore[arg-type]
    assert not netconfsw._procs(s.netns)
    assert not (netconfsw.RUN_ROOT / s.netns).exists()


def test_the_switch_counts_its_ranges(site: tuple[Site, netconfsw.SwitchPaths]) -> None:
    from yunhan.net import nft, nftstats

    s, _p = site

    def counted() -> set[nftstats.Key]:
        try:
            listing = nft.run(s.netns, f"list counters table ip {nftstats.TABLE}")
        except Exception:
            return set()
        return set(nftstats.parse_counters(listing))

    keys = wait_for(counted, 10, "the switch's counter table")
    assert {(k.point, k.prefix, k.direction) for k in keys} == {
        (pt, "192.168.100.0/24", d) for pt in ("line", "local") for d in ("in", "out")
    }
