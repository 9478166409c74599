"""`yunhan trace` in model mode: where one packet goes, read off the hosts' documents.

Pure (STYLE §1): given the assembled `HostDesired` of the hosts a packet may cross and a
`Directory` to name things, `trace` follows one packet (tcp/udp with a destination port,
or an ICMP echo) from an instance's port, namespace by namespace, and returns a `Trace`:
at each hop the host, the namespace, the ports it came in and goes out by, the mark that
routes it, the policy route or route that decides, the NAT applied, and where and why it
is dropped.

The walk is the kernel's over what `net.state` compiles from the same documents
(docs/routing.md; spec section 4), not a second opinion of the routing model:

* in a VPC namespace the local table comes first (the subnet gateways on lo), then the ip
  rules by pref: 100 `iif vxlan0 fwmark 0/1 lookup main`; per subnet selector its table's
  policies at 10000 + priority (drop = blackhole rule, allow = goto 30000, reroute =
  lookup of a table holding 0/0 only while the next hop is up: a lookup that finds nothing
  goes on to the next rule); 30000 the route table (custom winners, `throw` for each VPC
  block no custom route has exactly); 30001 the NAT default (`throw` blocks, 0/0 to the
  gateway); main (the /32 host routes, each block `unreachable`);
* marks: a packet from an instance port carries its subnet's selector, one from a gateway
  port none; one leaving by vxlan0 through a next hop on another host (realm 1) is
  flagged routed, and the far host gives it its source subnet's selector again;
* an instance answers for its own address; one that receives another's packet (an
  appliance) routes it itself: on-link in its subnet (proxy ARP, answered by main only),
  else to its gateway, so the packet comes back in by its port and its own subnet's table
  decides; its port filter lets another's source through only if it is a forwarder;
  (the model cannot see inside an instance: it takes one that receives another's packet
  for a forwarder with ip_forward on, and knows only the addresses the documents give it;
  `--live` shows where that does not hold);
* security groups and network ACLs (net.sgeval, as the `ip yunhan_sg` table): a packet
  forwarded in a VPC namespace is checked against the egress rules of the port it came
  from and the ingress rules of the port it leaves by, as the first packet of a new flow;
* a NAT gateway namespace: DNAT only for what comes from the internet side (an EIP, a
  forwarded port of its public address), SNAT on the way out (an instance's EIP before
  the served subnets' public address); the host namespace routes the gateways' public
  addresses into them and everything else to the uplink.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from yunhan.net import sgeval
from yunhan.net.desired import (
    MARK_ROUTED,
    MARK_SELECTOR_SHIFT,
    NAT_BASE,
    NATGW_INNER_IP,
    POLICY_BASE,
    TABLE_BASE,
    HostDesired,
    HybridGwDesired,
    HybridRouteDesired,
    NatGwDesired,
    NextHop,
    PolicyDesired,
    Port,
    Route,
    SubnetDesired,
    VpcDesired,
)
from yunhan.net.naming import VXLAN_IFNAME
from yunhan.net.state import compile_firewall

Proto = Literal["tcp", "udp", "icmp"]
Place = Literal["instance", "vpc", "natgw", "host", "internet"]
Verdict = Literal["delivered", "dropped", "internet"]

# ip rule prefs in a VPC namespace (net.state; docs/routing.md)
PREF_DIRECT = 100
PREF_POLICY = 10000
PREF_TABLE = 30000
PREF_NAT = 30001
PREF_MAIN = 32766
MAIN_TABLE = 254
SELECTOR_MASK = 0xFFFF0000
MAX_HOPS = 32
GW_VPC_IFNAME = "vpc0"  # a gateway namespace's end toward its VPC
GW_PUB_IFNAME = "pub0"  # a gateway namespace's end toward its host
INSTANCE_IFNAME = "eth0"

# Why a packet stops (Trace.reason)
POLICY_DROP = "policy-drop"  # a policy route with action drop
BLACKHOLE = "blackhole"  # a custom route (or reroute) to blackhole
UNREACHABLE = "unreachable-next-hop"  # the route's next hop (and every standby) is down
NO_MEMBER = "no-member"  # in the VPC's blocks, but no instance holds the address
NO_NATGW = "no-natgw"  # an internet destination from a subnet no NAT gateway serves
OUTSIDE = "outside"  # beyond the gateways, not an address anything routes to
NO_ROUTE = "no-route"  # no rule or table has a route (gateway side, forwarded traffic)
ANTISPOOF = "antispoof"  # an appliance that is not a forwarder sends another's packet
NOT_ANNOUNCED = "not-announced"  # a public address whose gateway runs nowhere
LOOP = "loop"  # the packet comes back to where it was (or exceeds MAX_HOPS)
MARTIAN = "martian-source"  # comes back into a gateway with the gateway's own address
UNKNOWN_HOST = "unknown-host"  # a next hop on a host whose document the caller lacks
SECURITY_GROUP = "security-group"  # a security group of the port it leaves or enters
NETWORK_ACL = "network-acl"  # the network ACL of the port's subnet


class TraceError(ValueError):
    """The trace cannot start: the source is not on the host or has no port there."""


@dataclass(frozen=True)
class PublicAddress:
    """A public address of the region: a NAT gateway's own, or an EIP bound through it."""

    address: str
    natgw: str  # the gateway's id
    host: str | None  # the host it runs on (None: nowhere, so nothing announces it)
    eip: str | None = None  # the EIP's id, when it is one


