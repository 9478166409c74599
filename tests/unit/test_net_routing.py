"""Distributed routing in the VPC namespace: what compile_state makes of route tables,
policies and NAT defaults, how it plans, and that the fake routes by it (pure)."""

from __future__ import annotations

import errno
import pathlib
from dataclasses import replace
from typing import TypeVar

from tests.worlds import WHost, WInstance, WPolicy, WRoute, WRouting, WVpc, documents, with_routing
from yunhan.agent.dataplane import DataPlane
from yunhan.net.desired import (
    NAT_BASE,
    POLICY_BASE,
    TABLE_BASE,
    HostDesired,
    NatGwDesired,
    NextHop,
)
from yunhan.net.driver import execute
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming
from yunhan.net.state import (
    Filter,
    KRoute,
    LinkUp,
    Marks,
    Obj,
    Op,
    Rule,
    Vxlan,
    compile_state,
    plan,
)

HOSTS = [WHost("h1", "198.18.1.11", 1), WHost("h2", "198.18.1.12", 2)]
VPC = WVpc("vpc-r", 300, ("10.2.0.0/16",), ("10.2.1.0/24", "10.2.2.0/24", "10.2.3.0/24"))
A1 = WInstance("inst-0000c001", "h1", "vpc-r", "10.2.1.10")
B1 = WInstance("inst-0000c002", "h2", "vpc-r", "10.2.2.10")
B2 = WInstance("inst-0000c003", "h1", "vpc-r", "10.2.2.11")
FW1 = WInstance("inst-0000cf01", "h2", "vpc-r", "10.2.3.10")
FW2 = WInstance("inst-0000cf02", "h1", "vpc-r", "10.2.3.11")
INSTS = [A1, B1, B2, FW1, FW2]
SUBNETS = (("10.2.1.0/24", 1, 1), ("10.2.2.0/24", 2, 2), ("10.2.3.0/24", 3, 3))
NS = "u-h1-v300"
NAMING = Naming("u-h1-")


def routing(
    t1: tuple[WRoute, ...] = (), t2: tuple[WRoute, ...] = (), policies: tuple[WPolicy, ...] = ()
) -> WRouting:
    return WRouting(VPC.id, SUBNETS, ((1, t1), (2, t2), (3, ())), policies)


def docs(r: WRouting | None = None) -> dict[str, HostDesired]:
    d = documents(HOSTS, [VPC], INSTS)
    return d if r is None else with_routing(d, INSTS, [r])


ObjT = TypeVar("ObjT", bound=Obj)


def objs(d: HostDesired, kind: type[ObjT]) -> list[ObjT]:
    return [o for o in compile_state(d, NAMING).values() if isinstance(o, kind)]


def test_an_older_document_compiles_as_before() -> None:
    d = docs()["h1"]
    assert objs(d, Rule) == [] and objs(d, Marks) == []
    # GBP is on all the same (see Vxlan.gbp): a frame of mark 0 goes out as before.
    assert all(o.gbp for o in objs(d, Vxlan))
    assert {o.table for o in objs(d, KRoute)} == {254}


def test_rules_per_subnet_selector_in_pref_order() -> None:
    pols = (
        WPolicy(1, 11, 10, "drop", "10.2.1.0/24", "10.2.2.0/24", "tcp", (22, 22)),
        WPolicy(1, 12, 20, "reroute", None, "10.2.2.0/24", "tcp", (80, 80), f"instance:{FW1.id}"),
        WPolicy(1, 13, 5, "allow", None, None, "icmp", (1, 2)),  # ports ignored for icmp
    )
    rules = {o.key: o for o in objs(docs(routing(policies=pols))["h1"], Rule)}
    sel1, mask = 0x10000, 0xFFFF0000
    assert rules[("rule", NS, "100", "0x0/0x1")] == Rule(
        NS, 100, 0, 1, "lookup", table=254, iif="vxlan0"
    )
    assert rules[("rule", NS, "10010", "0x10000/0xffff0000")] == Rule(
        NS, 10010, sel1, mask, "blackhole", src="10.2.1.0/24", dst="10.2.2.0/24", ipproto=6,
        dport=(22, 22),
    )  # fmt: skip
    assert rules[("rule", NS, "10020", "0x10000/0xffff0000")] == Rule(
        NS, 10020, sel1, mask, "lookup", table=POLICY_BASE + 12, dst="10.2.2.0/24", ipproto=6,
        dport=(80, 80),
    )  # fmt: skip
    assert rules[("rule", NS, "10005", "0x10000/0xffff0000")] == Rule(
        NS, 10005, sel1, mask, "goto", goto=30000, ipproto=1
    )
    for index, table in ((1, 1), (2, 2), (3, 3)):
        sel = f"{index << 16:#x}/0xffff0000"
        assert rules[("rule", NS, "30000", sel)].table == TABLE_BASE + table
    # Policies are the table's: subnets of other tables get none.
    assert {k[2] for k in rules if k[3] == "0x20000/0xffff0000"} == {"30000"}
    assert len(rules) == 1 + 3 + 3


