"""Route tables, indexes and public addresses in the store: what the API's writes and the
controller's repair share (docs/routing.md).

* Every VPC has exactly one default route table, made with it (`ensure_default_table`).
* Route tables, subnets, policy routes and NAT gateways take a per-VPC index from the
  VPC's `status.next_index` counter (`take_index`), never reused while the VPC lives: the
  data plane numbers kernel tables and packet marks from them.
* A next hop is "up" by the rules every listing and the data plane share (`next_hop_up`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from yunhan.errors import Conflict
from yunhan.model import new_id
from yunhan.model.hybrid import replica_up
from yunhan.model.routing import MAX_INDEX, next_hop_text, pool_addresses
from yunhan.store import Reader, Resource, Tx

DEFAULT_SUFFIX = "-default"


def take_index(tx: Tx, vpc: Resource) -> tuple[int, Resource]:
    """The VPC's next free index, and the VPC as written with its counter moved on."""
    current = tx.get("vpc", vpc.id) or vpc
    index = int(current.status.get("next_index") or 1)
    if index > MAX_INDEX:
        raise Conflict(
            f"VPC {vpc.name} has used all {MAX_INDEX} indexes of its route tables, subnets, "
            "policy routes and NAT gateways; make a new VPC",
            vpc=vpc.name,
        )
    vpc = tx.update(current, status={**current.status, "next_index": index + 1})
    return index, vpc


def default_table(r: Reader, vpc_id: str) -> Resource | None:
    return next((t for t in r.find("route_table", "vpc", vpc_id) if t.spec.get("default")), None)


def _free_table_name(r: Reader, project: str, vpc_name: str) -> str:
    base = f"{vpc_name[:55]}{DEFAULT_SUFFIX}"
    name, n = base, 1
    while r.by_name("route_table", project, name) is not None:
        n += 1
        name = f"{base}-{n}"
    return name


def ensure_default_table(tx: Tx, vpc: Resource) -> tuple[Resource, Resource]:
    """The VPC's default table, made now if it has none: (table, vpc as written)."""
    found = default_table(tx, vpc.id)
    if found is not None:
        return found, tx.get("vpc", vpc.id) or vpc
    index, vpc = take_index(tx, vpc)
    table = tx.create(
        "route_table",
        new_id("route_table"),
        vpc.project,
        _free_table_name(tx, vpc.project, vpc.name),
        {"vpc": vpc.id, "default": True},
        {"index": index},
    )
    return table, vpc


def table_of(r: Reader, subnet: Resource) -> str | None:
    """The id of the table a subnet is associated with (absent: its VPC's default)."""
    tid = subnet.spec.get("route_table")
    if tid:
        return str(tid)
    t = default_table(r, subnet.spec["vpc"])
    return t.id if t is not None else None


def table_subnets(r: Reader, table: Resource) -> list[Resource]:
    """The subnets associated with `table` (for the default table, also those of its VPC
    that name no table: subnets made before tables existed)."""
    subs = {s.id: s for s in r.find("subnet", "route_table", table.id)}
    if table.spec.get("default"):
        for s in r.find("subnet", "vpc", table.spec["vpc"]):
            if not s.spec.get("route_table"):
                subs[s.id] = s
    return sorted(subs.values(), key=lambda s: (s.name, s.id))


def gateway_of(r: Reader, subnet: Resource) -> Resource | None:
    """The NAT gateway serving `subnet`, if one does."""
    for g in r.find("natgw", "vpc", subnet.spec["vpc"]):
        if subnet.id in (g.spec.get("subnets") or ()):
            return g
    return None


def subnet_holding(r: Reader, vpc_id: str, ip: str) -> Resource | None:
    """The subnet of the VPC whose CIDR holds `ip`."""
    addr = ipaddress.IPv4Address(ip)
    for s in r.find("subnet", "vpc", vpc_id):
        if addr in ipaddress.IPv4Network(s.spec["cidr"]):
            return s
    return None


def host_lost(r: Reader, project: str, name: str | None) -> bool:
    """Is host `name` (of the admin `project`) missing or marked lost by the controller?"""
    if not name:
        return True
    h = r.by_name("host", project, name)
    return h is None or h.status.get("condition") == "lost"


