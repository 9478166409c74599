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
    # A next hop of a route or policy (an appliance): it forwards others' packets, so its
    # filter checks the MAC but lets any IPv4 source through.
    forwarder: bool = False
    # Its security groups (SecurityGroupDesired.id); none: the port is not filtered (an
    # instance of a controller from before security groups).
    sgs: tuple[str, ...] = ()


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


# -- distributed routing (issue 8; docs/routing.md) --------------------------------------
#
# Every host carrying a VPC holds the same route tables, policy routes and NAT defaults,
# resolved for itself: a next hop on this host is a `local` one (a port here), one on
# another host a `remote` one (sent through vxlan0 to that host, flagged "routed" so that
# the host there delivers it to the next hop instead of routing it by destination again).

NATGW_INNER_IP = "100.64.0.1"  # a NAT gateway's address on its VPC side (never in a VPC)
# The VPC namespace (and the host) as seen from a gateway's namespace: above every vtep
# next hop (vtep_nexthop tops out at 169.254.255.253).
NATGW_LINK_IP = "169.254.255.254"
# Kernel routing tables in a VPC namespace: main (254) holds the direct routes (/32 per
# instance, the blocks unreachable); each route table, policy reroute and NAT default has
# one of its own, numbered from its index.
TABLE_BASE = 0x10000
POLICY_BASE = 0x20000
NAT_BASE = 0x30000
# Packet marks in a VPC namespace: bits 16-31 the subnet selector (SubnetDesired.index) of
# the port a packet came from; bit 0 "routed": set on what a host sends through vxlan0 to
# a next hop (carried in the VXLAN-GBP header, the only bits that cross), telling the far
# host to route it by its source subnet's tables again instead of delivering it directly.
MARK_SELECTOR_SHIFT = 16
MARK_ROUTED = 0x1
ROUTED_REALM = 1  # the route realm of remote next hops; postrouting turns it into the mark


class NextHop(_Frozen):
    """Where a custom route, a policy reroute or a NAT default sends traffic, from this host.

    local: `via ip dev port onlink`, `port` a port of this host (instance p-…, gateway g-…);
    remote: `via <peer nexthop> dev vxlan0 onlink realm 1`, the far host forwards to `ip`;
    blackhole: dropped silently; unreachable: its target is gone (no healthy host, deleted,
    stopped) and no other route for the prefix is up, so the packet is refused.
    """

    kind: Literal["local", "remote", "blackhole", "unreachable"]
    ip: str | None = None  # the target's address: an instance's, or NATGW_INNER_IP
    port: str | None = None  # local: ifname of the target's port in the VPC namespace
    peer: str | None = None  # remote: host name (a `Peer.host` of the VPC)
    target: str = ""  # what it stands for: "instance:<id>", "natgw:<id>", "vip:<ip>", ...


class TableRoute(_Frozen):
    """The route a table uses for `dst`: the winner among the routes for that prefix
    (lowest priority whose next hop is up; the best one, unreachable, if none is)."""

    dst: str
    nexthop: NextHop
    route_id: str
    priority: int


class RouteTableDesired(_Frozen):
    id: str
    index: int  # 1..65535, unique in the VPC: kernel table TABLE_BASE + index
    routes: tuple[TableRoute, ...] = ()  # custom routes only, by (address, prefixlen)


class PolicyDesired(_Frozen):
    """A policy route of table `table` (a RouteTableDesired.index), before destination
    routing. `port_min`/`port_max` is a destination port range (tcp/udp only)."""

    id: str
    table: int
    index: int  # 1..65535, unique in the VPC: kernel table POLICY_BASE + index (reroute)
    priority: int  # 1..9999, unique in its table; lower first
    src: str | None = None  # CIDR
    dst: str | None = None  # CIDR
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    port_min: int | None = None
    port_max: int | None = None
    action: Literal["drop", "allow", "reroute"] = "allow"
    nexthop: NextHop | None = None  # reroute only


class SubnetDesired(_Frozen):
    """A subnet of the VPC and what routes its traffic (the selector of its ports)."""

    id: str
    cidr: str
    index: int  # 1..65535, unique in the VPC: packet mark selector index << 16
    table: int  # RouteTableDesired.index of its route table
    natgw: int | None = None  # NatGwDesired.index of the NAT gateway serving it


