"""Hybrid gateways in the host data plane: what a host compiles for an IDC prefix and for a
replica it runs, plans against the fake driver (idempotent, a change of announcements is a
BGP replace and nothing else, next hops added and removed in place, a replica removed
with its namespace and FRR), and packets to the IDC in the fake fabric."""

from __future__ import annotations

import pathlib

from tests.worlds import WHost, WInstance, WVpc, documents
from yunhan.agent.dataplane import DataPlane
from yunhan.net.desired import (
    HYBRID_INNER_IP,
    HYBRID_LINE_PORT,
    NATGW_LINK_IP,
    HostDesired,
    HybridGwDesired,
    HybridReplicaDesired,
    HybridRouteDesired,
    NextHop,
    vtep_nexthop,
)
from yunhan.net.driver import execute
from yunhan.net.fake import FakeFabric
from yunhan.net.frr import Session
from yunhan.net.naming import Naming, hybrid_ifname
from yunhan.net.natgw import VethPair, gw_mac
from yunhan.net.state import (
    ZERO_MAC,
    Bgp,
    Fdb,
    KRoute,
    Netns,
    Op,
    Sysctl,
    Vxlan,
    after,
    compile_state,
    hybrid_line_mac,
    plan,
)

HOSTS = [
    WHost("h1", "198.18.1.11", 1),
    WHost("h2", "198.18.1.12", 2),
    WHost("h3", "198.18.2.13", 3),
]
VPC = WVpc("vpc-a", 100, ("10.1.0.0/16",), ("10.1.1.0/24",))
INSTS = [WInstance(f"inst-0000a00{i}", f"h{i}", "vpc-a", f"10.1.1.1{i}") for i in (1, 2, 3)]
GW = "hgw-0000d001"
PORT = hybrid_ifname(GW)
IDC = "192.168.100.0/24"
VTEP = "198.19.16.1"  # the site router's underlay address
ANNOUNCE = ("10.1.0.0/16",)


def naming(host: str) -> Naming:
    return Naming(f"u-{host}-")


def replica(index: int, announce: tuple[str, ...] = ANNOUNCE) -> HybridReplicaDesired:
    return HybridReplicaDesired(
        index=index,
        line_vni=0x700001,
        line_vtep=VTEP,
        line_ip=f"198.19.33.{10 + index}/24",
        peer_ip="198.19.33.1",
        peer_asn=65001,
        asn=64512,
        md5_secret="s3cret",
        announce=announce,
    )


def docs(
    replicas: dict[str, int], up: list[str] | None = None, announce: tuple[str, ...] = ANNOUNCE
) -> dict[str, HostDesired]:
    """The documents with a replica (index) on each host of `replicas`; `up`: the hosts
    whose replica's session is up (default: all), which the IDC prefix is routed to."""
    up = list(replicas) if up is None else up
    out = {}
    for host, doc in documents(HOSTS, [VPC], INSTS).items():
        if host in replicas and host in up:
            hops = (NextHop(kind="local", ip=HYBRID_INNER_IP, port=PORT),)
        else:
            hops = tuple(NextHop(kind="remote", peer=h, ip=HYBRID_INNER_IP) for h in up)
        rep = replica(replicas[host], announce) if host in replicas else None
        gw = HybridGwDesired(
            id=GW, index=1, ifname=PORT, routes=(HybridRouteDesired(dst=IDC, nexthops=hops),),
            replica=rep,
        )  # fmt: skip
        vpc = doc.vpcs[0].model_copy(update={"hybrids": (gw,)})
        out[host] = doc.model_copy(update={"vpcs": (vpc,)})
    return out


def fake_dp(fabric: FakeFabric, host: str) -> DataPlane:
    return DataPlane(
        naming=naming(host),
        host_netns=None,
        driver="fake",
        state_dir=pathlib.Path("/nonexistent"),
        fabric=fabric,
    )


def idc_route(doc: HostDesired, host: str) -> KRoute:
    route = compile_state(doc, naming(host))[
        ("route", naming(host).vpc_netns(100), "254", IDC, "0")
    ]
    assert isinstance(route, KRoute)
    return route


# -- compiling -----------------------------------------------------------------------------


