"""The fake fabric: packets between fake hosts follow the objects the planner created."""

from __future__ import annotations

import pathlib

import pytest

from tests.unit.test_net_plan import HOSTS, INSTS, docs
from yunhan.agent.dataplane import DataPlane
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming
from yunhan.net.state import Fdb, KRoute, Op


def _dp(fabric: FakeFabric, host: str) -> DataPlane:
    return DataPlane(
        naming=Naming(f"u-{host}-"),
        host_netns=None,
        driver="fake",
        state_dir=pathlib.Path("/nonexistent"),
        fabric=fabric,
    )


@pytest.fixture
def fabric() -> FakeFabric:
    fab = FakeFabric()
    for h, d in docs().items():
        r = _dp(fab, h).apply(d)
        assert r.errors == []
    return fab


@pytest.mark.parametrize(
    ("src", "dst", "to"),
    [
        ("inst-0000a001", "10.1.1.11", "u-h2-i-0000a002"),  # same subnet, other host
        ("inst-0000a001", "10.1.2.10", "u-h3-i-0000a003"),  # other subnet, other zone
        ("inst-0000a001", "10.1.2.11", "u-h1-i-0000a004"),  # other subnet, same host
        ("inst-0000a003", "10.1.1.10", "u-h1-i-0000a001"),
        ("inst-0000a001", "10.1.1.1", "u-h1-v100"),  # the gateway answers
        ("inst-0000b001", "10.1.1.11", "u-h3-i-0000b002"),  # same IP, other VPC: isolated
        ("inst-0000b002", "10.1.1.10", "u-h1-i-0000b001"),
    ],
)
def test_delivered(fabric: FakeFabric, src: str, dst: str, to: str) -> None:
    t = fabric.trace(src, dst)
    assert t.delivered, t
    assert t.to_netns == to


def test_address_on_no_instance_is_unreachable(fabric: FakeFabric) -> None:
    for dst in ("10.1.1.99", "10.1.2.99", "10.1.200.1"):
        assert fabric.trace("inst-0000a001", dst).verdict == "unreachable"


def test_other_vpc_is_not_reachable(fabric: FakeFabric) -> None:
    # vpc-b has no 10.1.2.0/24 subnet; vpc-a's 10.1.2.10 must not be reachable from it.
    assert fabric.trace("inst-0000b001", "10.1.2.10").verdict == "unreachable"


def test_spoofed_source_ip_and_mac_are_dropped(fabric: FakeFabric) -> None:
    t = fabric.trace("inst-0000a001", "10.1.1.11", src_ip="10.1.1.12")
    assert t.verdict == "dropped-by-antispoof"
    t = fabric.trace("inst-0000a001", "10.1.1.11", src_mac="02:aa:00:00:00:99")
    assert t.verdict == "dropped-by-antispoof"
    # Claiming another instance's address (its ARP sender IP) is dropped too.
    t = fabric.trace("inst-0000a001", "10.1.1.11", src_ip="10.1.2.11")
    assert t.verdict == "dropped-by-antispoof"


def test_allowed_ip_passes(fabric: FakeFabric) -> None:
    assert fabric.trace("inst-0000a004", "10.1.1.10", src_ip="10.1.2.100").delivered


def test_drift_is_repaired_by_the_next_apply(fabric: FakeFabric) -> None:
    dp = _dp(fabric, "h1")
    route = dp.observe()[("route", "u-h1-v100", "254", "10.1.1.11/32", "0")]
    assert isinstance(route, KRoute) and route.kind == "remote"
    dp.driver.apply(Op("delete", old=route))
    assert fabric.trace("inst-0000a001", "10.1.1.11").verdict == "unreachable"
    r = dp.apply(docs()["h1"])
    assert r.changes == 1
    assert fabric.trace("inst-0000a001", "10.1.1.11").delivered


def test_no_fdb_entry_means_no_flooding(fabric: FakeFabric) -> None:
    dp = _dp(fabric, "h1")
    fdbs = [o for o in dp.observe().values() if isinstance(o, Fdb) and o.netns == "u-h1-v100"]
    for f in fdbs:
        dp.driver.apply(Op("delete", old=f))
    t = fabric.trace("inst-0000a001", "10.1.1.11")
    assert t.verdict == "dropped" and "FDB" in t.reason


def test_removed_instance_goes_and_traffic_to_it_stops(fabric: FakeFabric) -> None:
    fewer = [i for i in INSTS if i.id != "inst-0000a002"]
    for h, d in docs(fewer).items():
        assert _dp(fabric, h).apply(d).errors == []
    assert fabric.trace("inst-0000a001", "10.1.1.11").verdict == "unreachable"
    h2 = _dp(fabric, "h2")
    assert h2.observe() == {}  # h2 carried only that instance
    assert len(HOSTS) == 3