class NatGwDesired(_Frozen):
    """A NAT gateway of the VPC: every carrying host routes served subnets' internet
    traffic to it; the host it runs on (local) also builds its namespace and rules."""

    id: str
    index: int  # 1..65535, unique in the VPC: kernel table NAT_BASE + index
    nexthop: NextHop  # how this host reaches it (unreachable: it has no healthy host)
    public_ip: str  # its own SNAT address
    local: bool = False  # it runs on this host
    ifname: str = ""  # its port in the VPC namespace ("g-<short id>")
    snat: tuple[str, ...] = ()  # local: served subnet CIDRs, sorted
    eips: tuple[tuple[str, str], ...] = ()  # local: (instance ip, public ip), sorted
    # local: (proto, public port, instance ip, instance port), sorted
    forwards: tuple[tuple[str, int, str, int], ...] = ()


# -- hybrid cloud (issue 15; docs/hybrid.md) ---------------------------------------------
#
# A hybrid gateway joins a VPC to an IDC site over its dedicated line. It runs as replicas,
# one per host. Each is a namespace between the VPC namespace of its host (a port
# "h-<id>", like a NAT gateway's) and the line, an L2 segment carried to the site router by
# VXLAN on its own UDP port. Every replica speaks BGP (FRR) with the site router: it
# announces the VPC's cloud prefixes and learns the IDC's. Every host carrying the VPC
# routes the IDC subnets served in the IDC to the replicas whose session is up, ECMP.

HYBRID_INNER_IP = "100.64.1.1"  # a replica's address on its VPC side (never in a VPC)
HYBRID_LINE_PORT = 8472  # UDP port of line VXLANs (not 4789: those devices are not GBP)
HYBRID_LINE_IFNAME = "line0"  # a replica's (and the site router's) end of the line


class HybridRouteDesired(_Frozen):
    """A prefix this host sends to a hybrid gateway: an IDC subnet served in the IDC.
    `nexthops`: one per replica whose BGP session is up, local (`via HYBRID_INNER_IP dev
    h-<id> onlink`, only ever the one of this host: a host that runs a replica sends to it
    alone) or remote (`via <peer nexthop> dev vxlan0 onlink`, delivered by the far host's
    main table to its replica); several: ECMP. None up: the prefix is unreachable."""

    dst: str
    nexthops: tuple[NextHop, ...] = ()


class HybridReplicaDesired(_Frozen):
    """The replica of a hybrid gateway that runs on this host."""

    index: int  # 1.., unique in its gateway
    line_vni: int  # the line's VNI (HYBRID_LINE_PORT)
    line_vtep: str  # underlay address of the line's far end (the site router)
    line_ip: str  # this replica's address on the line, "198.19.33.11/24"
    peer_ip: str  # the site router's address on the line
    peer_asn: int
    asn: int  # ours (the gateway's)
    md5_secret: str | None = None  # TCP MD5 of the session
    bfd: bool = True
    # Prefixes announced to the IDC, sorted by (address, prefixlen); each is also routed
    # from the replica into the VPC namespace (via vpc0).
    announce: tuple[str, ...] = ()


class HybridGwDesired(_Frozen):
    """A hybrid gateway of the VPC as this host sees it."""

    id: str
    index: int  # 1..65535, unique in the VPC
    ifname: str  # its port in the VPC namespace ("h-<short id>"), where a replica runs
    routes: tuple[HybridRouteDesired, ...] = ()  # by (address, prefixlen)
    replica: HybridReplicaDesired | None = None  # set on a host that runs one
    # Every IDC subnet of the VPC in the gateway's site, wherever it is served, by
    # (address, prefixlen): what hosts and replicas count traffic of (docs/cutover.md).
    prefixes: tuple[str, ...] = ()


# -- security groups (issue 10; docs/secgroups.md) ----------------------------------------


class SgRuleDesired(_Frozen):
    """One rule of a group. The peer is a CIDR or a group of the VPC (its members' addresses);
    ingress matches the source, egress the destination. Ports (tcp/udp) are destination
    ports."""

    id: str
    direction: Literal["ingress", "egress"]
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    port_min: int | None = None
    port_max: int | None = None
    cidr: str | None = None
    group: str | None = None
    action: Literal["allow", "deny"] = "allow"
    priority: int = 100


class SecurityGroupDesired(_Frozen):
    """A group of the VPC: its rules in evaluation order (priority, deny first, id) and
    the addresses of its members anywhere in the VPC (ip and allowed ips, sorted)."""

    id: str
    rules: tuple[SgRuleDesired, ...] = ()
    members: tuple[str, ...] = ()


class AclRuleDesired(_Frozen):
    """A numbered rule of a network ACL: ingress matches the source, egress the
    destination; ports (tcp/udp) are destination ports."""

    number: int
    direction: Literal["ingress", "egress"]
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    port_min: int | None = None
    port_max: int | None = None
    cidr: str = "0.0.0.0/0"
    action: Literal["allow", "deny"] = "allow"


