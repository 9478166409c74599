"""The incremental engine against the full-recompute reference, and deltas against snapshots.

Differential oracles (STYLE §5, §11): after any sequence of writes, every host's document
assembled from the engine's entries equals `compile_hosts` of the same model; a fresh engine
loaded from the final model has the same entries (incremental == full); an agent that
applies the engine's delta on top of what it held gets the engine's snapshot.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yunhan.controller.engine import Engine
from yunhan.controller.netcompile import (
    AclIn,
    EipIn,
    FlowLogIn,
    GatewayIn,
    GroupIn,
    HostIn,
    HybridIn,
    InstanceIn,
    NhIn,
    PolicyIn,
    RouteIn,
    RoutingIn,
    SubnetIn,
    TableIn,
    VipIn,
    VpcIn,
    compile_hosts,
)
from yunhan.model.hybrid import replica_up
from yunhan.net.desired import HostDesired, VolumeAttach, VolumeDesired
from yunhan.net.docentries import (
    Delta,
    Entries,
    assemble,
    digest,
)
from yunhan.net.naming import hybrid_ifname
from yunhan.store.resource import Event, Resource

# -- a tiny store: resources by (kind, id), written one revision at a time ------------------


def res(kind: str, rid: str, name: str, spec: dict[str, Any], status: dict[str, Any]) -> Resource:
    return Resource(kind, rid, "p", name, spec, status, 0, "2026-01-01T00:00:00Z")


def host(
    i: int,
    *,
    name: str | None = None,
    vtep: int | None = -1,
    ip: str = "",
    mtu: int = 1500,
    lost: bool = False,
) -> Resource:
    vtep = i + 1 if vtep == -1 else vtep
    status: dict[str, Any] = {"vtep_index": vtep} if vtep else {}
    if lost:
        status["condition"] = "lost"
    spec = {"zone": "az1", "underlay_ip": ip or f"198.18.0.{i + 1}", "mtu": mtu}
    return res("host", f"host-{i}", name or f"h{i}", spec, status)


def vpc(i: int, vni: int | None, cidrs: list[str]) -> Resource:
    return res("vpc", f"vpc-{i}", f"v{i}", {"cidrs": cidrs}, {"vni": vni} if vni else {})


def subnet(
    i: int,
    vpc_i: int,
    cidr: str,
    index: int | None = None,
    table: str | None = None,
    acl: str | None = None,
    location: str | None = None,
    serve: str | None = None,
) -> Resource:
    """`location` "idc:SITE": a subnet located in an IDC, served where `serve` says (absent:
    "idc", as the API creates it)."""
    spec = {"vpc": f"vpc-{vpc_i}", "cidr": cidr}
    if table is not None:
        spec["route_table"] = table
    if acl is not None:
        spec["acl"] = acl
    if location is not None:
        spec["location"] = location
    if serve is not None:
        spec["serve"] = serve
    return res("subnet", f"subnet-{i}", f"s{i}", spec, {"index": index} if index else {})


def table(i: int, vpc_i: int, index: int | None, default: bool) -> Resource:
    spec = {"vpc": f"vpc-{vpc_i}", "default": default}
    return res("route_table", f"rtb-{i}", f"t{i}", spec, {"index": index} if index else {})


def route(i: int, vpc_i: int, table_i: int, dst: str, prio: int, nh: dict[str, Any]) -> Resource:
    spec = {"vpc": f"vpc-{vpc_i}", "table": f"rtb-{table_i}", "dst": dst, "priority": prio}
    return res("route", f"rt-{i}", f"rt-{i}", {**spec, "next_hop": nh}, {})


def policy(
    i: int, vpc_i: int, table_i: int, index: int | None, prio: int, action: str, nh: Any
) -> Resource:
    spec = {
        "vpc": f"vpc-{vpc_i}",
        "table": f"rtb-{table_i}",
        "priority": prio,
        "src": "10.0.1.0/24",
        "dst": None,
        "proto": "tcp",
        "port": [80, 81],
        "action": action,
        "next_hop": nh,
    }
    return res("policy_route", f"pr-{i}", f"pr-{i}", spec, {"index": index} if index else {})


def natgw(
    i: int, vpc_i: int, index: int | None, host_name: str | None, subnets: list[int]
) -> Resource:
    spec = {
        "vpc": f"vpc-{vpc_i}",
        "subnets": [f"subnet-{s}" for s in subnets],
        "forwards": [{"proto": "tcp", "port": 8080, "instance": "inst-00000001", "to_port": 80}],
    }
    status = {"index": index, "host": host_name, "public_ip": f"198.19.128.{i + 1}"}
    return res("natgw", f"ngw-{i}", f"g{i}", spec, status)


def hybrid_gw(
    i: int,
    vpc_i: int,
    index: int | None,
    replicas: list[tuple[int, str | None, str]],
    *,
    site: str = "dc1",
    md5: str | None = None,
    bfd: bool = True,
) -> Resource:
    """A hybrid gateway to `site` with `replicas` (index, host, BGP state; the state
    "unplaced" as the controller writes it for a replica without a host), as the API and
    the controller write it (docs/hybrid.md)."""
    spec = {
        "vpc": f"vpc-{vpc_i}",
        "site": f"idc-{site}",
        "peer_ip": "198.19.33.1",
        "peer_asn": 65001,
        "asn": 64512,
        "replicas": len(replicas),
        "bfd": bfd,
        "md5_secret": md5,
    }
    status = {
        "index": index,
        "site_name": site,
        "line": {
            "cidr": "198.19.33.0/24",
            "vni": 0x700001,
            "vtep": "198.19.16.1",
            "router_ip": "198.19.33.1",
        },
        "phase": "active",
        "replicas": [
            {
                "index": n,
                "host": h,
                "line_ip": f"198.19.33.{10 + n}/24",
                "state": state,
                # an up session has learned the IDC's routes (model.hybrid.replica_up)
                "learned": [
                    {"prefix": "192.168.100.0/24", "nexthop": "198.19.33.1", "as_path": "65001"}
                ]
                if state == "Established"
                else [],
            }
            for n, h, state in replicas
        ],
        "history": [],
    }
    return res("hybrid_gw", f"hgw-{i}", f"hg{i}", spec, status)


def eip(i: int, instance_i: int | None, natgw_i: int | None) -> Resource:
    status = {
        "address": f"198.19.128.{i + 10}",
        "instance": None if instance_i is None else f"inst-{instance_i:08x}",
        "natgw": None if natgw_i is None else f"ngw-{natgw_i}",
    }
    return res("eip", f"eip-{i}", f"e{i}", {}, status)


def _nh_in(spec: Any) -> NhIn | None:
    if not isinstance(spec, dict):
        return None
    return (spec["type"], spec.get("ip") if spec["type"] == "vip" else spec.get("id"))


def _routing_in(model: dict[tuple[str, str], Resource]) -> RoutingIn:
    of: dict[str, list[Resource]] = {}
    for (k, _), r in model.items():
        of.setdefault(k, []).append(r)
    return RoutingIn(
        tables=tuple(
            TableIn(t.id, t.spec["vpc"], t.status.get("index"), t.spec["default"])
            for t in of.get("route_table", [])
        ),
        routes=tuple(
            RouteIn(
                r.id,
                r.spec["vpc"],
                r.spec["table"],
                r.spec["dst"],
                r.spec["priority"],
                _nh_in(r.spec["next_hop"]) or ("blackhole", None),
            )
            for r in of.get("route", [])
        ),
        policies=tuple(
            PolicyIn(
                p.id,
                p.spec["vpc"],
                p.spec["table"],
                p.status.get("index"),
                p.spec["priority"],
                p.spec["src"],
                p.spec["dst"],
                p.spec["proto"],
                tuple(p.spec["port"]) if p.spec["port"] else None,  # type: ignore[arg-type]
                p.spec["action"],
                _nh_in(p.spec["next_hop"]),
            )
            for p in of.get("policy_route", [])
        ),
        gateways=tuple(
            GatewayIn(
                g.id,
                g.spec["vpc"],
                g.status.get("index"),
                g.status.get("host"),
                g.status["public_ip"],
                tuple(g.spec["subnets"]),
                tuple(
                    (f["proto"], f["port"], f["instance"], f["to_port"]) for f in g.spec["forwards"]
                ),
            )
            for g in of.get("natgw", [])
        ),
        eips=tuple(
            EipIn(e.id, e.status["address"], e.status["instance"], e.status["natgw"])
            for e in of.get("eip", [])
        ),
        acls=tuple(
            AclIn(a.id, a.spec["vpc"], tuple(a.spec["rules"])) for a in of.get("network_acl", [])
        ),
        groups=tuple(
            GroupIn(g.id, g.spec["vpc"], tuple(g.spec["rules"]))
            for g in of.get("security_group", [])
        ),
        flowlogs=tuple(
            FlowLogIn(f.id, f.spec["vpc"], f.spec["scope"], f.spec["target"], f.spec["filter"])
            for f in of.get("flow_log", [])
        ),
        vips=tuple(
            VipIn(
                v.id,
                v.spec["vpc"],
                v.spec["ip"],
                tuple(v.spec["allowed"]),
                int(v.status.get("epoch", 0)),
            )
            for v in of.get("vip", [])
        ),
        hybrids=tuple(
            HybridIn(
                g.id,
                g.spec["vpc"],
                g.status.get("index"),
                g.status.get("site_name") or "",
                g.spec["asn"],
                g.spec["peer_ip"],
                g.spec["peer_asn"],
                g.spec.get("md5_secret") or None,
                g.spec.get("bfd", True),
                g.status["line"]["vni"],
                g.status["line"]["vtep"],
                tuple(
                    (x["index"], x["host"], x["line_ip"], replica_up(x))
                    for x in g.status["replicas"]
                    if x.get("host") and x["state"] != "unplaced"
                ),
            )
            for g in of.get("hybrid_gw", [])
        ),
    )


def sg(i: int, vpc_i: int, rules: list[dict[str, Any]]) -> Resource:
    return res("security_group", f"sg-{i}", f"sg{i}", {"vpc": f"vpc-{vpc_i}", "rules": rules}, {})


def flowlog(i: int, vpc_i: int, scope: str, target: str, filt: str) -> Resource:
    spec = {"vpc": f"vpc-{vpc_i}", "scope": scope, "target": target, "filter": filt}
    return res("flow_log", f"fl-{i}", f"fl{i}", spec, {})


def acl(i: int, vpc_i: int, rules: list[dict[str, Any]]) -> Resource:
    return res("network_acl", f"acl-{i}", f"acl{i}", {"vpc": f"vpc-{vpc_i}", "rules": rules}, {})


ACL_RULES = [
    {"number": 10, "direction": "ingress", "proto": "tcp", "port": [22, 22],
     "cidr": "10.0.0.0/8", "action": "allow"},
    {"number": 20, "direction": "ingress", "proto": "any", "port": None,
     "cidr": "0.0.0.0/0", "action": "deny"},
    {"number": 10, "direction": "egress", "proto": "any", "port": None,
     "cidr": "0.0.0.0/0", "action": "allow"},
]  # fmt: skip

SG_RULES = [
    {"id": "r-1", "direction": "ingress", "proto": "tcp", "port": [22, 22],
     "peer": {"cidr": "0.0.0.0/0"}, "action": "allow", "priority": 100},
    {"id": "r-2", "direction": "ingress", "proto": "any", "port": None,
     "peer": {"sg": "sg-0"}, "action": "allow", "priority": 10},
    {"id": "r-3", "direction": "egress", "proto": "udp", "port": [53, 60],
     "peer": {"cidr": "10.0.0.0/8"}, "action": "deny", "priority": 100},
]  # fmt: skip


def inst(
    i: int,
    subnet_i: int,
    ip: str | None,
    mac: str | None,
    host_name: str | None,
    command: list[str] | None = None,
    sgs: list[str] | None = None,
    netns: str | None = None,
) -> Resource:
    status = {"ip": ip, "mac": mac, "host": host_name, "phase": "running", "netns": netns}
    spec: dict[str, Any] = {"subnet": f"subnet-{subnet_i}", "command": command, "zone": "az1"}
    if sgs is not None:
        spec["security_groups"] = sgs
    return res("instance", f"inst-{i:08x}", f"i{i}", spec, status)


def vip(
    i: int, vpc_i: int, ip: str, to_i: int | None, allowed: tuple[int, ...] = (), epoch: int = 0
) -> Resource:
    """A VIP delivered to instance `to_i` (status.delivered_to; None: to nobody), which
    instances `allowed` may hold, at `epoch`."""
    to = None if to_i is None else f"inst-{to_i:08x}"
    spec = {
        "subnet": "subnet-0",
        "vpc": f"vpc-{vpc_i}",
        "ip": ip,
        "allowed": [f"inst-{a:08x}" for a in allowed],
    }
    status = {"holder": to, "delivered_to": to, "epoch": epoch}
    return res("vip", f"vip-{i}", f"vip{i}", spec, status)


def volume(
    i: int,
    host_name: str | None,
    to_i: int | None = None,
    *,
    tiers: list[tuple[int, int]] | None = None,
    size: int = 1 << 30,
    restore: tuple[int, int] | None = None,
    source: tuple[str, int] | None = None,
) -> Resource:
    """A volume served by `host_name` (status.host), attached to instance `to_i`."""
    spec = {
        "size": size,
        "zone": "zone-1",
        "tiers": None if tiers is None else [{"keep_s": k, "every_s": e} for k, e in tiers],
        "attachment": None if to_i is None else {"instance": f"inst-{to_i:08x}", "path": "/data"},
        "restore": None if restore is None else {"to_ns": restore[0], "serial": restore[1]},
        "source": None if source is None else {"volume": source[0], "at_ns": source[1]},
    }
    status = {"phase": "available", "home": host_name, "host": host_name}
    return res("volume", f"vol-{i}", f"vol{i}", spec, status)


def _volumes_of(
    model: dict[tuple[str, str], Resource], host_name: str
) -> tuple[VolumeDesired, ...]:
    """The volumes host `host_name` serves, as the contract describes them (docs/volumes.md)."""
    out = []
    for (k, _), v in model.items():
        if k != "volume" or v.status.get("host") != host_name:
            continue
        att, rest, src, tiers = (
            v.spec["attachment"], v.spec["restore"], v.spec["source"], v.spec["tiers"]
        )  # fmt: skip
        inst_r = model.get(("instance", att["instance"])) if att else None
        out.append(
            VolumeDesired(
                id=v.id,
                name=v.name,
                size=v.spec["size"],
                zone=v.spec["zone"],
                tiers=None if tiers is None else tuple((t["keep_s"], t["every_s"]) for t in tiers),
                attach=None
                if att is None
                else VolumeAttach(
                    instance=att["instance"],
                    netns=None if inst_r is None else inst_r.status.get("netns"),
                    path=att["path"],
                ),
                restore_to_ns=None if rest is None else rest["to_ns"],
                restore_serial=0 if rest is None else rest["serial"],
                source_volume=None if src is None else src["volume"],
                source_at_ns=None if src is None else src["at_ns"],
            )
        )
    return tuple(sorted(out, key=lambda x: x.id))


def _vips_of(model: dict[tuple[str, str], Resource], i: Resource) -> tuple[str, ...]:
    """The addresses of the VIPs delivered to instance `i` (of its own VPC), sorted."""
    sub = model.get(("subnet", i.spec["subnet"]))
    vpc_id = sub.spec["vpc"] if sub is not None else None
    return tuple(
        sorted(
            (
                v.spec["ip"]
                for (k, _), v in model.items()
                if k == "vip" and v.status.get("delivered_to") == i.id and v.spec["vpc"] == vpc_id
            ),
            key=ipaddress.IPv4Address,
        )
    )


def reference(model: dict[tuple[str, str], Resource]) -> dict[str, HostDesired]:
    """compile_hosts of the model, its inputs read as the controller loop reads them, plus
    the volumes each host serves."""
    docs = _networks(model)
    return {h: d.model_copy(update={"volumes": _volumes_of(model, h)}) for h, d in docs.items()}


def _networks(model: dict[tuple[str, str], Resource]) -> dict[str, HostDesired]:
    of = {k: [r for (kk, _), r in model.items() if kk == k] for k in ("host", "vpc", "subnet")}
    return compile_hosts(
        [
            HostIn(
                h.name,
                int(h.status["vtep_index"]),
                h.spec["underlay_ip"],
                int(h.spec["mtu"]),
                h.status.get("condition") != "lost",
            )
            for h in of["host"]
            if h.status.get("vtep_index")
        ],
        [
            VpcIn(v.id, int(v.status["vni"]), tuple(v.spec["cidrs"]))
            for v in of["vpc"]
            if v.status.get("vni")
        ],
        [
            SubnetIn(
                s.id,
                s.spec["vpc"],
                s.spec["cidr"],
                s.status.get("index"),
                s.spec.get("route_table"),
                s.spec.get("acl"),
                s.spec.get("serve", "idc") if s.spec.get("location") else None,
                s.spec["location"].split(":", 1)[1] if s.spec.get("location") else None,
            )
            for s in of["subnet"]
        ],
        [
            InstanceIn(
                i.id,
                i.name,
                i.spec["subnet"],
                i.status.get("ip"),
                i.status.get("mac"),
                i.status.get("host"),
                tuple(i.spec["command"]) if i.spec.get("command") else None,
                allowed_ips=_vips_of(model, i),
                sgs=tuple(i.spec.get("security_groups") or ()),
            )
            for (k, _), i in model.items()
            if k == "instance"
        ],
        _routing_in(model),
    )


@dataclass
class Region:
    """The store's model plus an engine fed by its writes, checked after every write."""

    engine: Engine
    model: dict[tuple[str, str], Resource] = field(default_factory=dict)
    revision: int = 0
    # host -> [(revision, its entries as of then)], for deltas from any earlier revision
    history: dict[str, list[tuple[int, Entries]]] = field(default_factory=dict)
    doc_rev: dict[str, int] = field(default_factory=dict)
    # agents that follow along: host -> (revision held, entries held)
    agents: dict[str, tuple[int, Entries]] = field(default_factory=dict)

    def write(self, puts: list[Resource], deletes: list[tuple[str, str]] = ()) -> frozenset[str]:  # type: ignore[assignment]
        self.revision += 1
        events = []
        for r in puts:
            self.model[(r.kind, r.id)] = r
            events.append(Event(self.revision, r.kind, r.id, "put", r))
        for kind, rid in deletes:
            gone = self.model.pop((kind, rid), None)
            if gone is not None:
                events.append(Event(self.revision, kind, rid, "delete", gone))
        before = {h: self.engine.snapshot(h) for h in self.engine.hosts()}
        got = self.engine.apply(self.revision, events)
        self.check(before, got)
        return got

    def check(self, before: dict[str, Entries], got: frozenset[str]) -> None:
        e, rev = self.engine, self.revision
        want = reference(self.model)
        assert e.hosts() == set(want)
        now = {h: e.snapshot(h) for h in e.hosts()}
        for h, doc in want.items():
            assert assemble(now[h], h) == doc, h
            assert e.digest(h) == digest(now[h])
        changed = {h for h in set(before) | set(now) if before.get(h) != now.get(h)}
        assert got == changed
        assert e.affected(rev) == changed
        for h in changed:
            self.doc_rev[h] = rev
        for h in set(self.doc_rev) - set(now):
            del self.doc_rev[h]
        assert {h: e.doc_revision(h) for h in now} == self.doc_rev
        for h in set(before) - set(now):
            assert e.doc_revision(h) is None
        for h, entries in now.items():
            self.history.setdefault(h, []).append((rev, entries))
            held_rev, held = self.agents.get(h, (0, {}))
            d = e.delta(h, held_rev)
            assert d.revision == self.doc_rev[h]
            self.agents[h] = (d.revision, d.applied_to(held))
            assert self.agents[h][1] == entries

    def check_deltas_from_every_earlier_revision(self) -> None:
        e = self.engine
        for h in e.hosts():
            snap = e.snapshot(h)
            for h2, hist in self.history.items():
                # An agent of any host name, at any revision it saw (a recreated host's agent
                # holds an older document of the same name).
                if h2 != h:
                    continue
                for r, held in hist:
                    d = Delta.from_json(e.delta(h, r).to_json())
                    assert d.applied_to(held) == snap, (h, r)
                    assert digest(d.applied_to(held)) == e.digest(h)
                    if r >= e.doc_revision(h):  # type: ignore[operator]
                        assert not d.snapshot and not d.removed and not d.entries
            assert e.delta(h, 0).snapshot and e.delta(h, e.revision + 1).snapshot
            assert e.delta(h, 0).entries == snap

    def check_full_recompute_agrees(self) -> None:
        fresh = Engine()
        fresh.load(self.revision, list(self.model.values()))
        assert fresh.hosts() == self.engine.hosts()
        for h in fresh.hosts():
            assert fresh.snapshot(h) == self.engine.snapshot(h)
            assert fresh.digest(h) == self.engine.digest(h)
            assert fresh.doc_revision(h) == self.revision == fresh.base
            assert fresh.delta(h, self.revision - 1).snapshot or self.revision <= 1