@dataclass(frozen=True)
class Directory:
    """What the documents do not say: names, who holds public addresses, the internet.

    `internet` lists the networks reachable beyond the gateways (the lab: its internet
    link); None means any address is (a real region's uplink to the internet).
    """

    names: Mapping[str, str] = field(default_factory=dict)  # resource id -> name
    public: Mapping[str, PublicAddress] = field(default_factory=dict)  # by address
    internet: tuple[str, ...] | None = None
    # The VPCs the trace may enter (None: all). A tenant's trace treats another project's
    # gateways as the internet: it neither enters nor names what lies behind them.
    vpcs: frozenset[str] | None = None

    def name(self, rid: str | None) -> str:
        if not rid:
            return ""
        name = self.names.get(rid)
        return f"{name} ({rid})" if name and name != rid else rid


@dataclass(frozen=True)
class PolicyMatch:
    """The policy route whose ip rule the packet matched."""

    id: str
    table: str  # route table id
    priority: int
    action: Literal["drop", "allow", "reroute"]
    rule_pref: int
    match: str  # what it matches, as `ip rule` would print it
    nexthop: str = ""  # reroute: its target
    taken: bool = True  # reroute whose next hop is down: False, destination routing decides


@dataclass(frozen=True)
class RouteUsed:
    """The route that sent the packet on (or stopped it).

    type: custom | policy (a reroute) | default (the NAT gateway's 0/0) | direct (a VPC
    block, delivered by the host route of the member holding the address) | host (a /32
    of main, for traffic already routed) | local (an address of the namespace itself) |
    nat (a route of a gateway or host namespace).
    """

    type: Literal["custom", "policy", "default", "direct", "host", "local", "nat"]
    dst: str  # the prefix that matched
    kernel_table: int
    id: str = ""  # route, policy or NAT gateway id
    table: str = ""  # route table id (custom, policy, default)
    priority: int | None = None
    target: str = ""  # "instance:<id>", "natgw:<id>", "vip:<ip>", "blackhole", ...
    via: Literal["local", "remote", "blackhole", "unreachable", "deliver", "uplink"] = "local"
    port: str = ""  # local: the port it leaves by
    peer: str = ""  # remote: the host it is sent to
    host_route: str = ""  # direct: the /32 of the member holding the address ("" none)


@dataclass(frozen=True)
class Hop:
    """One namespace the packet crosses."""

    host: str  # host name ("" for the internet)
    place: Place
    ref: str  # instance id, VPC id, NAT gateway id, host name, "internet"
    vni: int | None = None  # place "vpc": the VPC's VNI (its namespace is "v<vni>")
    iif: str = ""
    oif: str = ""
    mark: int | None = None  # vpc: the packet mark the ip rules see
    subnet: str = ""  # vpc: the source subnet whose tables route it ("" none)
    table: str = ""  # vpc: that subnet's route table
    policy: PolicyMatch | None = None
    route: RouteUsed | None = None
    nat: str = ""  # "snat 10.0.1.5 -> 198.19.128.4 (eip …)", "dnat …"
    note: str = ""
    dropped: bool = False
    # the packet as it arrives here (NAT changes it on the way)
    src: str = ""
    dst: str = ""
    proto: str = ""
    dport: int | None = None


@dataclass(frozen=True)
class Trace:
    src: str  # instance id
    src_ip: str
    src_host: str
    src_port: str
    src_subnet: str  # "" when the document has no subnets (main table only)
    selector: int | None
    dst: str  # the address asked for
    proto: Proto
    port: int | None
    verdict: Verdict
    reason: str  # "" when delivered, else one of the constants above
    detail: str  # a sentence: where it ended and why
    hops: tuple[Hop, ...]
    delivered_to: str = ""  # "instance:<id>", "vpc:<id>", "natgw:<id>", "internet"
    vpc: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the API's answer)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trace:
        """The trace `to_json` (or the API) gave; extra keys (names, text) are ignored."""
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        hops = []
        for h in data["hops"]:
            hd = {k: h[k] for k in Hop.__dataclass_fields__ if k in h}
            if hd.get("policy") is not None:
                hd["policy"] = PolicyMatch(**hd["policy"])
            if hd.get("route") is not None:
                hd["route"] = RouteUsed(**hd["route"])
            hops.append(Hop(**hd))
        fields["hops"] = tuple(hops)
        return cls(**fields)

    def render(self, names: Directory | None = None) -> str:
        """The trace for a person: one block per hop, the verdict last."""
        return render(self, names or Directory())


# -- the walk ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pkt:
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    proto: Proto
    dport: int | None


_IPPROTO = {"tcp": 6, "udp": 17, "icmp": 1}


def _net(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr, strict=False)


def _in_blocks(vpc: VpcDesired, ip: ipaddress.IPv4Address) -> ipaddress.IPv4Network | None:
    best: ipaddress.IPv4Network | None = None
    for c in vpc.cidrs:
        n = _net(c)
        if ip in n and (best is None or n.prefixlen > best.prefixlen):
            best = n
    return best


def _gateway_ips(vpc: VpcDesired) -> set[ipaddress.IPv4Address]:
    return {ipaddress.IPv4Address(g.split("/", 1)[0]) for g in vpc.gateways}


def _subnet_of(vpc: VpcDesired, ip: ipaddress.IPv4Address) -> SubnetDesired | None:
    return next((s for s in vpc.subnets if ip in _net(s.cidr)), None)


