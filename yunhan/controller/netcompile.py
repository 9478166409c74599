"""Compile the user's network model into one `HostDesired` document per host.

A pure function (ARCHITECTURE §2, STYLE §1): `compile_hosts(hosts, vpcs, subnets,
instances)` returns `{host name: HostDesired}` and touches nothing. The rules:

* a host carries a VPC iff one of its instances is in it;
* per VPC carried: ports of the host's instances (ifname from `port_ifname`), peers = the
  other hosts carrying the VPC, routes = local /32 (kind local), remote /32 (kind remote,
  peer = host name), the same for every address in an instance's `allowed_ips` (the VIPs
  delivered to it), every VPC block unreachable (nothing leaks to a default route);
  gateways = every subnet gateway of the VPC as "ip/prefixlen";
* every list is sorted, so equal inputs give byte-identical documents and an unchanged
  document can be recognised by comparing its JSON.

Distributed routing (issue 8, docs/routing.md), per VPC carried, resolved for each host:

* a host also carries a VPC when one of the VPC's NAT gateways runs there;
* subnets with an index, each with its route table (the VPC's default one when its own is
  unknown) and the NAT gateway serving it (the first by id);
* per table, per destination, the custom route that wins: lowest priority (then id) whose
  next hop is up, else the best one as unreachable; next hops are up when their instance
  is a member whose host is not lost, their gateway is placed on a host not lost, their
  VIP address is held by a member (its address or an allowed one; first by id), or they
  are blackholes;
* policy routes with an index; NAT gateways with an index, their rules on the host they
  run on; instances that some route or policy sends to are forwarders;
* every VIP of the VPC (address, allowed instances, epoch), for the agents to follow the
  claims of gratuitous ARP (docs/vips.md).

Documents carry `revision=0`; the store revision is stamped on when one is served.
Every registered host gets a document, an empty one when it carries nothing, so that its
agent learns that there is nothing (and removes what it had).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from yunhan.model.hybrid import announced
from yunhan.net.desired import (
    HYBRID_INNER_IP,
    NATGW_INNER_IP,
    AclDesired,
    AclRuleDesired,
    FlowLogDesired,
    HostDesired,
    HybridGwDesired,
    HybridReplicaDesired,
    HybridRouteDesired,
    InstanceDesired,
    NatGwDesired,
    NextHop,
    Peer,
    PolicyDesired,
    Port,
    Route,
    RouteTableDesired,
    SecurityGroupDesired,
    SgRuleDesired,
    SubnetDesired,
    TableRoute,
    VipDesired,
    VpcDesired,
    vtep_mac,
    vtep_nexthop,
)
from yunhan.net.docentries import acl_entry, flowlog_entry, group_entry, vip_entry
from yunhan.net.naming import gateway_ifname, hybrid_ifname, port_ifname


@dataclass(frozen=True)
class HostIn:
    name: str
    vtep_index: int
    underlay_ip: str
    mtu: int = 1500
    up: bool = True  # False: the controller found it lost


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
    index: int | None = None
    table: str | None = None  # route table id (None: the VPC's default)
    acl: str | None = None  # network ACL id
    serve: str | None = None  # located in an IDC: served in "idc" or "cloud" now
    site: str | None = None  # located in an IDC: the site's name


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
    sgs: tuple[str, ...] = ()  # its security group ids


NhIn = tuple[str, str | None]  # (type, instance/gateway id or VIP address)


@dataclass(frozen=True)
class TableIn:
    id: str
    vpc: str
    index: int | None
    default: bool = False


@dataclass(frozen=True)
class RouteIn:
    id: str
    vpc: str
    table: str
    dst: str
    priority: int
    nh: NhIn


@dataclass(frozen=True)
class PolicyIn:
    id: str
    vpc: str
    table: str
    index: int | None
    priority: int
    src: str | None
    dst: str | None
    proto: str
    port: tuple[int, int] | None
    action: str
    nh: NhIn | None


@dataclass(frozen=True)
class GatewayIn:
    id: str
    vpc: str
    index: int | None
    host: str | None
    public_ip: str
    subnets: tuple[str, ...] = ()
    forwards: tuple[tuple[str, int, str, int], ...] = ()  # (proto, port, instance id, port)


@dataclass(frozen=True)
class HybridIn:
    """A hybrid gateway: its session and its placed replicas (index, host, line address,
    whether its agent reported the BGP session Established)."""

    id: str
    vpc: str
    index: int | None
    site: str
    asn: int
    peer_ip: str
    peer_asn: int
    md5_secret: str | None
    bfd: bool
    line_vni: int
    line_vtep: str
    replicas: tuple[tuple[int, str, str, bool], ...] = ()


@dataclass(frozen=True)
class EipIn:
    id: str
    address: str
    instance: str | None
    natgw: str | None


@dataclass(frozen=True)
class GroupIn:
    """A security group; `rules` as the store keeps them (yunhan.model.secgroups)."""

    id: str
    vpc: str
    rules: tuple[dict[str, object], ...] = ()


@dataclass(frozen=True)
class AclIn:
    """A network ACL; `rules` as the store keeps them."""

    id: str
    vpc: str
    rules: tuple[dict[str, object], ...] = ()


@dataclass(frozen=True)
class FlowLogIn:
    """A flow log: what it covers (scope "vpc", "subnet" or "instance", target that one's
    id) and which records it keeps."""

    id: str
    vpc: str
    scope: str
    target: str
    filter: str = "ALL"


@dataclass(frozen=True)
class VipIn:
    """A VIP as every host carrying its VPC knows it (docs/vips.md): address, the ids of
    the instances allowed to hold it, its epoch. Where it is delivered is the holder's
    `InstanceIn.allowed_ips`."""

    id: str
    vpc: str
    ip: str
    allowed: tuple[str, ...] = ()
    epoch: int = 0


@dataclass(frozen=True)
class RoutingIn:
    """The routing objects of a region (all optional: a region without them routes by the
    main table only)."""

    tables: tuple[TableIn, ...] = ()
    routes: tuple[RouteIn, ...] = ()
    policies: tuple[PolicyIn, ...] = ()
    gateways: tuple[GatewayIn, ...] = ()
    eips: tuple[EipIn, ...] = ()
    groups: tuple[GroupIn, ...] = ()
    acls: tuple[AclIn, ...] = ()
    flowlogs: tuple[FlowLogIn, ...] = ()
    vips: tuple[VipIn, ...] = ()
    hybrids: tuple[HybridIn, ...] = ()


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
    # Route order of docs: by (address, prefixlen), then instance id. Each entry is a block
    # route (same on every host) or an address of an instance, its own or a VIP delivered
    # to it: (its host, the route there, the route everywhere else).
    entries: list[tuple[tuple[int, int], Route | tuple[str, Route, Route]]]
    hosts: dict[str, list[tuple[InstanceIn, SubnetIn]]]
    ports: dict[str, Port]


def _plan_vpc(
    vpc: VpcIn,
    subnets: list[SubnetIn],
    hosts: dict[str, list[tuple[InstanceIn, SubnetIn]]],
    forwarders: set[str],
) -> _VpcPlan:
    keyed: list[tuple[tuple[int, int], str, Route | tuple[str, Route, Route]]] = [
        (_net_key(c), "", Route(dst=c, kind="unreachable")) for c in vpc.cidrs
    ]
    ports: dict[str, Port] = {}
    in_idc = {s.id for s in subnets if s.serve == "idc"}
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
                forwarder=inst.id in forwarders,
                sgs=tuple(sorted(set(inst.sgs))),
            )
            if sub.id in in_idc:
                continue  # stands by: the addresses are the IDC's until a route switch
            for a in (inst.ip, *(a for a in inst.allowed_ips if a != inst.ip)):
                local = Route(dst=f"{a}/32", kind="local", port=ifname)
                remote = Route(dst=f"{a}/32", kind="remote", peer=host_name)
                key = (int(ipaddress.IPv4Address(a)), 32)
                keyed.append((key, inst.id, (host_name, local, remote)))
    keyed.sort(key=lambda e: (e[0], e[1]))
    entries = [(key, what) for key, _id, what in keyed]
    gateways = tuple(
        f"{ipaddress.IPv4Network(s.cidr).network_address + 1}/"
        f"{ipaddress.IPv4Network(s.cidr).prefixlen}"
        for s in sorted(subnets, key=lambda s: _net_key(s.cidr))
        if s.serve != "idc"  # its gateway is the IDC's (the site router's LAN address)
    )
    return _VpcPlan(vpc, gateways, entries, hosts, ports)


@dataclass
class _Routing:
    """A VPC's routing objects, with what resolving next hops needs."""

    vpc: str
    hosts: dict[str, HostIn]
    members: dict[str, tuple[InstanceIn, str]]  # instance id -> (instance, host name)
    subnets: list[SubnetIn]
    tables: dict[str, TableIn]
    routes: list[RouteIn]
    policies: list[PolicyIn]
    gateways: list[GatewayIn]  # by id
    eips: list[EipIn]
    hybrids: list[HybridIn] = field(default_factory=list)  # by index
    blocks: tuple[str, ...] = ()

    def target(self, nh: NhIn) -> tuple[str | None, str | None, str | None, bool]:
        """(host, ip, port, up) of a next hop; host None when it has no place."""
        kind, ref = nh
        if kind == "instance" and ref in self.members:
            inst, host = self.members[ref]
            return host, inst.ip, port_ifname(inst.id), self.hosts[host].up
        if kind == "vip":
            for iid in sorted(self.members):
                inst, host = self.members[iid]
                if ref == inst.ip or ref in inst.allowed_ips:
                    return host, inst.ip, port_ifname(iid), self.hosts[host].up
        if kind == "natgw":
            for g in self.gateways:
                if g.id == ref and g.host in self.hosts:
                    return g.host, NATGW_INNER_IP, gateway_ifname(g.id), self.hosts[g.host].up
        return None, None, None, False

    def next_hop(self, nh: NhIn, here: str) -> NextHop | None:
        """The next hop as `here` uses it; None when it is down."""
        kind, ref = nh
        name = kind if ref is None else f"{kind}:{ref}"
        if kind == "blackhole":
            return NextHop(kind="blackhole", target=name)
        host, ip, port, up = self.target(nh)
        if host is None or not up:
            return None
        if host == here:
            return NextHop(kind="local", ip=ip, port=port, target=name)
        return NextHop(kind="remote", ip=ip, peer=host, target=name)

    def fields(self, here: str) -> dict[str, object]:
        """The routing fields of the VPC's document for host `here`."""
        default = min((t.id for t in self.tables.values() if t.default), default=None)
        serving: dict[str, GatewayIn] = {}
        for g in self.gateways:
            for sid in g.subnets:
                serving.setdefault(sid, g)
        subnets = []
        for sub in self.subnets:
            tid = sub.table if sub.table in self.tables else default
            if sub.index and tid is not None:
                server = serving.get(sub.id)
                subnets.append(
                    SubnetDesired(
                        id=sub.id,
                        cidr=sub.cidr,
                        index=sub.index,
                        table=self.tables[tid].index or 0,
                        natgw=None if server is None else server.index,
                    )
                )
        winners: dict[str, list[TableRoute]] = defaultdict(list)
        prefixes: dict[tuple[str, str], list[RouteIn]] = defaultdict(list)
        for r in self.routes:
            if r.table in self.tables:
                prefixes[(r.table, r.dst)].append(r)
        for (tid, dst), rs in prefixes.items():
            rs.sort(key=lambda r: (r.priority, r.id))
            up = [(r, nh) for r in rs if (nh := self.next_hop(r.nh, here)) is not None]
            r, nh = up[0] if up else (rs[0], None)
            if nh is None:
                kind, ref = r.nh
                nh = NextHop(kind="unreachable", target=kind if ref is None else f"{kind}:{ref}")
            winners[tid].append(TableRoute(dst=dst, nexthop=nh, route_id=r.id, priority=r.priority))
        tables = tuple(
            RouteTableDesired(
                id=t.id,
                index=t.index or 0,
                routes=tuple(sorted(winners[t.id], key=lambda x: _net_key(x.dst))),
            )
            for t in sorted(self.tables.values(), key=lambda t: t.index or 0)
        )
        policies = tuple(
            sorted(
                (
                    PolicyDesired(
                        id=p.id,
                        table=self.tables[p.table].index or 0,
                        index=p.index,
                        priority=p.priority,
                        src=p.src,
                        dst=p.dst,
                        proto=p.proto,  # type: ignore[arg-type]
                        port_min=None if p.port is None else p.port[0],
                        port_max=None if p.port is None else p.port[1],
                        action=p.action,  # type: ignore[arg-type]
                        nexthop=(
                            self.next_hop(p.nh, here)
                            if p.action == "reroute" and p.nh is not None
                            else None
                        ),
                    )
                    for p in self.policies
                    if p.table in self.tables and p.index
                ),
                key=lambda x: (x.table, x.priority, x.id),
            )
        )
        cidr_of = {s.id: s.cidr for s in self.subnets}
        natgws = []
        for g in self.gateways:
            local = g.host == here
            eips = sorted(
                (self.members[e.instance][0].ip or "", e.address)
                for e in self.eips
                if e.natgw == g.id and e.instance in self.members and e.address
            )
            forwards = sorted(
                (proto, port, self.members[inst][0].ip or "", to_port)
                for proto, port, inst, to_port in g.forwards
                if inst in self.members
            )
            natgws.append(
                NatGwDesired(
                    id=g.id,
                    index=g.index or 0,
                    nexthop=self.next_hop(("natgw", g.id), here)
                    or NextHop(kind="unreachable", target=f"natgw:{g.id}"),
                    public_ip=g.public_ip,
                    local=local,
                    ifname=gateway_ifname(g.id),
                    snat=tuple(
                        sorted((cidr_of[s] for s in g.subnets if s in cidr_of), key=_net_key)
                    )
                    if local
                    else (),
                    eips=tuple(eips) if local else (),
                    forwards=tuple(forwards) if local else (),
                )
            )
        return {
            "subnets": tuple(sorted(subnets, key=lambda x: x.index)),
            "tables": tables,
            "policies": policies,
            "natgws": tuple(natgws),
            "hybrids": tuple(self._hybrid(g, here) for g in self.hybrids),
        }

    def _hybrid(self, g: HybridIn, here: str) -> HybridGwDesired:
        """The rules of docs/hybrid.md, written out again (the engine has its own)."""
        ifname = hybrid_ifname(g.id)
        target = f"hybrid_gw:{g.id}"
        placed = [r for r in sorted(g.replicas) if r[1] in self.hosts]
        up = [r for r in placed if r[3] and self.hosts[r[1]].up]
        mine = [r for r in placed if r[1] == here]
        nhs: tuple[NextHop, ...]
        if any(r[1] == here for r in up):
            nhs = (NextHop(kind="local", ip=HYBRID_INNER_IP, port=ifname, target=target),)
        else:
            nhs = tuple(
                NextHop(kind="remote", ip=HYBRID_INNER_IP, peer=r[1], target=target) for r in up
            )
        located = [(s.cidr, s.serve) for s in self.subnets if s.serve is not None]
        carried = sorted(
            (s.cidr for s in self.subnets if s.site == g.site and s.serve == "idc"),
            key=_net_key,
        )
        replica = None
        if mine:
            index, _h, line_ip, _up = mine[0]
            replica = HybridReplicaDesired(
                index=index,
                line_vni=g.line_vni,
                line_vtep=g.line_vtep,
                line_ip=line_ip,
                peer_ip=g.peer_ip,
                peer_asn=g.peer_asn,
                asn=g.asn,
                md5_secret=g.md5_secret,
                bfd=g.bfd,
                announce=tuple(announced(self.blocks, located)),
            )
        return HybridGwDesired(
            id=g.id,
            index=g.index or 0,
            ifname=ifname,
            routes=tuple(HybridRouteDesired(dst=d, nexthops=nhs) for d in carried),
            replica=replica,
            prefixes=tuple(
                sorted(
                    (s.cidr for s in self.subnets if s.site == g.site and s.serve is not None),
                    key=_net_key,
                )
            ),
        )