# -- the property: any sequence of writes ---------------------------------------------------

CIDRS = ["10.0.0.0/16", "10.1.0.0/16", "10.0.0.0/8", "10.0.1.5/32"]
SUBNET_CIDRS = ["10.0.1.0/24", "10.0.2.0/24", "10.1.0.0/24", "10.0.1.0/28"]
IPS = ["10.0.1.5", "10.0.1.6", "10.0.2.7", "10.1.0.8"]
HOST_NAMES = ["h0", "h1", "h2", "h0b", "h-unknown"]


# Subnets located in an IDC: one CIDR per subnet index (so that rewriting one with another
# `serve` is a route switch), inside the VPC blocks or not, one overlapping another.
IDC_CIDRS = ["10.0.2.0/24", "10.0.1.0/28", "192.168.100.0/24", "10.1.0.0/24"]
REPLICA_STATES = [*("Established",) * 4, "Active", "pending", "unplaced"]
REPLICA_HOSTS = [*HOST_NAMES[:3], *HOST_NAMES, None]  # mostly hosts of the seeded region


def _hybrid_op(draw: st.DrawFn, kind: str, deleting: bool) -> Resource | tuple[str, str]:
    if kind == "idcsub":  # (re)located, or switched between the IDC and the cloud
        i = draw(st.integers(0, 3))
        if deleting:
            return ("subnet", f"subnet-{i}")
        return subnet(
            i,
            draw(st.sampled_from([0, 0, 1])),
            IDC_CIDRS[i],
            draw(st.sampled_from([i + 1, i + 1, None])),
            draw(st.sampled_from([None, None, "rtb-1", "rtb-9"])),
            location=f"idc:{draw(st.sampled_from(['dc1', 'dc1', 'dc2']))}",
            serve=draw(st.sampled_from(["idc", "cloud", None])),
        )
    # a hybrid gateway: created, scaled, its replicas moved, lost, (not) Established
    i = draw(st.integers(0, 1))
    if deleting:
        return ("hybrid_gw", f"hgw-{i}")
    indexes = draw(st.lists(st.integers(1, 4), max_size=3, unique=True))
    replicas = [
        (
            n,
            draw(st.sampled_from(REPLICA_HOSTS)),
            draw(st.sampled_from(REPLICA_STATES)),
        )
        for n in indexes
    ]
    return hybrid_gw(
        i,
        draw(st.sampled_from([0, 0, 1])),
        draw(st.sampled_from([40 + i, 40 + i, None])),
        replicas,
        site=draw(st.sampled_from(["dc1", "dc1", "dc2"])),
        md5=draw(st.sampled_from([None, "s3cret"])),
        bfd=draw(st.booleans()),
    )


