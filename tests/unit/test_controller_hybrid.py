"""Where a hybrid gateway's replicas run (`controller.hybrid.plan`), as pure data in and out:
distinct hosts, zones spread, a lost host's replica moved with its index and line address,
scale down from the highest index, unplaced when nowhere is free, and level-triggered (a
settled region plans nothing)."""

from __future__ import annotations

from typing import Any

from yunhan.controller.hybrid import MOVED, UNPLACED, plan
from yunhan.store import Notice
from yunhan.store.resource import Resource

NOW = 1_800_000_000.0
LINE = {
    "cidr": "198.19.33.0/24",
    "vni": 0x700001,
    "vtep": "198.19.16.1",
    "router_ip": "198.19.33.1",
}


def host(name: str, zone: str = "az1") -> Resource:
    return Resource("host", f"host-{name}", "admin", name, {"zone": zone}, {}, 1, "")


def gw(
    i: int,
    want: int,
    replicas: list[tuple[int, str, str]] = (),  # type: ignore[assignment]
    *,
    line: dict[str, Any] | None = None,
    phase: str = "pending",
) -> Resource:
    """Gateway hgw-<i> wanting `want` replicas, holding `replicas` (index, host, state)."""
    status = {
        "index": 9,
        "site_name": "dc1",
        "line": line or LINE,
        "phase": phase,
        "replicas": [
            {
                "index": n,
                "host": h,
                "line_ip": f"198.19.33.{10 + n}/24",
                "state": state,
                "reason": "",
                "since": None,
                "bfd": None,
                "learned": [],
                "announced": [],
            }
            for n, h, state in replicas
        ],
        "history": [],
    }
    spec = {"vpc": f"vpc-{i}", "site": "idc-1", "replicas": want}
    return Resource("hybrid_gw", f"hgw-{i}", "proj", f"g{i}", spec, status, 1, "")


def settled(g: Resource, status: dict[str, Any]) -> Resource:
    """The gateway as the store holds it after the plan was written."""
    return Resource(g.kind, g.id, g.project, g.name, g.spec, status, g.revision + 1, "")


def reps(status: dict[str, Any]) -> list[tuple[int, str, str, str]]:
    return [(r["index"], r["host"], r["line_ip"], r["state"]) for r in status["replicas"]]


def run(
    hosts: list[Resource], gws: list[Resource], verdict: dict[str, str | None]
) -> tuple[list[Resource], dict[str, dict[str, Any]], list[Notice]]:
    """One plan, then the gateways as written; asserts that a second plan over the written
    state has nothing to do (level-triggered)."""
    out, notices = plan(hosts, gws, verdict, NOW)
    after = [settled(g, out[g.id]) if g.id in out else g for g in gws]
    again, more = plan(hosts, after, verdict, NOW + 1)
    assert (again, more) == ({}, [])
    return after, out, notices


def ready(*names: str) -> dict[str, str | None]:
    return dict.fromkeys(names, "ready")


def test_replicas_go_to_distinct_hosts_with_line_addresses_from_11() -> None:
    hosts = [host("a"), host("b"), host("c")]
    _after, out, notices = run(hosts, [gw(0, 2)], ready("a", "b", "c"))
    st = out["hgw-0"]
    got = reps(st)
    assert [r[0] for r in got] == [1, 2]
    assert len({r[1] for r in got}) == 2
    assert [r[2] for r in got] == ["198.19.33.11/24", "198.19.33.12/24"]
    assert {r[3] for r in got} == {"pending"} and st["phase"] == "active"
    assert [(h["replica"], h["from"]) for h in st["history"]] == [(1, None), (2, None)]
    assert notices == []


def test_more_replicas_than_hosts_places_one_per_host_and_is_degraded() -> None:
    hosts = [host("a"), host("b")]
    after, out, _n = run(hosts, [gw(0, 3)], ready("a", "b"))
    assert sorted(r[1] for r in reps(out["hgw-0"])) == ["a", "b"]
    assert out["hgw-0"]["phase"] == "degraded"
    # a third host joins: the missing replica goes there, the others stay
    after2, out2, _n = run([*hosts, host("c")], after, ready("a", "b", "c"))
    assert reps(out2["hgw-0"])[:2] == reps(out["hgw-0"])
    assert reps(out2["hgw-0"])[2][:2] == (3, "c") and out2["hgw-0"]["phase"] == "active"
    assert after2[0].status["phase"] == "active"