class AclDesired(_Frozen):
    """A network ACL of the VPC, stateless, with the subnets associated with it (CIDRs,
    sorted); rules by (direction, number)."""

    id: str
    rules: tuple[AclRuleDesired, ...] = ()
    subnets: tuple[str, ...] = ()


FlowFilter = Literal["ALL", "ACCEPT", "REJECT"]


class FlowLogDesired(_Frozen):
    """A flow log of the VPC (docs/flowlogs.md): what it covers (the whole VPC, a subnet by
    id, or an instance by id) and which records it keeps."""

    id: str
    scope: Literal["vpc", "subnet", "instance"]
    target: str  # the VPC's, the subnet's or the instance's id
    filter: FlowFilter = "ALL"


class VipDesired(_Frozen):
    """A VIP of the VPC (docs/vips.md) as every host carrying the VPC knows it: its address,
    the instances allowed to hold it (ids, sorted) and its epoch, the fencing token the
    agent claims with. Where it is delivered rides in the holder's `Port.allowed_ips`."""

    id: str
    ip: str
    allowed: tuple[str, ...] = ()
    epoch: int = 0


class VpcDesired(_Frozen):
    id: str
    vni: int
    cidrs: tuple[str, ...]
    gateways: tuple[str, ...]  # every subnet gateway of the VPC, as "ip/prefixlen"
    ports: tuple[Port, ...] = ()
    peers: tuple[Peer, ...] = ()
    routes: tuple[Route, ...] = ()
    # distributed routing (empty for a document of an older controller: main table only)
    subnets: tuple[SubnetDesired, ...] = ()  # by index
    tables: tuple[RouteTableDesired, ...] = ()  # by index
    policies: tuple[PolicyDesired, ...] = ()  # by (table, priority)
    natgws: tuple[NatGwDesired, ...] = ()  # by index
    groups: tuple[SecurityGroupDesired, ...] = ()  # by id
    acls: tuple[AclDesired, ...] = ()  # by id
    flowlogs: tuple[FlowLogDesired, ...] = ()  # by id
    vips: tuple[VipDesired, ...] = ()  # by id
    hybrids: tuple[HybridGwDesired, ...] = ()  # by index


def port_flowlog(vpc: VpcDesired, port: Port) -> FlowFilter | None:
    """Which records the flow logs of `vpc` keep of `port` (None: it is not logged). Flow
    logs that cover it with different filters keep the union: ALL."""
    if not vpc.flowlogs:
        return None
    addr = ipaddress.IPv4Address(port.ip)
    subnets = {s.id for s in vpc.subnets if addr in ipaddress.IPv4Network(s.cidr)}
    found: set[str] = set()
    for f in vpc.flowlogs:
        if (
            f.scope == "vpc"
            or (f.scope == "subnet" and f.target in subnets)
            or (f.scope == "instance" and f.target == port.instance_id)
        ):
            found.add(f.filter)
    if not found:
        return None
    if len(found) > 1:
        return "ALL"
    return found.pop()  # type: ignore[return-value]


class InstanceDesired(_Frozen):
    """An instance sandbox (network + UTS namespace) on this host."""

    id: str
    name: str  # also its hostname
    vpc_id: str
    vni: int
    port: str  # Port.ifname of its attachment
    command: tuple[str, ...] | None = None  # long-lived process to run inside, if any


class VolumeAttach(_Frozen):
    """Where an attached volume is mounted: inside the instance's mount namespace, the one
    entered with its network namespace `netns` (None: the instance has not reported it)."""

    instance: str
    netns: str | None
    path: str


class VolumeDesired(_Frozen):
    """A volume this host's agent serves (docs/volumes.md): it runs the volume's storage
    process, journals when `tiers` is set, mounts it in the instance when attached, and
    restores it in place when `restore_serial` exceeds the one it last did."""

    id: str
    name: str
    size: int  # bytes
    zone: str
    tiers: tuple[tuple[int, int], ...] | None  # (keep_s, every_s), None: not protected
    attach: VolumeAttach | None = None
    restore_to_ns: int | None = None
    restore_serial: int = 0
    source_volume: str | None = None  # a clone's source (its journal is read until copied)
    source_at_ns: int | None = None
    delete: bool = False  # deleted: the agent removes its data and reports "deleted"


class HostDesired(_Frozen):
    """Everything one host must carry. `revision` is the store revision of this document."""

    host: str
    revision: int = 0
    underlay_ip: str
    vtep_index: int
    underlay_mtu: int = 1500
    vpcs: tuple[VpcDesired, ...] = ()
    instances: tuple[InstanceDesired, ...] = ()
    volumes: tuple[VolumeDesired, ...] = ()  # sorted by id

    @property
    def instance_mtu(self) -> int:
        return self.underlay_mtu - VXLAN_OVERHEAD
