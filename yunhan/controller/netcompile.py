"""Compile the user's network model into one `HostDesired` document per host.

A pure function (ARCHITECTURE §2, STYLE §1): `compile_hosts(hosts, vpcs, subnets,
instances)` returns `{host name: HostDesired}` and touches nothing. The rules:

* a host carries a VPC iff one of its instances is in it;
* per VPC carried: ports of the host's instances (ifname from `port_ifname`), peers = the
  other hosts carrying the VPC, routes = local /32 (kind local), remote /32 (kind remote,
  peer = host name), every VPC block unreachable (nothing leaks to a default route);
  gateways = every subnet gateway of the VPC as "ip/prefixlen";
* every list is sorted, so equal inputs give byte-identical documents and an unchanged
  document can be recognised by comparing its JSON.

Documents carry `revision=0`; the store revision is stamped on when one is served.
Every registered host gets a document, an empty one when it carries nothing, so that its
agent learns that there is nothing (and removes what it had).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from yunhan.net.desired import (
    HostDesired,
    InstanceDesired,
    Peer,
    Port,
    Route,
    VpcDesired,
    vtep_mac,
    vtep_nexthop,
)
from yunhan.net.naming import port_ifname


@dataclass(frozen=True)
class HostIn:
    name: str
    vtep_index: int
    underlay_ip: str
    mtu: int = 1500


@dataclass(frozen=True)
class VpcIn:
    id: str
    vni: int
    cidrs: tuple[str, ...]


@dataclass(frozen=True)
class SubnetIn:
    id: str
    vpc: str  # vpc id
    cidr: str


@dataclass(frozen=True)
class InstanceIn:
    id: str
    name: str
    subnet: str  # subnet id
    ip: str | None
    mac: str | None
    host: str | None  # host name
    command: tuple[str, ...] | None = None
    allowed_ips: tuple[str, ...] = ()  # extra source addresses its port accepts (VIPs)


def _net_key(cidr: str) -> tuple[int, int]:
    n = ipaddress.IPv4Network(cidr)
    return (int(n.network_address), n.prefixlen)


@dataclass
class _VpcPlan:
    """What every host carrying one VPC shares; built once per VPC, not once per host.

    Route, Port and Peer objects are immutable, so one object serves every document that
    contains it: a remote route to instance i is the same on every host but i's own.
    """

    vpc: VpcIn
    gateways: tuple[str, ...]
    # Route order of docs: by (address, prefixlen). Each entry is a block route (same on
    # every host) or an instance (local on its host, remote elsewhere).
    entries: list[tuple[tuple[int, int], Route | InstanceIn]]
    hosts: dict[str, list[tuple[InstanceIn, SubnetIn]]]
    local: dict[str, Route]
    remote: dict[str, Route]
    ports: dict[str, Port]


def _plan_vpc(
    vpc: VpcIn, subnets: list[SubnetIn], hosts: dict[str, list[tuple[InstanceIn, SubnetIn]]]
) -> _VpcPlan:
    entries: list[tuple[tuple[int, int], Route | InstanceIn]] = [
        (_net_key(c), Route(dst=c, kind="unreachable")) for c in vpc.cidrs
    ]
    local: dict[str, Route] = {}
    remote: dict[str, Route] = {}
    ports: dict[str, Port] = {}
    for host_name, placed in hosts.items():
        for inst, sub in placed:
            assert inst.ip is not None and inst.mac is not None
            net = ipaddress.IPv4Network(sub.cidr)
            ifname = port_ifname(inst.id)
            ports[inst.id] = Port(
                instance_id=inst.id,
                ifname=ifname,
                ip=inst.ip,
                prefixlen=net.prefixlen,
                gateway=str(net.network_address + 1),
                mac=inst.mac,
                allowed_ips=inst.allowed_ips,
            )
            local[inst.id] = Route(dst=f"{inst.ip}/32", kind="local", port=ifname)
            remote[inst.id] = Route(dst=f"{inst.ip}/32", kind="remote", peer=host_name)
            entries.append(((int(ipaddress.IPv4Address(inst.ip)), 32), inst))
    entries.sort(key=lambda e: (e[0], e[1].id if isinstance(e[1], InstanceIn) else ""))
    gateways = tuple(
        f"{ipaddress.IPv4Network(s.cidr).network_address + 1}/"
        f"{ipaddress.IPv4Network(s.cidr).prefixlen}"
        for s in sorted(subnets, key=lambda s: _net_key(s.cidr))
    )
    return _VpcPlan(vpc, gateways, entries, hosts, local, remote, ports)


def compile_hosts(
    hosts: Iterable[HostIn],
    vpcs: Iterable[VpcIn],
    subnets: Iterable[SubnetIn],
    instances: Iterable[InstanceIn],
) -> dict[str, HostDesired]:
    """The desired document of every host (see the module docstring for the rules).

    Instances without an address, a host, or whose host, subnet or VPC is unknown are left
    out: they are not placed yet, and a half-known port must not reach a data plane.
    """
    host_by_name = {h.name: h for h in hosts}
    vpc_by_id = {v.id: v for v in vpcs}
    subnet_by_id = {s.id: s for s in subnets if s.vpc in vpc_by_id}
    subnets_of_vpc: dict[str, list[SubnetIn]] = defaultdict(list)
    for s in subnet_by_id.values():
        subnets_of_vpc[s.vpc].append(s)

    # vpc id -> host name -> its instances in that VPC (by instance id)
    carried: dict[str, dict[str, list[tuple[InstanceIn, SubnetIn]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for inst in sorted(instances, key=lambda i: i.id):
        sub = subnet_by_id.get(inst.subnet)
        if inst.ip and inst.mac and inst.host in host_by_name and sub is not None:
            carried[sub.vpc][inst.host].append((inst, sub))

    plans = {
        vpc_id: _plan_vpc(vpc_by_id[vpc_id], subnets_of_vpc[vpc_id], carried[vpc_id])
        for vpc_id in sorted(carried)
    }
    peer_of = {
        h.name: Peer(
            host=h.name,
            vtep_index=h.vtep_index,
            underlay_ip=h.underlay_ip,
            mac=vtep_mac(h.vtep_index),
            nexthop=vtep_nexthop(h.vtep_index),
        )
        for h in host_by_name.values()
    }
    vpcs_of_host: dict[str, list[_VpcPlan]] = defaultdict(list)
    for plan in plans.values():  # sorted by VPC id
        for host_name in plan.hosts:
            vpcs_of_host[host_name].append(plan)

    docs: dict[str, HostDesired] = {}
    for host in sorted(host_by_name.values(), key=lambda h: h.name):
        vpc_docs: list[VpcDesired] = []
        inst_docs: list[InstanceDesired] = []
        for plan in vpcs_of_host.get(host.name, ()):
            mine = plan.hosts[host.name]
            routes = tuple(
                what
                if isinstance(what, Route)
                else (plan.local if what.host == host.name else plan.remote)[what.id]
                for _key, what in plan.entries
            )
            vpc_docs.append(
                VpcDesired(
                    id=plan.vpc.id,
                    vni=plan.vpc.vni,
                    cidrs=tuple(sorted(plan.vpc.cidrs, key=_net_key)),
                    gateways=plan.gateways,
                    ports=tuple(
                        sorted((plan.ports[i.id] for i, _s in mine), key=lambda p: p.ifname)
                    ),
                    peers=tuple(peer_of[h] for h in sorted(plan.hosts) if h != host.name),
                    routes=routes,
                )
            )
            inst_docs.extend(
                InstanceDesired(
                    id=inst.id,
                    name=inst.name,
                    vpc_id=plan.vpc.id,
                    vni=plan.vpc.vni,
                    port=port_ifname(inst.id),
                    command=inst.command,
                )
                for inst, _s in mine
            )
        docs[host.name] = HostDesired(
            host=host.name,
            underlay_ip=host.underlay_ip,
            vtep_index=host.vtep_index,
            underlay_mtu=host.mtu,
            vpcs=tuple(vpc_docs),
            instances=tuple(sorted(inst_docs, key=lambda i: i.id)),
        )
    return docs
