"""Hand-written worlds for tests and simulations: a few hosts, VPCs and instances -> documents.

A deliberately small, independent compiler (the controller's `netcompile` is the real one):
tests of the data plane state their world in a few lines and get one `HostDesired` per
host, with the same shapes the controller produces (local /32, remote /32 via the peer,
VPC CIDRs unreachable, every subnet gateway on every host carrying the VPC).
"""

from __future__ import annotations

import ipaddress
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


def documents(
    hosts: Iterable[WHost], vpcs: Iterable[WVpc], instances: Iterable[WInstance]
) -> dict[str, HostDesired]:
    """One document per host (an empty one for a host that carries nothing)."""
    hosts = list(hosts)
    by_host = {h.name: h for h in hosts}
    vpc_by_id = {v.id: v for v in vpcs}
    insts = sorted(instances, key=lambda i: i.id)
    docs: dict[str, HostDesired] = {}
    for h in hosts:
        vdocs: list[VpcDesired] = []
        idocs: list[InstanceDesired] = []
        for vpc in vpc_by_id.values():
            members = [i for i in insts if i.vpc == vpc.id]
            carriers = {i.host for i in members}
            if h.name not in carriers:
                continue
            subnets = [ipaddress.IPv4Network(s) for s in vpc.subnets]
            ports: list[Port] = []
            routes: list[Route] = []
            for i in members:
                net = next(n for n in subnets if ipaddress.IPv4Address(i.ip) in n)
                if i.host == h.name:
                    ports.append(
                        Port(
                            instance_id=i.id,
                            ifname=i.port,
                            ip=i.ip,
                            prefixlen=net.prefixlen,
                            gateway=str(net.network_address + 1),
                            mac=i.mac_or_default(),
                            allowed_ips=i.allowed_ips,
                        )
                    )
                    routes.append(Route(dst=f"{i.ip}/32", kind="local", port=i.port))
                    idocs.append(
                        InstanceDesired(
                            id=i.id,
                            name=f"vm-{i.id.rsplit('-', 1)[-1]}",
                            vpc_id=vpc.id,
                            vni=vpc.vni,
                            port=i.port,
                            command=i.command,
                        )
                    )
                else:
                    routes.append(Route(dst=f"{i.ip}/32", kind="remote", peer=i.host))
            peers = [
                Peer(
                    host=o.name,
                    vtep_index=o.vtep_index,
                    underlay_ip=o.underlay_ip,
                    mac=vtep_mac(o.vtep_index),
                    nexthop=vtep_nexthop(o.vtep_index),
                )
                for o in hosts
                if o.name != h.name and o.name in carriers
            ]
            routes.extend(Route(dst=c, kind="unreachable") for c in vpc.cidrs)
            vdocs.append(
                VpcDesired(
                    id=vpc.id,
                    vni=vpc.vni,
                    cidrs=vpc.cidrs,
                    gateways=tuple(f"{n.network_address + 1}/{n.prefixlen}" for n in subnets),
                    ports=tuple(ports),
                    peers=tuple(peers),
                    routes=tuple(routes),
                )
            )
        docs[h.name] = HostDesired(
            host=h.name,
            underlay_ip=by_host[h.name].underlay_ip,
            vtep_index=h.vtep_index,
            underlay_mtu=h.mtu,
            vpcs=tuple(vdocs),
            instances=tuple(idocs),
        )
    return docs