def _selector_of_mark(vpc: VpcDesired, mark: int) -> SubnetDesired | None:
    sel = (mark & SELECTOR_MASK) >> MARK_SELECTOR_SHIFT
    return next((s for s in vpc.subnets if s.index == sel), None) if sel else None


def _main_lookup(vpc: VpcDesired, ip: ipaddress.IPv4Address) -> Route | None:
    """Longest prefix (then lowest metric) among main's routes that the host installs (a
    remote route to a host without a tunnel is not)."""
    peers = {p.host for p in vpc.peers}
    best: Route | None = None
    best_key = (-1, 0)
    for r in vpc.routes:
        if r.table != MAIN_TABLE or (r.kind == "remote" and r.peer not in peers):
            continue
        n = _net(r.dst)
        key = (n.prefixlen, -r.metric)
        if ip in n and key > best_key:
            best, best_key = r, key
    return best


def _policy_matches(p: PolicyDesired, pkt: _Pkt) -> bool:
    if p.src is not None and pkt.src not in _net(p.src):
        return False
    if p.dst is not None and pkt.dst not in _net(p.dst):
        return False
    proto = _IPPROTO.get(p.proto)
    if proto is not None and _IPPROTO[pkt.proto] != proto:
        return False
    # The rule carries a port range only for tcp/udp (net.state._policy_rule).
    if proto in (6, 17) and p.port_min is not None:
        hi = p.port_max or p.port_min
        return pkt.dport is not None and p.port_min <= pkt.dport <= hi
    return True


def _describe_policy(p: PolicyDesired) -> str:
    words = []
    if p.src:
        words.append(f"from {p.src}")
    if p.dst:
        words.append(f"to {p.dst}")
    if p.proto != "any":
        words.append(f"ipproto {p.proto}")
        if p.proto in ("tcp", "udp") and p.port_min is not None:
            hi = p.port_max or p.port_min
            words.append(f"dport {p.port_min}" + (f"-{hi}" if hi != p.port_min else ""))
    return " ".join(words) or "all"


def _nh_route(
    vpc: VpcDesired, nh: NextHop | None
) -> tuple[Literal["local", "remote", "blackhole", "unreachable"], str, str]:
    """(via, port, peer) of the kernel route net.state makes for a next hop."""
    peers = {p.host for p in vpc.peers}
    if nh is None:
        return "unreachable", "", ""
    if nh.kind == "local" and nh.port and nh.ip:
        return "local", nh.port, ""
    if nh.kind == "remote" and nh.peer in peers:
        return "remote", "", nh.peer or ""
    if nh.kind == "blackhole":
        return "blackhole", "", ""
    return "unreachable", "", ""


@dataclass
class _Walk:
    docs: Mapping[str, HostDesired]
    directory: Directory
    hops: list[Hop] = field(default_factory=list)
    seen: set[tuple[str, str, str, str, int, _Pkt]] = field(default_factory=set)
    verdict: Verdict = "dropped"
    reason: str = ""
    detail: str = ""
    delivered_to: str = ""

    def add(self, pkt: _Pkt, hop: Hop) -> None:
        """Record a hop with the packet as it arrives there."""
        self.hops.append(
            _replace(hop, src=str(pkt.src), dst=str(pkt.dst), proto=pkt.proto, dport=pkt.dport)
        )

    def stop(self, reason: str, detail: str) -> None:
        self.verdict, self.reason, self.detail = "dropped", reason, detail
        if self.hops:
            self.hops[-1] = _replace(self.hops[-1], dropped=True)

    def deliver(self, to: str, detail: str) -> None:
        self.verdict, self.reason, self.detail, self.delivered_to = "delivered", "", detail, to

    def vpc_on(self, host: str, vpc_id: str) -> tuple[HostDesired, VpcDesired] | None:
        doc = self.docs.get(host)
        if doc is None:
            return None
        vpc = next((v for v in doc.vpcs if v.id == vpc_id), None)
        return None if vpc is None else (doc, vpc)

    def loop(self, key: tuple[str, str, str, str, int, _Pkt]) -> bool:
        if key in self.seen or len(self.hops) >= MAX_HOPS:
            self.stop(LOOP, "the packet comes back to where it already was: a routing loop")
            return True
        self.seen.add(key)
        return False


def _replace(h: Hop, **kw: Any) -> Hop:
    d = {f: getattr(h, f) for f in h.__dataclass_fields__}
    d.update(kw)
    return Hop(**d)


def trace(
    docs: Mapping[str, HostDesired],
    src_host: str,
    src_instance: str,
    dst: str,
    proto: Proto = "icmp",
    port: int | None = None,
    directory: Directory | None = None,
) -> Trace:
    """Follow one packet from instance `src_instance` (on `src_host`) to address `dst`.

    `docs` are the assembled documents by host name; it needs the source's host and every
    host the packet reaches (a lazy mapping is fine: only those are read). TraceError when
    the source has no port on `src_host`, or a tcp/udp packet no port (or icmp one).
    """
    directory = directory or Directory()
    if proto in ("tcp", "udp") and port is None:
        raise TraceError(f"a {proto} trace needs a destination port")
    if proto == "icmp" and port is not None:
        raise TraceError("an icmp trace takes no port")
    doc = docs.get(src_host)
    if doc is None:
        raise TraceError(f"host {src_host} has no document")
    found = None
    for v in doc.vpcs:
        for p in v.ports:
            if p.instance_id == src_instance:
                found = (v, p)
    if found is None:
        raise TraceError(f"instance {src_instance} has no port on host {src_host} (not placed?)")
    vpc, sport = found
    dst_ip = ipaddress.IPv4Address(dst)
    pkt = _Pkt(ipaddress.IPv4Address(sport.ip), dst_ip, proto, port)
    sub = _subnet_of(vpc, pkt.src)
    w = _Walk(docs, directory)
    _from_instance(w, src_host, vpc, sport, pkt, forwarded=False)
    return Trace(
        src=src_instance,
        src_ip=sport.ip,
        src_host=src_host,
        src_port=sport.ifname,
        src_subnet=sub.id if sub else "",
        selector=sub.index if sub else None,
        dst=dst,
        proto=proto,
        port=port,
        verdict=w.verdict,
        reason=w.reason,
        detail=w.detail,
        hops=tuple(w.hops),
        delivered_to=w.delivered_to,
        vpc=vpc.id,
    )


