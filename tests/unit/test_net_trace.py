"""`yunhan trace` in model mode (yunhan.net.trace) over documents assembled from entries.

The documents are built the way the engine publishes them (docentries entries, then
`assemble` per host), so next hops are resolved per host exactly as an agent sees them.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

import pytest

from yunhan.agent.dataplane import DataPlane
from yunhan.net import docentries as de
from yunhan.net.desired import HostDesired
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming, gateway_ifname, port_ifname, short_id
from yunhan.net.state import Op, Sysctl
from yunhan.net.trace import (
    ANTISPOOF,
    BLACKHOLE,
    LOOP,
    MARTIAN,
    NETWORK_ACL,
    NO_MEMBER,
    NO_NATGW,
    NOT_ANNOUNCED,
    OUTSIDE,
    POLICY_DROP,
    SECURITY_GROUP,
    UNREACHABLE,
    Directory,
    PublicAddress,
    Trace,
    TraceError,
    trace,
)

HOSTS = {"h1": ("198.18.1.11", 1), "h2": ("198.18.1.12", 2), "h3": ("198.18.2.11", 3)}
VPC = "vpc-0000t001"
BLOCK = "10.2.0.0/16"
SUBNETS = {  # id -> (cidr, selector index)
    "subnet-00000a01": ("10.2.1.0/24", 1),
    "subnet-00000a02": ("10.2.2.0/24", 2),
    "subnet-00000a03": ("10.2.3.0/24", 3),
}
S1, S2, S3 = SUBNETS
T_DEF, T_APP = "rtb-0000d001", "rtb-0000d002"
A1 = "inst-0000c001"  # h1, subnet 1
B1 = "inst-0000c002"  # h2, subnet 2
B2 = "inst-0000c003"  # h1, subnet 2
FW1 = "inst-0000cf01"  # h2, subnet 3 (appliance)
FW2 = "inst-0000cf02"  # h3, subnet 3 (appliance)
NGW = "ngw-0000e001"
PUBLIC = "198.19.128.4"
EIP = "198.19.128.9"
INTERNET = "198.19.0.2"
MEMBERS = {  # id -> (ip, subnet, host)
    A1: ("10.2.1.10", S1, "h1"),
    B1: ("10.2.2.10", S2, "h2"),
    B2: ("10.2.2.11", S2, "h1"),
    FW1: ("10.2.3.10", S3, "h2"),
    FW2: ("10.2.3.11", S3, "h3"),
}
IP = {i: m[0] for i, m in MEMBERS.items()}


@dataclass
class World:
    """One VPC's entries: subnets (all on the default table unless moved), members,
    custom tables, routes, policies and a NAT gateway."""

    tables: dict[str, int] = field(default_factory=lambda: {T_DEF: 1, T_APP: 2})
    assoc: dict[str, str] = field(default_factory=dict)  # subnet -> table
    served: set[str] = field(default_factory=set)  # subnets served by NGW
    routes: list[tuple[str, str, str, int, str]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    gateway_host: str | None = None
    down: set[str] = field(default_factory=set)  # instances whose next hops are down
    forwarders: set[str] = field(default_factory=lambda: {FW1, FW2})
    eips: list[tuple[str, str]] = field(default_factory=list)
    forwards: list[tuple[str, int, str, int]] = field(default_factory=list)
    other: bool = False  # a second VPC: c1 on h3, served by its own gateway on h3
    groups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # id -> rules
    sgs: dict[str, list[str]] = field(default_factory=dict)  # instance -> its groups
    acls: dict[str, tuple[list[dict[str, Any]], list[str]]] = field(default_factory=dict)

    def route(self, rid: str, table: str, dst: str, nh: str, priority: int = 100) -> World:
        self.routes.append((rid, table, dst, priority, nh))
        return self

    def policy(self, pid: str, table: str, priority: int, action: str, **kw: Any) -> World:
        self.policies.append(
            {"id": pid, "table": table, "priority": priority, "action": action, **kw}
        )
        return self

    def _nh(self, nh: str) -> de.JsonObj:
        kind, _, ref = nh.partition(":")
        if kind == "blackhole":
            return de.nexthop_entry("blackhole", None, up=True)
        if kind == "natgw":
            return self._gw_nh()
        ip, _s, host = MEMBERS[ref]
        underlay, vtep = HOSTS[host]
        return de.nexthop_entry(
            "instance", ref, ip=ip, host=host, vtep_index=vtep, underlay_ip=underlay,
            port=port_ifname(ref), up=ref not in self.down,
        )  # fmt: skip

    def _gw_nh(self) -> de.JsonObj:
        h = self.gateway_host
        return de.nexthop_entry(
            "natgw", NGW, ip="100.64.0.1", host=h, vtep_index=HOSTS[h][1] if h else None,
            underlay_ip=HOSTS[h][0] if h else None, port=gateway_ifname(NGW), up=h is not None,
        )  # fmt: skip

    def entries(self) -> de.Entries:
        out: de.Entries = {
            de.vpc_key(VPC): de.vpc_entry(VPC, 300, [BLOCK], [c for c, _ in SUBNETS.values()])
        }
        for sid, (cidr, index) in SUBNETS.items():
            table = self.assoc.get(sid, T_DEF)
            natgw = NGW if sid in self.served else None
            out[de.sub_key(VPC, de.SUBNET, sid)] = de.subnet_entry(sid, cidr, index, table, natgw)
        for tid, index in self.tables.items():
            out[de.sub_key(VPC, de.TABLE, tid)] = de.table_entry(tid, index, tid == T_DEF)
        for iid, (ip, sid, host) in MEMBERS.items():
            underlay, vtep = HOSTS[host]
            out[de.member_key(VPC, iid)] = de.member_entry(
                id=iid, name=f"n{iid[-4:]}", ip=ip, mac=f"02:00:00:00:{iid[-4:-2]}:{iid[-2:]}",
                subnet_cidr=SUBNETS[sid][0], host=host, vtep_index=vtep, underlay_ip=underlay,
                command=None, forwarder=iid in self.forwarders, sgs=self.sgs.get(iid, ()),
            )  # fmt: skip
        for gid, rules in self.groups.items():
            out[de.sub_key(VPC, de.GROUP, gid)] = de.group_entry(gid, rules)
        for aid, (rules, subs) in self.acls.items():
            out[de.sub_key(VPC, de.ACL, aid)] = de.acl_entry(
                aid, rules, [SUBNETS[s][0] for s in subs]
            )
        for rid, table, dst, prio, nh in self.routes:
            out[de.sub_key(VPC, de.ROUTE, rid)] = de.route_entry(
                rid, table, dst, prio, self._nh(nh)
            )
        for n, p in enumerate(self.policies, 1):
            pnh: str | None = p.get("nh")
            out[de.sub_key(VPC, de.POLICY, p["id"])] = de.policy_entry(
                id=p["id"], table=p["table"], index=n, priority=p["priority"], src=p.get("src"),
                dst=p.get("dst"), proto=p.get("proto", "any"), port=p.get("port"),
                action=p["action"], nexthop=None if pnh is None else self._nh(pnh),
            )  # fmt: skip
        if self.served or self.gateway_host:
            h = self.gateway_host
            out[de.sub_key(VPC, de.GATEWAY, NGW)] = de.gateway_entry(
                id=NGW, index=1, host=h, vtep_index=HOSTS[h][1] if h else None,
                underlay_ip=HOSTS[h][0] if h else None, up=h is not None, public_ip=PUBLIC,
                subnets=[SUBNETS[s][0] for s in self.served], eips=self.eips,
                forwards=self.forwards,
            )  # fmt: skip
        return out

    def docs(self) -> dict[str, HostDesired]:
        vpc = self.entries()
        if self.other:
            vpc.update(_other_vpc())
        out = {}
        for host, (underlay, vtep) in HOSTS.items():
            entries = {de.HOST_KEY: de.host_entry(host, underlay, vtep, 1500), **vpc}
            out[host] = de.assemble(entries, host)
        return out

    def directory(self, internet: tuple[str, ...] | None = ("198.19.0.0/24",)) -> Directory:
        public = {PUBLIC: PublicAddress(PUBLIC, NGW, self.gateway_host)}
        if self.other:
            public[PUBLIC2] = PublicAddress(PUBLIC2, NGW2, "h3")
        for _inst, eip in self.eips:
            public[eip] = PublicAddress(eip, NGW, self.gateway_host, eip="eip-0000f001")
        return Directory(names={A1: "a1", B1: "b1"}, public=public, internet=internet)

    def trace(self, src: str, dst: str, proto: str = "icmp", port: int | None = None) -> Trace:
        host = "h3" if src == C1 else MEMBERS[src][2]
        t = trace(self.docs(), host, src, dst, proto, port, self.directory())  # type: ignore[arg-type]
        # every answer renders and serialises
        assert t.render().splitlines()[-1].startswith(("DELIVERED", "DROPPED", "LEFT"))
        assert t.to_json()["verdict"] == t.verdict
        assert Trace.from_json(json.loads(json.dumps(t.to_json()))) == t
        return t


VPC2, C1, NGW2, PUBLIC2 = "vpc-0000t002", "inst-0000c0c1", "ngw-0000e002", "198.19.128.5"


def _other_vpc() -> de.Entries:
    underlay, vtep = HOSTS["h3"]
    return {
        de.vpc_key(VPC2): de.vpc_entry(VPC2, 301, ["10.9.0.0/16"], ["10.9.1.0/24"]),
        de.sub_key(VPC2, de.TABLE, "rtb-0000d009"): de.table_entry("rtb-0000d009", 1, True),
        de.sub_key(VPC2, de.SUBNET, "subnet-00000a09"): de.subnet_entry(
            "subnet-00000a09", "10.9.1.0/24", 1, "rtb-0000d009", NGW2
        ),
        de.member_key(VPC2, C1): de.member_entry(
            id=C1,
            name="c1",
            ip="10.9.1.10",
            mac="02:00:00:00:c0:c1",
            subnet_cidr="10.9.1.0/24",
            host="h3",
            vtep_index=vtep,
            underlay_ip=underlay,
            command=None,
        ),
        de.sub_key(VPC2, de.GATEWAY, NGW2): de.gateway_entry(
            id=NGW2,
            index=1,
            host="h3",
            vtep_index=vtep,
            underlay_ip=underlay,
            up=True,
            public_ip=PUBLIC2,
            subnets=["10.9.1.0/24"],
            eips=[],
            forwards=[],
        ),
    }


def path(t: Trace) -> list[str]:
    """The namespaces crossed, as "host:place:ref" (ref shortened to its last 4)."""
    return [f"{h.host}:{h.place}:{h.ref[-4:]}" for h in t.hops]


def test_direct_route_across_hosts() -> None:
    t = World().trace(A1, IP[B1])
    assert t.verdict == "delivered" and t.delivered_to == f"instance:{B1}"
    assert path(t) == ["h1:instance:c001", "h1:vpc:t001", "h2:vpc:t001", "h2:instance:c002"]
    first, far = t.hops[1], t.hops[2]
    assert (first.iif, first.oif, first.mark, first.subnet, first.table) == (
        port_ifname(A1), "vxlan0", 1 << 16, S1, T_DEF,
    )  # fmt: skip
    assert first.route is not None and first.route.type == "direct"
    assert (first.route.dst, first.route.host_route, first.route.peer) == (
        BLOCK,
        "10.2.2.10/32",
        "h2",
    )
    # not flagged routed: the far host delivers by main (pref 100)
    assert far.mark == 0 and far.route is not None and far.route.type == "host"
    assert far.oif == port_ifname(B1)
    assert (t.src_port, t.src_subnet, t.selector) == (port_ifname(A1), S1, 1)


def test_appliance_route_goes_through_the_appliance_and_removal_restores_direct() -> None:
    w = World(assoc={S1: T_APP}).route("rt-00000001", T_APP, "10.2.2.0/24", f"instance:{FW1}")
    t = w.trace(A1, IP[B1], "tcp", 5201)
    assert t.verdict == "delivered" and t.delivered_to == f"instance:{B1}"
    assert path(t) == [
        "h1:instance:c001", "h1:vpc:t001",  # custom route: to h2, flagged routed
        "h2:vpc:t001",  # routed again by subnet 1's table: fw1 is local here
        "h2:instance:cf01",  # the appliance forwards it
        "h2:vpc:t001",  # back in by fw1's port: subnet 3's table (default): direct
        "h2:instance:c002",
    ]  # fmt: skip
    r = t.hops[1].route
    assert r is not None and (r.type, r.id, r.table, r.priority, r.via, r.peer) == (
        "custom", "rt-00000001", T_APP, 100, "remote", "h2",
    )  # fmt: skip
    far = t.hops[2]
    assert far.mark == (1 << 16) | 1 and far.subnet == S1
    assert far.route is not None and (far.route.type, far.route.via, far.route.port) == (
        "custom", "local", port_ifname(FW1),
    )  # fmt: skip
    back = t.hops[4]
    assert back.iif == port_ifname(FW1) and back.subnet == S3 and back.table == T_DEF
    assert back.route is not None and back.route.type == "direct"
    # The route removed: the direct path again.
    assert path(World(assoc={S1: T_APP}).trace(A1, IP[B1], "tcp", 5201))[2:] == [
        "h2:vpc:t001",
        "h2:instance:c002",
    ]


def test_priorities_follow_the_lower_number_and_fail_over_when_its_next_hop_is_down() -> None:
    def w(down: set[str]) -> World:
        x = World(assoc={S1: T_APP}, down=down)
        x.route("rt-00000001", T_APP, "10.2.2.0/24", f"instance:{FW1}", priority=10)
        return x.route("rt-00000002", T_APP, "10.2.2.0/24", f"instance:{FW2}", priority=20)

    t = w(set()).trace(A1, IP[B1])
    assert f"h2:instance:{FW1[-4:]}" in path(t)
    r = t.hops[1].route
    assert r is not None and (r.id, r.priority) == ("rt-00000001", 10)
    t = w({FW1}).trace(A1, IP[B1])
    assert t.verdict == "delivered" and f"h3:instance:{FW2[-4:]}" in path(t)
    r = t.hops[1].route
    assert r is not None and (r.id, r.priority, r.peer) == ("rt-00000002", 20, "h3")
    t = w({FW1, FW2}).trace(A1, IP[B1])
    assert (t.verdict, t.reason) == ("dropped", UNREACHABLE)
    assert t.hops[-1].dropped and t.hops[-1].place == "vpc" and t.hops[-1].host == "h1"


def test_policy_drop_tcp_22_while_icmp_flows() -> None:
    w = World(assoc={S1: T_APP}).policy(
        "pr-00000001", T_APP, 10, "drop", src="10.2.1.0/24", dst="10.2.2.0/24", proto="tcp",
        port=(22, 22),
    )  # fmt: skip
    t = w.trace(A1, IP[B1], "tcp", 22)
    assert (t.verdict, t.reason) == ("dropped", POLICY_DROP)
    p = t.hops[1].policy
    assert p is not None and (p.id, p.priority, p.action, p.rule_pref, p.table) == (
        "pr-00000001", 10, "drop", 10010, T_APP,
    )  # fmt: skip
    assert "dport 22" in p.match
    assert w.trace(A1, IP[B1], "icmp").verdict == "delivered"
    assert w.trace(A1, IP[B1], "tcp", 23).verdict == "delivered"
    # the other direction is another subnet's table: not dropped
    assert w.trace(B1, IP[A1], "tcp", 22).verdict == "delivered"


def test_policy_reroute_tcp_80_through_an_appliance() -> None:
    w = World(assoc={S1: T_APP}).policy(
        "pr-00000002", T_APP, 20, "reroute", dst="10.2.2.0/24", proto="tcp", port=(80, 80),
        nh=f"instance:{FW2}",
    )  # fmt: skip
    t = w.trace(A1, IP[B1], "tcp", 80)
    assert t.verdict == "delivered" and f"h3:instance:{FW2[-4:]}" in path(t)
    first = t.hops[1]
    assert first.policy is not None and first.policy.action == "reroute"
    assert first.route is not None and (first.route.type, first.route.peer) == ("policy", "h3")
    # at h3 the policy is evaluated again (routed, same selector) and is local there
    at3 = t.hops[2]
    assert at3.host == "h3" and at3.route is not None and at3.route.via == "local"
    assert f"h3:instance:{FW2[-4:]}" not in path(w.trace(A1, IP[B1], "tcp", 443))
    # its next hop down: the rule's table is empty, destination routing decides
    w.down.add(FW2)
    t = w.trace(A1, IP[B1], "tcp", 80)
    assert t.verdict == "delivered" and f"h3:instance:{FW2[-4:]}" not in path(t)
    assert t.hops[1].policy is not None and not t.hops[1].policy.taken


def test_policy_allow_skips_later_policies() -> None:
    w = World(assoc={S1: T_APP})
    w.policy("pr-00000001", T_APP, 5, "allow", proto="icmp")
    w.policy("pr-00000002", T_APP, 10, "drop")
    assert w.trace(A1, IP[B1]).verdict == "delivered"
    t = w.trace(A1, IP[B1], "udp", 53)
    assert t.reason == POLICY_DROP


def test_two_subnets_with_two_tables_differ_for_one_destination() -> None:
    # subnet 1 by the custom table (blackhole for subnet 3), subnet 2 by the default one
    w = World(assoc={S1: T_APP}).route("rt-00000001", T_APP, "10.2.3.0/24", "blackhole")
    t1 = w.trace(A1, IP[FW1])
    t2 = w.trace(B2, IP[FW1])
    assert (t1.verdict, t1.reason) == ("dropped", BLACKHOLE)
    assert t1.hops[1].table == T_APP
    assert t2.verdict == "delivered" and t2.hops[1].table == T_DEF


def test_nat_egress_through_the_gateway() -> None:
    w = World(served={S1}, gateway_host="h2")
    t = w.trace(A1, INTERNET, "tcp", 80)
    assert t.verdict == "delivered" and t.delivered_to == "internet"
    assert path(t) == [
        "h1:instance:c001", "h1:vpc:t001", "h2:vpc:t001", "h2:natgw:e001", "h2:host:h2",
        ":internet:rnet",
    ]  # fmt: skip
    first = t.hops[1]
    assert first.route is not None and (first.route.type, first.route.id, first.route.peer) == (
        "default", NGW, "h2",
    )  # fmt: skip
    assert t.hops[2].route is not None and t.hops[2].route.port == gateway_ifname(NGW)
    assert t.hops[3].nat == f"snat 10.2.1.10 -> {PUBLIC} (the gateway's address)"
    # a subnet the gateway does not serve has no way out
    t = w.trace(B1, INTERNET, "tcp", 80)
    assert (t.verdict, t.reason) == ("dropped", NO_NATGW)
    # beyond the gateway, an address the region does not reach
    t = w.trace(A1, "203.0.113.7", "tcp", 80)
    assert (t.verdict, t.reason) == ("dropped", OUTSIDE) and t.hops[-1].place == "host"
    # a gateway that runs nowhere: the default route is unreachable
    t = World(served={S1}).trace(A1, INTERNET)
    assert (t.verdict, t.reason) == ("dropped", UNREACHABLE)


def test_without_a_known_internet_the_packet_leaves_the_region() -> None:
    w = World(served={S1}, gateway_host="h2")
    t = trace(w.docs(), "h1", A1, "203.0.113.7", "udp", 53, w.directory(internet=None))
    assert t.verdict == "internet" and t.delivered_to == "internet"


def test_eip_snat_and_dnat() -> None:
    w = World(served={S1, S2}, gateway_host="h2", eips=[(IP[A1], EIP)])
    t = w.trace(A1, INTERNET, "tcp", 80)
    assert t.hops[3].nat == f"snat 10.2.1.10 -> {EIP} (the instance's EIP)"
    # b1 (no EIP) reaching a1's EIP: out by the gateway, back in by the internet side,
    # where its source is the gateway's own address: a martian, dropped
    t = w.trace(B1, EIP, "tcp", 22)
    assert (t.verdict, t.reason) == ("dropped", MARTIAN)
    assert path(t)[2:] == ["h2:natgw:e001", "h2:host:h2", "h2:natgw:e001"]
    # with an EIP of its own, the source is not the gateway's: DNAT, and into the VPC
    w.eips.append((IP[B1], "198.19.128.10"))
    t = w.trace(B1, EIP, "tcp", 22)
    assert t.verdict == "delivered" and t.delivered_to == f"instance:{A1}"
    assert [h.nat for h in t.hops if h.nat] == [
        "snat 10.2.2.10 -> 198.19.128.10 (the instance's EIP)",
        f"dnat {EIP} -> 10.2.1.10 (EIP)",
    ]
    assert path(t)[2:] == [
        "h2:natgw:e001", "h2:host:h2", "h2:natgw:e001", "h2:vpc:t001", "h1:vpc:t001",
        "h1:instance:c001",
    ]  # fmt: skip
    assert (t.hops[4].iif, t.hops[5].iif, t.hops[5].mark) == ("pub0", gateway_ifname(NGW), 0)
    # an EIP whose gateway runs nowhere is not announced
    w2 = World(served={S1, S2}, eips=[(IP[A1], EIP)])
    t = trace(w2.docs(), "h2", B1, EIP, "icmp", None, w2.directory())
    assert t.reason in (UNREACHABLE, NOT_ANNOUNCED)


def test_dnat_port_forward_from_another_vpc() -> None:
    w = World(served={S2}, gateway_host="h2", forwards=[("tcp", 8080, IP[A1], 80)], other=True)
    t = w.trace(C1, PUBLIC, "tcp", 8080)
    assert t.verdict == "delivered" and t.delivered_to == f"instance:{A1}"
    assert [h.nat for h in t.hops if h.nat] == [
        f"snat 10.9.1.10 -> {PUBLIC2} (the gateway's address)",
        f"dnat {PUBLIC}:8080 -> 10.2.1.10:80 (port forward tcp)",
    ]
    # c1's gateway on h3, then the uplink to h2, which announces the address
    assert path(t)[:5] == [
        "h3:instance:c0c1", "h3:vpc:t002", "h3:natgw:e002", "h3:host:h3", "h2:host:h2",
    ]  # fmt: skip
    # no forward for that port: the gateway's own address answers
    t = w.trace(C1, PUBLIC, "tcp", 8081)
    assert t.verdict == "delivered" and t.delivered_to == f"natgw:{NGW}"
    # from inside its own VPC the public address is the gateway's own: no DNAT that side
    t = w.trace(B1, PUBLIC, "tcp", 8080)
    assert t.delivered_to == f"natgw:{NGW}" and not any(h.nat.startswith("dnat") for h in t.hops)


def test_blackhole_and_unreachable_routes() -> None:
    w = World(assoc={S1: T_APP}).route("rt-00000001", T_APP, "10.2.2.0/24", "blackhole")
    t = w.trace(A1, IP[B1])
    assert (t.verdict, t.reason) == ("dropped", BLACKHOLE)
    r = t.hops[1].route
    assert r is not None and (r.type, r.id, r.via) == ("custom", "rt-00000001", "blackhole")
    w = World(assoc={S1: T_APP}, down={FW1})
    w.route("rt-00000001", T_APP, "10.2.2.0/24", f"instance:{FW1}")
    t = w.trace(A1, IP[B1])
    assert (t.verdict, t.reason) == ("dropped", UNREACHABLE)


def test_no_member_holds_the_address() -> None:
    # another subnet: the VPC namespace's block route is unreachable
    t = World().trace(A1, "10.2.2.99")
    assert (t.verdict, t.reason) == ("dropped", NO_MEMBER)
    assert t.hops[-1].place == "vpc"
    # its own subnet: ARP gets no answer, the packet never leaves the instance
    t = World().trace(A1, "10.2.1.99")
    assert (t.verdict, t.reason) == ("dropped", NO_MEMBER)
    assert [h.place for h in t.hops] == ["instance"]
    # the subnet gateway itself answers
    t = World().trace(A1, "10.2.2.1")
    assert t.verdict == "delivered" and t.delivered_to == f"vpc:{VPC}"


def test_custom_route_shorter_than_a_block_does_not_take_vpc_traffic() -> None:
    w = World(assoc={S1: T_APP}, served={S1}, gateway_host="h2")
    w.route("rt-00000001", T_APP, "0.0.0.0/0", f"instance:{FW1}")
    t = w.trace(A1, IP[B1])
    assert t.hops[1].route is not None and t.hops[1].route.type == "direct"
    # and beats the NAT default for the internet (equal prefix: custom first)
    t = w.trace(A1, INTERNET)
    assert t.hops[1].route is not None and t.hops[1].route.type == "custom"


def test_an_appliance_that_is_not_a_forwarder_is_stopped_by_its_port_filter() -> None:
    w = World(assoc={S1: T_APP}, forwarders=set())
    w.route("rt-00000001", T_APP, "10.2.2.0/24", f"instance:{FW1}")
    t = w.trace(A1, IP[B1])
    assert (t.verdict, t.reason) == ("dropped", ANTISPOOF)


def test_a_loop_through_an_appliance_is_reported() -> None:
    # subnet 3 (the appliance's) on the same table that sends subnet 2 to it: a loop
    w = World(assoc={S1: T_APP, S3: T_APP})
    w.route("rt-00000001", T_APP, "10.2.2.0/24", f"instance:{FW1}")
    t = w.trace(A1, IP[B1])
    assert (t.verdict, t.reason) == ("dropped", LOOP)


def test_bad_requests() -> None:
    docs = World().docs()
    with pytest.raises(TraceError):
        trace(docs, "h1", A1, IP[B1], "tcp", None)
    with pytest.raises(TraceError):
        trace(docs, "h1", A1, IP[B1], "icmp", 7)
    with pytest.raises(TraceError):
        trace(docs, "h2", A1, IP[B1])


# -- the model against the fake data plane (net.fake walks what net.state compiles) ------

CASES: list[tuple[str, World, str, str, str, int | None]] = [
    ("direct", World(), A1, IP[B1], "icmp", None),
    ("same host", World(), B2, IP[A1], "tcp", 80),
    ("no member", World(), A1, "10.2.2.99", "icmp", None),
    ("on-link, no member", World(), A1, "10.2.1.99", "icmp", None),
    (
        "appliance",
        World(assoc={S1: T_APP}).route("rt-00000001", T_APP, "10.2.2.0/24", f"instance:{FW1}"),
        A1, IP[B1], "tcp", 5201,
    ),
    (
        "priority, winner down",
        World(assoc={S1: T_APP}, down={FW1})
        .route("rt-00000001", T_APP, "10.2.2.0/24", f"instance:{FW1}", 10)
        .route("rt-00000002", T_APP, "10.2.2.0/24", f"instance:{FW2}", 20),
        A1, IP[B1], "icmp", None,
    ),
    (
        "all down",
        World(assoc={S1: T_APP}, down={FW1, FW2})
        .route("rt-00000001", T_APP, "10.2.2.0/24", f"instance:{FW1}", 10),
        A1, IP[B1], "icmp", None,
    ),
    (
        "policy drop",
        World(assoc={S1: T_APP}).policy("pr-00000001", T_APP, 10, "drop", proto="tcp",
                                        port=(22, 22)),
        A1, IP[B1], "tcp", 22,
    ),
    (
        "policy drop, icmp flows",
        World(assoc={S1: T_APP}).policy("pr-00000001", T_APP, 10, "drop", proto="tcp",
                                        port=(22, 22)),
        A1, IP[B1], "icmp", None,
    ),
    (
        "policy reroute",
        World(assoc={S1: T_APP}).policy(
            "pr-00000002", T_APP, 20, "reroute", proto="tcp", port=(80, 80), nh=f"instance:{FW2}"
        ),
        A1, IP[B1], "tcp", 80,
    ),
    (
        "blackhole",
        World(assoc={S1: T_APP}).route("rt-00000001", T_APP, "10.2.3.0/24", "blackhole"),
        A1, IP[FW1], "icmp", None,
    ),
    (
        "two tables",
        World(assoc={S1: T_APP}).route("rt-00000001", T_APP, "10.2.3.0/24", "blackhole"),
        B2, IP[FW1], "icmp", None,
    ),
    (
        "outside, no gateway",
        World(), A1, "198.19.0.2", "icmp", None,
    ),
    (
        "NAT egress, gateway on another host",
        World(served={S1}, gateway_host="h2"), A1, INTERNET, "tcp", 80,
    ),
    (
        "NAT egress, gateway on the same host",
        World(served={S2}, gateway_host="h2"), B1, INTERNET, "tcp", 80,
    ),
    (
        "NAT egress with an EIP",
        World(served={S1}, gateway_host="h3", eips=[(IP[A1], EIP)]), A1, INTERNET, "udp", 53,
    ),
    (
        "a subnet the gateway does not serve",
        World(served={S1}, gateway_host="h2"), B1, INTERNET, "tcp", 80,
    ),
]  # fmt: skip


def _uplink(host: str) -> dict[str, Any]:
    """The agent's announcements to the lab core, where the data plane has them."""
    try:
        from yunhan.net.natgw import Uplink
    except ImportError:
        return {}
    return {"uplink": Uplink("lab-core", HOSTS[host][0])}


