"""The planner and the fake driver: plans against observed states, oracles, partial failure."""

from __future__ import annotations

import errno
import pathlib

from tests.worlds import WHost, WInstance, WVpc, documents
from yunhan.agent.dataplane import DataPlane
from yunhan.net.desired import HostDesired
from yunhan.net.driver import execute
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming
from yunhan.net.state import (
    Address,
    Filter,
    KRoute,
    Neigh,
    Netns,
    Op,
    Process,
    Uts,
    Veth,
    after,
    compile_state,
    plan,
)

HOSTS = [
    WHost("h1", "198.18.1.11", 1),
    WHost("h2", "198.18.1.12", 2),
    WHost("h3", "198.18.2.13", 3),
]
VPCS = [
    WVpc("vpc-a", 100, ("10.1.0.0/16",), ("10.1.1.0/24", "10.1.2.0/24")),
    WVpc("vpc-b", 200, ("10.1.0.0/16",), ("10.1.1.0/24",)),
]
INSTS = [
    WInstance("inst-0000a001", "h1", "vpc-a", "10.1.1.10"),
    WInstance("inst-0000a002", "h2", "vpc-a", "10.1.1.11"),
    WInstance("inst-0000a003", "h3", "vpc-a", "10.1.2.10", command=("sleep", "1000")),
    WInstance("inst-0000a004", "h1", "vpc-a", "10.1.2.11", allowed_ips=("10.1.2.100",)),
    WInstance("inst-0000b001", "h1", "vpc-b", "10.1.1.10"),
    WInstance("inst-0000b002", "h3", "vpc-b", "10.1.1.11"),
]
NAMING = Naming("u-h1-")


def docs(insts: list[WInstance] = INSTS) -> dict[str, HostDesired]:
    return documents(HOSTS, VPCS, insts)


def fake_dp(fabric: FakeFabric, host: str = "h1") -> DataPlane:
    return DataPlane(
        naming=Naming(f"u-{host}-"),
        host_netns=None,
        driver="fake",
        state_dir=pathlib.Path("/nonexistent"),
        fabric=fabric,
    )


def test_plan_from_nothing_creates_in_dependency_order() -> None:
    want = compile_state(docs()["h1"], NAMING)
    ops = plan(want, {})
    assert all(op.action == "create" for op in ops)
    assert {op.obj.key for op in ops} == set(want)
    kinds = [op.obj.key[0] for op in ops]
    # namespaces before links, links before what lives on them, filters before link up.
    assert kinds.index("netns") < kinds.index("link") < kinds.index("addr")
    assert max(i for i, k in enumerate(kinds) if k == "filter") < min(
        i for i, k in enumerate(kinds) if k == "up"
    )
    assert kinds[-1] == "route"


def test_plan_of_desired_against_itself_is_empty() -> None:
    want = compile_state(docs()["h1"], NAMING)
    assert plan(want, dict(want)) == []


def test_missing_route_plans_exactly_one_create() -> None:
    want = compile_state(docs()["h1"], NAMING)
    have = dict(want)
    route = next(o for o in want.values() if isinstance(o, KRoute) and o.kind == "remote")
    del have[route.key]
    assert [(op.action, op.obj) for op in plan(want, have)] == [("create", route)]


def test_removed_port_deletes_the_link_not_what_lives_on_it() -> None:
    full = compile_state(docs()["h1"], NAMING)
    fewer = compile_state(docs([i for i in INSTS if i.id != "inst-0000a004"])["h1"], NAMING)
    ops = plan(fewer, full)
    deleted = {type(op.obj).__name__ for op in ops if op.action == "delete"}
    # The veth goes (the kernel takes the addresses, neighbours and the /32 route on it
    # along), the filter chain (which outlives its device), the instance namespace and
    # its UTS namespace.
    assert deleted == {"Veth", "Filter", "Netns", "Uts"}
    assert all(op.action == "delete" for op in ops)


