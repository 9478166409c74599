"""The desired state of one host's data plane: what the controller publishes, the agent applies.

This is the contract between `controller.netcompile` (which produces one `HostDesired` per
host from the user's network model) and `net`/`compute` drivers (which make it true). It is
plain, immutable, JSON-serialisable data: it can be printed, diffed and compared, and the
same document applied twice changes nothing the second time.

Data plane shape (see ARCHITECTURE.md §2): per VPC present on the host one VPC namespace
with one VXLAN device (VNI = `VpcDesired.vni`); instances attach through veth ports whose
host side does proxy ARP; every remote host carrying the VPC is one link-local next hop
(`Peer.nexthop`) with a permanent neighbour and FDB entry, so there is no flooding and no
learning.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict

VXLAN_PORT = 4789
VXLAN_OVERHEAD = 50
LINK_LOCAL_NET = ipaddress.IPv4Network("169.254.0.0/16")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def vtep_nexthop(vtep_index: int) -> str:
    """The link-local next hop standing for host `vtep_index` inside every VPC namespace."""
    if not 1 <= vtep_index < 65534:
        raise ValueError(f"vtep index {vtep_index} out of range 1..65533")
    return str(LINK_LOCAL_NET.network_address + vtep_index)


def vtep_mac(vtep_index: int) -> str:
    """The MAC of host `vtep_index`'s VXLAN device (locally administered, unicast)."""
    b = vtep_index.to_bytes(3, "big")
    return "02:59:48:" + ":".join(f"{x:02x}" for x in b)


class Peer(_Frozen):
    """A remote host that carries the same VPC."""

    host: str
    vtep_index: int
    underlay_ip: str
    mac: str  # vtep_mac(vtep_index)
    nexthop: str  # vtep_nexthop(vtep_index)


class Port(_Frozen):
    """An instance's attachment to the VPC: a veth pair, host side in the VPC namespace."""

    instance_id: str
    ifname: str  # host-side name in the VPC namespace, e.g. "p-3fa9c2d1" (<= 15 chars)
    ip: str  # instance address
    prefixlen: int  # subnet prefix length (instance sees its subnet on-link)
    gateway: str  # subnet gateway (first usable address); answers ARP and ping
    mac: str  # instance-side MAC
    allowed_ips: tuple[str, ...] = ()  # extra source IPs allowed (VIPs), beyond `ip`


class Route(_Frozen):
    """One route in the VPC namespace.

    kind "local": `dst dev <port>`; "remote": `dst via <peer nexthop> dev vxlan onlink`;
    "unreachable" / "blackhole": a typed route so that nothing leaks to a default route.
    """

    dst: str  # CIDR, e.g. "10.0.1.5/32"
    kind: Literal["local", "remote", "unreachable", "blackhole"]
    port: str | None = None  # Port.ifname for kind "local"
    peer: str | None = None  # Peer.host for kind "remote"
    table: int = 254
    metric: int = 0


class VpcDesired(_Frozen):
    id: str
    vni: int
    cidrs: tuple[str, ...]
    gateways: tuple[str, ...]  # every subnet gateway of the VPC, as "ip/prefixlen"
    ports: tuple[Port, ...] = ()
    peers: tuple[Peer, ...] = ()
    routes: tuple[Route, ...] = ()


class InstanceDesired(_Frozen):
    """An instance sandbox (network + UTS namespace) on this host."""

    id: str
    name: str  # also its hostname
    vpc_id: str
    vni: int
    port: str  # Port.ifname of its attachment
    command: tuple[str, ...] | None = None  # long-lived process to run inside, if any


class HostDesired(_Frozen):
    """Everything one host must carry. `revision` is the store revision of this document."""

    host: str
    revision: int = 0
    underlay_ip: str
    vtep_index: int
    underlay_mtu: int = 1500
    vpcs: tuple[VpcDesired, ...] = ()
    instances: tuple[InstanceDesired, ...] = ()

    @property
    def instance_mtu(self) -> int:
        return self.underlay_mtu - VXLAN_OVERHEAD