def _fake_fabric(w: World) -> FakeFabric:
    fabric = FakeFabric()
    for host, doc in w.docs().items():
        naming = Naming(f"u-{host}-")
        dp = DataPlane(
            naming=naming,
            host_netns=None,
            driver="fake",
            state_dir=pathlib.Path("/nonexistent"),
            fabric=fabric,
            **_uplink(host),
        )
        assert dp.apply(doc).errors == []
        for fw in (FW1, FW2):
            if MEMBERS[fw][2] == host:
                ns = naming.instance_netns(fw)
                dp.driver.apply(Op("create", new=Sysctl(ns, "net/ipv4/ip_forward", "1")))
    return fabric


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_model_agrees_with_the_fake_data_plane(
    case: tuple[str, World, str, str, str, int | None],
) -> None:
    _name, w, src, dst, proto, port = case
    model = w.trace(src, dst, proto, port)
    fake = _fake_fabric(w).trace(src, dst, proto=proto, port=port)
    if model.verdict == "internet" or model.delivered_to == "internet":
        # out of a gateway: the fake counts it delivered when replies come back to it
        assert fake.verdict == "delivered" and fake.to_netns is None, fake.reason
        nat = [h.nat for h in model.hops if h.nat.startswith("snat")]
        assert nat and nat[0].split(" -> ")[1].split()[0] == fake.source
        return
    delivered = fake.verdict == "delivered" and fake.to_netns is not None
    assert (model.verdict == "delivered") == delivered, (model.detail, fake.reason)
    if delivered:
        assert fake.to_netns is not None
        assert short_id(model.delivered_to) == fake.to_netns.rsplit("i-", 1)[-1]
    forwarded = [ns.rsplit("i-", 1)[-1] for ns in fake.forwarded_by]
    by_model = [short_id(h.ref) for h in model.hops if h.place == "instance"][1:]
    if model.verdict == "delivered":
        by_model = by_model[:-1]
    assert by_model == forwarded