def _from_instance(
    w: _Walk, host: str, vpc: VpcDesired, port: Port, pkt: _Pkt, *, forwarded: bool
) -> None:
    """The packet leaves the instance behind `port` by the instance's own routing."""
    own = ipaddress.IPv4Interface(f"{port.ip}/{port.prefixlen}")
    if not forwarded and pkt.dst == own.ip:
        w.add(pkt, Hop(host, "instance", port.instance_id, note="its own address"))
        w.deliver(f"instance:{port.instance_id}", "the destination is the source itself")
        return
    if pkt.dst in own.network:
        # On-link for the instance: it ARPs for the destination itself; the VPC namespace
        # answers by proxy ARP only if main routes it out another device (the ARP lookup
        # carries no mark, so no rule but main's applies).
        note = f"{pkt.dst} is on-link in {own.network}: ARP for it, answered by proxy ARP"
        answered = pkt.dst in _gateway_ips(vpc)
        if not answered:
            r = _main_lookup(vpc, pkt.dst)
            answered = r is not None and (
                (r.kind == "local" and r.port != port.ifname) or r.kind == "remote"
            )
        if not answered:
            w.add(pkt, Hop(host, "instance", port.instance_id, oif=INSTANCE_IFNAME, note=note))
            w.stop(
                NO_MEMBER,
                f"no member holds {pkt.dst}: its ARP request gets no answer "
                "(main has no host route for it), so the packet never leaves the instance",
            )
            return
    else:
        note = f"to its gateway {port.gateway} (default route)"
    iif = ""
    if forwarded:
        note = "not its address: forwards it (ip_forward on), " + note
        iif = INSTANCE_IFNAME
    w.add(pkt, Hop(host, "instance", port.instance_id, iif=iif, oif=INSTANCE_IFNAME, note=note))
    if forwarded and not port.forwarder and str(pkt.src) not in (port.ip, *port.allowed_ips):
        w.stop(
            ANTISPOOF,
            f"the port filter of {port.ifname} drops a source ({pkt.src}) that is not the "
            "instance's: it is not a forwarder (not a next hop of any route)",
        )
        return
    _vpc_ns(w, host, vpc, port.ifname, pkt, gbp=0)


def _ingress_mark(vpc: VpcDesired, iif: str, pkt: _Pkt, gbp: int) -> int:
    """The mark after the `ip yunhan` prerouting chain (net.state compile_routing)."""
    if not vpc.subnets:
        return gbp if iif == VXLAN_IFNAME else 0
    if iif == VXLAN_IFNAME:
        if gbp & MARK_ROUTED:
            s = _subnet_of(vpc, pkt.src)
            return (s.index << MARK_SELECTOR_SHIFT) | MARK_ROUTED if s else gbp
        return gbp
    port = next((p for p in vpc.ports if p.ifname == iif), None)
    if port is None:
        return 0  # a gateway port: no selector
    s = _subnet_of(vpc, ipaddress.IPv4Address(port.ip))
    return s.index << MARK_SELECTOR_SHIFT if s else 0


def _vpc_ns(w: _Walk, host: str, vpc: VpcDesired, iif: str, pkt: _Pkt, gbp: int) -> None:
    """Route the packet in the VPC namespace of `host` it entered by `iif`."""
    mark = _ingress_mark(vpc, iif, pkt, gbp)
    if w.loop((host, "vpc", vpc.id, iif, mark, pkt)):
        return
    sub = _selector_of_mark(vpc, mark)
    hop = Hop(
        host,
        "vpc",
        vpc.id,
        vni=vpc.vni,
        iif=iif,
        mark=mark,
        subnet=sub.id if sub else "",
        table=_table_id(vpc, sub),
    )
    if pkt.dst in _gateway_ips(vpc):
        w.add(
            pkt,
            _replace(
                hop,
                route=RouteUsed("local", f"{pkt.dst}/32", 255, via="deliver"),
                note="a subnet gateway: an address of the VPC namespace itself",
            ),
        )
        w.deliver(f"vpc:{vpc.id}", f"delivered to the VPC router on {host} (subnet gateway)")
        return
    decided = _decide(vpc, iif, pkt, mark, sub)
    hop = _replace(hop, policy=decided.policy, route=decided.route, note=decided.note)
    if decided.drop:
        w.add(pkt, hop)
        w.stop(decided.drop, decided.detail)
        return
    r = decided.route
    assert r is not None
    oif = VXLAN_IFNAME if r.via == "remote" else r.port
    refused = sgeval.verdict(
        compile_firewall("", vpc), iif, oif, sgeval.Packet(pkt.src, pkt.dst, pkt.proto, pkt.dport)
    )
    if refused is not None:
        w.add(pkt, _replace(hop, oif=oif))
        w.stop(refused.by, refused.detail + " (the first packet of a new flow)")
        return
    if r.via == "remote":
        hop = _replace(hop, oif=VXLAN_IFNAME)
        w.add(pkt, hop)
        routed = MARK_ROUTED if r.type in ("custom", "policy", "default") else 0
        far = w.vpc_on(r.peer, vpc.id)
        if far is None:
            w.stop(UNKNOWN_HOST, f"host {r.peer} (the next hop's) has no document of {vpc.id}")
            return
        _vpc_ns(w, r.peer, far[1], VXLAN_IFNAME, pkt, routed)
        return
    hop = _replace(hop, oif=r.port)
    w.add(pkt, hop)
    _to_port(w, host, vpc, r.port, pkt)


