"""Hand-written worlds for tests: a few hosts, VPCs and instances -> documents.

Data-plane tests state their world in a few lines (hosts, VPCs with their subnets, instances
placed on hosts) and get one `HostDesired` per host from the controller's own compiler, so
what they exercise is exactly the shape the controller publishes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from yunhan.controller.netcompile import (
    EipIn,
    GatewayIn,
    HostIn,
    InstanceIn,
    RoutingIn,
    SubnetIn,
    TableIn,
    VipIn,
    VpcIn,
    compile_hosts,
)
from yunhan.net.desired import (
    HostDesired,
    NextHop,
    PolicyDesired,
    RouteTableDesired,
    SecurityGroupDesired,
    SgRuleDesired,
    SubnetDesired,
    TableRoute,
)
from yunhan.net.naming import port_ifname, short_id


@dataclass(frozen=True)
class WHost:
    name: str
    underlay_ip: str
    vtep_index: int
    mtu: int = 1500


@dataclass(frozen=True)
class WVpc:
    id: str
    vni: int
    cidrs: tuple[str, ...]
    subnets: tuple[str, ...]


@dataclass(frozen=True)
class WInstance:
    id: str  # "inst-<hex>"
    host: str
    vpc: str
    ip: str
    mac: str | None = None
    allowed_ips: tuple[str, ...] = ()
    command: tuple[str, ...] | None = None

    @property
    def port(self) -> str:
        return port_ifname(self.id)

    def mac_or_default(self) -> str:
        if self.mac:
            return self.mac
        b = ipaddress.IPv4Address(self.ip).packed
        return "02:aa:" + ":".join(f"{x:02x}" for x in b)


@dataclass(frozen=True)
class WGateway:
    """A NAT gateway: where it runs, what it serves (subnet CIDRs of its VPC), its port
    forwards (proto, public port, instance id, port) and EIPs (instance id, address)."""

    id: str  # "ngw-<hex>"
    vpc: str
    host: str | None
    public_ip: str
    subnets: tuple[str, ...]
    index: int = 1
    forwards: tuple[tuple[str, int, str, int], ...] = ()
    eips: tuple[tuple[str, str], ...] = ()


def documents(
    hosts: Iterable[WHost],
    vpcs: Iterable[WVpc],
    instances: Iterable[WInstance],
    gateways: Iterable[WGateway] = (),
    *,
    routed: bool = False,
    vips: Iterable[VipIn] = (),
) -> dict[str, HostDesired]:
    """One document per host (an empty one for a host that carries nothing).

    Instance names (and so hostnames) are "vm-<hex of the id>"; an instance's subnet is the
    one of its VPC that holds its address. `routed`: every VPC has its default route table
    (index 1) and its subnets selector indexes (1, 2, ... in order), so that the documents
    carry distributed routing (subnets served by a gateway route to it by default).
    `vips`: the VIPs every host carrying their VPC knows (where each is delivered is an
    instance's `allowed_ips`).
    """
    gateways = list(gateways)
    vpcs = list(vpcs)
    routing = RoutingIn(
        tables=tuple(TableIn(id=f"{v.id}/default", vpc=v.id, index=1, default=True) for v in vpcs)
        if routed
        else (),
        gateways=tuple(
            GatewayIn(
                id=g.id,
                vpc=g.vpc,
                index=g.index,
                host=g.host,
                public_ip=g.public_ip,
                subnets=tuple(f"{g.vpc}/{cidr}" for cidr in g.subnets),
                forwards=g.forwards,
            )
            for g in gateways
        ),
        eips=tuple(
            EipIn(id=f"eip-{addr}", address=addr, instance=inst, natgw=g.id)
            for g in gateways
            for inst, addr in g.eips
        ),
        vips=tuple(vips),
    )
    subnets = [
        SubnetIn(id=f"{v.id}/{cidr}", vpc=v.id, cidr=cidr, index=n if routed else None)
        for v in vpcs
        for n, cidr in enumerate(v.subnets, start=1)
    ]

    def subnet_of(i: WInstance) -> str:
        addr = ipaddress.IPv4Address(i.ip)
        for s in subnets:
            if s.vpc == i.vpc and addr in ipaddress.IPv4Network(s.cidr):
                return s.id
        raise ValueError(f"{i.id}: {i.ip} is in no subnet of {i.vpc}")

    return compile_hosts(
        [HostIn(h.name, h.vtep_index, h.underlay_ip, h.mtu) for h in hosts],
        [VpcIn(v.id, v.vni, v.cidrs) for v in vpcs],
        subnets,
        [
            InstanceIn(
                id=i.id,
                name=f"vm-{short_id(i.id)}",
                subnet=subnet_of(i),
                ip=i.ip,
                mac=i.mac_or_default(),
                host=i.host,
                command=i.command,
                allowed_ips=i.allowed_ips,
            )
            for i in instances
        ],
        routing,
    )


# -- distributed routing (issue 8): what the controller's assemble puts in VpcDesired ------


@dataclass(frozen=True)
class WRoute:
    """The winning route of a table for `dst` (the document carries winners only).
    `to`: "instance:<id>" | "blackhole" | "unreachable"."""

    dst: str
    to: str
    priority: int = 100


@dataclass(frozen=True)
class WPolicy:
    table: int  # WRouting table index
    index: int
    priority: int
    action: Literal["drop", "allow", "reroute"]
    src: str | None = None
    dst: str | None = None
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    ports: tuple[int, int] | None = None
    to: str | None = None  # reroute: as WRoute.to


@dataclass(frozen=True)
class WRouting:
    vpc: str
    subnets: tuple[tuple[str, int, int], ...]  # (cidr, selector index, table index)
    tables: tuple[tuple[int, tuple[WRoute, ...]], ...]  # (index, routes)
    policies: tuple[WPolicy, ...] = ()


def _nexthop(to: str, host: str, instances: dict[str, WInstance]) -> NextHop:
    if to in ("blackhole", "unreachable"):
        return NextHop(kind=to, target=to)  # type: ignore[arg-type]
    kind, _, ref = to.partition(":")
    assert kind == "instance", to
    inst = instances.get(ref)
    if inst is None:
        return NextHop(kind="unreachable", target=to)
    if inst.host == host:
        return NextHop(kind="local", ip=inst.ip, port=inst.port, target=to)
    return NextHop(kind="remote", ip=inst.ip, peer=inst.host, target=to)


def with_routing(
    docs: dict[str, HostDesired], instances: Iterable[WInstance], routing: Iterable[WRouting]
) -> dict[str, HostDesired]:
    """`docs` with route tables, policies and subnets filled in, resolved per host as the
    controller does (a next hop on this host is local, on another remote); every instance
    a route or policy points to is a forwarder."""
    insts = {i.id: i for i in instances}
    by_vpc = {r.vpc: r for r in routing}
    out: dict[str, HostDesired] = {}
    for host, doc in docs.items():
        vpcs = []
        for v in doc.vpcs:
            r = by_vpc.get(v.id)
            if r is None:
                vpcs.append(v)
                continue
            targets = {w.to for _, routes in r.tables for w in routes}
            targets |= {p.to for p in r.policies if p.to}
            forwarders = {t.partition(":")[2] for t in targets}
            ports = tuple(
                p.model_copy(update={"forwarder": p.instance_id in forwarders}) for p in v.ports
            )
            subnets = tuple(
                SubnetDesired(id=f"subnet-{i:04x}", cidr=c, index=i, table=t)
                for c, i, t in sorted(r.subnets, key=lambda s: s[1])
            )
            tables = tuple(
                RouteTableDesired(
                    id=f"rtb-{index:04x}",
                    index=index,
                    routes=tuple(
                        TableRoute(
                            dst=w.dst,
                            nexthop=_nexthop(w.to, host, insts),
                            route_id=f"rt-{index:04x}-{n}",
                            priority=w.priority,
                        )
                        for n, w in enumerate(routes)
                    ),
                )
                for index, routes in r.tables
            )
            policies = tuple(
                PolicyDesired(
                    id=f"pr-{p.index:04x}",
                    table=p.table,
                    index=p.index,
                    priority=p.priority,
                    src=p.src,
                    dst=p.dst,
                    proto=p.proto,
                    port_min=p.ports[0] if p.ports else None,
                    port_max=p.ports[1] if p.ports else None,
                    action=p.action,
                    nexthop=_nexthop(p.to, host, insts) if p.to else None,
                )
                for p in sorted(r.policies, key=lambda p: (p.table, p.priority))
            )
            vpcs.append(
                v.model_copy(
                    update={
                        "ports": ports,
                        "subnets": subnets,
                        "tables": tables,
                        "policies": policies,
                    }
                )
            )
        out[host] = doc.model_copy(update={"vpcs": tuple(vpcs)})
    return out


def with_groups(
    docs: dict[str, HostDesired],
    instances: Iterable[WInstance],
    groups: Mapping[str, tuple[SgRuleDesired, ...]],
    member_of: Mapping[str, tuple[str, ...]],
) -> dict[str, HostDesired]:
    """The documents with security groups (issue 10) in every VPC of `groups`' instances:
    `groups` group id -> rules (in evaluation order), `member_of` instance id -> its groups.
    Members are the instances of the VPC with the group (their ip and allowed ips)."""
    insts = list(instances)
    out: dict[str, HostDesired] = {}
    for host, doc in docs.items():
        vpcs = []
        for v in doc.vpcs:
            mine = [i for i in insts if i.vpc == v.id]
            gs = tuple(
                SecurityGroupDesired(
                    id=gid,
                    rules=rules,
                    members=_members(mine, gid, member_of),
                )
                for gid, rules in sorted(groups.items())
            )
            ports = tuple(
                p.model_copy(update={"sgs": tuple(sorted(member_of.get(p.instance_id, ())))})
                for p in v.ports
            )
            vpcs.append(v.model_copy(update={"groups": gs, "ports": ports}))
        out[host] = doc.model_copy(update={"vpcs": tuple(vpcs)})
    return out


def _members(
    insts: list[WInstance], gid: str, member_of: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    addrs = {a for i in insts if gid in member_of.get(i.id, ()) for a in (i.ip, *i.allowed_ips)}
    return tuple(sorted(addrs, key=ipaddress.IPv4Address))
