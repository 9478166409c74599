"""The pure rules of distributed routing: next hops, ports, loops, winners, gateway plans."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from yunhan.controller import natgw
from yunhan.controller.tables import custom_states
from yunhan.errors import ValidationError
from yunhan.model.routing import (
    forms_loop,
    parse_forward_target,
    parse_next_hop,
    parse_port_range,
    pool_addresses,
    validate_policy,
)
from yunhan.store import Resource


def test_next_hops() -> None:
    assert parse_next_hop("instance:fw") == ("instance", "fw")
    assert parse_next_hop("natgw:gw") == ("natgw", "gw")
    assert parse_next_hop("vip:10.0.1.10") == ("vip", "10.0.1.10")
    assert parse_next_hop("blackhole") == ("blackhole", None)
    for bad in ("", "instance:", "blackhole:x", "router:x", "vip:x"):
        with pytest.raises(ValidationError):
            parse_next_hop(bad)
    with pytest.raises(ValidationError, match="hybrid routes are not written by hand"):
        parse_next_hop("hybrid:dc1")


def test_ports_and_policies() -> None:
    assert parse_port_range("80") == (80, 80) and parse_port_range("80-90") == (80, 90)
    for bad, why in (("90-80", "backwards"), ("0", "out of range"), ("70000", "out of range")):
        with pytest.raises(ValidationError, match=why):
            parse_port_range(bad)
    assert validate_policy("udp", "53", "allow", False) == (53, 53)
    assert validate_policy("any", None, "reroute", True) is None
    with pytest.raises(ValidationError, match="only tcp or udp"):
        validate_policy("icmp", "1", "drop", False)
    assert parse_forward_target("web-1:80") == ("web-1", 80)
    with pytest.raises(ValidationError):
        parse_forward_target("web-1:http")


def test_loops() -> None:
    blocks = [IPv4Network("10.0.0.0/16")]
    inside, outside = IPv4Network("10.0.5.0/24"), IPv4Network("0.0.0.0/0")
    assert forms_loop(inside, blocks, "s1", {"s1", "s2"})
    assert not forms_loop(inside, blocks, "s3", {"s1", "s2"})  # appliance on another table
    assert not forms_loop(outside, blocks, "s1", {"s1"})  # a route: longest prefix saves it
    assert forms_loop(outside, blocks, "s1", {"s1"}, policy=True)  # a policy matches first
    assert forms_loop(None, blocks, "s1", {"s1"}, policy=True)
    assert not forms_loop(IPv4Network("8.8.8.0/24"), blocks, "s1", {"s1"}, policy=True)


def test_winners() -> None:
    assert custom_states([True, True, False]) == ["active", "standby", "unreachable"]
    assert custom_states([False, True, True]) == ["unreachable", "active", "standby"]
    assert custom_states([False]) == ["unreachable"]


def test_pool_addresses() -> None:
    assert list(pool_addresses(["198.19.0.0/30", "198.19.1.5/32"])) == [
        "198.19.0.1", "198.19.0.2", "198.19.1.5",
    ]  # fmt: skip


def _host(name: str, condition: str | None = None) -> Resource:
    status = {"condition": condition} if condition else {}
    return Resource("host", f"host-{name}", "p", name, {}, status, 1, "")


def _gw(gid: str, host: str | None, phase: str = "active") -> Resource:
    status = {"host": host, "phase": phase, "history": [], "moved_at": None}
    return Resource("natgw", gid, "p", gid, {}, status, 1, "")


def test_plan_places_on_the_lightest_ready_host() -> None:
    hosts = [_host("a"), _host("b"), _host("c")]
    gws = [_gw("g1", "a"), _gw("g2", None, "pending"), _gw("g3", None, "pending")]
    p = natgw.plan(hosts, gws, {"a": "ready", "b": "ready", "c": None}, 0.0)
    assert p.conditions == {"host-a": "ready", "host-b": "ready"}
    assert p.gateways["g2"]["host"] == "b" and p.gateways["g3"]["host"] in ("a", "b")
    assert "g1" not in p.gateways  # settled


def test_plan_moves_off_a_lost_host_or_waits() -> None:
    hosts = [_host("a", "ready"), _host("b", "ready")]
    p = natgw.plan(hosts, [_gw("g", "a")], {"a": "lost", "b": "ready"}, 0.0)
    moved = p.gateways["g"]
    assert moved["host"] == "b" and moved["moved_at"] == "1970-01-01T00:00:00Z"
    assert moved["history"] == [
        {"at": "1970-01-01T00:00:00Z", "from": "a", "to": "b", "reason": "host a lost"}
    ]
    p = natgw.plan(hosts, [_gw("g", "a")], {"a": "lost", "b": "lost"}, 0.0)
    assert p.gateways["g"]["host"] == "a" and p.gateways["g"]["phase"] == "unplaced"
    p = natgw.plan(hosts, [_gw("g", "a")], {"a": None, "b": "ready"}, 0.0)
    assert not p.gateways  # not judged (startup grace): it stays