def _table_id(vpc: VpcDesired, sub: SubnetDesired | None) -> str:
    if sub is None:
        return ""
    t = next((t for t in vpc.tables if t.index == sub.table), None)
    return t.id if t else ""


@dataclass(frozen=True)
class _Decision:
    route: RouteUsed | None = None
    policy: PolicyMatch | None = None
    drop: str = ""
    detail: str = ""
    note: str = ""


def _decide(
    vpc: VpcDesired, iif: str, pkt: _Pkt, mark: int, sub: SubnetDesired | None
) -> _Decision:
    """The fib rules walk of the VPC namespace (see the module docstring)."""
    if iif == VXLAN_IFNAME and not mark & MARK_ROUTED:
        m = _from_main(vpc, pkt, "host")
        if m.route is not None or m.drop:
            return _replace_note(m, "not flagged routed (the sender routed it): main delivers it")
    policy: PolicyMatch | None = None
    table_id = _table_id(vpc, sub)
    if sub is not None:
        pols = sorted(
            (p for p in vpc.policies if p.table == sub.table), key=lambda p: (p.priority, p.id)
        )
        for p in pols:
            if not _policy_matches(p, pkt):
                continue
            pm = PolicyMatch(
                p.id,
                table_id,
                p.priority,
                p.action,
                PREF_POLICY + p.priority,
                _describe_policy(p),
                nexthop=p.nexthop.target if p.nexthop else "",
            )
            if p.action == "drop":
                return _Decision(
                    policy=pm,
                    drop=POLICY_DROP,
                    detail=f"policy route {p.id} (priority {p.priority}) of table {table_id} "
                    f"drops it: ip rule {pm.rule_pref} blackhole",
                )
            if p.action == "allow":
                policy = pm
                break  # goto 30000: the table decides
            if p.nexthop is None or p.nexthop.kind == "unreachable":
                # no route in its table: the lookup falls through to the next rules
                policy = _replace_pm(pm, taken=False)
                continue
            via, port, peer = _nh_route(vpc, p.nexthop)
            route = RouteUsed(
                "policy",
                "0.0.0.0/0",
                POLICY_BASE + p.index,
                id=p.id,
                table=table_id,
                priority=p.priority,
                target=p.nexthop.target,
                via=via,
                port=port,
                peer=peer,
            )
            return _routed(pm, route, p.id)
        # pref 30000: the route table's custom winners, the VPC blocks thrown to main
        t = next((t for t in vpc.tables if t.index == sub.table), None)
        if t is not None:
            best = None
            for r in t.routes:
                n = _net(r.dst)
                if pkt.dst in n and (best is None or n.prefixlen > _net(best.dst).prefixlen):
                    best = r
            customs = {str(_net(r.dst)) for r in t.routes}
            throws = [_net(c) for c in vpc.cidrs if str(_net(c)) not in customs]
            throw = max(
                (n for n in throws if pkt.dst in n), key=lambda n: n.prefixlen, default=None
            )
            if best is not None and (throw is None or _net(best.dst).prefixlen > throw.prefixlen):
                via, port, peer = _nh_route(vpc, best.nexthop)
                route = RouteUsed(
                    "custom",
                    best.dst,
                    TABLE_BASE + t.index,
                    id=best.route_id,
                    table=t.id,
                    priority=best.priority,
                    target=best.nexthop.target,
                    via=via,
                    port=port,
                    peer=peer,
                )
                return _routed(policy, route, best.route_id)
        # pref 30001: the NAT default, if a gateway serves the subnet
        if sub.natgw is not None and _in_blocks(vpc, pkt.dst) is None:
            g = next((g for g in vpc.natgws if g.index == sub.natgw), None)
            if g is not None:
                via, port, peer = _nh_route(vpc, g.nexthop)
                route = RouteUsed(
                    "default",
                    "0.0.0.0/0",
                    NAT_BASE + g.index,
                    id=g.id,
                    table=table_id,
                    target=f"natgw:{g.id}",
                    via=via,
                    port=port,
                    peer=peer,
                )
                return _routed(policy, route, g.id)
    m = _from_main(vpc, pkt, "direct")
    if m.route is None and not m.drop:
        if sub is not None and sub.natgw is None:
            return _Decision(
                policy=policy,
                drop=NO_NATGW,
                detail=f"{pkt.dst} is outside the VPC and no NAT gateway serves subnet "
                f"{sub.id}: no route (network unreachable)",
            )
        return _Decision(policy=policy, drop=NO_ROUTE, detail=f"no route to {pkt.dst}")
    return _Decision(route=m.route, policy=policy, drop=m.drop, detail=m.detail, note=m.note)