def test_tables_throw_the_blocks_and_resolve_next_hops_per_host() -> None:
    r = routing(
        t1=(WRoute("192.168.50.0/24", f"instance:{FW1.id}"),
            WRoute("10.2.2.0/24", f"instance:{FW2.id}"),
            WRoute("10.2.0.0/16", "blackhole")),
        t2=(WRoute("192.168.50.0/24", "unreachable"),),
    )  # fmt: skip
    routes = {(o.table, o.dst): o for o in objs(docs(r)["h1"], KRoute)}
    t1, t2 = TABLE_BASE + 1, TABLE_BASE + 2
    # fw1 is on h2: through vxlan0 to h2's next hop, realm 1 (flagged routed on the way out).
    assert routes[(t1, "192.168.50.0/24")] == KRoute(
        NS, "192.168.50.0/24", "remote", "vxlan0", "169.254.0.2", t1, realm=1
    )
    # fw2 is here: via its address on its port.
    assert routes[(t1, "10.2.2.0/24")] == KRoute(
        NS, "10.2.2.0/24", "gateway", "p-0000cf02", "10.2.3.11", t1, onlink=True
    )
    # A custom route for a block takes the place of the block's throw.
    assert routes[(t1, "10.2.0.0/16")].kind == "blackhole"
    assert routes[(t2, "10.2.0.0/16")].kind == "throw"
    assert routes[(t2, "192.168.50.0/24")].kind == "unreachable"
    assert routes[(TABLE_BASE + 3, "10.2.0.0/16")].kind == "throw"
    # On h2 the same routes resolve the other way round.
    on_h2 = {(o.table, o.dst): o for o in compile_state(docs(r)["h2"], Naming("u-h2-")).values()
             if isinstance(o, KRoute)}  # fmt: skip
    assert on_h2[(t1, "192.168.50.0/24")].kind == "gateway"
    assert on_h2[(t1, "10.2.2.0/24")].kind == "remote"


def test_a_reroute_whose_next_hop_is_down_has_no_route() -> None:
    down = WPolicy(1, 12, 20, "reroute", None, None, "tcp", (80, 80), "instance:inst-gone")
    d = docs(routing(policies=(down,)))["h1"]
    assert [o for o in objs(d, KRoute) if o.table == POLICY_BASE + 12] == []
    assert any(o.table == POLICY_BASE + 12 for o in objs(d, Rule))


def test_marks_and_forwarder_filters() -> None:
    pols = (WPolicy(1, 12, 20, "reroute", None, None, "tcp", (80, 80), f"instance:{FW2.id}"),)
    d = docs(routing(t1=(WRoute("192.168.50.0/24", f"instance:{FW1.id}"),), policies=pols))["h1"]
    (marks,) = objs(d, Marks)
    assert marks == Marks(
        NS,
        (("p-0000c001", 0x10000), ("p-0000c003", 0x20000), ("p-0000cf02", 0x30000)),
        (("10.2.1.0/24", 0x10001), ("10.2.2.0/24", 0x20001), ("10.2.3.0/24", 0x30001)),
    )
    forwarders = {o.ifname for o in objs(d, Filter) if o.forwarder}
    assert forwarders == {"p-0000cf02"}  # fw1's port is on h2
    assert all(o.gbp for o in objs(d, Vxlan))


def test_nat_default_per_served_subnet() -> None:
    d = docs(routing())["h1"]
    vpc = d.vpcs[0]
    gw = NatGwDesired(
        id="ngw-1",
        index=7,
        nexthop=NextHop(kind="remote", ip="100.64.0.1", peer="h2", target="natgw:ngw-1"),
        public_ip="198.19.0.10",
    )
    subnets = tuple(s.model_copy(update={"natgw": 7}) if s.index == 1 else s for s in vpc.subnets)
    d = d.model_copy(
        update={"vpcs": (vpc.model_copy(update={"natgws": (gw,), "subnets": subnets}),)}
    )
    state = compile_state(d, NAMING)
    assert state[("rule", NS, "30001", "0x10000/0xffff0000")] == Rule(
        NS, 30001, 0x10000, 0xFFFF0000, "lookup", table=NAT_BASE + 7
    )
    assert ("rule", NS, "30001", "0x20000/0xffff0000") not in state
    assert state[("route", NS, str(NAT_BASE + 7), "0.0.0.0/0", "0")] == KRoute(
        NS, "0.0.0.0/0", "remote", "vxlan0", "169.254.0.2", NAT_BASE + 7, realm=1
    )
    assert state[("route", NS, str(NAT_BASE + 7), "10.2.0.0/16", "0")].kind == "throw"  # type: ignore[union-attr]
    # No healthy host: refused, never left to another default.
    down = gw.model_copy(update={"nexthop": NextHop(kind="unreachable", target="natgw:ngw-1")})
    d2 = d.model_copy(update={"vpcs": (d.vpcs[0].model_copy(update={"natgws": (down,)}),)})
    r = compile_state(d2, NAMING)[("route", NS, str(NAT_BASE + 7), "0.0.0.0/0", "0")]
    assert r.kind == "unreachable"  # type: ignore[union-attr]