def test_removed_vpc_deletes_the_namespace_only() -> None:
    full = compile_state(docs()["h1"], NAMING)
    no_b = compile_state(docs([i for i in INSTS if i.vpc != "vpc-b"])["h1"], NAMING)
    ops = plan(no_b, full)
    assert {(type(op.obj).__name__, op.action) for op in ops} == {
        ("Netns", "delete"),
        ("Uts", "delete"),
    }
    assert {op.obj.key for op in ops if isinstance(op.obj, Netns)} == {
        ("netns", "u-h1-v200"),
        ("netns", "u-h1-i-0000b001"),
    }


def test_a_vip_delivered_to_a_port_changes_its_filter_route_and_neighbour_only() -> None:
    base = compile_state(docs()["h1"], NAMING)
    insts = [
        WInstance(i.id, i.host, i.vpc, i.ip, allowed_ips=("10.1.2.100", "10.1.2.101"))
        if i.id == "inst-0000a004"
        else i
        for i in INSTS
    ]
    ops = plan(compile_state(docs(insts)["h1"], NAMING), base)
    got = sorted((op.action, type(op.obj).__name__) for op in ops)
    assert got == [("create", "KRoute"), ("create", "Neigh"), ("replace", "Filter")]
    route = next(op.obj for op in ops if isinstance(op.obj, KRoute))
    neigh = next(op.obj for op in ops if isinstance(op.obj, Neigh))
    assert (route.dst, route.kind, neigh.ip) == ("10.1.2.101/32", "local", "10.1.2.101")


def test_recreated_port_rewrites_its_filter() -> None:
    want = compile_state(docs()["h1"], NAMING)
    have = dict(want)
    port = next(o for o in want.values() if isinstance(o, Veth))
    del have[port.key]
    ops = plan(want, have)
    assert ("replace", ("filter", port.netns, port.ifname)) in [
        (op.action, op.obj.key) for op in ops
    ]


def test_apply_then_plan_is_empty_and_a_restarted_agent_adopts() -> None:
    fabric = FakeFabric()
    d = docs()["h1"]
    r = fake_dp(fabric).apply(d)
    assert r.errors == [] and r.changes > 0
    assert {i.phase for i in r.instances.values()} == {"running"}
    again = fake_dp(fabric)  # a new agent on the same (fake) kernel
    assert again.plan(d) == []
    assert again.apply(d).changes == 0


def test_apply_revert_returns_to_the_same_state() -> None:
    fabric = FakeFabric()
    dp = fake_dp(fabric)
    a = docs()["h1"]
    b = docs([i for i in INSTS if i.id not in ("inst-0000a004", "inst-0000b001")])["h1"]
    dp.apply(a)
    state_a = dp.observe()
    dp.apply(b)
    assert dp.observe() != state_a
    dp.apply(a)
    assert dp.observe() == state_a


def test_incremental_equals_full() -> None:
    a = docs()["h1"]
    b = docs([i for i in INSTS if i.id != "inst-0000a001"])["h1"]
    inc = fake_dp(FakeFabric())
    inc.apply(a)
    inc.apply(b)
    full = fake_dp(FakeFabric())
    full.apply(b)
    assert inc.observe() == full.observe()


def test_partial_failure_is_reported_and_does_not_stop_others() -> None:
    fabric = FakeFabric()
    dp = fake_dp(fabric)
    dp.driver.refuse(  # type: ignore[attr-defined]
        lambda op: isinstance(op.obj, Veth) and op.obj.ifname == "p-0000a004", errno.EPERM
    )
    r = dp.apply(docs()["h1"])
    assert len(r.errors) == 1 and "p-0000a004" in r.errors[0]
    assert r.instances["inst-0000a004"].phase == "failed"
    assert "refused" in r.instances["inst-0000a004"].message
    assert r.instances["inst-0000a001"].phase == "running"
    assert r.instances["inst-0000b001"].phase == "running"


def test_teardown_removes_everything() -> None:
    fabric = FakeFabric()
    dp = fake_dp(fabric)
    dp.apply(docs()["h1"])
    dp.teardown()
    assert dp.observe() == {}


def test_empty_document_removes_everything() -> None:
    dp = fake_dp(FakeFabric())
    dp.apply(docs()["h3"])
    assert any(isinstance(o, Process) for o in dp.observe().values())
    empty = HostDesired(host="h3", underlay_ip="198.18.2.13", vtep_index=3)
    r = dp.apply(empty)
    assert r.errors == [] and dp.observe() == {}