def test_a_replica_compiles_to_its_namespace_link_line_routes_and_session() -> None:
    n = naming("h1")
    want = compile_state(docs({"h1": 1})["h1"], n)
    ns, vpc_ns = n.hybrid_netns(GW), n.vpc_netns(100)
    assert ns == "u-h1-h-0000d001" and PORT == "h-0000d001"
    assert want[("netns", ns)] == Netns(ns, "hybrid")
    link = want[("link", ns, "vpc0")]
    assert link == VethPair(ns, "vpc0", gw_mac(GW, "vpc0"), vpc_ns, PORT, gw_mac(GW, "port"), 1450)
    # Both sides hold the other's MAC, as a NAT gateway's link does: no ARP across it.
    assert want[("neigh", ns, "vpc0", NATGW_LINK_IP)].mac == link.peer_mac  # type: ignore[union-attr]
    assert want[("neigh", vpc_ns, PORT, HYBRID_INNER_IP)].mac == link.mac  # type: ignore[union-attr]
    assert ("addr", ns, "vpc0", f"{HYBRID_INNER_IP}/32") in want
    assert want[("link", ns, "line0")] == Vxlan(
        ns, "line0", 0x700001, "198.18.1.11", hybrid_line_mac(GW, 1), 1450,
        port=HYBRID_LINE_PORT, gbp=False,
    )  # fmt: skip
    assert want[("fdb", ns, "line0", ZERO_MAC)] == Fdb(ns, "line0", ZERO_MAC, VTEP)
    assert ("addr", ns, "line0", "198.19.33.11/24") in want
    assert ("up", ns, "line0") in want and ("up", vpc_ns, PORT) in want
    assert want[("route", ns, "254", "10.1.0.0/16", "0")] == KRoute(
        ns, "10.1.0.0/16", "gateway", "vpc0", NATGW_LINK_IP, onlink=True
    )
    assert want[("bgp", ns)] == Bgp(
        ns, Session("198.19.33.11", 64512, "198.19.33.1", 65001, "s3cret", True, ANNOUNCE)
    )
    sysctls = {o.path: o.value for o in want.values() if isinstance(o, Sysctl) and o.netns == ns}
    assert sysctls["net/ipv4/ip_forward"] == "1"
    assert sysctls["net/ipv4/conf/all/rp_filter"] == "0"
    assert sysctls["net/ipv6/conf/all/disable_ipv6"] == "1"
    assert want[("sysctl", vpc_ns, "net/ipv4/fib_multipath_hash_policy")].value == "1"  # type: ignore[union-attr]
    # The host that runs a replica sends the IDC to it alone.
    assert idc_route(docs({"h1": 1})["h1"], "h1") == KRoute(
        vpc_ns, IDC, "gateway", PORT, HYBRID_INNER_IP, onlink=True
    )


def test_two_replicas_have_two_line_macs() -> None:
    d = docs({"h1": 1, "h3": 2})
    macs = {
        compile_state(d[h], naming(h))[("link", naming(h).hybrid_netns(GW), "line0")].mac  # type: ignore[union-attr]
        for h in ("h1", "h3")
    }
    assert len(macs) == 2


def test_the_idc_prefix_is_ecmp_over_remote_replicas_one_remote_or_unreachable() -> None:
    vpc_ns = naming("h2").vpc_netns(100)
    assert idc_route(docs({"h1": 1, "h3": 2})["h2"], "h2") == KRoute(
        vpc_ns,
        IDC,
        "multipath",
        nexthops=((vtep_nexthop(1), "vxlan0"), (vtep_nexthop(3), "vxlan0")),
    )
    # One: the usual remote route, without realm (the far host delivers it by main).
    assert idc_route(docs({"h1": 1, "h3": 2}, up=["h3"])["h2"], "h2") == KRoute(
        vpc_ns, IDC, "remote", "vxlan0", vtep_nexthop(3)
    )
    assert idc_route(docs({"h1": 1, "h3": 2}, up=[])["h2"], "h2") == KRoute(
        vpc_ns, IDC, "unreachable"
    )
    # A host without a replica builds nothing of the gateway but its route.
    want = compile_state(docs({"h1": 1})["h2"], naming("h2"))
    assert not [k for k in want if naming("h2").hybrid_netns(GW) in k]


# -- applying (fake driver) ----------------------------------------------------------------


def test_apply_then_plan_is_empty_and_observation_is_what_was_compiled() -> None:
    fabric = FakeFabric()
    d = docs({"h1": 1, "h3": 2})
    for h in ("h1", "h2", "h3"):
        dp = fake_dp(fabric, h)
        r = dp.apply(d[h])
        assert r.errors == [] and r.changes > 0
        assert dp.plan(d[h]) == []
        assert dp.observe() == dp.compile(d[h])
        assert fake_dp(fabric, h).apply(d[h]).changes == 0  # a restarted agent adopts


def _kinds(ops: list[Op]) -> list[tuple[str, str]]:
    return [(op.action, type(op.obj).__name__) for op in ops]


def test_a_change_of_announcements_replaces_the_session_not_the_namespace() -> None:
    dp = fake_dp(FakeFabric(), "h1")
    assert dp.apply(docs({"h1": 1})["h1"]).errors == []
    more = docs({"h1": 1}, announce=("10.1.0.0/16", "10.2.0.0/16"))["h1"]
    ops = dp.plan(more)
    assert sorted(_kinds(ops)) == [("create", "KRoute"), ("replace", "Bgp")]
    bgp = next(op for op in ops if isinstance(op.obj, Bgp))
    assert bgp.new.session.announce == ("10.1.0.0/16", "10.2.0.0/16")  # type: ignore[union-attr]
    assert dp.apply(more).errors == []
    assert dp.plan(more) == []
    back = dp.plan(docs({"h1": 1})["h1"])
    assert sorted(_kinds(back)) == [("delete", "KRoute"), ("replace", "Bgp")]