def _groups(
    vpc_id: str, groups: Iterable[GroupIn], hosts: dict[str, list[tuple[InstanceIn, SubnetIn]]]
) -> tuple[SecurityGroupDesired, ...]:
    """A VPC's security groups with their members' addresses, by id."""
    addrs: dict[str, set[str]] = defaultdict(set)
    for placed in hosts.values():
        for inst, _s in placed:
            assert inst.ip is not None
            for gid in inst.sgs:
                addrs[gid].update((inst.ip, *inst.allowed_ips))
    out = []
    for g in sorted((g for g in groups if g.vpc == vpc_id), key=lambda g: g.id):
        entry = group_entry(g.id, g.rules)
        out.append(
            SecurityGroupDesired(
                id=g.id,
                rules=tuple(SgRuleDesired(**r) for r in entry["rules"]),
                members=tuple(sorted(addrs[g.id], key=ipaddress.IPv4Address)),
            )
        )
    return tuple(out)


def _acls(vpc_id: str, acls: Iterable[AclIn], subnets: list[SubnetIn]) -> tuple[AclDesired, ...]:
    """A VPC's network ACLs with their subnets' CIDRs, by id."""
    out = []
    for a in sorted((a for a in acls if a.vpc == vpc_id), key=lambda a: a.id):
        entry = acl_entry(a.id, a.rules, (s.cidr for s in subnets if s.acl == a.id))
        out.append(
            AclDesired(
                id=a.id,
                rules=tuple(AclRuleDesired(**r) for r in entry["rules"]),
                subnets=tuple(entry["subnets"]),
            )
        )
    return tuple(out)