def test_no_ready_host_leaves_the_gateway_unplaced_without_replicas() -> None:
    _after, out, notices = run([host("a")], [gw(0, 2)], {"a": None})
    assert out["hgw-0"]["replicas"] == [] and out["hgw-0"]["phase"] == "unplaced"
    assert notices == []


def test_replicas_spread_over_zones_then_over_the_least_loaded_hosts() -> None:
    hosts = [host("a1", "az1"), host("a2", "az1"), host("a3", "az1"), host("b1", "az2")]
    verdict = ready("a1", "a2", "a3", "b1")
    _after, out, _n = run(hosts, [gw(0, 2)], verdict)
    assert sorted(r[1] for r in reps(out["hgw-0"])) == ["a1", "b1"]
    # another gateway already on a1 and b1: the next one's first replica avoids them
    busy = gw(1, 2, [(1, "a1", "Established"), (2, "b1", "Established")], phase="active")
    _after, out, _n = run(hosts, [busy, gw(2, 2)], verdict)
    assert "hgw-1" not in out
    placed = sorted(r[1] for r in reps(out["hgw-2"]))
    assert placed[0] in ("a2", "a3") and placed[1] == "b1"  # az2 has one host only


def test_gateways_on_one_line_never_share_an_address() -> None:
    hosts = [host("a"), host("b")]
    first = gw(0, 2, [(1, "a", "Established"), (2, "b", "Established")], phase="active")
    _after, out, _n = run(hosts, [first, gw(1, 2)], ready("a", "b"))
    assert [r[2] for r in reps(out["hgw-1"])] == ["198.19.33.13/24", "198.19.33.14/24"]
    # a gateway to another site's line starts from .11 of its own
    other = {**LINE, "cidr": "198.19.34.0/24", "router_ip": "198.19.34.1"}
    _after, out, _n = run(hosts, [first, gw(2, 1, line=other)], ready("a", "b"))
    assert [r[2] for r in reps(out["hgw-2"])] == ["198.19.34.11/24"]


def test_a_lost_host_moves_its_replica_with_its_index_and_line_address() -> None:
    hosts = [host("a"), host("b"), host("c")]
    g = gw(0, 2, [(1, "a", "Established"), (2, "b", "Established")], phase="active")
    _after, out, notices = run(hosts, [g], {"a": "ready", "b": "lost", "c": "ready"})
    st = out["hgw-0"]
    assert reps(st) == [
        (1, "a", "198.19.33.11/24", "Established"),  # untouched: its flows stay
        (2, "c", "198.19.33.12/24", "pending"),
    ]
    moved = st["replicas"][1]
    assert moved["learned"] == [] and moved["since"] is None  # what b's agent saw is gone
    assert st["history"][-1]["replica"] == 2
    assert (st["history"][-1]["from"], st["history"][-1]["to"]) == ("b", "c")
    assert [(n.object, n.reason) for n in notices] == [("hgw-0", MOVED)]
    assert "moved from host b (lost) to c" in notices[0].message


def test_a_replica_moves_to_the_zone_its_gateway_lacks() -> None:
    # b1 (az2) holds replica 2; a-lost (az1) held replica 1. The free hosts: z2 (az1) and
    # b0 (az2, first by name): the replacement goes to az1, the zone without a replica.
    hosts = [host("a-lost", "az1"), host("z2", "az1"), host("b0", "az2"), host("b1", "az2")]
    g = gw(0, 2, [(1, "a-lost", "Established"), (2, "b1", "Established")], phase="active")
    verdict = {"a-lost": "lost", "z2": "ready", "b0": "ready", "b1": "ready"}
    _after, out, _n = run(hosts, [g], verdict)
    assert reps(out["hgw-0"])[0][:2] == (1, "z2")