def _replace_note(d: _Decision, note: str) -> _Decision:
    return _Decision(d.route, d.policy, d.drop, d.detail, note)


def _replace_pm(p: PolicyMatch, **kw: Any) -> PolicyMatch:
    d = asdict(p)
    d.update(kw)
    return PolicyMatch(**d)


def _routed(policy: PolicyMatch | None, route: RouteUsed, rid: str) -> _Decision:
    if route.via == "blackhole":
        return _Decision(
            route,
            policy,
            BLACKHOLE,
            f"{route.type} route {rid} ({route.dst}) sends it to blackhole: dropped silently",
        )
    if route.via == "unreachable":
        why = (
            "the NAT gateway runs on no healthy host"
            if route.type == "default"
            else "its next hop (and every standby route of the prefix) is down or gone"
        )
        return _Decision(
            route,
            policy,
            UNREACHABLE,
            f"{route.type} route {rid} ({route.dst}) to {route.target} is unreachable: {why}",
        )
    return _Decision(route, policy)


def _hybrid_lookup(
    vpc: VpcDesired, ip: ipaddress.IPv4Address
) -> tuple[HybridGwDesired, HybridRouteDesired] | None:
    """The longest IDC prefix (served in the IDC) of main that holds `ip`, and its gateway."""
    best = None
    for g in vpc.hybrids:
        for r in g.routes:
            n = _net(r.dst)
            if ip in n and (best is None or n.prefixlen > _net(best[1].dst).prefixlen):
                best = (g, r)
    return best


def _from_hybrid(
    vpc: VpcDesired,
    pkt: _Pkt,
    kind: Literal["direct", "host"],
    g: HybridGwDesired,
    r: HybridRouteDesired,
) -> _Decision:
    """Main's route of an IDC prefix: this host's replica, else the hosts of the others
    (ECMP; the model names the first, the kernel hashes the flow), else unreachable."""
    target = f"hybrid:{g.id}"
    local = next((n for n in r.nexthops if n.kind == "local"), None)
    peers = {p.host for p in vpc.peers}
    remote = [n for n in r.nexthops if n.kind == "remote" and n.peer in peers]
    note = f"served in the IDC through hybrid gateway {g.id}"
    if local is not None:
        port = local.port or g.ifname
        route = RouteUsed(kind, r.dst, MAIN_TABLE, target=target, via="local", port=port)
        return _Decision(route, note=f"{note}: its replica on this host")
    if remote:
        hosts = ", ".join(sorted(str(n.peer) for n in remote))
        route = RouteUsed(
            kind, r.dst, MAIN_TABLE, target=target, via="remote", peer=str(remote[0].peer)
        )
        ecmp = f"ECMP over the replicas on {hosts}" if len(remote) > 1 else f"on {hosts}"
        return _Decision(route, note=f"{note}: {ecmp}")
    route = RouteUsed(kind, r.dst, MAIN_TABLE, target=target, via="unreachable")
    return _Decision(
        route,
        drop=UNREACHABLE,
        detail=f"{r.dst} is served in the IDC, and no replica of hybrid gateway {g.id} has "
        "its BGP session up (with routes learned): unreachable",
    )


def _from_main(vpc: VpcDesired, pkt: _Pkt, kind: Literal["direct", "host"]) -> _Decision:
    """Main's answer: a member's /32 (local port or remote host), an IDC prefix (a hybrid
    gateway's replicas), a block unreachable."""
    r = _main_lookup(vpc, pkt.dst)
    h = _hybrid_lookup(vpc, pkt.dst)
    if h is not None and (r is None or _net(h[1].dst).prefixlen >= _net(r.dst).prefixlen):
        return _from_hybrid(vpc, pkt, kind, *h)
    if r is None:
        return _Decision()
    block = _in_blocks(vpc, pkt.dst)
    prefix = str(block) if kind == "direct" and block is not None else r.dst
    if r.kind in ("unreachable", "blackhole"):
        route = RouteUsed(kind, prefix, MAIN_TABLE, via="unreachable")
        return _Decision(
            route,
            drop=NO_MEMBER,
            detail=f"no member holds {pkt.dst}: main has only {r.dst} {r.kind}",
        )
    route = RouteUsed(
        kind,
        prefix,
        MAIN_TABLE,
        via="local" if r.kind == "local" else "remote",
        port=r.port or "",
        peer=r.peer or "",
        host_route=r.dst,
    )
    return _Decision(route)


def _to_port(w: _Walk, host: str, vpc: VpcDesired, ifname: str, pkt: _Pkt) -> None:
    """The packet leaves the VPC namespace by port `ifname`: an instance or a gateway."""
    port = next((p for p in vpc.ports if p.ifname == ifname), None)
    if port is not None:
        if str(pkt.dst) in (port.ip, *port.allowed_ips):
            w.add(pkt, Hop(host, "instance", port.instance_id, iif=INSTANCE_IFNAME))
            w.deliver(f"instance:{port.instance_id}", f"delivered to {port.instance_id} on {host}")
            return
        _from_instance(w, host, vpc, port, pkt, forwarded=True)
        return
    hg = next((h for h in vpc.hybrids if h.replica is not None and h.ifname == ifname), None)
    if hg is not None:
        w.deliver(
            f"idc:{hg.id}",
            f"sent to the IDC by the replica of hybrid gateway {hg.id} on {host} (its "
            "line and the IDC beyond are not in the model)",
        )
        return
    g = next((g for g in vpc.natgws if g.local and g.ifname == ifname), None)
    if g is None:
        w.stop(NO_ROUTE, f"port {ifname} is not on host {host}")
        return
    _natgw_out(w, host, vpc, g, pkt)