def test_instance_state_is_complete() -> None:
    want = compile_state(docs()["h3"], Naming("u-h3-"))
    ns = "u-h3-i-0000a003"
    assert want[("uts", ns)] == Uts(ns, "vm-0000a003")
    assert want[("proc", ns)] == Process(ns, ("sleep", "1000"))
    assert want[("addr", ns, "eth0", "10.1.2.10/24")] == Address(ns, "eth0", "10.1.2.10/24")
    gw = want[("route", ns, "254", "0.0.0.0/0", "0")]
    assert isinstance(gw, KRoute) and gw.via == "10.1.2.1"


def test_a_failure_elsewhere_does_not_leave_a_recreated_port_down() -> None:
    # Port a001 must be re-created (its instance end was lost), which takes its link state,
    # neighbour and routes with it: the next pass puts them back. A refusal on another
    # instance's route in the same apply must not stop that second pass.
    fabric = FakeFabric()
    dp = fake_dp(fabric)
    d = docs()["h1"]
    assert dp.apply(d).errors == []
    drv = dp.driver
    vpc_a = NAMING.vpc_netns(100)
    port = drv.objs[("link", vpc_a, "p-0000a001")]  # type: ignore[attr-defined]
    assert isinstance(port, Veth)
    drv.objs[port.key] = Veth(port.netns, port.ifname, None, "", port.mtu)  # type: ignore[attr-defined]
    b001 = ("route", NAMING.vpc_netns(200), "254", "10.1.1.10/32", "0")
    del drv.objs[b001]  # type: ignore[attr-defined]
    drv.refuse(lambda op: op.obj.key == b001)  # type: ignore[attr-defined]
    r = dp.apply(d)
    assert len(r.errors) == 1 and "10.1.1.10/32" in r.errors[0]
    assert r.instances["inst-0000a001"].phase == "running", r.instances["inst-0000a001"]
    assert r.instances["inst-0000b001"].phase == "failed"
    assert [op.obj.key for op in dp.plan(d)] == [b001]


def test_a_port_whose_filter_failed_is_never_brought_up() -> None:
    # Anti-spoofing fails closed: a port without its chain stays down.
    dp = fake_dp(FakeFabric())
    dp.driver.refuse(  # type: ignore[attr-defined]
        lambda op: isinstance(op.obj, Filter) and op.obj.ifname == "p-0000a004"
    )
    r = dp.apply(docs()["h1"])
    have = dp.observe()
    vpc_a = NAMING.vpc_netns(100)
    assert ("link", vpc_a, "p-0000a004") in have
    assert ("up", vpc_a, "p-0000a004") not in have
    assert len(r.errors) == 1 and "Filter" in r.errors[0]
    assert r.instances["inst-0000a004"].phase == "failed"
    assert r.instances["inst-0000a001"].phase == "running"


def _transitions() -> list[tuple[str, list[WInstance], list[WInstance]]]:
    without = [i for i in INSTS if i.id not in ("inst-0000a004", "inst-0000b001")]
    vip = [
        WInstance(i.id, i.host, i.vpc, i.ip, i.mac, ("10.1.2.100", "10.1.2.101"), i.command)
        if i.id == "inst-0000a004"
        else i
        for i in INSTS
    ]
    new_mac = [
        WInstance(i.id, i.host, i.vpc, i.ip, "02:00:00:00:aa:01") if i.id == "inst-0000a001" else i
        for i in INSTS
    ]
    return [
        ("from nothing", [], INSTS),
        ("instances removed", INSTS, without),
        ("instances added", without, INSTS),
        ("a VPC leaves the host", INSTS, [i for i in INSTS if i.vpc != "vpc-b"]),
        ("everything removed", INSTS, []),
        ("allowed ips changed", INSTS, vip),
        ("a port's MAC changed", INSTS, new_mac),
    ]