def next_hop_up(r: Reader, admin_project: str, vpc_id: str, nh: dict[str, Any]) -> bool:
    """Is a next hop up (docs/routing.md)? An instance: it exists, is placed, and its host
    is not lost; a NAT gateway: its host is not lost; a VIP: an instance of the VPC holds
    that address; a blackhole: always (it drops)."""
    kind = nh.get("type")
    if kind == "blackhole":
        return True
    if kind == "instance":
        inst = r.get("instance", str(nh.get("id")))
        return (
            inst is not None
            and bool(inst.status.get("ip"))
            and not host_lost(r, admin_project, inst.status.get("host"))
        )
    if kind == "natgw":
        g = r.get("natgw", str(nh.get("id")))
        return g is not None and not host_lost(r, admin_project, g.status.get("host"))
    if kind == "vip":
        ip = str(nh.get("ip"))
        sub = subnet_holding(r, vpc_id, ip)
        return sub is not None and r.count_of("instance", "addr", f"{sub.id}|{ip}") > 0
    return False


def allocate_public(r: Reader, pools: Iterable[str]) -> str:
    """The lowest address of the public pools that no NAT gateway and no EIP holds."""
    pools = list(pools)
    if not pools:
        raise Conflict(
            "no public pool configured: start the server with --public-pool CIDR "
            "(the lab passes its internet's pool)"
        )
    held = {str(g.status.get("public_ip")) for g in r.list("natgw")}
    for addr in pool_addresses(pools):
        if addr not in held and r.count_of("eip", "address", addr) == 0:
            return addr
    raise Conflict(
        f"the public pool ({', '.join(pools)}) is exhausted: release an EIP or delete a "
        "NAT gateway",
        pools=pools,
    )


def release_public(tx: Tx, instance: Resource) -> None:
    """An instance is going: its EIPs are unbound (kept allocated) and the port forwards
    to it removed, in the transaction that deletes it."""
    for eip in tx.find("eip", "instance", instance.id):
        tx.update(eip, status={**eip.status, "instance": None, "natgw": None})
    vpc = instance.status.get("vpc")
    for g in tx.find("natgw", "vpc", vpc) if vpc else ():
        forwards = g.spec.get("forwards") or []
        kept = [f for f in forwards if f.get("instance") != instance.id]
        if len(kept) != len(forwards):
            tx.update(g, spec={**g.spec, "forwards": kept})


# -- a table as it stands (the API's listing; `yunhan trace` reads the same) --------------

_TYPE_ORDER = {"custom": 0, "hybrid": 1, "default": 2, "direct": 3, "host": 4}


def custom_states(ups: Iterable[bool]) -> list[str]:
    """The states of one prefix's custom routes, given in priority order with whether each
    one's next hop is up: the first up is active, later ups standby, the others
    unreachable (docs/routing.md, "How a packet's way is decided")."""
    out: list[str] = []
    won = False
    for up in ups:
        out.append("unreachable" if not up else ("standby" if won else "active"))
        won = won or up
    return out


def _entry(kind: str, dst: str, state: str, **kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"type": kind, "dst": dst, "state": state, "priority": None,
                         "next_hop": None, "id": None, "subnet": None, "host": None}  # fmt: skip
    e.update(kw)
    return e


def _order(e: dict[str, Any]) -> tuple[int, int, int, int]:
    # Longest prefix first; at an equal prefix, custom before generated, then priority.
    net = ipaddress.IPv4Network(e["dst"])
    return (-net.prefixlen, int(net.network_address), _TYPE_ORDER[e["type"]], e["priority"] or 0)


def names_of(r: Reader, hops: Iterable[dict[str, Any]]) -> dict[str, str]:
    """id -> name of the instances and gateways that next hops name."""
    out: dict[str, str] = {}
    for nh in hops:
        ref = nh.get("id")
        if ref and ref not in out:
            o = r.get(str(nh.get("type")), str(ref))
            if o is not None:
                out[o.id] = o.name
    return out