DSTS = ["0.0.0.0/0", "192.168.9.0/24", "10.0.2.0/24", "10.0.2.0/24"]


def _next_hop(draw: st.DrawFn) -> dict[str, Any]:
    return draw(
        st.sampled_from(
            [
                {"type": "instance", "id": "inst-00000001"},
                {"type": "instance", "id": "inst-00000003"},
                {"type": "instance", "id": "inst-00000009"},
                {"type": "vip", "ip": "10.0.1.6"},
                {"type": "natgw", "id": "ngw-0"},
                {"type": "natgw", "id": "ngw-1"},
                {"type": "blackhole"},
                {"type": "hybrid", "id": "x"},
            ]
        )
    )


def _routing_op(draw: st.DrawFn, kind: str, deleting: bool) -> Resource | tuple[str, str]:
    vpc_i = draw(st.sampled_from([0, 0, 1]))
    if kind == "rtb":
        i = draw(st.integers(0, 2))
        if deleting:
            return ("route_table", f"rtb-{i}")
        return table(i, vpc_i, draw(st.sampled_from([i + 1, i + 1, None])), draw(st.booleans()))
    if kind == "route":
        i = draw(st.integers(0, 5))
        if deleting:
            return ("route", f"rt-{i}")
        dst = draw(st.sampled_from(DSTS))
        prio = draw(st.sampled_from([10, 100, 100]))
        return route(i, vpc_i, draw(st.integers(0, 2)), dst, prio, _next_hop(draw))
    if kind == "policy":
        i = draw(st.integers(0, 3))
        if deleting:
            return ("policy_route", f"pr-{i}")
        action = draw(st.sampled_from(["drop", "allow", "reroute"]))
        nh = _next_hop(draw) if action == "reroute" else None
        index = draw(st.sampled_from([20 + i, None]))
        return policy(i, vpc_i, draw(st.integers(0, 2)), index, draw(st.integers(1, 3)), action, nh)
    if kind == "natgw":
        i = draw(st.integers(0, 1))
        if deleting:
            return ("natgw", f"ngw-{i}")
        where = draw(st.sampled_from([*HOST_NAMES, None]))
        served = draw(st.lists(st.integers(0, 3), max_size=2, unique=True))
        return natgw(i, vpc_i, draw(st.sampled_from([30 + i, None])), where, served)
    i = draw(st.integers(0, 2))
    if deleting:
        return ("eip", f"eip-{i}")
    return eip(i, draw(st.sampled_from([0, 1, 3, None])), draw(st.sampled_from([0, 1, None])))