def test_a_tenant_trace_stops_at_another_projects_gateway() -> None:
    w = World(served={S2}, gateway_host="h2", forwards=[("tcp", 8080, IP[A1], 80)], other=True)
    # c1's project owns VPC2 only: VPC's gateway (on h2) is the internet to it
    d = Directory(
        public={PUBLIC2: PublicAddress(PUBLIC2, NGW2, "h3")},
        internet=None,
        vpcs=frozenset({VPC2}),
    )
    t = trace(w.docs(), "h3", C1, PUBLIC, "tcp", 8080, d)
    assert t.verdict == "internet" and t.delivered_to == "internet"
    assert {h.ref for h in t.hops} & {VPC, NGW} == set()
    # even when the other project's gateway runs on the same host as the tenant's
    w2 = World(served={S2}, gateway_host="h3", forwards=[("tcp", 8080, IP[A1], 80)], other=True)
    t = trace(w2.docs(), "h3", C1, PUBLIC, "tcp", 8080, d)
    assert t.verdict == "internet" and {h.ref for h in t.hops} & {VPC, NGW} == set()


SG_WEB, SG_CLIENT = "sg-0000e0b1", "sg-0000c11e"


def _grouped() -> World:
    """b1 admits tcp/80 from members of the client group (a1 is one), and all from its own
    group; a1 may send anything but tcp/25."""
    w = World()
    w.groups = {
        SG_WEB: [
            {"id": "r-web", "direction": "ingress", "proto": "tcp", "port": [80, 80],
             "peer": {"sg": SG_CLIENT}, "action": "allow", "priority": 100},
            {"id": "r-out", "direction": "egress", "proto": "any",
             "peer": {"cidr": "0.0.0.0/0"}, "action": "allow", "priority": 100},
        ],
        SG_CLIENT: [
            {"id": "r-smtp", "direction": "egress", "proto": "tcp", "port": [25, 25],
             "peer": {"cidr": "0.0.0.0/0"}, "action": "deny", "priority": 10},
            {"id": "r-any", "direction": "egress", "proto": "any",
             "peer": {"cidr": "0.0.0.0/0"}, "action": "allow", "priority": 100},
        ],
    }  # fmt: skip
    w.sgs = {B1: [SG_WEB], A1: [SG_CLIENT]}
    return w