def describe_table(r: Reader, admin_project: str, table: Resource) -> dict[str, Any]:
    """Every route of `table` with its type, priority, next hop and state, ordered longest
    prefix first, and its policy routes by priority (the shape of the API's
    `TableRoutes`)."""
    vpc = r.get("vpc", table.spec["vpc"])
    if vpc is None:
        raise Conflict(f"route table {table.name} has lost its VPC {table.spec['vpc']}")
    subs = table_subnets(r, table)
    entries = [_entry("direct", block, "active") for block in vpc.spec["cidrs"]]
    gws = r.find("hybrid_gw", "vpc", vpc.id)
    for s in r.find("subnet", "vpc", vpc.id):
        in_idc = bool(s.spec.get("location")) and s.spec.get("serve", "idc") == "idc"
        if in_idc:
            # Served in the IDC: routed to the hybrid gateway of its site (docs/hybrid.md),
            # active while one of its replicas has its BGP session up.
            site = str(s.spec["location"]).split(":", 1)[1]
            for hg in gws:
                if hg.status.get("site_name") != site:
                    continue
                up = sum(
                    1
                    for x in hg.status.get("replicas") or []
                    if replica_up(x) and not host_lost(r, admin_project, x.get("host"))
                )
                entries.append(_entry("hybrid", s.spec["cidr"], "active" if up else "unreachable",
                                      next_hop=f"hybrid_gw:{hg.name}", subnet=s.name))  # fmt: skip
        for inst in r.find("instance", "subnet", s.id):
            host = inst.status.get("host")
            if inst.status.get("ip") and host:
                state = "unreachable" if host_lost(r, admin_project, host) else "active"
                if in_idc:
                    state = "standby"  # its address is the IDC's until a route switch
                entries.append(_entry("host", f"{inst.status['ip']}/32", state,
                                      next_hop=f"instance:{inst.name}", host=host))  # fmt: skip
    for s in subs:
        g = gateway_of(r, s)
        if g is not None:
            state = "unreachable" if host_lost(r, admin_project, g.status.get("host")) else "active"
            entries.append(_entry("default", "0.0.0.0/0", state, next_hop=f"natgw:{g.name}",
                                  subnet=s.name))  # fmt: skip
    by_dst: dict[str, list[Resource]] = {}
    for rt in r.find("route", "table", table.id):
        by_dst.setdefault(rt.spec["dst"], []).append(rt)
    names = names_of(r, (rt.spec["next_hop"] for rts in by_dst.values() for rt in rts))
    for dst, rts in by_dst.items():
        rts.sort(key=lambda o: o.spec["priority"])
        ups = [next_hop_up(r, admin_project, vpc.id, rt.spec["next_hop"]) for rt in rts]
        for rt, state in zip(rts, custom_states(ups), strict=True):
            entries.append(_entry("custom", dst, state, priority=rt.spec["priority"], id=rt.id,
                                  next_hop=next_hop_text(rt.spec["next_hop"], names)))  # fmt: skip
    entries.sort(key=_order)
    policies = sorted(r.find("policy_route", "table", table.id), key=lambda p: p.spec["priority"])
    pnames = names_of(r, (p.spec["next_hop"] for p in policies if p.spec.get("next_hop")))
    return {
        "table": table.id,
        "name": table.name,
        "vpc": vpc.id,
        "default": bool(table.spec.get("default")),
        "subnets": [s.name for s in subs],
        "revision": r.revision,
        "routes": entries,
        "policies": [_policy_entry(r, admin_project, vpc.id, p, pnames) for p in policies],
    }


def _policy_entry(
    r: Reader, admin_project: str, vpc_id: str, p: Resource, names: dict[str, str]
) -> dict[str, Any]:
    nh = p.spec.get("next_hop")
    up = nh is None or next_hop_up(r, admin_project, vpc_id, nh)
    return {
        "id": p.id,
        **{k: p.spec.get(k) for k in ("priority", "src", "dst", "proto", "port", "action")},
        "next_hop": next_hop_text(nh, names),
        "state": "active" if up else "unreachable",
    }