def _op(draw: st.DrawFn) -> tuple[list[Resource], list[tuple[str, str]]]:
    kind = draw(
        st.sampled_from(
            [
                *("host", "vpc", "subnet", "inst", "inst", "inst", "project"),
                *("rtb", "route", "route", "policy", "natgw", "eip", "sg", "sg", "acl", "fl"),
                *("vip", "vip"),
                *("vol", "vol", "vol"),
                *("idcsub", "idcsub", "hgw", "hgw", "hgw"),
            ]
        )
    )
    deleting = draw(st.integers(0, 5)) == 0
    if kind == "vol":
        # create, attach (to a placed, unplaced or missing instance), move host, detach,
        # protect, restore, delete
        i = draw(st.integers(0, 3))
        if deleting:
            return [], [("volume", f"vol-{i}")]
        return [
            volume(
                i,
                draw(st.sampled_from([*HOST_NAMES, None])),
                draw(st.sampled_from([None, None, 0, 1, 2, 9])),
                tiers=draw(st.sampled_from([None, [(43200, 1), (86400, 3600)], [(60, 1)]])),
                size=draw(st.sampled_from([1 << 30, 10 << 30])),
                restore=draw(st.sampled_from([None, (5 * 10**18, 1), (6 * 10**18, 2)])),
                source=draw(st.sampled_from([None, ("vol-0", 7 * 10**18)])),
            )
        ], []
    if kind == "vip":
        i = draw(st.integers(0, 2))
        if deleting:
            return [], [("vip", f"vip-{i}")]
        # 10.0.1.6 is also a route's `vip:` next hop; 10.0.1.5 is an instance's own address
        ip = draw(st.sampled_from(["10.0.1.6", "10.0.1.200", "10.0.2.50", "10.0.1.5"]))
        to = draw(st.sampled_from([0, 1, 2, 3, 5, None]))
        allowed = tuple(draw(st.sets(st.sampled_from([0, 1, 2, 5]), max_size=3)))
        epoch = draw(st.integers(0, 3))
        return [vip(i, draw(st.sampled_from([0, 0, 1])), ip, to, allowed, epoch)], []
    if kind == "acl":
        i = draw(st.integers(0, 1))
        if deleting:
            return [], [("network_acl", f"acl-{i}")]
        rules = draw(
            st.lists(
                st.sampled_from(ACL_RULES),
                max_size=3,
                unique_by=lambda r: (r["number"], r["direction"]),
            )
        )
        return [acl(i, draw(st.sampled_from([0, 0, 1])), rules)], []
    if kind == "fl":
        i = draw(st.integers(0, 2))
        if deleting:
            return [], [("flow_log", f"fl-{i}")]
        scope, target = draw(
            st.sampled_from(
                [("vpc", "vpc-0"), ("subnet", "subnet-1"), ("instance", "inst-00000002")]
            )
        )
        filt = draw(st.sampled_from(["ALL", "ACCEPT", "REJECT"]))
        return [flowlog(i, draw(st.sampled_from([0, 0, 1])), scope, target, filt)], []
    if kind == "sg":
        i = draw(st.integers(0, 2))
        if deleting:
            return [], [("security_group", f"sg-{i}")]
        rules = draw(st.lists(st.sampled_from(SG_RULES), max_size=3, unique_by=lambda r: r["id"]))
        return [sg(i, draw(st.sampled_from([0, 0, 1])), rules)], []
    if kind in ("rtb", "route", "policy", "natgw", "eip"):
        got = _routing_op(draw, kind, deleting)
        return ([], [got]) if isinstance(got, tuple) else ([got], [])
    if kind in ("idcsub", "hgw"):
        got = _hybrid_op(draw, kind, deleting)
        return ([], [got]) if isinstance(got, tuple) else ([got], [])
    if kind == "host":
        i = draw(st.integers(0, 2))
        if deleting:
            return [], [("host", f"host-{i}")]
        name = f"h{i}b" if i == 0 and draw(st.booleans()) else None  # a rename of host-0
        vtep = draw(st.sampled_from([-1, -1, -1, 0, 40 + i]))
        ip = draw(st.sampled_from(["", "198.18.9.9"]))
        mtu = draw(st.sampled_from([1500, 9000]))
        lost = draw(st.integers(0, 3)) == 0
        return [host(i, name=name, vtep=vtep, ip=ip, mtu=mtu, lost=lost)], []
    if kind == "vpc":
        i = draw(st.integers(0, 2))
        if deleting:
            return [], [("vpc", f"vpc-{i}")]
        vni = draw(st.sampled_from([i + 1, i + 1, i + 1, None, 100 + i]))
        cidrs = draw(st.lists(st.sampled_from(CIDRS), min_size=0, max_size=3))
        return [vpc(i, vni, cidrs)], []
    if kind == "subnet":
        i = draw(st.integers(0, 3))
        if deleting:
            return [], [("subnet", f"subnet-{i}")]
        index = draw(st.sampled_from([None, i + 1, i + 1]))
        tbl = draw(st.sampled_from([None, "rtb-0", "rtb-1", "rtb-2"]))
        cidr = draw(st.sampled_from(SUBNET_CIDRS))
        acl_id = draw(st.sampled_from([None, None, "acl-0", "acl-1"]))
        return [subnet(i, draw(st.integers(0, 3)), cidr, index, tbl, acl_id)], []
    if kind == "inst":
        i = draw(st.integers(0, 7))
        if deleting:
            return [], [("instance", f"inst-{i:08x}")]
        return [
            inst(
                i,
                draw(st.integers(0, 4)),  # subnet-4 never exists
                draw(st.sampled_from([*IPS, None])),
                draw(st.sampled_from([f"fa:16:3e:00:00:0{i}", None])),
                draw(st.sampled_from([*HOST_NAMES, None])),
                draw(st.sampled_from([None, [], ["sleep", "1d"]])),
                draw(st.sampled_from([None, ["sg-0"], ["sg-0", "sg-1"], ["sg-2"], ["sg-9"]])),
                draw(st.sampled_from([None, f"yh-i-{i:08x}", "other-ns"])),
            )
        ], []
    return [res("project", "proj-1", "p", {"n": draw(st.integers())}, {})], []