def test_multipath_next_hops_are_added_and_removed_in_place() -> None:
    dp = fake_dp(FakeFabric(), "h2")
    steps = [["h1"], ["h1", "h3"], ["h1", "h2", "h3"], ["h3"], []]
    replicas = {"h1": 1, "h3": 2}
    assert dp.apply(docs(replicas, up=steps[0])["h2"]).errors == []
    for up in steps[1:]:
        # h2 runs no replica: "h2" up means nothing to it (the document's next hops are
        # those of up replicas only; a remote next hop to itself has no peer).
        d = docs(replicas, up=[h for h in up if h in replicas])["h2"]
        assert _kinds(dp.plan(d)) in ([("replace", "KRoute")], []), up
        assert dp.apply(d).errors == []
        assert dp.plan(d) == []
    route = dp.observe()[("route", naming("h2").vpc_netns(100), "254", IDC, "0")]
    assert isinstance(route, KRoute) and route.kind == "unreachable"


def test_a_removed_replica_takes_its_namespace_and_frr_and_nothing_else() -> None:
    dp = fake_dp(FakeFabric(), "h1")
    n = naming("h1")
    with_replica = docs({"h1": 1, "h3": 2})["h1"]
    without = docs({"h3": 2})["h1"]
    assert dp.apply(with_replica).errors == []
    ops = dp.plan(without)
    # FRR is stopped before its namespace goes; what lived in the namespace or on the
    # port goes with them; the IDC route now points at the other replica.
    assert _kinds(ops) == [("delete", "Bgp"), ("delete", "Netns"), ("replace", "KRoute")]
    assert dp.apply(without).errors == []
    have = dp.observe()
    assert not [k for k in have if n.hybrid_netns(GW) in k or PORT in k]
    assert have[("route", n.vpc_netns(100), "254", IDC, "0")] == KRoute(
        n.vpc_netns(100), IDC, "remote", "vxlan0", vtep_nexthop(3)
    )
    assert dp.plan(without) == []


def test_predicted_state_after_each_change_is_what_observation_finds() -> None:
    # The apply skips observing again after a clean pass (`after`): a multipath route on
    # a removed device, a removed replica, must be predicted gone as the kernel does.
    transitions = [
        (docs({"h1": 1, "h3": 2})["h1"], docs({"h3": 2})["h1"]),
        (docs({"h3": 2})["h1"], docs({"h1": 1, "h3": 2})["h1"]),
        (docs({"h1": 1})["h1"], docs({"h1": 1}, announce=("10.1.1.0/24",))["h1"]),
        (docs({"h1": 1, "h3": 2})["h2"], docs({"h3": 2})["h2"]),
        (docs({"h1": 1, "h3": 2})["h2"], docs({})["h2"]),
    ]
    for before, now in transitions:
        host = before.host
        dp = fake_dp(FakeFabric(), host)
        assert dp.apply(before).errors == []
        drv = dp.driver
        have = drv.observe()
        want = compile_state(now, naming(host))
        res = execute(drv, plan(want, have))
        assert res.failed == []
        predicted = after(have, res.done)
        assert predicted is not None
        assert predicted == drv.observe()
        assert plan(want, predicted) == []


def test_a_multipath_route_goes_with_any_of_its_devices() -> None:
    dp = fake_dp(FakeFabric(), "h2")
    assert dp.apply(docs({"h1": 1, "h3": 2})["h2"]).errors == []
    vxlan = dp.observe()[("link", naming("h2").vpc_netns(100), "vxlan0")]
    dp.driver.apply(Op("delete", old=vxlan))
    assert ("route", naming("h2").vpc_netns(100), "254", IDC, "0") not in dp.observe()


# -- packets (fake fabric) -----------------------------------------------------------------


def _region(replicas: dict[str, int], up: list[str] | None = None) -> FakeFabric:
    fabric = FakeFabric()
    for h, d in docs(replicas, up).items():
        assert fake_dp(fabric, h).apply(d).errors == []
    return fabric


def test_instances_reach_the_idc_through_a_replica_line() -> None:
    fabric = _region({"h1": 1, "h3": 2})
    lines = {}
    for inst in INSTS:
        t = fabric.trace(inst.id, "192.168.100.10", proto="tcp", port=80)
        assert t.delivered and t.to_netns is None, (inst.id, t)
        lines[inst.host] = next(h for h in t.hops if "line0->" in h)
        assert lines[inst.host].endswith(f"line0->{VTEP}")
    # A host with a replica uses its own; h2 one of the two.
    assert lines["h1"].startswith("u-h1-:u-h1-h-") and lines["h3"].startswith("u-h3-:u-h3-h-")
    # Flows spread: over many source ports both replicas are used.
    used = {
        next(h for h in fabric.trace(INSTS[1].id, "192.168.100.10", proto="tcp", port=p).hops
             if "line0->" in h)
        for p in range(1000, 1064)
    }  # fmt: skip
    assert len(used) == 2


def test_no_replica_up_makes_the_idc_unreachable() -> None:
    fabric = _region({"h1": 1, "h3": 2}, up=[])
    t = fabric.trace(INSTS[1].id, "192.168.100.10")
    assert t.verdict == "unreachable" and "unreachable route" in t.reason