def test_security_groups_decide_where_they_are_enforced() -> None:
    w = _grouped()
    ok = w.trace(A1, IP[B1], "tcp", 80)
    assert ok.verdict == "delivered" and ok.delivered_to == f"instance:{B1}"
    # tcp/22 leaves a1's host (its egress allows it) and is refused on b1's, by b1's port
    t = w.trace(A1, IP[B1], "tcp", 22)
    assert (t.verdict, t.reason) == ("dropped", SECURITY_GROUP)
    last = t.hops[-1]
    assert (last.host, last.place, last.oif, last.dropped) == ("h2", "vpc", port_ifname(B1), True)
    assert "no ingress rule allows it" in t.detail
    # a deny of a1's own egress stops it on a1's host, naming the rule
    t = w.trace(A1, IP[B1], "tcp", 25)
    assert (t.reason, t.hops[-1].host, t.hops[-1].iif) == (SECURITY_GROUP, "h1", port_ifname(A1))
    assert "egress rule r-smtp denies it" in t.detail
    # an instance without groups is not filtered: a1 reaches b2 (no groups) on any port,
    # while a1's group has no ingress rule, so nothing reaches a1
    assert w.trace(A1, IP[B2], "tcp", 22).verdict == "delivered"
    t = w.trace(B2, IP[A1], "tcp", 22)
    assert (t.reason, t.hops[-1].oif) == (SECURITY_GROUP, port_ifname(A1))