def test_no_free_host_leaves_the_replica_unplaced_once() -> None:
    hosts = [host("a"), host("b")]
    g = gw(0, 2, [(1, "a", "Established"), (2, "b", "Established")], phase="active")
    after, out, notices = run(hosts, [g], {"a": "ready", "b": "lost"})
    st = out["hgw-0"]
    assert reps(st)[1] == (2, "b", "198.19.33.12/24", "unplaced")
    assert st["replicas"][1]["reason"] == "host b is lost"
    assert st["phase"] == "degraded"
    assert [(n.object, n.reason) for n in notices] == [("hgw-0", UNPLACED)]
    # a host is free again: the replica moves there, same index and address
    verdict = {"a": "ready", "b": "lost", "c": "ready"}
    _after, out2, notices2 = run([*hosts, host("c")], after, verdict)
    assert reps(out2["hgw-0"])[1] == (2, "c", "198.19.33.12/24", "pending")
    assert out2["hgw-0"]["phase"] == "active" and [n.reason for n in notices2] == [MOVED]


def test_an_unplaced_replica_comes_back_with_its_host() -> None:
    hosts = [host("a"), host("b")]
    g = gw(0, 2, [(1, "a", "Established"), (2, "b", "Established")], phase="active")
    after, _out, _n = run(hosts, [g], {"a": "ready", "b": "lost"})
    _after, out, notices = run(hosts, after, ready("a", "b"))
    st = out["hgw-0"]
    assert reps(st)[1] == (2, "b", "198.19.33.12/24", "pending")  # built again, reported anew
    assert st["phase"] == "active" and notices == []


def test_a_replica_on_a_host_that_was_removed_moves() -> None:
    hosts = [host("a"), host("c")]  # b was deleted from the region
    g = gw(0, 2, [(1, "a", "Established"), (2, "b", "Established")], phase="active")
    _after, out, _n = run(hosts, [g], ready("a", "c"))
    assert reps(out["hgw-0"])[1] == (2, "c", "198.19.33.12/24", "pending")


def test_a_host_not_judged_yet_keeps_its_replica() -> None:
    hosts = [host("a"), host("b"), host("c")]
    g = gw(0, 2, [(1, "a", "Established"), (2, "b", "Established")], phase="active")
    out, notices = plan(hosts, [g], {"a": "ready", "b": None, "c": "ready"}, NOW)
    assert (out, notices) == ({}, [])


def test_scale_down_removes_the_highest_indexes_and_leaves_the_others_alone() -> None:
    hosts = [host("a"), host("b"), host("c"), host("d")]
    three = [(1, "c", "Established"), (2, "a", "Established"), (3, "b", "Established")]
    g = gw(0, 1, [*three, (4, "d", "pending")], phase="active")
    _after, out, notices = run(hosts, [g], ready("a", "b", "c", "d"))
    assert reps(out["hgw-0"]) == [(1, "c", "198.19.33.11/24", "Established")]
    assert out["hgw-0"]["phase"] == "active" and notices == []
    # scaled up again: the lowest free indexes, on the hosts without one
    up = gw(0, 3, [three[0]], phase="active")
    _after, out, _n = run(hosts, [up], ready("a", "b", "c", "d"))
    assert [r[0] for r in reps(out["hgw-0"])] == [1, 2, 3]
    assert reps(out["hgw-0"])[0] == (1, "c", "198.19.33.11/24", "Established")
    assert "c" not in [r[1] for r in reps(out["hgw-0"])[1:]]


def test_a_settled_region_plans_nothing() -> None:
    hosts = [host("a"), host("b")]
    g = gw(0, 2, [(1, "a", "Established"), (2, "b", "Active")], phase="active")
    assert plan(hosts, [g], ready("a", "b"), NOW) == ({}, [])
    # only the phase out of date: the phase alone is written
    stale = gw(0, 2, [(1, "a", "Established"), (2, "b", "Active")], phase="pending")
    out, _n = plan(hosts, [stale], ready("a", "b"), NOW)
    assert out["hgw-0"] == {**stale.status, "phase": "active"}