@st.composite
def writes(draw: st.DrawFn) -> list[tuple[list[Resource], list[tuple[str, str]]]]:
    out = []
    for _ in range(draw(st.integers(1, 30))):
        puts: list[Resource] = []
        deletes: list[tuple[str, str]] = []
        for _ in range(draw(st.integers(1, 3))):
            p, d = _op(draw)
            puts += p
            deletes += d
        out.append((puts, deletes))
    return out


def _seeded() -> list[tuple[list[Resource], list[tuple[str, str]]]]:
    """A region that already has members, so random writes change real documents."""
    return [
        ([host(0), host(1), host(2)], []),
        ([vpc(0, 1, ["10.0.0.0/16"]), vpc(1, 2, ["10.0.0.0/16", "10.1.0.0/16"])], []),
        (
            [
                subnet(0, 0, "10.0.1.0/24", 1),
                subnet(1, 1, "10.0.1.0/24", 2),
                subnet(2, 0, CIDRS[1], 3, "rtb-1"),
                table(0, 0, 1, True),
                table(1, 0, 2, False),
            ],
            [],
        ),
        (
            [
                inst(0, 0, "10.0.1.5", "fa:16:3e:00:00:00", "h0"),
                inst(1, 0, "10.0.1.6", "fa:16:3e:00:00:01", "h1"),
                inst(2, 1, "10.0.1.5", "fa:16:3e:00:00:02", "h1", ["sleep", "1d"]),
                inst(3, 1, "10.0.1.7", "fa:16:3e:00:00:03", "h2"),
            ],
            [],
        ),
        ([vip(0, 0, "10.0.1.200", 0)], []),
        ([volume(0, "h0"), volume(1, "h1", 2, tiers=[(43200, 1)])], []),
    ]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seeded=st.booleans(), script=writes(), window=st.sampled_from([50_000, 3, 1]))
def test_incremental_engine_equals_full_recompute_after_any_writes(
    seeded: bool, script: list[tuple[list[Resource], list[tuple[str, str]]]], window: int
) -> None:
    region = Region(Engine(window=window))
    for puts, deletes in (_seeded() if seeded else []) + script:
        region.write(puts, deletes)
    region.check_deltas_from_every_earlier_revision()
    region.check_full_recompute_agrees()
    e = region.engine
    for r in range(max(1, e.revision - window + 1), e.revision + 1):
        assert e.affected(r) is not None  # the window is kept
    if window < e.revision:
        assert e.affected(1) is None  # and what is older is forgotten


@settings(max_examples=40, deadline=None)
@given(script=writes())
def test_engine_continues_incrementally_after_a_load(
    script: list[tuple[list[Resource], list[tuple[str, str]]]],
) -> None:
    first, rest = _seeded() + script[:3], script[3:]
    region = Region(Engine())
    for puts, deletes in first:
        region.write(puts, deletes)
    # Swap in an engine loaded from the model: agents' older revisions get snapshots, then
    # it follows the writes incrementally like the first.
    loaded = Engine()
    loaded.load(region.revision, list(region.model.values()))
    region.engine = loaded
    region.history.clear()
    region.doc_rev = {h: region.revision for h in loaded.hosts()}
    for puts, deletes in rest:
        region.write(puts, deletes)
    region.check_deltas_from_every_earlier_revision()
    region.check_full_recompute_agrees()


# -- particular cases, spelled out -----------------------------------------------------------


def _three_hosts() -> Region:
    region = Region(Engine())
    for puts, deletes in _seeded():
        region.write(puts, deletes)
    return region


def test_entries_have_the_protocol_shapes() -> None:
    e = _three_hosts().engine
    snap = e.snapshot("h0")
    assert sorted(snap) == [
        "host",
        "volume/vol-0",
        "vpc/vpc-0",
        "vpc/vpc-0/m/inst-00000000",
        "vpc/vpc-0/m/inst-00000001",
        "vpc/vpc-0/s/subnet-0",
        "vpc/vpc-0/s/subnet-2",
        "vpc/vpc-0/t/rtb-0",
        "vpc/vpc-0/t/rtb-1",
        "vpc/vpc-0/vip/vip-0",
    ]
    assert snap["volume/vol-0"] == {
        "id": "vol-0",
        "name": "vol0",
        "size": 1 << 30,
        "zone": "zone-1",
        "tiers": None,
        "attach": None,
        "restore": None,
        "source": None,
    }
    assert e.snapshot("h1")["volume/vol-1"]["tiers"] == [{"keep_s": 43200, "every_s": 1}]
    assert e.snapshot("h1")["volume/vol-1"]["attach"] == {
        "instance": "inst-00000002",
        "netns": None,
        "path": "/data",
    }
    assert snap["vpc/vpc-0/vip/vip-0"] == {
        "id": "vip-0",
        "ip": "10.0.1.200",
        "allowed": [],
        "epoch": 0,
    }
    assert snap["vpc/vpc-0/s/subnet-2"] == {
        "id": "subnet-2",
        "cidr": "10.1.0.0/16",
        "index": 3,
        "table": "rtb-1",
        "natgw": None,
    }
    assert snap["vpc/vpc-0/t/rtb-0"] == {"id": "rtb-0", "index": 1, "default": True}
    assert snap["host"] == {
        "host": "h0",
        "underlay_ip": "198.18.0.1",
        "vtep_index": 1,
        "underlay_mtu": 1500,
    }
    assert snap["vpc/vpc-0"] == {
        "id": "vpc-0",
        "vni": 1,
        "cidrs": ["10.0.0.0/16"],
        "gateways": ["10.0.1.1/24", "10.1.0.1/16"],
    }
    assert snap["vpc/vpc-0/m/inst-00000001"] == {
        "id": "inst-00000001",
        "name": "i1",
        "ip": "10.0.1.6",
        "mac": "fa:16:3e:00:00:01",
        "prefixlen": 24,
        "gateway": "10.0.1.1",
        "host": "h1",
        "vtep_index": 2,
        "underlay_ip": "198.18.0.2",
        "command": None,
        "allowed_ips": [],
    }


def test_a_volume_entry_lives_in_its_host_document_only() -> None:
    region = _three_hosts()
    e = region.engine
    assert "volume/vol-0" in e.snapshot("h0")
    assert all("volume/vol-0" not in e.snapshot(h) for h in ("h1", "h2"))


def test_a_volume_attached_elsewhere_moves_documents_as_one_removal_and_one_entry() -> None:
    region = _three_hosts()
    e = region.engine
    before = e.revision
    assert region.write([volume(0, "h1", 1)]) == {"h0", "h1"}
    assert e.delta("h0", before).removed == ("volume/vol-0",)
    d = e.delta("h1", before)
    assert (d.removed, sorted(d.entries)) == ((), ["volume/vol-0"])
    assert d.entries["volume/vol-0"]["attach"]["instance"] == "inst-00000001"
    # detached: back home; deleted: gone from there
    assert region.write([volume(0, "h0")]) == {"h0", "h1"}
    assert region.write([], [("volume", "vol-0")]) == {"h0"}
    assert "volume/vol-0" not in e.snapshot("h0")


def test_an_instance_reporting_its_netns_changes_its_volume_entry_only() -> None:
    region = _three_hosts()
    e = region.engine
    before = e.revision
    got = region.write([inst(2, 1, "10.0.1.5", "fa:16:3e:00:00:02", "h1", ["sleep", "1d"],
                             netns="yh-i-00000002")])  # fmt: skip
    assert got == {"h1"}
    d = e.delta("h1", before)
    assert (d.removed, sorted(d.entries)) == ((), ["volume/vol-1"])
    assert d.entries["volume/vol-1"]["attach"]["netns"] == "yh-i-00000002"