def _natgw_out(w: _Walk, host: str, vpc: VpcDesired, g: NatGwDesired, pkt: _Pkt) -> None:
    """In gateway `g`'s namespace, from the VPC side (no DNAT from this side)."""
    hop = Hop(host, "natgw", g.id, iif=GW_VPC_IFNAME)
    if w.loop((host, "natgw", g.id, GW_VPC_IFNAME, 0, pkt)):
        return
    if _in_blocks(vpc, pkt.dst) is not None:
        w.add(pkt, _replace(hop, oif=GW_VPC_IFNAME, note="a VPC address: back to the VPC"))
        _vpc_ns(w, host, vpc, g.ifname, pkt, gbp=0)
        return
    if pkt.dst in (ipaddress.IPv4Address(g.public_ip), ipaddress.IPv4Address(NATGW_INNER_IP)):
        w.add(pkt, _replace(hop, note="its own address"))
        w.deliver(f"natgw:{g.id}", f"delivered to NAT gateway {g.id} itself")
        return
    nat = ""
    src = pkt.src
    eip = next((e for i, e in g.eips if ipaddress.IPv4Address(i) == pkt.src), None)
    if eip is not None:
        src = ipaddress.IPv4Address(eip)
        nat = f"snat {pkt.src} -> {eip} (the instance's EIP)"
    elif any(pkt.src in _net(c) for c in g.snat):
        src = ipaddress.IPv4Address(g.public_ip)
        nat = f"snat {pkt.src} -> {g.public_ip} (the gateway's address)"
    note = "" if nat else "no SNAT: its source is in no served subnet and has no EIP"
    w.add(
        pkt,
        _replace(
            hop,
            oif=GW_PUB_IFNAME,
            route=RouteUsed("nat", "0.0.0.0/0", MAIN_TABLE, id=g.id, via="uplink"),
            nat=nat,
            note=note,
        ),
    )
    _host_ns(w, host, _Pkt(src, pkt.dst, pkt.proto, pkt.dport), iif=f"n-{g.ifname[2:]}")


def _local_gateways(doc: HostDesired) -> list[tuple[VpcDesired, NatGwDesired]]:
    return [(v, g) for v in doc.vpcs for g in v.natgws if g.local]


def _host_ns(w: _Walk, host: str, pkt: _Pkt, iif: str) -> None:
    """The host namespace: public addresses of its gateways go into them, the rest up."""
    if w.loop((host, "host", host, "", 0, pkt)):
        return
    doc = w.docs.get(host)
    mine = _local_gateways(doc) if doc is not None else []
    for v, g in mine:
        if w.directory.vpcs is not None and v.id not in w.directory.vpcs:
            continue
        eips = {e for _i, e in g.eips}
        if str(pkt.dst) == g.public_ip or str(pkt.dst) in eips:
            w.add(
                pkt,
                Hop(
                    host,
                    "host",
                    host,
                    iif=iif,
                    oif=f"n-{g.ifname[2:]}",
                    route=RouteUsed(
                        "nat",
                        f"{pkt.dst}/32",
                        MAIN_TABLE,
                        id=g.id,
                        via="local",
                        port=f"n-{g.ifname[2:]}",
                    ),
                    note=f"a public address of NAT gateway {g.id} on this host",
                ),
            )
            _natgw_in(w, host, v, g, pkt)
            return
    pub = w.directory.public.get(str(pkt.dst))
    w.add(
        pkt,
        Hop(
            host,
            "host",
            host,
            iif=iif,
            oif="uplink",
            route=RouteUsed("nat", "0.0.0.0/0", MAIN_TABLE, via="uplink"),
            note="out by the host's uplink",
        ),
    )
    if pub is not None:
        if pub.host is None:
            w.stop(
                NOT_ANNOUNCED,
                f"{pkt.dst} belongs to NAT gateway {pub.natgw}, which runs on no host: "
                "nothing announces it",
            )
            return
        if pub.host == host:
            w.stop(UNKNOWN_HOST, f"host {host}'s document has no gateway holding {pkt.dst}")
            return
        _host_ns(w, pub.host, pkt, "uplink")
        return
    inet = w.directory.internet
    if inet is None:
        w.add(pkt, Hop("", "internet", "internet", iif="uplink"))
        w.verdict, w.reason, w.delivered_to = "internet", "", "internet"
        w.detail = f"left the region for {pkt.dst} with source {pkt.src}"
        return
    if any(pkt.dst in _net(c) for c in inet):
        w.add(pkt, Hop("", "internet", "internet", iif="uplink"))
        w.deliver("internet", f"delivered to the internet at {pkt.dst}, source {pkt.src}")
        return
    w.stop(
        OUTSIDE,
        f"{pkt.dst} is outside everything: not in the VPC, not on the internet the region "
        "reaches, not a public address of a gateway",
    )