def test_predicted_state_after_a_pass_is_what_observation_finds() -> None:
    # The apply skips observing again after a clean pass: the prediction must equal what
    # the (fake) kernel then holds, or decline (None) so that the caller observes.
    declined = 0
    for what, before, now in _transitions():
        for host in ("h1", "h3"):
            dp = fake_dp(FakeFabric(), host)
            assert dp.apply(docs(before)[host]).errors == []
            drv = dp.driver
            have = drv.observe()
            want = compile_state(docs(now)[host], Naming(f"u-{host}-"))
            res = execute(drv, plan(want, have))
            assert res.failed == [], what
            predicted = after(have, res.done)
            if predicted is None:
                declined += 1
                continue
            assert predicted == drv.observe(), (what, host)
            assert plan(want, predicted) == [], (what, host)
    assert declined >= 1  # the replaced port


def test_drift_is_still_repaired_by_an_apply_that_predicts() -> None:
    fabric = FakeFabric()
    dp = fake_dp(fabric)
    d = docs()["h1"]
    assert dp.apply(d).errors == []
    route = ("route", NAMING.vpc_netns(100), "254", "10.1.1.11/32", "0")
    del dp.driver.objs[route]  # type: ignore[attr-defined]
    r = dp.apply(d)
    assert (r.changes, r.errors) == (1, [])
    assert dp.plan(d) == []


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _remembering_dp(fabric: FakeFabric, clock: _Clock, host: str = "h1") -> DataPlane:
    return DataPlane(
        naming=Naming(f"u-{host}-"),
        host_netns=None,
        driver="fake",
        state_dir=pathlib.Path("/nonexistent"),
        fabric=fabric,
        full_every=30.0,
        clock=clock,
    )


EXTRA = WInstance("inst-0000a0ff", "h1", "vpc-a", "10.1.1.77")
DRIFT = ("route", NAMING.vpc_netns(100), "254", "10.1.1.11/32", "0")


def test_a_changed_document_planned_from_memory_equals_a_full_apply() -> None:
    clock = _Clock()
    inc = _remembering_dp(FakeFabric(), clock)
    assert inc.apply(docs()["h1"]).errors == []
    for step in ([*INSTS, EXTRA], INSTS[:2], INSTS):
        clock.now += 1
        r = inc.apply(docs(step)["h1"])
        assert r.errors == [] and {i.phase for i in r.instances.values()} == {"running"}
        full = fake_dp(FakeFabric())
        full.apply(docs(step)["h1"])
        assert inc.observe() == full.observe()


def test_drift_is_repaired_when_the_same_document_is_applied_again() -> None:
    clock = _Clock()
    dp = _remembering_dp(FakeFabric(), clock)
    dp.apply(docs()["h1"])
    del dp.driver.objs[DRIFT]  # type: ignore[attr-defined]
    clock.now += 1
    changed = docs([*INSTS, EXTRA])["h1"]
    assert dp.apply(changed).errors == []
    # The resync the agent does when nothing new arrives reads the kernel in full.
    r = dp.apply(changed)
    assert (r.changes, r.errors) == (1, [])
    assert dp.plan(changed) == []


def test_a_host_whose_document_keeps_changing_is_still_read_in_full() -> None:
    clock = _Clock()
    dp = _remembering_dp(FakeFabric(), clock)
    dp.apply(docs()["h1"])
    del dp.driver.objs[DRIFT]  # type: ignore[attr-defined]
    for step, t in (([*INSTS, EXTRA], 10.0), (INSTS, 31.0)):
        clock.now = t
        assert dp.apply(docs(step)["h1"]).errors == []
    # The change at 31 s was planned from memory (it never waits for a read), and a full
    # read is due: the agent follows it with one, which repairs the drift.
    assert dp.full_due and dp.plan(docs()["h1"]) != []
    assert dp.apply(docs()["h1"], full=True).errors == []
    assert not dp.full_due and dp.plan(docs()["h1"]) == []


def test_an_op_planned_from_memory_that_fails_starts_again_from_observation() -> None:
    clock = _Clock()
    dp = _remembering_dp(FakeFabric(), clock)
    dp.apply(docs()["h1"])
    # The VPC namespace was deleted by hand: a route planned into it from memory fails.
    dp.driver.apply(Op("delete", old=Netns(NAMING.vpc_netns(100), "vpc")))
    clock.now += 1
    changed = docs([*INSTS, EXTRA])["h1"]
    r = dp.apply(changed)
    assert r.errors == [], r.errors
    assert {i.phase for i in r.instances.values()} == {"running"}
    assert dp.plan(changed) == []