def test_a_volume_on_a_host_without_a_document_waits_for_its_registration() -> None:
    region = _three_hosts()
    assert region.write([volume(3, "h9")]) == frozenset()
    got = region.write([host(9, name="h9")])
    assert got == {"h9"}
    assert "volume/vol-3" in region.engine.snapshot("h9")


def test_a_restore_asked_changes_the_volume_entry() -> None:
    region = _three_hosts()
    before = region.revision
    assert region.write([volume(0, "h0", restore=(10**18, 1))]) == {"h0"}
    d = region.engine.delta("h0", before)
    assert d.entries["volume/vol-0"]["restore"] == {"to_ns": 10**18, "serial": 1}


def test_vpc_entries_are_shared_not_copied_per_host() -> None:
    e = _three_hosts().engine
    a, b = e.snapshot("h1"), e.snapshot("h2")
    assert a["vpc/vpc-1"] is b["vpc/vpc-1"]
    assert a["vpc/vpc-1/m/inst-00000003"] is b["vpc/vpc-1/m/inst-00000003"]


def test_reregistering_with_a_new_underlay_ip_changes_only_its_own_members() -> None:
    region = _three_hosts()
    e = region.engine
    before = e.revision
    assert region.write([host(2, ip="198.18.7.7")]) == {"h1", "h2"}
    d = e.delta("h1", before)
    assert (d.removed, sorted(d.entries)) == ((), ["vpc/vpc-1/m/inst-00000003"])
    assert d.entries["vpc/vpc-1/m/inst-00000003"]["underlay_ip"] == "198.18.7.7"
    assert sorted(e.delta("h2", before).entries) == ["host", "vpc/vpc-1/m/inst-00000003"]
    # Only the MTU: the host's own entry, nobody else.
    assert region.write([host(2, ip="198.18.7.7", mtu=9000)]) == {"h2"}


def test_losing_the_last_member_removes_the_vpc_with_one_key() -> None:
    region = _three_hosts()
    before = region.revision
    assert region.write([], [("instance", "inst-00000003")]) == {"h1", "h2"}
    d = region.engine.delta("h2", before)
    assert (d.removed, d.entries) == (("vpc/vpc-1",), {})
    d = region.engine.delta("h1", before)
    assert (d.removed, d.entries) == (("vpc/vpc-1/m/inst-00000003",), {})


def test_an_instance_becomes_a_member_when_its_host_registers() -> None:
    region = _three_hosts()
    assert region.write([inst(5, 0, "10.0.1.9", "fa:16:3e:00:00:05", "h9")]) == frozenset()
    before = region.revision
    got = region.write(
        [res("host", "host-9", "h9", {"underlay_ip": "198.18.0.9", "mtu": 1500}, {"vtep_index": 9})]
    )
    assert got == {"h0", "h1", "h9"}
    d = region.engine.delta("h0", before)
    assert (d.removed, list(d.entries)) == ((), ["vpc/vpc-0/m/inst-00000005"])
    assert region.engine.delta("h9", before).snapshot  # its document did not exist then


def test_a_write_that_changes_nothing_wakes_nobody() -> None:
    region = _three_hosts()
    d = region.engine.doc_revision("h0")
    # The phase of an instance is not in any document.
    i0 = inst(0, 0, "10.0.1.5", "fa:16:3e:00:00:00", "h0")
    again = res("instance", i0.id, i0.name, i0.spec, {**i0.status, "phase": "failed"})
    assert region.write([again]) == frozenset()
    assert region.engine.doc_revision("h0") == d
    assert region.engine.delta("h0", d).entries == {}  # type: ignore[arg-type]


def test_a_host_rename_takes_the_full_path_and_stays_exact() -> None:
    region = _three_hosts()
    got = region.write([host(1, name="h1b")])
    assert got == {"h0", "h1", "h1b", "h2"}  # h1 vanished, h1b appeared, peers changed


def test_deltas_from_before_the_window_are_snapshots() -> None:
    region = Region(Engine(window=4))
    for puts, deletes in _seeded():
        region.write(puts, deletes)
    for n in range(10):
        region.write([inst(6, 0, f"10.0.1.{20 + n}", "fa:16:3e:00:00:06", "h2")])
    e = region.engine
    assert e.delta("h0", 2).snapshot and not e.delta("h0", e.revision - 1).snapshot
    assert e.affected(2) is None and e.affected(e.revision) == {"h0", "h1", "h2"}
    region.check_deltas_from_every_earlier_revision()


def test_a_long_vpc_log_is_compacted_and_still_answers_every_delta() -> None:
    region = _three_hosts()
    rng = random.Random(3)
    for n in range(400):  # well past the compaction threshold of one VPC's log
        i = rng.randint(4, 9)
        region.write(
            [inst(i, 0, f"10.0.1.{20 + n % 7}", "fa:16:3e:00:00:07", rng.choice(HOST_NAMES))]
        )
    log = region.engine._vpc_log["vpc-0"]  # a white-box look, read only: it stayed small
    assert len(log) < 300
    region.check_deltas_from_every_earlier_revision()


def test_a_bad_write_is_rejected_whole() -> None:
    region = _three_hosts()
    e = region.engine
    snap = e.snapshot("h0")
    bad = res("subnet", "subnet-9", "s9", {"cidr": "10.0.9.0/24"}, {})  # no vpc
    good = inst(0, 0, "10.0.1.99", "fa:16:3e:00:00:00", "h0")
    with pytest.raises(KeyError):
        e.apply(
            e.revision + 1,
            [
                Event(e.revision + 1, "instance", good.id, "put", good),
                Event(e.revision + 1, "subnet", bad.id, "put", bad),
            ],
        )
    assert e.snapshot("h0") == snap
    with pytest.raises(ValueError, match="not after"):
        e.apply(e.revision, [])


# -- distributed routing, spelled out ----------------------------------------------------------


def _routed() -> Region:
    """Three hosts, VPC 0 with two subnets on two tables; appliances i1 (h1) and i3 (h2)."""
    region = _three_hosts()
    region.write(
        [
            inst(3, 0, "10.0.1.7", "fa:16:3e:00:00:03", "h2"),
            route(0, 0, 0, "192.168.9.0/24", 10, {"type": "instance", "id": "inst-00000001"}),
            route(1, 0, 0, "192.168.9.0/24", 20, {"type": "instance", "id": "inst-00000003"}),
        ]
    )
    return region


def _table_routes(region: Region, host_name: str, table_id: str) -> list[Any]:
    doc = assemble(region.engine.snapshot(host_name), host_name)
    vpc0 = next(v for v in doc.vpcs if v.id == "vpc-0")
    return list(next(t for t in vpc0.tables if t.id == table_id).routes)


def test_the_lower_priority_wins_and_the_next_takes_over_when_its_next_hop_goes() -> None:
    region = _routed()
    (r,) = _table_routes(region, "h0", "rtb-0")
    assert (r.route_id, r.nexthop.kind, r.nexthop.peer, r.nexthop.ip) == (
        "rt-0",
        "remote",
        "h1",
        "10.0.1.6",
    )
    (r,) = _table_routes(region, "h1", "rtb-0")  # on the appliance's own host: local
    assert (r.nexthop.kind, r.nexthop.port) == ("local", "p-00000001")
    # Its host is lost: the second route takes over everywhere, with no route written.
    affected = region.write([host(1, lost=True)])
    assert {"h0", "h2"} <= affected
    (r,) = _table_routes(region, "h0", "rtb-0")
    assert (r.route_id, r.nexthop.peer) == ("rt-1", "h2")
    region.write([host(1)])
    assert _table_routes(region, "h0", "rtb-0")[0].route_id == "rt-0"
    # The instance is deleted: the same.
    region.write([], [("instance", "inst-00000001")])
    assert _table_routes(region, "h0", "rtb-0")[0].route_id == "rt-1"
    # Both gone: the best one stays, unreachable (nothing falls to a shorter prefix).
    region.write([], [("instance", "inst-00000003")])
    (r,) = _table_routes(region, "h0", "rtb-0")
    assert (r.route_id, r.nexthop.kind) == ("rt-0", "unreachable")