def compile_hosts(
    hosts: Iterable[HostIn],
    vpcs: Iterable[VpcIn],
    subnets: Iterable[SubnetIn],
    instances: Iterable[InstanceIn],
    routing: RoutingIn = RoutingIn(),
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
    gateways = sorted(
        (g for g in routing.gateways if g.index and g.vpc in vpc_by_id),
        key=lambda g: g.id,
    )
    for g in gateways:
        if g.host in host_by_name:
            carried[g.vpc].setdefault(g.host, [])  # it carries the VPC, maybe without members
    hybrids = sorted(
        (g for g in routing.hybrids if g.index and g.vpc in vpc_by_id), key=lambda g: g.index or 0
    )
    for hg in hybrids:
        for _i, rep_host, _ip, _up in hg.replicas:
            if rep_host in host_by_name:
                carried[hg.vpc].setdefault(rep_host, [])
    nhs: list[NhIn | None] = [*(r.nh for r in routing.routes), *(p.nh for p in routing.policies)]
    forwarders = {nh[1] for nh in nhs if nh is not None and nh[0] == "instance" and nh[1]}

    plans = {
        vpc_id: _plan_vpc(vpc_by_id[vpc_id], subnets_of_vpc[vpc_id], carried[vpc_id], forwarders)
        for vpc_id in sorted(carried)
    }
    routings = {
        vpc_id: _Routing(
            vpc=vpc_id,
            hosts=host_by_name,
            members={i.id: (i, h) for h, placed in carried[vpc_id].items() for i, _s in placed},
            subnets=subnets_of_vpc[vpc_id],
            tables={t.id: t for t in routing.tables if t.vpc == vpc_id and t.index},
            routes=[r for r in routing.routes if r.vpc == vpc_id],
            policies=[p for p in routing.policies if p.vpc == vpc_id],
            gateways=[g for g in gateways if g.vpc == vpc_id],
            eips=list(routing.eips),
            hybrids=[g for g in hybrids if g.vpc == vpc_id],
            blocks=vpc_by_id[vpc_id].cidrs,
        )
        for vpc_id in plans
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
    groups = {vpc_id: _groups(vpc_id, routing.groups, carried[vpc_id]) for vpc_id in plans}
    acls = {vpc_id: _acls(vpc_id, routing.acls, subnets_of_vpc[vpc_id]) for vpc_id in plans}
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
                what if isinstance(what, Route) else what[1] if what[0] == host.name else what[2]
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
                    **routings[plan.vpc.id].fields(host.name),  # type: ignore[arg-type]
                    groups=groups[plan.vpc.id],
                    acls=acls[plan.vpc.id],
                    flowlogs=tuple(
                        FlowLogDesired(**flowlog_entry(f.id, f.scope, f.target, f.filter))
                        for f in sorted(routing.flowlogs, key=lambda f: f.id)
                        if f.vpc == plan.vpc.id
                    ),
                    vips=tuple(
                        VipDesired(**vip_entry(x.id, x.ip, x.allowed, x.epoch))
                        for x in sorted(routing.vips, key=lambda x: x.id)
                        if x.vpc == plan.vpc.id
                    ),
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
