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


def _net_key(cidr: str) -> tuple[int, int]:
    n = ipaddress.IPv4Network(cidr)
    return (int(n.network_address), n.prefixlen)


def _route_key(r: Route) -> tuple[int, int, str, str]:
    return (*_net_key(r.dst), r.kind, r.port or r.peer or "")


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

    placed: list[tuple[InstanceIn, SubnetIn]] = []
    for inst in instances:
        sub = subnet_by_id.get(inst.subnet)
        if inst.ip and inst.mac and inst.host in host_by_name and sub is not None:
            placed.append((inst, sub))
    placed.sort(key=lambda p: p[0].id)

    # vpc id -> host name -> its instances in that VPC
    carried: dict[str, dict[str, list[tuple[InstanceIn, SubnetIn]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for inst, sub in placed:
        assert inst.host is not None
        carried[sub.vpc][inst.host].append((inst, sub))

    docs: dict[str, HostDesired] = {}
    for host in sorted(host_by_name.values(), key=lambda h: h.name):
        vpc_docs: list[VpcDesired] = []
        inst_docs: list[InstanceDesired] = []
        for vpc_id in sorted(carried):
            on_hosts = carried[vpc_id]
            if host.name not in on_hosts:
                continue
            vpc = vpc_by_id[vpc_id]
            ports: list[Port] = []
            routes: list[Route] = []
            for inst, sub in on_hosts[host.name]:
                assert inst.ip is not None and inst.mac is not None
                net = ipaddress.IPv4Network(sub.cidr)
                ifname = port_ifname(inst.id)
                ports.append(
                    Port(
                        instance_id=inst.id,
                        ifname=ifname,
                        ip=inst.ip,
                        prefixlen=net.prefixlen,
                        gateway=str(net.network_address + 1),
                        mac=inst.mac,
                    )
                )
                routes.append(Route(dst=f"{inst.ip}/32", kind="local", port=ifname))
                inst_docs.append(
                    InstanceDesired(
                        id=inst.id,
                        name=inst.name,
                        vpc_id=vpc.id,
                        vni=vpc.vni,
                        port=ifname,
                        command=inst.command,
                    )
                )
            peers: list[Peer] = []
            for other_name in sorted(on_hosts):
                if other_name == host.name:
                    continue
                other = host_by_name[other_name]
                peers.append(
                    Peer(
                        host=other.name,
                        vtep_index=other.vtep_index,
                        underlay_ip=other.underlay_ip,
                        mac=vtep_mac(other.vtep_index),
                        nexthop=vtep_nexthop(other.vtep_index),
                    )
                )
                for inst, _sub in on_hosts[other_name]:
                    routes.append(Route(dst=f"{inst.ip}/32", kind="remote", peer=other.name))
            for cidr in vpc.cidrs:
                routes.append(Route(dst=cidr, kind="unreachable"))
            gateways = [
                f"{ipaddress.IPv4Network(s.cidr).network_address + 1}/"
                f"{ipaddress.IPv4Network(s.cidr).prefixlen}"
                for s in sorted(subnets_of_vpc[vpc_id], key=lambda s: _net_key(s.cidr))
            ]
            vpc_docs.append(
                VpcDesired(
                    id=vpc.id,
                    vni=vpc.vni,
                    cidrs=tuple(sorted(vpc.cidrs, key=_net_key)),
                    gateways=tuple(gateways),
                    ports=tuple(sorted(ports, key=lambda p: p.ifname)),
                    peers=tuple(peers),
                    routes=tuple(sorted(routes, key=_route_key)),
                )
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