def test_a_network_acl_is_checked_before_the_groups() -> None:
    w = _grouped()
    w.acls = {
        "acl-0000a0c1": (
            [{"number": 10, "direction": "ingress", "proto": "tcp", "port": [80, 80],
              "cidr": "10.2.1.0/24", "action": "deny"},
             {"number": 100, "direction": "ingress", "proto": "any", "cidr": "0.0.0.0/0",
              "action": "allow"},
             {"number": 100, "direction": "egress", "proto": "any", "cidr": "0.0.0.0/0",
              "action": "allow"}],
            [S2],
        )
    }  # fmt: skip
    t = w.trace(A1, IP[B1], "tcp", 80)
    assert (t.verdict, t.reason) == ("dropped", NETWORK_ACL)
    assert "ingress rule 10 denies it" in t.detail and t.hops[-1].host == "h2"
    # inside its own subnet the ACL does not check: b2 -> b1 (both subnet 2) reaches the
    # groups, which admit tcp/80 from the client group only
    t = w.trace(B2, IP[B1], "tcp", 80)
    assert t.reason == SECURITY_GROUP


HGW = "hgw-0000h001"
IDC_NET, IDC_SERVER = "10.2.9.0/24", "10.2.9.10"


def _with_hybrid(w: World, up: tuple[bool, bool]) -> dict[str, HostDesired]:
    """The world's documents with a hybrid gateway whose replicas run on h2 and h3 (up as
    given), carrying IDC subnet 10.2.9.0/24 (inside the VPC's block)."""
    replicas = [
        de.hybrid_replica(i + 1, h, HOSTS[h][1], HOSTS[h][0], f"198.19.33.{11 + i}/24", u)
        for i, (h, u) in enumerate(zip(("h2", "h3"), up, strict=True))
    ]
    entry = de.hybrid_entry(
        id=HGW, index=1, asn=64512, peer_ip="198.19.33.1", peer_asn=65001, md5_secret=None,
        bfd=True, line_vni=0x700001, line_vtep="198.19.16.1", replicas=replicas,
        routes=[IDC_NET], announce=[BLOCK],
    )  # fmt: skip
    vpc = {**w.entries(), de.sub_key(VPC, de.HYBRID, HGW): entry}
    return {
        host: de.assemble({de.HOST_KEY: de.host_entry(host, u, v, 1500), **vpc}, host)
        for host, (u, v) in HOSTS.items()
    }