def test_rules_are_created_after_the_routes_of_their_tables_and_deleted_before() -> None:
    r = routing(t1=(WRoute("192.168.50.0/24", f"instance:{FW1.id}"),))
    want = compile_state(docs(r)["h1"], NAMING)
    ops = plan(want, {})
    kinds = [op.obj.key[0] for op in ops]
    assert max(i for i, k in enumerate(kinds) if k == "route") < min(
        i for i, k in enumerate(kinds) if k == "rule"
    )
    gone = plan(compile_state(docs()["h1"], NAMING), {**want})
    kinds = [op.obj.key[0] for op in gone if op.action == "delete"]
    assert kinds.index("rule") < kinds.index("route")
    assert "marks" in kinds


def _fake(fabric: FakeFabric, host: str) -> DataPlane:
    return DataPlane(
        naming=Naming(f"u-{host}-"),
        host_netns=None,
        driver="fake",
        state_dir=pathlib.Path("/nonexistent"),
        fabric=fabric,
    )


def test_apply_revert_on_the_fake_returns_to_the_same_state() -> None:
    fabric = FakeFabric()
    dps = {h.name: _fake(fabric, h.name) for h in HOSTS}
    plain = routing()
    routed = routing(
        t1=(WRoute("192.168.50.0/24", f"instance:{FW1.id}"),),
        policies=(WPolicy(1, 11, 10, "drop", None, None, "tcp", (22, 22)),),
    )
    for h, d in docs(plain).items():
        assert dps[h].apply(d).errors == []
    before = {h: dp.observe() for h, dp in dps.items()}
    for r in (routed, plain):
        for h, d in docs(r).items():
            assert dps[h].apply(d).errors == []
            assert dps[h].plan(d) == []
    assert {h: dp.observe() for h, dp in dps.items()} == before
    # From the older document and back: the vxlan device is re-created without GBP.
    for r2 in (None, plain):
        for h, d in docs(r2).items():
            assert dps[h].apply(d).errors == []
            assert dps[h].plan(d) == []
    assert {h: dp.observe() for h, dp in dps.items()} == before


def test_the_fake_drops_by_policy_and_forwards_through_a_remote_appliance() -> None:
    fabric = FakeFabric()
    dps = {h.name: _fake(fabric, h.name) for h in HOSTS}
    r = routing(
        t1=(WRoute("10.2.2.0/24", f"instance:{FW1.id}"),),
        policies=(WPolicy(1, 11, 10, "drop", None, "10.2.2.0/24", "tcp", (22, 22)),),
    )
    for h, d in docs(r).items():
        assert dps[h].apply(d).errors == []
    t = fabric.trace(A1.id, B1.ip, proto="tcp", port=22)
    assert (t.verdict, t.reason) == ("dropped", "blackhole rule 10010 in u-h1-v300")
    # fw1 does not forward yet: the packet reaches it and stops there.
    t = fabric.trace(A1.id, B1.ip, proto="tcp", port=80)
    assert not t.delivered and "does not forward" in t.reason
    assert "u-h2-:u-h2-i-0000cf01" in t.hops


def test_an_agent_upgrade_recreates_every_vxlan_with_gbp_in_one_apply() -> None:
    # Devices made before GBP: the kernel cannot switch it on a live device, and a host's
    # devices of both kinds cannot be up at once (one UDP socket per port). All VPCs of
    # the host are re-created before any comes up again, so one apply converges.
    other = WVpc("vpc-o", 301, ("10.3.0.0/16",), ("10.3.1.0/24",))
    insts = [*INSTS, WInstance("inst-0000d001", "h1", "vpc-o", "10.3.1.10")]
    d = with_routing(documents(HOSTS, [VPC, other], insts), insts, [routing()])["h1"]
    old = {
        k: replace(o, gbp=False) if isinstance(o, Vxlan) else o
        for k, o in compile_state(d, NAMING).items()
    }
    fabric = FakeFabric()
    dp = _fake(fabric, "h1")
    assert execute(dp.driver, plan(old, {})).failed == []
    # One device alone re-created with GBP cannot come up next to the others.
    first = next(o for o in old.values() if isinstance(o, Vxlan))
    scratch = _fake(FakeFabric(), "h1")
    assert execute(scratch.driver, plan(old, {})).failed == []
    res = execute(scratch.driver, [Op("replace", old=first, new=replace(first, gbp=True))])
    assert res.failed == []
    res = execute(scratch.driver, [Op("create", new=LinkUp(first.netns, first.ifname))])
    assert [exc.errno for _, exc in res.failed] == [errno.EADDRINUSE]
    rep = dp.apply(d)
    assert rep.errors == []
    assert dp.plan(d) == []
    assert all(o.gbp for o in dp.observe().values() if isinstance(o, Vxlan))