def test_a_next_hop_instance_is_a_forwarder_and_a_route_write_is_one_entry() -> None:
    region = _routed()
    e = region.engine
    assert e.snapshot("h1")["vpc/vpc-0/m/inst-00000001"]["forwarder"] is True
    assert "forwarder" not in e.snapshot("h0")["vpc/vpc-0/m/inst-00000000"]
    held = e.doc_revision("h0")
    assert held is not None
    region.write([route(2, 0, 1, "172.16.0.0/12", 100, {"type": "blackhole"})])
    d = e.delta("h0", held)
    assert not d.snapshot and not d.removed and list(d.entries) == ["vpc/vpc-0/r/rt-2"]


def test_a_nat_gateway_makes_its_host_carry_the_vpc_and_serves_its_subnets() -> None:
    region = Region(Engine())
    region.write([host(0), host(1), vpc(0, 1, ["10.0.0.0/16"]), table(0, 0, 1, True)])
    region.write(
        [subnet(0, 0, "10.0.1.0/24", 1), inst(0, 0, "10.0.1.5", "fa:16:3e:00:00:00", "h0")]
    )
    region.write([natgw(0, 0, 9, "h1", [0]), eip(0, 0, 0)])
    doc1 = assemble(region.engine.snapshot("h1"), "h1")
    (v,) = doc1.vpcs
    assert v.ports == () and [p.host for p in v.peers] == ["h0"]
    (g,) = v.natgws
    assert g.local and g.snat == ("10.0.1.0/24",) and g.eips == (("10.0.1.5", "198.19.128.10"),)
    doc0 = assemble(region.engine.snapshot("h0"), "h0")
    (v0,) = doc0.vpcs
    assert v0.subnets[0].natgw == 9 and v0.natgws[0].nexthop.kind == "remote"
    assert not v0.natgws[0].local and v0.natgws[0].eips == ()
    # The gateway moves to h0: h1 carries the VPC no more.
    region.write([natgw(0, 0, 9, "h0", [0])])
    assert region.engine.snapshot("h1") == {"host": region.engine.snapshot("h1")["host"]}
    assert assemble(region.engine.snapshot("h0"), "h0").vpcs[0].natgws[0].local


def test_a_vip_move_changes_the_two_holders_member_entries_and_nothing_else() -> None:
    region = _three_hosts()  # vip-0 (10.0.1.200) is delivered to inst-0 on h0
    e = region.engine
    key0, key1 = "vpc/vpc-0/m/inst-00000000", "vpc/vpc-0/m/inst-00000001"
    assert e.snapshot("h1")[key0]["allowed_ips"] == ["10.0.1.200"]
    held = {h: e.doc_revision(h) for h in e.hosts()}
    got = region.write([vip(0, 0, "10.0.1.200", 1)])  # to inst-1 on h1
    assert got == {"h0", "h1"}  # every host carrying vpc-0
    for h in got:
        d = e.delta(h, held[h])  # type: ignore[arg-type]
        assert not d.snapshot and not d.removed and sorted(d.entries) == [key0, key1]
    assert e.snapshot("h0")[key1]["allowed_ips"] == ["10.0.1.200"]
    assert e.snapshot("h0")[key0]["allowed_ips"] == []
    routes = {r.dst: r for v in assemble(e.snapshot("h0"), "h0").vpcs for r in v.routes}
    assert (routes["10.0.1.200/32"].kind, routes["10.0.1.200/32"].peer) == ("remote", "h1")
    routes = {r.dst: r for v in assemble(e.snapshot("h1"), "h1").vpcs for r in v.routes}
    assert (routes["10.0.1.200/32"].kind, routes["10.0.1.200/32"].port) == ("local", "p-00000001")
    # a VIP write that changes nothing a host knows of it wakes nobody
    assert region.write([vip(0, 0, "10.0.1.200", 1)]) == frozenset()


def test_a_claim_won_changes_the_vips_own_entry_on_every_carrier() -> None:
    """What an agent needs to follow gratuitous ARP: the VIP's address, who may hold it and
    its epoch, on every host carrying the VPC; a new epoch (a claim won while damped, the
    holder unchanged) is one entry per host and no member entry."""
    region = _three_hosts()
    e = region.engine
    region.write([vip(0, 0, "10.0.1.200", 0, allowed=(0, 1), epoch=3)])
    held = {h: e.doc_revision(h) for h in e.hosts()}
    got = region.write([vip(0, 0, "10.0.1.200", 0, allowed=(0, 1), epoch=4)])
    key = "vpc/vpc-0/vip/vip-0"
    assert got == {"h0", "h1"}
    for h in got:
        d = e.delta(h, held[h])  # type: ignore[arg-type]
        assert not d.snapshot and not d.removed and sorted(d.entries) == [key]
        (v,) = assemble(e.snapshot(h), h).vpcs[0].vips
        assert (v.ip, v.allowed, v.epoch) == (
            "10.0.1.200",
            ("inst-00000000", "inst-00000001"),
            4,
        )


# -- hybrid cloud, spelled out (docs/hybrid.md) -----------------------------------------------

IDC_ANNOUNCED = [  # 10.0.0.0/16 without 10.0.2.0/24 (served in the IDC)
    "10.0.0.0/23", "10.0.3.0/24", "10.0.4.0/22", "10.0.8.0/21",
    "10.0.16.0/20", "10.0.32.0/19", "10.0.64.0/18", "10.0.128.0/17",
]  # fmt: skip


def _hybrid_region() -> Region:
    """Three hosts; VPC 0 (10.0.0.0/16): web 10.0.1.0/24 in the cloud (i0 on h0), idc
    10.0.2.0/24 located in site dc1 and served there (i1 on h1 stands by); hybrid gateway
    hgw-0 to dc1 with replicas 1 on h1 and 2 on h2 (Established), 3 on h0 (Active)."""
    region = Region(Engine())
    region.write([host(0), host(1), host(2), vpc(0, 1, ["10.0.0.0/16"]), table(0, 0, 1, True)])
    region.write(
        [
            subnet(0, 0, "10.0.1.0/24", 1),
            subnet(1, 0, "10.0.2.0/24", 2, location="idc:dc1", serve="idc"),
            inst(0, 0, "10.0.1.5", "fa:16:3e:00:00:00", "h0"),
            inst(1, 1, "10.0.2.10", "fa:16:3e:00:00:01", "h1"),
        ]
    )
    reps = [(1, "h1", "Established"), (2, "h2", "Established"), (3, "h0", "Active")]
    region.write([hybrid_gw(0, 0, 40, reps, md5="s3cret")])
    return region


def _vpc0(region: Region, host_name: str) -> Any:
    doc = assemble(region.engine.snapshot(host_name), host_name)
    return next(v for v in doc.vpcs if v.id == "vpc-0")


def _hops(region: Region, host_name: str) -> list[tuple[str, str | None, str | None]]:
    (g,) = _vpc0(region, host_name).hybrids
    (r,) = g.routes
    assert r.dst == "10.0.2.0/24"
    return [(nh.kind, nh.peer, nh.port) for nh in r.nexthops]


def test_a_replica_host_carries_the_vpc_and_builds_its_replica() -> None:
    region = Region(Engine())
    region.write([host(0), host(1), vpc(0, 1, ["10.0.0.0/16"]), table(0, 0, 1, True)])
    region.write(
        [
            subnet(0, 0, "10.0.1.0/24", 1),
            subnet(1, 0, "10.0.2.0/24", 2, location="idc:dc1"),
            inst(0, 0, "10.0.1.5", "fa:16:3e:00:00:00", "h0"),
        ]
    )
    assert "vpc/vpc-0" not in region.engine.snapshot("h1")
    got = region.write([hybrid_gw(0, 0, 40, [(1, "h1", "pending")], md5="s3cret", bfd=False)])
    assert got == {"h0", "h1"}
    v = _vpc0(region, "h1")
    assert v.ports == () and [p.host for p in v.peers] == ["h0"]
    (g,) = v.hybrids
    assert (g.id, g.index, g.ifname) == ("hgw-0", 40, hybrid_ifname("hgw-0"))
    rep = g.replica
    assert rep is not None
    assert (rep.index, rep.line_ip, rep.line_vni, rep.line_vtep) == (
        1,
        "198.19.33.11/24",
        0x700001,
        "198.19.16.1",
    )
    assert (rep.peer_ip, rep.peer_asn, rep.asn, rep.md5_secret, rep.bfd) == (
        "198.19.33.1",
        65001,
        64512,
        "s3cret",
        False,
    )
    assert list(rep.announce) == IDC_ANNOUNCED
    # h0 carries the gateway too (to send to it) and knows h1 as a peer; it runs none
    (g0,) = _vpc0(region, "h0").hybrids
    assert g0.replica is None and [p.host for p in _vpc0(region, "h0").peers] == ["h1"]
    # Not established yet: no host sends to it
    assert g0.routes[0].nexthops == () and g.routes[0].nexthops == ()
    # The replica moves to another host: h1 carries the VPC no more
    region.write([hybrid_gw(0, 0, 40, [(1, "h0", "pending")])])
    assert "vpc/vpc-0" not in region.engine.snapshot("h1")
    assert _vpc0(region, "h0").hybrids[0].replica is not None


