"""The host data plane as a flat set of kernel objects, and the pure planner over it.

Both sides of a reconcile are expressed in the same vocabulary: `compile_state(desired)`
turns a `HostDesired` into the objects that must exist; a driver's `observe()` reads the
objects that do exist (only ours: namespaces of our prefix, routes of our rtnetlink
protocol, permanent neighbours, our nft chains). `plan(want, have)` diffs the two maps by
key and returns ordered ops. Nothing here touches the kernel (STYLE §1), which is what lets
the same plan drive the linux driver and the in-memory fake, and lets tests check
"plan after apply is empty" and "apply then revert returns to the same state".

Every object is a frozen dataclass with a `key` (its identity in the kernel: a route is
(netns, table, dst, metric), a neighbour (netns, dev, ip)...). Same key, different fields
means "replace"; the driver decides how (sysctl write, link set, delete + add).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from yunhan.net.desired import (
    HYBRID_INNER_IP,
    HYBRID_LINE_IFNAME,
    HYBRID_LINE_PORT,
    MARK_ROUTED,
    MARK_SELECTOR_SHIFT,
    NAT_BASE,
    NATGW_INNER_IP,
    NATGW_LINK_IP,
    POLICY_BASE,
    ROUTED_REALM,
    TABLE_BASE,
    VXLAN_PORT,
    HostDesired,
    HybridGwDesired,
    HybridReplicaDesired,
    HybridRouteDesired,
    NatGwDesired,
    NextHop,
    Peer,
    PolicyDesired,
    VpcDesired,
    vtep_mac,
)
from yunhan.net.frr import Session
from yunhan.net.naming import (
    INSTANCE_IFNAME,
    VXLAN_IFNAME,
    Naming,
    gateway_ifname,
    hybrid_ifname,
    natgw_host_ifname,
)
from yunhan.net.natgw import (
    GW_PUB_IFNAME,
    GW_VPC_IFNAME,
    HOST_NETNS,
    Announce,
    NatTable,
    VethPair,
    gw_mac,
)
from yunhan.net.nftsg import AclPort, PortRules, zone_of

# rtnetlink protocol number stamped on every route we install ("Y" = 89, unassigned in
# /etc/iproute2/rt_protos). Observation lists only these, so routes added by a person or
# another daemon are never diffed, adopted or removed by us.
RTPROT_YUNHAN = 89

Key: TypeAlias = tuple[str, ...]


@dataclass(frozen=True)
class Netns:
    name: str
    # "stale": observed only, a file of ours under /run/netns that is not a namespace (a
    # crash between creating and bind-mounting it); never equal to a wanted one.
    role: Literal["vpc", "instance", "natgw", "hybrid", "stale"]

    @property
    def key(self) -> Key:
        return ("netns", self.name)


@dataclass(frozen=True)
class Sysctl:
    """A /proc/sys/net value inside `netns`; `dev` names the device for per-device keys."""

    netns: str
    path: str  # relative to /proc/sys, e.g. "net/ipv4/ip_forward"
    value: str
    dev: str | None = None

    @property
    def key(self) -> Key:
        return ("sysctl", self.netns, self.path)


@dataclass(frozen=True)
class Vxlan:
    netns: str
    ifname: str
    vni: int
    local: str
    mac: str
    mtu: int
    port: int = VXLAN_PORT
    learning: bool = False  # never wanted: no flooding, no learning; observed as drift
    # VXLAN-GBP: the low 16 bits of the packet mark cross in the header (the "routed" bit
    # of distributed routing). Cannot be changed on a live device: a change re-creates it.
    gbp: bool = True

    @property
    def key(self) -> Key:
        return ("link", self.netns, self.ifname)


@dataclass(frozen=True)
class Veth:
    """An instance port: host side `ifname` in `netns`, peer `peer_ifname` in `peer_netns`."""

    netns: str
    ifname: str
    peer_netns: str | None
    peer_mac: str
    mtu: int
    peer_ifname: str = INSTANCE_IFNAME

    @property
    def key(self) -> Key:
        return ("link", self.netns, self.ifname)


@dataclass(frozen=True)
class LinkUp:
    netns: str
    ifname: str

    @property
    def key(self) -> Key:
        return ("up", self.netns, self.ifname)


@dataclass(frozen=True)
class Address:
    netns: str
    ifname: str
    cidr: str  # "10.0.1.1/32"

    @property
    def key(self) -> Key:
        return ("addr", self.netns, self.ifname, self.cidr)


@dataclass(frozen=True)
class Neigh:
    """A permanent neighbour (ARP) entry."""

    netns: str
    ifname: str
    ip: str
    mac: str

    @property
    def key(self) -> Key:
        return ("neigh", self.netns, self.ifname, self.ip)


@dataclass(frozen=True)
class Fdb:
    """A permanent VXLAN FDB entry: frames to `mac` are sent to underlay `dst`."""

    netns: str
    ifname: str
    mac: str
    dst: str

    @property
    def key(self) -> Key:
        return ("fdb", self.netns, self.ifname, self.mac)


RouteKind = Literal["local", "remote", "unreachable", "blackhole", "gateway", "throw", "multipath"]


@dataclass(frozen=True)
class KRoute:
    """A kernel route of ours. local: dev; remote: via onlink dev vxlan0; gateway: via dev
    (`onlink`: a next hop on a port, not in any subnet of the VPC namespace's own); throw:
    the lookup of this table ends without a match and the next ip rule is tried;
    multipath: ECMP over `nexthops` (no `dev`, `via`), each `nexthop via <via> dev <dev>
    onlink`, the kernel choosing one per flow (fib_multipath_hash_policy)."""

    netns: str
    dst: str
    kind: RouteKind
    dev: str | None = None
    via: str | None = None
    table: int = 254
    metric: int = 0
    onlink: bool = False  # gateway only (remote is always onlink)
    realm: int = 0  # RTA_FLOW: ROUTED_REALM on remote next hops of distributed routing
    nexthops: tuple[tuple[str, str], ...] = ()  # multipath: (via, dev), sorted (as text)

    @property
    def key(self) -> Key:
        return ("route", self.netns, str(self.table), self.dst, str(self.metric))

    @property
    def devs(self) -> tuple[str, ...]:
        """Every device the route leaves by (the kernel removes it with any of them)."""
        if self.kind == "multipath":
            return tuple(dev for _via, dev in self.nexthops)
        return () if self.dev is None else (self.dev,)


@dataclass(frozen=True)
class Filter:
    """The anti-spoofing chain of one port (nftables, netdev ingress of the host side)."""

    netns: str
    ifname: str
    mac: str
    ips: tuple[str, ...]  # sorted: the port's ip and its allowed_ips
    # A next hop of routes (an appliance): any IPv4 source passes, MAC and ARP still checked.
    forwarder: bool = False

    @property
    def key(self) -> Key:
        return ("filter", self.netns, self.ifname)


RuleAction = Literal["lookup", "goto", "blackhole"]


@dataclass(frozen=True)
class Rule:
    """An ip rule of ours (protocol RTPROT_YUNHAN) in a VPC namespace.

    Keyed by (pref, mark/mask): every subnet selector has its own rule at each pref, so
    two subnets sharing a table each get theirs. Rules name their input device (`iif`)
    by name and outlive it, like the kernel's do.
    """

    netns: str
    pref: int
    mark: int
    mask: int
    action: RuleAction
    table: int = 0  # lookup
    goto: int = 0  # goto: the pref evaluation jumps to
    iif: str | None = None
    src: str | None = None  # CIDR
    dst: str | None = None  # CIDR
    ipproto: int | None = None  # IPPROTO_*
    dport: tuple[int, int] | None = None  # destination port range (tcp/udp)

    @property
    def key(self) -> Key:
        return ("rule", self.netns, str(self.pref), f"{self.mark:#x}/{self.mask:#x}")


@dataclass(frozen=True)
class Marks:
    """The `ip yunhan` nft table of a VPC namespace: what marks a packet gets on the way in
    (the selector of the port it came from; for a "routed" packet from vxlan0, the
    selector of its source subnet, routed bit kept) and on the way out through vxlan0 (the
    routed bit iff the route has ROUTED_REALM). Rewritten whole, atomically."""

    netns: str
    ports: tuple[tuple[str, int], ...]  # (port ifname, mark), sorted
    sources: tuple[tuple[str, int], ...]  # (subnet CIDR, mark | MARK_ROUTED), by address

    @property
    def key(self) -> Key:
        return ("marks", self.netns)


@dataclass(frozen=True)
class Firewall:
    """The `ip yunhan_sg` nft table of a VPC namespace (security groups, `net.nftsg`): the
    VPC's conntrack zone, the member sets of the groups its ports' rules name, and each
    filtered port's rules. Rewritten whole, atomically."""

    netns: str
    zone: int
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (group id, member addresses), by id
    ports: tuple[PortRules, ...]  # by ifname
    acls: tuple[AclPort, ...] = ()  # ports in subnets with a network ACL, by ifname

    @property
    def key(self) -> Key:
        return ("firewall", self.netns)


@dataclass(frozen=True)
class Uts:
    """The persistent UTS namespace of an instance (bind-mounted file), with its hostname."""

    netns: str  # the instance netns it belongs to (also the file name)
    hostname: str

    @property
    def key(self) -> Key:
        return ("uts", self.netns)


@dataclass(frozen=True)
class Process:
    """The long-lived command of an instance, running inside its namespaces."""

    netns: str
    argv: tuple[str, ...]

    @property
    def key(self) -> Key:
        return ("proc", self.netns)


@dataclass(frozen=True)
class Bgp:
    """The FRR instance of a hybrid gateway replica (`yunhan.net.frr`), in its namespace:
    our side of one eBGP session with the site router. Wanted: `session`, running.
    Observed: the session last applied (None when unknown) and whether its daemons all
    live. A changed session is applied as a difference (`frr.apply_session`): a change of
    what is announced never resets the session nor restarts the namespace."""

    netns: str
    session: Session | None
    running: bool = True

    @property
    def key(self) -> Key:
        return ("bgp", self.netns)


Obj: TypeAlias = (
    Netns
    | Sysctl
    | Vxlan
    | Veth
    | LinkUp
    | Address
    | Neigh
    | Fdb
    | KRoute
    | Filter
    | Uts
    | Process
    | VethPair
    | NatTable
    | Announce
    | Rule
    | Marks
    | Firewall
    | Bgp
)
State: TypeAlias = dict[Key, Obj]


def as_state(objs: Iterable[Obj]) -> State:
    return {o.key: o for o in objs}


# -- compiling the desired document ------------------------------------------------------

VPC_SYSCTLS: Mapping[str, str] = {
    "net/ipv4/ip_forward": "1",
    "net/ipv4/conf/all/forwarding": "1",
    # rp_filter is max(all, dev): both must be 0. Traffic between ports of one VPC is
    # asymmetric by design (ARP via proxy, packets via /32 routes), and strict rp_filter
    # would drop a VIP's packets arriving on a port other than its route's.
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
    # The gateway routes between ports of one subnet (all on-link for the instances):
    # without this the kernel would send ICMP redirects telling instances to talk directly,
    # which they cannot (there is no L2 between ports).
    "net/ipv4/conf/all/send_redirects": "0",
    "net/ipv4/conf/default/send_redirects": "0",
    # The data plane is IPv4 only; IPv6 link-local chatter would only hit the port filters.
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
}

# Idle timeouts of the conntrack entries of a VPC namespace that has security groups (per
# namespace sysctls; docs/secgroups.md). An established TCP flow idle for an hour is
# forgotten (the kernel's five days keep dead flows forever; UCloud's 150 s cuts idle SSH
# sessions); UDP and ICMP keep the kernel's defaults.
CONNTRACK_TIMEOUTS: Mapping[str, str] = {
    "net/netfilter/nf_conntrack_tcp_timeout_established": "3600",
    "net/netfilter/nf_conntrack_udp_timeout": "30",
    "net/netfilter/nf_conntrack_udp_timeout_stream": "120",
    "net/netfilter/nf_conntrack_icmp_timeout": "30",
}

# With the fast path (docs/datapath.md), conntrack in a VPC namespace with a firewall no
# longer sees the middle of the flows the fast path carries: its TCP window tracking would
# then judge the segments that end them (FIN and RST, which always take the kernel path)
# out of window, invalid, and the security groups would drop them. Liberal tracking takes
# them, as it takes any segment outside the window it last saw (RSTs are still checked).
FASTPATH_VPC_SYSCTLS: Mapping[str, str] = {"net/netfilter/nf_conntrack_tcp_be_liberal": "1"}

# Flow logs read packets, bytes and the start time of each flow from conntrack
# (docs/flowlogs.md): the kernel counts them only when these are on when the flow is
# created. Per network namespace (checked on 6.x: setting them in one VPC namespace leaves
# the root and the others as they were), so only our VPC namespaces pay the few bytes per
# flow. Set wherever conntrack runs in a VPC namespace: with a firewall, or a flow log.
CONNTRACK_ACCOUNTING: Mapping[str, str] = {
    "net/netfilter/nf_conntrack_acct": "1",
    "net/netfilter/nf_conntrack_timestamp": "1",
}

INSTANCE_SYSCTLS: Mapping[str, str] = {
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
}


def port_sysctls(netns: str, ifname: str) -> list[Sysctl]:
    return [
        # The host side answers ARP for every address it can route elsewhere (other ports,
        # remote hosts): the whole VPC is routed, and a subnet spans hosts freely.
        Sysctl(netns, f"net/ipv4/conf/{ifname}/proxy_arp", "1", ifname),
        # Proxy ARP replies are by default delayed by a random 0..proxy_delay (80 jiffies)
        # and parked in a 64-entry proxy queue (pneigh_enqueue); under a burst of ARP the
        # queue overflows and requests are dropped, and every first packet waits. With 0
        # arp_process() answers at once.
        Sysctl(netns, f"net/ipv4/neigh/{ifname}/proxy_delay", "0", ifname),
        Sysctl(netns, f"net/ipv4/conf/{ifname}/rp_filter", "0", ifname),
        Sysctl(netns, f"net/ipv4/conf/{ifname}/send_redirects", "0", ifname),
    ]


def uts_name(naming: Naming, instance_id: str) -> str:
    """The UTS namespace file name of an instance (same as its netns name)."""
    return naming.instance_netns(instance_id)


def compile_state(
    desired: HostDesired, naming: Naming, *, uplink: bool = False, fastpath: bool = False
) -> State:
    """Every kernel object `desired` calls for on this host (pure). `uplink`: the agent
    announces its gateways' public addresses (see `natgw.Announce`). `fastpath`: the fast
    path runs beside the kernel path (FASTPATH_VPC_SYSCTLS)."""
    objs: list[Obj] = []
    mtu = desired.instance_mtu
    inst_ns_of_port: dict[tuple[int, str], str] = {}
    for inst in desired.instances:
        ns = naming.instance_netns(inst.id)
        inst_ns_of_port[(inst.vni, inst.port)] = ns
        objs.append(Netns(ns, "instance"))
        objs.append(LinkUp(ns, "lo"))
        objs.extend(Sysctl(ns, p, v) for p, v in INSTANCE_SYSCTLS.items())
        objs.append(Uts(ns, inst.name))
        if inst.command:
            objs.append(Process(ns, tuple(inst.command)))

    for vpc in desired.vpcs:
        ns = naming.vpc_netns(vpc.vni)
        objs.append(Netns(ns, "vpc"))
        objs.extend(Sysctl(ns, p, v) for p, v in VPC_SYSCTLS.items())
        objs.append(LinkUp(ns, "lo"))
        for gw in vpc.gateways:
            ip = gw.split("/", 1)[0]
            objs.append(Address(ns, "lo", f"{ip}/32"))
        # GBP on every VPC's device, routed or not: the devices of a host share one UDP
        # socket per port, which the kernel only shares between devices of the same GBP
        # setting (another one fails to come up, EADDRINUSE). Harmless without routing: a
        # frame of mark 0 carries no GBP header, so hosts without GBP still read it.
        objs.append(
            Vxlan(ns, VXLAN_IFNAME, vpc.vni, desired.underlay_ip, vtep_mac(desired.vtep_index), mtu)
        )
        objs.append(LinkUp(ns, VXLAN_IFNAME))
        peers = {p.host: p for p in vpc.peers}
        for p in vpc.peers:
            objs.append(Neigh(ns, VXLAN_IFNAME, p.nexthop, p.mac))
            objs.append(Fdb(ns, VXLAN_IFNAME, p.mac, p.underlay_ip))
        for port in vpc.ports:
            peer_ns = inst_ns_of_port.get((vpc.vni, port.ifname))
            objs.append(Veth(ns, port.ifname, peer_ns, port.mac, mtu))
            objs.extend(port_sysctls(ns, port.ifname))
            objs.append(LinkUp(ns, port.ifname))
            objs.append(Neigh(ns, port.ifname, port.ip, port.mac))
            # A VIP delivered to this port gets the port's MAC as a permanent neighbour too:
            # the host never ARPs for it, so a move re-points route and neighbour in one
            # apply and nothing waits for an ARP cache to expire (docs/vips.md).
            objs.extend(Neigh(ns, port.ifname, a, port.mac) for a in port.allowed_ips)
            ips = tuple(sorted({port.ip, *port.allowed_ips}, key=ipaddress.IPv4Address))
            objs.append(Filter(ns, port.ifname, port.mac, ips, port.forwarder))
            if peer_ns is not None:
                objs.append(LinkUp(peer_ns, INSTANCE_IFNAME))
                objs.append(Address(peer_ns, INSTANCE_IFNAME, f"{port.ip}/{port.prefixlen}"))
                objs.append(KRoute(peer_ns, "0.0.0.0/0", "gateway", INSTANCE_IFNAME, port.gateway))
        for r in vpc.routes:
            dst = str(ipaddress.IPv4Network(r.dst))
            if r.kind == "local":
                objs.append(KRoute(ns, dst, "local", r.port, None, r.table, r.metric))
            elif r.kind == "remote":
                peer = peers.get(r.peer or "")
                if peer is None:
                    continue  # a route to a host we have no tunnel to cannot be realised
                objs.append(
                    KRoute(ns, dst, "remote", VXLAN_IFNAME, peer.nexthop, r.table, r.metric)
                )
            else:
                objs.append(KRoute(ns, dst, r.kind, None, None, r.table, r.metric))
        if vpc.subnets:  # a document of an older controller has none: main table only
            objs.extend(compile_routing(ns, vpc))
        if vpc.groups or vpc.acls:  # an older controller's document has none: no filter
            objs.append(compile_firewall(ns, vpc))
            objs.extend(Sysctl(ns, p, v) for p, v in CONNTRACK_TIMEOUTS.items())
            if fastpath:
                objs.extend(Sysctl(ns, p, v) for p, v in FASTPATH_VPC_SYSCTLS.items())
        if vpc.groups or vpc.acls or vpc.flowlogs:
            objs.extend(Sysctl(ns, p, v) for p, v in CONNTRACK_ACCOUNTING.items())
        for ngw in vpc.natgws:
            if ngw.local:
                objs.extend(natgw_objects(ngw, ns, vpc.cidrs, desired.instance_mtu, naming, uplink))
        if vpc.hybrids:
            objs.extend(Sysctl(ns, p, v) for p, v in HYBRID_VPC_SYSCTLS.items())
        for hgw in vpc.hybrids:
            # Last: an IDC subnet's route takes the place of a generated one of the same
            # prefix (the VPC block unreachable) in main.
            objs.extend(_hybrid_route(ns, hgw, r, peers) for r in hgw.routes)
            if hgw.replica is not None:
                objs.extend(
                    hybrid_objects(
                        hgw, hgw.replica, ns, desired.underlay_ip, desired.instance_mtu, naming
                    )
                )
    return as_state(objs)


def compile_firewall(ns: str, vpc: VpcDesired) -> Firewall:
    """The security groups of a VPC on this host: each local port with groups gets the
    rules of all its groups (evaluation order: priority, deny first, id); the member sets
    are those of the groups these rules name as peers."""
    by_id = {g.id: g for g in vpc.groups}
    ports: list[PortRules] = []
    named: set[str] = set()
    for port in vpc.ports:
        if not port.sgs:
            continue
        rules = sorted(
            {
                r.id + "@" + gid: r for gid in port.sgs if gid in by_id for r in by_id[gid].rules
            }.items(),
            key=lambda kv: (kv[1].priority, 0 if kv[1].action == "deny" else 1, kv[0]),
        )
        merged = tuple(r for _k, r in rules)
        named.update(r.group for r in merged if r.group is not None)
        ports.append(
            PortRules(
                port.ifname,
                tuple(r for r in merged if r.direction == "ingress"),
                tuple(r for r in merged if r.direction == "egress"),
            )
        )
    groups = tuple((gid, by_id[gid].members if gid in by_id else ()) for gid in sorted(named))
    acls: list[AclPort] = []
    for port in vpc.ports:
        subnet = str(ipaddress.IPv4Network(f"{port.ip}/{port.prefixlen}", strict=False))
        acl = next((a for a in vpc.acls if subnet in a.subnets), None)
        if acl is not None:
            acls.append(
                AclPort(
                    port.ifname,
                    subnet,
                    tuple(r for r in acl.rules if r.direction == "ingress"),
                    tuple(r for r in acl.rules if r.direction == "egress"),
                )
            )
    return Firewall(
        ns,
        zone_of(vpc.vni),
        groups,
        tuple(sorted(ports, key=lambda p: p.ifname)),
        tuple(sorted(acls, key=lambda a: a.ifname)),
    )


# ip rule prefs in a VPC namespace (docs/routing.md): traffic a sender already routed comes
# in unflagged and goes by main (direct delivery); then, per source subnet selector, its
# table's policies by priority, its route table, its NAT gateway's default; main (32766)
# last: the /32 of every instance and the VPC blocks unreachable.
PREF_DIRECT = 100
PREF_POLICY = 10000  # + PolicyDesired.priority (1..9999)
PREF_TABLE = 30000
PREF_NAT = 30001
SELECTOR_MASK = 0xFFFF0000
_IPPROTO = {"tcp": 6, "udp": 17, "icmp": 1}


def selector_mark(index: int) -> int:
    """The packet mark of ports of subnet `index` (SubnetDesired.index)."""
    return index << MARK_SELECTOR_SHIFT


def compile_routing(ns: str, vpc: VpcDesired) -> list[Obj]:
    """The rules, tables and marks of distributed routing in VPC namespace `ns` (pure)."""
    objs: list[Obj] = []
    peers = {p.host: p for p in vpc.peers}
    blocks = [ipaddress.IPv4Network(c) for c in vpc.cidrs]
    subnets = [(ipaddress.IPv4Network(s.cidr), s) for s in vpc.subnets]
    ports: list[tuple[str, int]] = []
    for port in vpc.ports:
        addr = ipaddress.IPv4Address(port.ip)
        sub = next((s for net, s in subnets if addr in net), None)
        if sub is not None:
            ports.append((port.ifname, selector_mark(sub.index)))
    sources = sorted(
        ((str(net), selector_mark(s.index) | MARK_ROUTED) for net, s in subnets),
        key=lambda e: ipaddress.IPv4Network(e[0]),
    )
    objs.append(Marks(ns, tuple(sorted(ports)), tuple(sources)))

    objs.append(Rule(ns, PREF_DIRECT, 0, MARK_ROUTED, "lookup", table=254, iif=VXLAN_IFNAME))
    by_table: dict[int, list[PolicyDesired]] = {}
    for p in vpc.policies:
        by_table.setdefault(p.table, []).append(p)
    for s in vpc.subnets:
        sel = selector_mark(s.index)
        objs.extend(_policy_rule(ns, sel, p) for p in by_table.get(s.table, ()))
        objs.append(Rule(ns, PREF_TABLE, sel, SELECTOR_MASK, "lookup", table=TABLE_BASE + s.table))
        if s.natgw is not None:
            objs.append(Rule(ns, PREF_NAT, sel, SELECTOR_MASK, "lookup", table=NAT_BASE + s.natgw))

    for t in vpc.tables:
        table = TABLE_BASE + t.index
        custom = {str(ipaddress.IPv4Network(r.dst, strict=False)) for r in t.routes}
        # Destinations in the VPC that no custom route takes leave the table for main.
        for b in blocks:
            if str(b) not in custom:
                objs.append(KRoute(ns, str(b), "throw", table=table))
        for r in t.routes:
            objs.append(
                _nexthop_route(
                    ns, str(ipaddress.IPv4Network(r.dst, strict=False)), r.nexthop, table, peers
                )
            )
    for p in vpc.policies:
        # A reroute whose next hop is down has no route: the lookup falls through to the
        # destination routing of the next rules.
        if p.action == "reroute" and p.nexthop is not None and p.nexthop.kind != "unreachable":
            objs.append(_nexthop_route(ns, "0.0.0.0/0", p.nexthop, POLICY_BASE + p.index, peers))
    for g in vpc.natgws:
        table = NAT_BASE + g.index
        for b in blocks:
            objs.append(KRoute(ns, str(b), "throw", table=table))
        objs.append(_nexthop_route(ns, "0.0.0.0/0", g.nexthop, table, peers))
    return objs


def _policy_rule(ns: str, sel: int, p: PolicyDesired) -> Rule:
    proto = _IPPROTO.get(p.proto)
    rule = Rule(
        ns,
        PREF_POLICY + p.priority,
        sel,
        SELECTOR_MASK,
        "lookup",
        table=POLICY_BASE + p.index,
        src=None if p.src is None else str(ipaddress.IPv4Network(p.src, strict=False)),
        dst=None if p.dst is None else str(ipaddress.IPv4Network(p.dst, strict=False)),
        ipproto=proto,
        dport=(
            (p.port_min, p.port_max or p.port_min)
            if proto in (6, 17) and p.port_min is not None
            else None
        ),
    )
    if p.action == "drop":
        return replace(rule, action="blackhole", table=0)
    if p.action == "allow":
        return replace(rule, action="goto", table=0, goto=PREF_TABLE)
    return rule


def _nexthop_route(ns: str, dst: str, nh: NextHop, table: int, peers: Mapping[str, Peer]) -> KRoute:
    if nh.kind == "local" and nh.port and nh.ip:
        return KRoute(ns, dst, "gateway", nh.port, nh.ip, table, onlink=True)
    if nh.kind == "remote":
        peer = peers.get(nh.peer or "")
        if peer is not None:
            return KRoute(ns, dst, "remote", VXLAN_IFNAME, peer.nexthop, table, realm=ROUTED_REALM)
    if nh.kind == "blackhole":
        return KRoute(ns, dst, "blackhole", table=table)
    # Down, or a host we have no tunnel to: refused rather than left to a shorter prefix.
    return KRoute(ns, dst, "unreachable", table=table)


# -- hybrid gateways (docs/hybrid.md) -------------------------------------------------------

# In a VPC namespace with hybrid gateways: ECMP over replicas hashes on the L4 ports too,
# so that the flows of one pair of addresses (an instance and an IDC server) spread.
HYBRID_VPC_SYSCTLS: Mapping[str, str] = {"net/ipv4/fib_multipath_hash_policy": "1"}
HYBRID_SYSCTLS: Mapping[str, str] = {
    "net/ipv4/ip_forward": "1",
    # The replica forwards between vpc0 and the line; what comes back may take another
    # replica (ECMP on both sides): never drop a packet for the way its source is routed.
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
}
ZERO_MAC = "00:00:00:00:00:00"  # the FDB entry a VXLAN sends unknown destinations by


def _hybrid_route(
    ns: str, gw: HybridGwDesired, r: HybridRouteDesired, peers: Mapping[str, Peer]
) -> KRoute:
    """The main-table route of an IDC prefix in VPC namespace `ns`: through this host's
    replica (its port), or through vxlan0 to the hosts of others, ECMP when several. A
    remote next hop has no realm: the far host delivers it by its main table, which sends
    it to its own replica."""
    dst = str(ipaddress.IPv4Network(r.dst, strict=False))
    hops: set[tuple[str, str]] = set()
    for nh in r.nexthops:
        if nh.kind == "local":
            hops.add((nh.ip or HYBRID_INNER_IP, nh.port or gw.ifname))
        elif nh.kind == "remote" and (peer := peers.get(nh.peer or "")) is not None:
            hops.add((peer.nexthop, VXLAN_IFNAME))
    if not hops:
        return KRoute(ns, dst, "unreachable")
    if len(hops) == 1:
        ((via, dev),) = hops
        if dev == VXLAN_IFNAME:
            return KRoute(ns, dst, "remote", dev, via)
        return KRoute(ns, dst, "gateway", dev, via, onlink=True)
    # Sorted as text: the order a driver reads them back in, whatever the kernel's.
    return KRoute(ns, dst, "multipath", nexthops=tuple(sorted(hops)))


def hybrid_line_mac(hybrid_gw_id: str, replica: int) -> str:
    """The MAC of a replica's end of the line: the site router learns each replica by it,
    so two replicas of one gateway never share one."""
    return gw_mac(hybrid_gw_id, f"{HYBRID_LINE_IFNAME}/{replica}")


def hybrid_objects(
    gw: HybridGwDesired,
    replica: HybridReplicaDesired,
    vpc_ns: str,
    underlay_ip: str,
    mtu: int,
    naming: Naming,
) -> list[Obj]:
    """The objects of the replica of `gw` that runs on this host: its namespace, its link
    to the VPC namespace (like a NAT gateway's: HYBRID_INNER_IP behind the port, the VPC
    namespace as NATGW_LINK_IP behind vpc0, permanent neighbours both ways), its end of
    the line (a VXLAN device on HYBRID_LINE_PORT without GBP nor learning, every frame to
    the site router's underlay address), the routes of what it announces back into the
    VPC, and its BGP session."""
    ns = naming.hybrid_netns(gw.id)
    port = gw.ifname or hybrid_ifname(gw.id)
    mac_port, mac_vpc0 = gw_mac(gw.id, "port"), gw_mac(gw.id, GW_VPC_IFNAME)
    line = HYBRID_LINE_IFNAME
    objs: list[Obj] = [
        Netns(ns, "hybrid"),
        LinkUp(ns, "lo"),
        *(Sysctl(ns, p, v) for p, v in HYBRID_SYSCTLS.items()),
        VethPair(ns, GW_VPC_IFNAME, mac_vpc0, vpc_ns, port, mac_port, mtu),
        LinkUp(ns, GW_VPC_IFNAME),
        LinkUp(vpc_ns, port),
        Address(ns, GW_VPC_IFNAME, f"{HYBRID_INNER_IP}/32"),
        Neigh(ns, GW_VPC_IFNAME, NATGW_LINK_IP, mac_port),
        Neigh(vpc_ns, port, HYBRID_INNER_IP, mac_vpc0),
        # Created against the host's underlay address, placed in the replica namespace
        # (as vxlan0 is in a VPC namespace): its socket next to the underlay, its routing
        # with the replica.
        Vxlan(
            ns,
            line,
            replica.line_vni,
            underlay_ip,
            hybrid_line_mac(gw.id, replica.index),
            mtu,
            port=HYBRID_LINE_PORT,
            gbp=False,
        ),
        Fdb(ns, line, ZERO_MAC, replica.line_vtep),
        Address(ns, line, str(ipaddress.IPv4Interface(replica.line_ip))),
        LinkUp(ns, line),
    ]
    for prefix in replica.announce:
        dst = str(ipaddress.IPv4Network(prefix, strict=False))
        objs.append(KRoute(ns, dst, "gateway", GW_VPC_IFNAME, NATGW_LINK_IP, onlink=True))
    session = Session(
        router_id=str(ipaddress.IPv4Interface(replica.line_ip).ip),
        asn=replica.asn,
        peer_ip=replica.peer_ip,
        peer_asn=replica.peer_asn,
        md5_secret=replica.md5_secret,
        bfd=replica.bfd,
        announce=tuple(str(ipaddress.IPv4Network(p, strict=False)) for p in replica.announce),
    )
    objs.append(Bgp(ns, session))
    return objs


NATGW_SYSCTLS: Mapping[str, str] = {
    "net/ipv4/ip_forward": "1",
    "net/ipv6/conf/all/disable_ipv6": "1",
    "net/ipv6/conf/default/disable_ipv6": "1",
}
HOST_SYSCTLS: Mapping[str, str] = {"net/ipv4/ip_forward": "1"}


def natgw_objects(
    gw: NatGwDesired,
    vpc_ns: str,
    blocks: Iterable[str],
    mtu: int,
    naming: Naming,
    uplink: bool,
) -> list[Obj]:
    """The objects of a NAT gateway that runs on this host (see `natgw`): its namespace,
    its two links, addresses, onlink routes and permanent neighbours on both sides, the
    host's routes to its public addresses, its NAT table, and their announcements."""
    ns = naming.natgw_netns(gw.id)
    port = gw.ifname or gateway_ifname(gw.id)
    host_if = natgw_host_ifname(gw.id)
    mac_port, mac_vpc0 = gw_mac(gw.id, "port"), gw_mac(gw.id, GW_VPC_IFNAME)
    mac_pub0, mac_host = gw_mac(gw.id, GW_PUB_IFNAME), gw_mac(gw.id, "host")
    objs: list[Obj] = [
        Netns(ns, "natgw"),
        LinkUp(ns, "lo"),
        *(Sysctl(ns, p, v) for p, v in NATGW_SYSCTLS.items()),
        *(Sysctl(HOST_NETNS, p, v) for p, v in HOST_SYSCTLS.items()),
        # VPC side: the gateway is NATGW_INNER_IP behind the port, and sees the VPC
        # namespace as NATGW_LINK_IP behind vpc0.
        VethPair(ns, GW_VPC_IFNAME, mac_vpc0, vpc_ns, port, mac_port, mtu),
        LinkUp(ns, GW_VPC_IFNAME),
        LinkUp(vpc_ns, port),
        Address(ns, GW_VPC_IFNAME, f"{NATGW_INNER_IP}/32"),
        Neigh(ns, GW_VPC_IFNAME, NATGW_LINK_IP, mac_port),
        Neigh(vpc_ns, port, NATGW_INNER_IP, mac_vpc0),
        # Public side: public_ip on pub0, everything else via the host (NATGW_LINK_IP).
        VethPair(ns, GW_PUB_IFNAME, mac_pub0, HOST_NETNS, host_if, mac_host, mtu),
        LinkUp(ns, GW_PUB_IFNAME),
        LinkUp(HOST_NETNS, host_if),
        Address(ns, GW_PUB_IFNAME, f"{gw.public_ip}/32"),
        Neigh(ns, GW_PUB_IFNAME, NATGW_LINK_IP, mac_host),
        KRoute(ns, "0.0.0.0/0", "gateway", GW_PUB_IFNAME, NATGW_LINK_IP, onlink=True),
        Neigh(HOST_NETNS, host_if, gw.public_ip, mac_pub0),
        KRoute(HOST_NETNS, f"{gw.public_ip}/32", "local", host_if),
        NatTable(
            ns,
            gw.public_ip if gw.snat or gw.forwards else "",
            tuple(gw.snat),
            tuple(gw.eips),
            tuple(gw.forwards),
        ),
    ]
    for block in blocks:
        dst = str(ipaddress.IPv4Network(block))
        objs.append(KRoute(ns, dst, "gateway", GW_VPC_IFNAME, NATGW_LINK_IP, onlink=True))
    for _inst, eip in gw.eips:
        objs.append(KRoute(HOST_NETNS, f"{eip}/32", "gateway", host_if, gw.public_ip, onlink=True))
    if uplink:
        objs.append(Announce(gw.public_ip))
        objs.extend(Announce(eip) for _inst, eip in gw.eips)
    return objs


# -- planning ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One step: create `new`, delete `old`, or replace `old` by `new` (same key)."""

    action: Literal["create", "delete", "replace"]
    old: Obj | None = None
    new: Obj | None = None

    @property
    def obj(self) -> Obj:
        o = self.new if self.new is not None else self.old
        assert o is not None
        return o

    def __str__(self) -> str:
        return f"{self.action} {self.obj}"


def _rank(o: Obj) -> int:
    """Creation order: a thing comes after what it lives in or refers to."""
    match o:
        case Netns():
            return 0
        case Sysctl(dev=None) | Uts():
            return 1
        case Vxlan() | Veth() | VethPair():
            return 2
        case Sysctl():
            return 3
        case Address():
            return 4
        # The port filter is in place before the port comes up, so an instance never sends
        # a frame that was not checked.
        case Filter() | NatTable():
            return 5
        case LinkUp():
            return 6
        case Neigh() | Fdb():
            return 7
        # The `ip yunhan` marks and the security groups are in place with the port
        # filters, before ports come up.
        case Marks() | Firewall():
            return 5
        case KRoute():
            return 8
        # A rule comes after the routes of the table it selects: a rule to a table still
        # empty would send the first packets by main instead.
        case Rule():
            return 9
        # FRR starts once its namespace's links, addresses and routes are in place (bgpd
        # binds to the line's address, `network` lines need their routes), and stops
        # before any of them goes.
        case Process() | Bgp():
            return 10
        # Announced last, withdrawn first: the uplink never routes to a gateway that is
        # not (or no longer) in place.
        case Announce():
            return 11
    raise TypeError(o)


def _ns_of(o: Obj) -> str:
    return o.name if isinstance(o, Netns) else o.netns


def _dev_of(o: Obj) -> str | None:
    match o:
        case Sysctl():
            return o.dev
        case LinkUp() | Address() | Neigh() | Fdb() | Filter() | VethPair():
            return o.ifname
        case KRoute():
            return o.dev
    return None


def _devs_of(o: Obj) -> tuple[str, ...]:
    """Every device `o` lives on or leaves by (a multipath route: each next hop's)."""
    if isinstance(o, KRoute):
        return o.devs
    dev = _dev_of(o)
    return () if dev is None else (dev,)


@dataclass
class _Doomed:
    netns: set[str] = field(default_factory=set)
    links: set[tuple[str, str]] = field(default_factory=set)

    def covers(self, o: Obj) -> bool:
        # Namespace files and processes (FRR's daemons too) outlive a network namespace:
        # never implied.
        if isinstance(o, Netns | Uts | Process | Bgp):
            return False
        if _ns_of(o) in self.netns:
            return True
        if isinstance(o, Filter):
            return False  # a netdev chain outlives its device (it re-binds by name)
        # A route leaving by a device that goes is removed with it (a multipath route as
        # a whole, when any of its devices is unregistered).
        return any((_ns_of(o), dev) in self.links for dev in _devs_of(o))


def plan(want: Mapping[Key, Obj], have: Mapping[Key, Obj]) -> list[Op]:
    """The ops that turn `have` into `want`, in an order the kernel accepts.

    Deletes come first (reverse creation order), then creates and replaces. A delete whose
    object disappears with something else being deleted (a route on a removed port, a
    link in a removed namespace) is left out: the kernel removes it, and deleting it
    first would only cost a syscall. Sysctls are attributes, never deleted. A replaced
    link that must be re-created takes its dependants with it; the caller re-observes
    and plans again, which puts them back (incremental equals full).
    """
    doomed = _Doomed()
    for k, o in have.items():
        if k in want:
            continue
        if isinstance(o, Netns):
            doomed.netns.add(o.name)
        elif isinstance(o, Vxlan | Veth | VethPair):
            doomed.links.update(_link_ends(o))
    # Inside an instance the tenant may add addresses of its own (a VIP taken over by
    # keepalived): we ensure the instance's address, and never remove one we did not ask
    # for (the port filter decides what may leave the instance anyway).
    tenant_ns = {o.name for o in have.values() if isinstance(o, Netns) and o.role == "instance"}
    deletes = [
        Op("delete", old=o)
        for k, o in have.items()
        if k not in want
        and not isinstance(o, Sysctl)
        and not (isinstance(o, Address) and o.netns in tenant_ns)
        and not doomed.covers(o)
    ]
    changes: list[Op] = []
    for k, o in want.items():
        cur = have.get(k)
        if cur is None:
            changes.append(Op("create", new=o))
        elif cur != o:
            changes.append(Op("replace", old=cur, new=o))
    # A re-created port loses the binding of its ingress hook on older kernels: rewrite its
    # filter with it, so the port is never up without its chain.
    relinked = {(op.obj.netns, op.obj.ifname) for op in changes if isinstance(op.obj, Veth)}
    for k, o in want.items():
        if isinstance(o, Filter) and (o.netns, o.ifname) in relinked and have.get(k) == o:
            changes.append(Op("replace", old=o, new=o))
    deletes.sort(key=lambda op: (-_rank(op.obj), op.obj.key))
    changes.sort(key=lambda op: (_rank(op.obj), op.obj.key))
    return deletes + changes


def _link_ends(o: Vxlan | Veth | VethPair) -> list[tuple[str, str]]:
    """(netns, ifname) of each end of a link that exists on this host."""
    ends = [(o.netns, o.ifname)]
    if isinstance(o, Veth | VethPair) and o.peer_netns:
        ends.append((o.peer_netns, o.peer_ifname))
    return ends


def owner_keys(o: Obj) -> tuple[str, str | None]:
    """(netns, device) that an error on `o` is attributed to, for per-instance reports."""
    if isinstance(o, Veth):
        return (o.netns, o.ifname)
    return (_ns_of(o), _dev_of(o))


def after(have: Mapping[Key, Obj], done: Iterable[Op]) -> State | None:
    """What a driver observes once `done` has succeeded on `have`, or None if unsure.

    It saves the apply a second observation of the whole host after each pass (the
    largest cost of applying a small change). Creates and replaces leave their new object,
    deletes remove theirs and everything the kernel removes with it (the planner's
    `_Doomed` rule). None, and the caller observes again, where the kernel may have
    removed more than that: a link or namespace replaced (the driver may delete and
    re-create it, taking addresses, routes and neighbours with it) or a link created
    where something on a device of that name was observed (a leftover end the driver
    deletes first). Drift that appears meanwhile is left to the next observation, as it
    always was for drift that appears after one.
    """
    done = list(done)
    touched: set[tuple[str, str]] = set()
    for o in have.values():
        devs = _devs_of(o) if not isinstance(o, Vxlan | Veth) else (o.ifname,)
        touched.update((_ns_of(o), dev) for dev in devs)
        if isinstance(o, Veth | VethPair):
            touched.update(_link_ends(o))
    doomed = _Doomed()
    for op in done:
        o = op.obj
        if op.action == "replace" and isinstance(o, Netns | Vxlan | Veth | VethPair):
            return None
        if op.action == "delete" and isinstance(o, LinkUp):
            return None  # a link set down loses its routes
        if (
            op.action == "create"
            and isinstance(o, Vxlan | Veth | VethPair)
            and any(e in touched for e in _link_ends(o))
        ):
            return None
        if op.action == "delete":
            if isinstance(o, Netns):
                doomed.netns.add(o.name)
            elif isinstance(o, Vxlan | Veth | VethPair):
                doomed.links.update(_link_ends(o))
    # A veth pair dies as a whole: a port whose instance end was in a removed namespace,
    # a gateway link either of whose namespaces was removed.
    for o in have.values():
        if isinstance(o, Veth) and o.peer_netns in doomed.netns:
            doomed.links.add((o.netns, o.ifname))
        if isinstance(o, VethPair) and {o.netns, o.peer_netns} & doomed.netns:
            doomed.links.update(_link_ends(o))
    out = {
        k: o
        for k, o in have.items()
        if not doomed.covers(o)
        and not (isinstance(o, Veth | Vxlan | VethPair) and o.key[1:] in doomed.links)
    }
    for op in done:
        if op.action == "delete":
            out.pop(op.obj.key, None)
        else:
            assert op.new is not None
            out[op.new.key] = op.new
    return out