def _natgw_in(w: _Walk, host: str, vpc: VpcDesired, g: NatGwDesired, pkt: _Pkt) -> None:
    """In gateway `g`'s namespace from the internet side: DNAT, then into the VPC."""
    if w.loop((host, "natgw", g.id, GW_PUB_IFNAME, 0, pkt)):
        return
    hop = Hop(host, "natgw", g.id, iif=GW_PUB_IFNAME)
    if str(pkt.src) == g.public_ip:
        # The gateway's own subnets reaching its public addresses: SNAT made the source
        # the gateway's address, which the kernel refuses on the way back in (a martian
        # source: a local address arriving from outside, accept_local is off).
        w.add(pkt, _replace(hop, note="its own address as the source: a martian"))
        w.stop(
            MARTIAN,
            f"NAT gateway {g.id} drops a packet coming back in with its own address "
            f"{g.public_ip} as the source (martian source): its own subnets cannot reach "
            "its public addresses, unless the sender has an EIP",
        )
        return
    new = pkt
    nat = ""
    inst = next((i for i, e in g.eips if e == str(pkt.dst)), None)
    if inst is not None:
        new = _Pkt(pkt.src, ipaddress.IPv4Address(inst), pkt.proto, pkt.dport)
        nat = f"dnat {pkt.dst} -> {inst} (EIP)"
    elif str(pkt.dst) == g.public_ip:
        fwd = next(
            (f for f in g.forwards if f[0] == pkt.proto and f[1] == pkt.dport),
            None,
        )
        if fwd is not None:
            new = _Pkt(pkt.src, ipaddress.IPv4Address(fwd[2]), pkt.proto, fwd[3])
            nat = f"dnat {pkt.dst}:{pkt.dport} -> {fwd[2]}:{fwd[3]} (port forward {fwd[0]})"
    if not nat:
        w.add(pkt, _replace(hop, note="no DNAT rule matches: its own address"))
        w.deliver(f"natgw:{g.id}", f"delivered to NAT gateway {g.id} itself (no forward)")
        return
    w.add(pkt, _replace(hop, oif=GW_VPC_IFNAME, nat=nat))
    _vpc_ns(w, host, vpc, g.ifname, new, gbp=0)


# -- rendering ---------------------------------------------------------------------------


def _where(h: Hop, d: Directory) -> str:
    if h.place == "vpc":
        return f"{h.host} vpc {d.name(h.ref)} (ns v{h.vni})"
    if h.place == "internet":
        return "internet"
    if h.place == "host":
        return f"{h.host} host namespace"
    return f"{h.host} {h.place} {d.name(h.ref)}"


def render(t: Trace, d: Directory) -> str:
    """The trace for a person (the CLI prints this)."""
    what = t.proto + (f"/{t.port}" if t.port is not None else "")
    lines = [
        f"trace {what} from {d.name(t.src)} {t.src_ip} (host {t.src_host}, port {t.src_port}"
        + (f", subnet {d.name(t.src_subnet)} selector {t.selector}" if t.src_subnet else "")
        + f") to {t.dst}"
    ]
    prev = (t.src_ip, t.dst, t.port)
    for n, h in enumerate(t.hops, 1):
        pkt_now = (h.src, h.dst, h.dport)
        ports = ""
        if h.iif or h.oif:
            ports = f" [in {h.iif or '-'} out {h.oif or '-'}]"
        lines.append(f"{n:2}. {_where(h, d)}{ports}")
        if h.src and pkt_now != prev:  # NAT rewrote it on the way here
            port = f":{h.dport}" if h.dport is not None else ""
            lines.append(f"      packet {h.src} -> {h.dst}{port}")
            prev = pkt_now
        if h.place == "vpc" and h.mark is not None:
            sel = f"mark {h.mark:#x}"
            if h.subnet:
                sel += f": subnet {d.name(h.subnet)}, table {d.name(h.table)}"
            lines.append(f"      {sel}")
        if h.policy is not None:
            p = h.policy
            state = "" if p.taken else " (next hop down: falls through)"
            lines.append(
                f"      policy {p.id} priority {p.priority} [{p.match}] {p.action}"
                + (f" -> {p.nexthop}" if p.nexthop else "")
                + f" (ip rule {p.rule_pref}){state}"
            )
        if h.route is not None:
            lines.append(f"      {_route_text(h.route, d)}")
        if h.nat:
            lines.append(f"      {h.nat}")
        if h.note:
            lines.append(f"      {h.note}")
        if h.dropped:
            lines.append("      DROPPED here")
    head = {"delivered": "DELIVERED", "dropped": "DROPPED", "internet": "LEFT THE REGION"}
    reason = f" [{t.reason}]" if t.reason else ""
    lines.append(f"{head[t.verdict]}{reason}: {t.detail}")
    return "\n".join(lines) + "\n"


def _route_text(r: RouteUsed, d: Directory) -> str:
    where = {
        "local": f"via port {r.port}",
        "remote": f"to host {r.peer} (vxlan0)",
        "blackhole": "blackhole",
        "unreachable": "unreachable",
        "deliver": "local delivery",
        "uplink": "out",
    }[r.via]
    head = f"route {r.type} {r.dst}"
    if r.type == "custom":
        head += f" {r.id} priority {r.priority} (table {d.name(r.table)})"
    elif r.type == "policy":
        head += f" (policy table {r.kernel_table:#x})"
    elif r.type == "default":
        head += f" (NAT default of table {d.name(r.table)})"
    elif r.type == "direct" and r.host_route:
        head += f" (VPC block), host route {r.host_route}"
    target = f" -> {_target(r.target, d)}" if r.target else ""
    return f"{head}{target} {where}"


def _target(target: str, d: Directory) -> str:
    kind, _, ref = target.partition(":")
    if kind in ("instance", "natgw") and ref:
        return f"{kind}:{d.name(ref)}"
    return target