def test_an_idc_address_goes_to_the_hybrid_gateways_replicas() -> None:
    w = World()
    docs = _with_hybrid(w, (True, True))
    # From h1 (no replica): to a host of a replica; there, out by the replica's port.
    t = trace(docs, "h1", A1, IDC_SERVER, "icmp", None, w.directory())
    assert t.verdict == "delivered" and t.delivered_to == f"idc:{HGW}"
    assert path(t) == ["h1:instance:c001", "h1:vpc:t001", "h2:vpc:t001"]
    first = t.hops[1]
    assert first.route is not None and first.route.target == f"hybrid:{HGW}"
    assert first.route.dst == IDC_NET and first.route.via == "remote"
    assert "ECMP over the replicas on h2, h3" in first.note
    assert t.hops[2].oif.startswith("h-")
    # From h2, which runs one: its own replica.
    t = trace(docs, "h2", B1, IDC_SERVER, "icmp", None, w.directory())
    assert t.delivered_to == f"idc:{HGW}" and path(t) == ["h2:instance:c002", "h2:vpc:t001"]
    assert t.hops[1].route is not None and t.hops[1].route.via == "local"
    # No replica up: the prefix is unreachable, said so.
    down = _with_hybrid(w, (False, False))
    t = trace(down, "h1", A1, IDC_SERVER, "icmp", None, w.directory())
    assert t.verdict == "dropped" and t.reason == UNREACHABLE
    assert "no replica of hybrid gateway" in t.detail
    # A cloud address beside it is untouched.
    assert trace(docs, "h1", A1, IP[B1]).delivered_to == f"instance:{B1}"