def test_hosts_send_to_their_own_replica_or_spread_over_the_established_ones() -> None:
    region = _hybrid_region()
    assert _hops(region, "h1") == [("local", None, hybrid_ifname("hgw-0"))]
    assert _hops(region, "h2") == [("local", None, hybrid_ifname("hgw-0"))]
    # h0's own replica is not Established: the two others, ECMP
    assert _hops(region, "h0") == [("remote", "h1", None), ("remote", "h2", None)]
    (g,) = _vpc0(region, "h0").hybrids
    assert {nh.ip for nh in g.routes[0].nexthops} == {"100.64.1.1"}
    assert {nh.target for nh in g.routes[0].nexthops} == {"hybrid_gw:hgw-0"}
    # h2 is lost: its replica gets no traffic (until the controller moves it)
    region.write([host(2, lost=True)])
    assert _hops(region, "h0") == [("remote", "h1", None)]
    assert _hops(region, "h1")[0][0] == "local"
    # h0's replica comes up: h0 sends to it alone
    region.write(
        [hybrid_gw(0, 0, 40, [(1, "h1", "Established"), (2, "h2", "Established"),
                              (3, "h0", "Established")])]
    )  # fmt: skip
    assert _hops(region, "h0") == [("local", None, hybrid_ifname("hgw-0"))]
    # No session up anywhere: the prefix is unreachable on every host
    region.write([host(2)])
    region.write([hybrid_gw(0, 0, 40, [(1, "h1", "Active"), (2, "h2", "Idle"), (3, "h0", "down")])])
    for h in ("h0", "h1", "h2"):
        assert _hops(region, h) == []


def test_an_unplaced_replica_is_no_next_hop_and_builds_nothing() -> None:
    region = _hybrid_region()
    region.write(
        [hybrid_gw(0, 0, 40, [(1, "h1", "Established"), (2, "h2", "unplaced"),
                              (3, "h0", "Active")])]
    )  # fmt: skip
    assert _hops(region, "h0") == [("remote", "h1", None)]
    assert "vpc/vpc-0" not in region.engine.snapshot("h2")  # nothing else there


def test_members_of_a_subnet_served_in_the_idc_have_no_routes_until_the_switch() -> None:
    region = _hybrid_region()
    e = region.engine
    for h in ("h0", "h1", "h2"):
        dsts = [r.dst for r in _vpc0(region, h).routes]
        assert "10.0.2.10/32" not in dsts and "10.0.1.5/32" in dsts, h
    # its port is built all the same (its instance runs; it takes over on the switch)
    assert [p.ip for p in _vpc0(region, "h1").ports] == ["10.0.2.10"]
    held = {h: e.doc_revision(h) for h in e.hosts()}
    assert "10.0.2.1/24" not in _vpc0(region, "h0").gateways  # the IDC's router holds it
    # the route switch: one subnet written
    region.write([subnet(1, 0, "10.0.2.0/24", 2, location="idc:dc1", serve="cloud")])
    for h in ("h0", "h1", "h2"):
        d = e.delta(h, held[h])  # type: ignore[arg-type]
        assert not d.snapshot and not d.removed
        assert sorted(d.entries) == [
            "vpc/vpc-0",  # the subnet's gateway joins the VPC namespaces' `lo`
            "vpc/vpc-0/h/hgw-0",
            "vpc/vpc-0/m/inst-00000001",
            "vpc/vpc-0/s/subnet-1",
        ], h
    assert "10.0.2.1/24" in _vpc0(region, "h0").gateways
    routes = {r.dst: r for r in _vpc0(region, "h0").routes}
    assert (routes["10.0.2.10/32"].kind, routes["10.0.2.10/32"].peer) == ("remote", "h1")
    routes = {r.dst: r for r in _vpc0(region, "h1").routes}
    assert routes["10.0.2.10/32"].kind == "local"
    (g,) = _vpc0(region, "h0").hybrids
    assert g.routes == ()  # nothing is carried to the IDC any more
    # and back
    region.write([subnet(1, 0, "10.0.2.0/24", 2, location="idc:dc1", serve="idc")])
    assert "10.0.2.10/32" not in [r.dst for r in _vpc0(region, "h0").routes]
    assert _hops(region, "h0") == [("remote", "h1", None), ("remote", "h2", None)]


def test_replicas_announce_the_blocks_without_the_idc_and_halves_of_what_moved_in() -> None:
    region = _hybrid_region()

    def announce() -> list[str]:
        rep = _vpc0(region, "h1").hybrids[0].replica
        assert rep is not None
        return list(rep.announce)

    assert announce() == IDC_ANNOUNCED
    # served in the cloud: the whole block, and the subnet's halves (longer than the IDC's
    # own route for it, so the IDC router prefers them without anyone configuring it)
    region.write([subnet(1, 0, "10.0.2.0/24", 2, location="idc:dc1", serve="cloud")])
    assert announce() == ["10.0.0.0/16", "10.0.2.0/25", "10.0.2.128/25"]
    # a subnet of another site served in its IDC is not announced to this one either, and
    # this gateway does not carry it
    region.write(
        [
            subnet(2, 0, "10.0.128.0/24", 3, location="idc:dc2"),
            subnet(1, 0, "10.0.2.0/24", 2, location="idc:dc1", serve="idc"),
        ]
    )
    got = announce()
    assert "10.0.128.0/24" not in got and "10.0.128.0/17" not in got
    assert "10.0.129.0/24" in got and "10.0.2.0/24" not in got
    (g,) = _vpc0(region, "h1").hybrids
    assert [r.dst for r in g.routes] == ["10.0.2.0/24"]
    # a block added to the VPC is announced as soon as it exists
    region.write([vpc(0, 1, ["10.0.0.0/16", "172.16.0.0/16"])])
    assert announce()[-1] == "172.16.0.0/16"


def test_the_md5_secret_and_replicas_travel_in_one_entry_per_gateway() -> None:
    region = _hybrid_region()
    entry = region.engine.snapshot("h0")["vpc/vpc-0/h/hgw-0"]
    assert entry["md5_secret"] == "s3cret"
    assert [(r["index"], r["host"], r["up"]) for r in entry["replicas"]] == [
        (1, "h1", True),
        (2, "h2", True),
        (3, "h0", False),
    ]
    assert entry["routes"] == ["10.0.2.0/24"] and entry["announce"] == IDC_ANNOUNCED
    # a report that changes one replica's state is one entry on every carrier
    held = {h: region.engine.doc_revision(h) for h in region.engine.hosts()}
    reps = [(1, "h1", "Established"), (2, "h2", "Established"), (3, "h0", "Established")]
    assert region.write([hybrid_gw(0, 0, 40, reps, md5="s3cret")]) == {"h0", "h1", "h2"}
    for h, rev in held.items():
        d = region.engine.delta(h, rev)  # type: ignore[arg-type]
        assert list(d.entries) == ["vpc/vpc-0/h/hgw-0"] and not d.removed
    # the same again wakes nobody
    assert region.write([hybrid_gw(0, 0, 40, reps, md5="s3cret")]) == frozenset()
