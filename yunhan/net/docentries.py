"""A host's desired document as a set of keyed entries, and the deltas that carry it.

The controller's engine keeps every host document in this form, the API serves changes of
it, and the agent keeps the entries it has applied and rebuilds the `HostDesired` it drives
the data plane from with `assemble`. Keyed entries let a change travel as the few entries it
touched instead of the whole document (issue 6, protocol "Document entries").

Keys and values (plain JSON, lists sorted as stated):

* ``"host"`` -> ``{"host", "underlay_ip", "vtep_index", "underlay_mtu"}``
* ``"vpc/<vpc id>"`` -> ``{"id", "vni", "cidrs", "gateways"}``; cidrs sorted by (network
  address, prefix length), gateways ("<gw ip>/<prefixlen>", one per subnet of the VPC) sorted
  by their subnet likewise.
* ``"vpc/<vpc id>/m/<instance id>"`` -> one member of the VPC, wherever it runs:
  ``{"id", "name", "ip", "mac", "prefixlen", "gateway", "host", "vtep_index",
  "underlay_ip", "command", "allowed_ips"}``. `allowed_ips` are the VIPs delivered to the
  member (docs/vips.md): its port lets them through as sources, and each gets a /32 route
  like the member's own address (local on its host, remote elsewhere), so that moving a VIP
  changes two member entries and nothing else.

Distributed routing (issue 8, docs/routing.md), one entry per object of the VPC:

* ``"vpc/<vpc id>/s/<subnet id>"`` -> ``{"id", "cidr", "index", "table", "natgw"}``: a subnet
  with a selector index, its route table's id and the id of the NAT gateway serving it;
* ``"vpc/<vpc id>/t/<table id>"`` -> ``{"id", "index", "default"}``;
* ``"vpc/<vpc id>/r/<route id>"`` -> ``{"id", "table", "dst", "priority", "nexthop"}``;
* ``"vpc/<vpc id>/p/<policy id>"`` -> ``{"id", "table", "index", "priority", "src", "dst",
  "proto", "port", "action", "nexthop"}``;
* ``"vpc/<vpc id>/g/<gateway id>"`` -> ``{"id", "index", "host", "vtep_index",
  "underlay_ip", "up", "public_ip", "subnets", "eips", "forwards"}``.

Security groups (issue 10, docs/secgroups.md): ``"vpc/<vpc id>/sg/<group id>"`` ->
``{"id", "rules"}``, rules in evaluation order, each ``{"id", "direction", "proto",
"port_min", "port_max", "cidr", "group", "action", "priority"}``. Membership is not in the
group's entry but in each member's (``"sgs"``: its group ids, sorted; absent when none), so
that an instance joining a group of 1,000 changes one member entry, not the group's.
Network ACLs: ``"vpc/<vpc id>/acl/<acl id>"`` -> ``{"id", "rules", "subnets"}``, rules by
(direction, number), each ``{"number", "direction", "proto", "port_min", "port_max", "cidr",
"action"}``, subnets the CIDRs of the subnets associated with it, sorted.
Flow logs (docs/flowlogs.md): ``"vpc/<vpc id>/fl/<flow log id>"`` -> ``{"id", "scope",
"target", "filter"}``; each host works out which of its ports they cover (`port_flowlog`).
VIPs (docs/vips.md): ``"vpc/<vpc id>/vip/<vip id>"`` -> ``{"id", "ip", "allowed", "epoch"}``,
allowed the ids of the instances that may hold it, sorted: what an agent needs to tell a
gratuitous ARP that claims the VIP from one it must ignore, and the epoch to claim with.
Where the VIP is delivered is not here but in its holder's member entry (`allowed_ips`).

Volumes (docs/volumes.md): ``"volume/<volume id>"`` -> ``{"id", "name", "size", "zone",
"tiers", "attach", "restore", "source"}`` in the document of the host that serves the
volume now (its `status.host`) only; tiers null or [{"keep_s", "every_s"}] by keep, attach
null or {"instance", "netns", "path"}, restore null or {"to_ns", "serial"}, source null or
{"volume", "at_ns"}. A volume that moves host leaves one document and enters another.

A next hop in an entry is resolved but says nothing of the reader: ``{"type", "ref", "ip",
"host", "vtep_index", "underlay_ip", "port", "up"}``; `assemble` makes it local or remote
for the host it builds, and picks the winner among routes of one prefix. A member that is
a next hop carries ``"forwarder": true`` (absent otherwise).

Hybrid cloud (docs/hybrid.md): ``"vpc/<vpc id>/h/<gateway id>"`` -> `hybrid_entry`; a
subnet entry of a subnet located in an IDC has ``"serve"`` ("idc" or "cloud"), and while it
is "idc" each of its members carries ``"standby": true`` (absent otherwise): no host routes
its addresses, the gateway's replicas carry the prefix.

A document holds "host" and, per VPC the host carries, the VPC entry and all its members
and routing entries; the host's own members become ports and instances, the others remote
routes and peers. A host carries a VPC when one of its members or gateways is there.
Removing a key removes every key under key + "/" too, so dropping a VPC is one key.

Values are shared between documents and between the engine and its callers: never mutate
one, build a new one with the functions below.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    VolumeAttach,
    VolumeDesired,
    VpcDesired,
    vtep_mac,
    vtep_nexthop,
)
from yunhan.net.naming import gateway_ifname, hybrid_ifname, port_ifname

# Entry values are JSON objects whose shape the builders below fix; they travel as JSON and
# the agent reads them as JSON, so a typed wrapper would only be converted back and forth.
JsonObj = dict[str, Any]
Entries = dict[str, JsonObj]

HOST_KEY = "host"
_VPC = "vpc/"
# The kinds of entries under a VPC: members, subnets, route tables, routes, policy routes,
# NAT gateways.
MEMBER, SUBNET, TABLE, ROUTE, POLICY, GATEWAY = "m", "s", "t", "r", "p", "g"
GROUP, ACL = "sg", "acl"  # security groups, network ACLs
FLOWLOG = "fl"
VIP = "vip"
HYBRID = "h"  # hybrid gateways (issue 15)
SUB_KINDS = frozenset(
    {MEMBER, SUBNET, TABLE, ROUTE, POLICY, GATEWAY, GROUP, ACL, FLOWLOG, VIP, HYBRID}
)


VOLUME = "volume/"


def volume_key(volume_id: str) -> str:
    return f"{VOLUME}{volume_id}"


def volume_entry(
    id: str,
    name: str,
    size: int,
    zone: str,
    tiers: Iterable[tuple[int, int]] | None,
    attach: tuple[str, str | None, str] | None,
    restore: tuple[int, int] | None,
    source: tuple[str, int] | None,
    delete: bool = False,
) -> JsonObj:
    """A volume's entry; attach is (instance, netns, path), restore (to_ns, serial),
    source (volume, at_ns); `delete`: its data is to go (the key is present only then)."""
    out: JsonObj = {
        "id": id,
        "name": name,
        "size": size,
        "zone": zone,
        "tiers": None if tiers is None else [{"keep_s": k, "every_s": e} for k, e in tiers],
        "attach": None
        if attach is None
        else {"instance": attach[0], "netns": attach[1], "path": attach[2]},
        "restore": None if restore is None else {"to_ns": restore[0], "serial": restore[1]},
        "source": None if source is None else {"volume": source[0], "at_ns": source[1]},
    }
    if delete:
        out["delete"] = True
    return out


def _volume_desired(v: JsonObj) -> VolumeDesired:
    att, rest, src, tiers = v["attach"], v["restore"], v["source"], v["tiers"]
    return VolumeDesired(
        id=v["id"],
        name=v["name"],
        size=v["size"],
        zone=v["zone"],
        tiers=None if tiers is None else tuple((t["keep_s"], t["every_s"]) for t in tiers),
        attach=None if att is None else VolumeAttach(**att),
        restore_to_ns=None if rest is None else rest["to_ns"],
        restore_serial=0 if rest is None else rest["serial"],
        source_volume=None if src is None else src["volume"],
        source_at_ns=None if src is None else src["at_ns"],
        delete=bool(v.get("delete")),
    )


def _volume_json(v: VolumeDesired) -> JsonObj:
    a = v.attach
    return volume_entry(
        v.id,
        v.name,
        v.size,
        v.zone,
        v.tiers,
        None if a is None else (a.instance, a.netns, a.path),
        None if v.restore_to_ns is None else (v.restore_to_ns, v.restore_serial),
        None
        if v.source_volume is None or v.source_at_ns is None
        else (v.source_volume, v.source_at_ns),
        v.delete,
    )


def vpc_key(vpc_id: str) -> str:
    return f"{_VPC}{vpc_id}"


def sub_key(vpc_id: str, kind: str, obj_id: str) -> str:
    """The key of an entry of kind `kind` (MEMBER, SUBNET, ...) under a VPC."""
    return f"{_VPC}{vpc_id}/{kind}/{obj_id}"


def member_key(vpc_id: str, instance_id: str) -> str:
    return sub_key(vpc_id, MEMBER, instance_id)


def parse_key(key: str) -> tuple[str, str | None, str | None]:
    """("vpc id", None, None) for a VPC entry, ("vpc id", kind, "object id") for an entry
    under it (kind one of SUB_KINDS).

    Raises ValueError for "host" and any key this version does not know.
    """
    if key.startswith(_VPC):
        parts = key[len(_VPC) :].split("/")
        if len(parts) == 1 and parts[0]:
            return parts[0], None, None
        if len(parts) == 3 and parts[0] and parts[1] in SUB_KINDS and parts[2]:
            return parts[0], parts[1], parts[2]
    raise ValueError(f"not a VPC entry key: {key!r}")


def net_key(cidr: str) -> tuple[int, int]:
    """Sort key of a CIDR: (network address, prefix length), as the compiler orders them."""
    n = ipaddress.IPv4Network(cidr)
    return (int(n.network_address), n.prefixlen)


def gateway_of(subnet_cidr: str) -> tuple[str, int]:
    """(gateway address, prefix length) of a subnet: its first address."""
    n = ipaddress.IPv4Network(subnet_cidr)
    return str(n.network_address + 1), n.prefixlen


def host_entry(host: str, underlay_ip: str, vtep_index: int, underlay_mtu: int) -> JsonObj:
    return {
        "host": host,
        "underlay_ip": underlay_ip,
        "vtep_index": vtep_index,
        "underlay_mtu": underlay_mtu,
    }


def vpc_entry(vpc_id: str, vni: int, cidrs: Iterable[str], subnet_cidrs: Iterable[str]) -> JsonObj:
    """The VPC entry; `subnet_cidrs` are the CIDRs of all its subnets (any order)."""
    gateways = []
    for cidr in sorted(subnet_cidrs, key=net_key):
        gw, plen = gateway_of(cidr)
        gateways.append(f"{gw}/{plen}")
    return {"id": vpc_id, "vni": vni, "cidrs": sorted(cidrs, key=net_key), "gateways": gateways}


def member_entry(
    *,
    id: str,
    name: str,
    ip: str,
    mac: str,
    subnet_cidr: str,
    host: str,
    vtep_index: int,
    underlay_ip: str,
    command: Iterable[str] | None,
    allowed_ips: Iterable[str] = (),
    forwarder: bool = False,
    sgs: Iterable[str] = (),
    standby: bool = False,
) -> JsonObj:
    """One member: an instance placed on `host`, in a subnet (`subnet_cidr`) of the VPC.

    `standby`: its subnet is located in an IDC and served there now; its addresses are the
    IDC's until a route switch, so no host routes them to it (its own neither)."""
    gw, plen = gateway_of(subnet_cidr)
    out: JsonObj = {
        "id": id,
        "name": name,
        "ip": ip,
        "mac": mac,
        "prefixlen": plen,
        "gateway": gw,
        "host": host,
        "vtep_index": vtep_index,
        "underlay_ip": underlay_ip,
        "command": None if command is None else list(command),
        "allowed_ips": list(allowed_ips),
    }
    if forwarder:
        out["forwarder"] = True
    if standby:
        out["standby"] = True
    groups = sorted(set(sgs))
    if groups:
        out["sgs"] = groups
    return out


def group_entry(id: str, rules: Iterable[JsonObj]) -> JsonObj:
    """A security group; `rules` as the store keeps them (`model.secgroups`), any order."""
    out = []
    for r in sorted(rules, key=_rule_order):
        port = r.get("port")
        peer = r.get("peer") or {}
        out.append(
            {
                "id": r["id"],
                "direction": r["direction"],
                "proto": r.get("proto", "any"),
                "port_min": None if not port else int(port[0]),
                "port_max": None if not port else int(port[1]),
                "cidr": peer.get("cidr"),
                "group": peer.get("sg"),
                "action": r.get("action", "allow"),
                "priority": int(r.get("priority", 100)),
            }
        )
    return {"id": id, "rules": out}


def acl_entry(id: str, rules: Iterable[JsonObj], subnets: Iterable[str]) -> JsonObj:
    """A network ACL; `rules` as the store keeps them, any order; `subnets` CIDRs."""
    out = []
    for r in sorted(rules, key=lambda r: (str(r["direction"]), int(r["number"]))):
        port = r.get("port")
        out.append(
            {
                "number": int(r["number"]),
                "direction": r["direction"],
                "proto": r.get("proto", "any"),
                "port_min": None if not port else int(port[0]),
                "port_max": None if not port else int(port[1]),
                "cidr": r.get("cidr", "0.0.0.0/0"),
                "action": r.get("action", "allow"),
            }
        )
    return {"id": id, "rules": out, "subnets": sorted(set(subnets), key=net_key)}


def flowlog_entry(id: str, scope: str, target: str, filter: str) -> JsonObj:
    """A flow log; `target` the id of the VPC, subnet or instance it covers."""
    return {"id": id, "scope": scope, "target": target, "filter": filter}


def vip_entry(id: str, ip: str, allowed: Iterable[str], epoch: int) -> JsonObj:
    """A VIP: its address, the ids of the instances allowed to hold it (any order), its
    epoch."""
    return {"id": id, "ip": ip, "allowed": sorted(set(allowed)), "epoch": int(epoch)}


def _rule_order(r: JsonObj) -> tuple[int, int, str]:
    return (int(r.get("priority", 100)), 0 if r.get("action") == "deny" else 1, str(r["id"]))


def groups_of_vpc(
    groups: Iterable[JsonObj], members: Iterable[JsonObj]
) -> tuple[SecurityGroupDesired, ...]:
    """The groups of a VPC with their members' addresses (from the member entries)."""
    addrs: dict[str, set[str]] = {}
    for m in members:
        for gid in m.get("sgs", ()):
            addrs.setdefault(gid, set()).update((m["ip"], *m["allowed_ips"]))
    return tuple(
        SecurityGroupDesired(
            id=g["id"],
            rules=tuple(SgRuleDesired(**r) for r in g["rules"]),
            members=tuple(sorted(addrs.get(g["id"], ()), key=ipaddress.IPv4Address)),
        )
        for g in sorted(groups, key=lambda g: str(g["id"]))
    )


def subnet_entry(
    id: str, cidr: str, index: int, table: str, natgw: str | None, serve: str | None = None
) -> JsonObj:
    """`serve`: for a subnet located in an IDC, where it is served now ("idc": the
    gateway's replicas carry the prefix, its members stand by (`member_entry`); "cloud": as
    any)."""
    out: JsonObj = {"id": id, "cidr": cidr, "index": index, "table": table, "natgw": natgw}
    if serve is not None:
        out["serve"] = serve
    return out


def table_entry(id: str, index: int, default: bool) -> JsonObj:
    return {"id": id, "index": index, "default": default}


def nexthop_entry(
    type: str,
    ref: str | None,
    *,
    ip: str | None = None,
    host: str | None = None,
    vtep_index: int | None = None,
    underlay_ip: str | None = None,
    port: str | None = None,
    up: bool = False,
) -> JsonObj:
    """A resolved next hop. `up` False: its target is gone or its host lost."""
    return {
        "type": type,
        "ref": ref,
        "ip": ip,
        "host": host,
        "vtep_index": vtep_index,
        "underlay_ip": underlay_ip,
        "port": port,
        "up": up,
    }


def route_entry(id: str, table: str, dst: str, priority: int, nexthop: JsonObj) -> JsonObj:
    return {"id": id, "table": table, "dst": dst, "priority": priority, "nexthop": nexthop}


def policy_entry(
    *,
    id: str,
    table: str,
    index: int,
    priority: int,
    src: str | None,
    dst: str | None,
    proto: str,
    port: tuple[int, int] | None,
    action: str,
    nexthop: JsonObj | None,
) -> JsonObj:
    return {
        "id": id,
        "table": table,
        "index": index,
        "priority": priority,
        "src": src,
        "dst": dst,
        "proto": proto,
        "port": None if port is None else [port[0], port[1]],
        "action": action,
        "nexthop": nexthop,
    }


def gateway_entry(
    *,
    id: str,
    index: int,
    host: str | None,
    vtep_index: int | None,
    underlay_ip: str | None,
    up: bool,
    public_ip: str,
    subnets: Iterable[str],
    eips: Iterable[tuple[str, str]],
    forwards: Iterable[tuple[str, int, str, int]],
) -> JsonObj:
    """A NAT gateway: where it runs, the subnets (CIDRs) it serves, its 1:1 addresses
    (instance ip, public ip) and port forwards (proto, public port, instance ip, port)."""
    return {
        "id": id,
        "index": index,
        "host": host,
        "vtep_index": vtep_index,
        "underlay_ip": underlay_ip,
        "up": up,
        "public_ip": public_ip,
        "subnets": sorted(subnets, key=net_key),
        "eips": sorted([list(e) for e in eips]),
        "forwards": sorted([list(f) for f in forwards]),
    }


def hybrid_entry(
    *,
    id: str,
    index: int,
    asn: int,
    peer_ip: str,
    peer_asn: int,
    md5_secret: str | None,
    bfd: bool,
    line_vni: int,
    line_vtep: str,
    replicas: Iterable[JsonObj],
    routes: Iterable[str],
    announce: Iterable[str],
    prefixes: Iterable[str] = (),
) -> JsonObj:
    """A hybrid gateway (docs/hybrid.md): its session parameters, its placed replicas
    (`hybrid_replica`, by index), the IDC prefixes it carries, what it announces, and
    every IDC subnet of its site in the VPC (counted by traffic statistics)."""
    return {
        "id": id,
        "index": index,
        "asn": asn,
        "peer_ip": peer_ip,
        "peer_asn": peer_asn,
        "md5_secret": md5_secret,
        "bfd": bfd,
        "line_vni": line_vni,
        "line_vtep": line_vtep,
        "replicas": sorted(replicas, key=lambda r: int(r["index"])),
        "routes": sorted(routes, key=net_key),
        "announce": sorted(announce, key=net_key),
        "prefixes": sorted(prefixes, key=net_key),
    }


def hybrid_replica(
    index: int, host: str, vtep_index: int, underlay_ip: str, line_ip: str, up: bool
) -> JsonObj:
    """`up`: its host is not lost and its agent reported the BGP session Established."""
    return {
        "index": index,
        "host": host,
        "vtep_index": vtep_index,
        "underlay_ip": underlay_ip,
        "line_ip": line_ip,
        "up": up,
    }


def hybrid_desired(g: JsonObj, host: str, peers: Mapping[str, Peer]) -> HybridGwDesired:
    """A hybrid gateway as `host` sees it: it sends the IDC prefixes to its own replica
    when that one is up, to every up replica elsewhere (ECMP) otherwise."""
    ifname = hybrid_ifname(g["id"])
    target = f"hybrid_gw:{g['id']}"
    reps = g["replicas"]
    here = [r for r in reps if r["host"] == host]
    if any(r["up"] for r in here):
        nexthops: tuple[NextHop, ...] = (
            NextHop(kind="local", ip=HYBRID_INNER_IP, port=ifname, target=target),
        )
    else:
        nexthops = tuple(
            NextHop(kind="remote", ip=HYBRID_INNER_IP, peer=r["host"], target=target)
            for r in reps
            if r["up"] and r["host"] in peers
        )
    replica = None
    if here:
        r = here[0]
        replica = HybridReplicaDesired(
            index=r["index"],
            line_vni=g["line_vni"],
            line_vtep=g["line_vtep"],
            line_ip=r["line_ip"],
            peer_ip=g["peer_ip"],
            peer_asn=g["peer_asn"],
            asn=g["asn"],
            md5_secret=g["md5_secret"],
            bfd=g["bfd"],
            announce=tuple(g["announce"]),
        )
    return HybridGwDesired(
        id=g["id"],
        index=g["index"],
        ifname=ifname,
        routes=tuple(HybridRouteDesired(dst=d, nexthops=nexthops) for d in g["routes"]),
        replica=replica,
        prefixes=tuple(g.get("prefixes", ())),
    )


def entry_hash(key: str, value: JsonObj) -> int:
    """One entry's part of a digest: sha256 of the key and its value's canonical JSON."""
    canon = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return int.from_bytes(hashlib.sha256(f"{key}\0{canon}".encode()).digest(), "big")


def combine(hashes: Iterable[int]) -> str:
    """The digest of a set of entries from their `entry_hash`es: their sum modulo 2**256,
    in hex. A sum does not depend on order, so whoever keeps the hashes of unchanged
    entries (the server's engine shares entry values between documents and changes) can
    digest a whole document without encoding it again."""
    return f"{sum(hashes) % (1 << 256):064x}"


def digest(entries: Mapping[str, JsonObj]) -> str:
    """Digest of a document (equal entries, equal digest): `combine` of every entry's
    `entry_hash`."""
    return combine(entry_hash(k, v) for k, v in entries.items())


def apply_delta(
    entries: Mapping[str, JsonObj], removed: Iterable[str], put: Mapping[str, JsonObj]
) -> Entries:
    """A new mapping: `entries` without the removed keys (and all keys under key + "/"),
    then with `put` written over. The input is not modified."""
    out = dict(entries)
    gone = set(removed)
    if gone:
        for key in list(out):
            if key in gone or any(key[:i] in gone for i in range(len(key)) if key[i] == "/"):
                del out[key]
    out.update(put)
    return out


@dataclass(frozen=True)
class Delta:
    """What the API sends an agent for host `host`: its document at `revision`.

    A snapshot replaces everything the agent has (`removed` is then empty); otherwise the
    agent removes `removed` (each with everything under it) then writes `entries`.
    """

    host: str
    revision: int
    snapshot: bool
    removed: tuple[str, ...] = ()
    entries: Entries = field(default_factory=dict)

    def applied_to(self, entries: Mapping[str, JsonObj]) -> Entries:
        """The entries an agent holds after receiving this delta on top of `entries`."""
        if self.snapshot:
            return dict(self.entries)
        return apply_delta(entries, self.removed, self.entries)

    def to_json(self) -> JsonObj:
        """The wire body (a JSON-ready dict)."""
        return {
            "host": self.host,
            "revision": self.revision,
            "snapshot": self.snapshot,
            "removed": list(self.removed),
            "entries": self.entries,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Delta:
        """Parse a wire body; ValueError when it does not have the protocol's shape."""
        try:
            host, revision, snapshot = data["host"], data["revision"], data["snapshot"]
            removed, entries = data.get("removed", []), data["entries"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a desired-state delta: {exc!r}") from exc
        ok = (
            isinstance(host, str)
            and isinstance(revision, int)
            and not isinstance(revision, bool)
            and isinstance(snapshot, bool)
            and isinstance(removed, list)
            and all(isinstance(k, str) for k in removed)
            and isinstance(entries, dict)
            and all(isinstance(k, str) and isinstance(v, dict) for k, v in entries.items())
        )
        if not ok:
            raise ValueError("not a desired-state delta: wrong field types")
        return cls(host, revision, snapshot, tuple(removed), dict(entries))


def _localise(nh: JsonObj | None, host: str, peers: Mapping[str, Peer]) -> NextHop | None:
    """The NextHop of an entry's next hop for `host`; None when it is not up."""
    if nh is None or not nh["up"]:
        return None
    target = _nh_target(nh)
    if nh["type"] == "blackhole":
        return NextHop(kind="blackhole", target=target)
    if nh["host"] == host:
        return NextHop(kind="local", ip=nh["ip"], port=nh["port"], target=target)
    if nh["host"] not in peers:
        return None  # no tunnel to its host: cannot be realised from here
    return NextHop(kind="remote", ip=nh["ip"], peer=nh["host"], target=target)


def _nh_target(nh: JsonObj | None) -> str:
    if nh is None:
        return ""
    return nh["type"] if nh["ref"] is None else f"{nh['type']}:{nh['ref']}"


def _routing(
    vpc_id: str,
    host: str,
    kinds: Mapping[str, list[JsonObj]],
    peers: Mapping[str, Peer],
) -> dict[str, Any]:
    """The routing fields of a VpcDesired (subnets, tables, policies, natgws) for `host`."""
    tables = {t["id"]: t for t in kinds.get(TABLE, ())}
    gateways = {g["id"]: g for g in kinds.get(GATEWAY, ())}
    subnets = []
    for sub in kinds.get(SUBNET, ()):
        t = tables.get(sub["table"])
        if t is None:
            continue  # a table not (yet) known: the subnet keeps the main table only
        g = gateways.get(sub["natgw"]) if sub["natgw"] else None
        subnets.append(
            SubnetDesired(
                id=sub["id"],
                cidr=sub["cidr"],
                index=sub["index"],
                table=t["index"],
                natgw=None if g is None else g["index"],
            )
        )
    by_prefix: dict[tuple[str, str], list[JsonObj]] = {}
    for r in kinds.get(ROUTE, ()):
        if r["table"] in tables:
            by_prefix.setdefault((r["table"], r["dst"]), []).append(r)
    chosen: dict[str, list[TableRoute]] = {}
    for (tid, dst), routes in by_prefix.items():
        routes.sort(key=lambda r: (r["priority"], r["id"]))
        win: TableRoute | None = None
        for r in routes:
            nh = _localise(r["nexthop"], host, peers)
            if nh is not None:
                win = TableRoute(dst=dst, nexthop=nh, route_id=r["id"], priority=r["priority"])
                break
        if win is None:
            best = routes[0]
            win = TableRoute(
                dst=dst,
                nexthop=NextHop(kind="unreachable", target=_nh_target(best["nexthop"])),
                route_id=best["id"],
                priority=best["priority"],
            )
        chosen.setdefault(tid, []).append(win)
    table_docs = [
        RouteTableDesired(
            id=t["id"],
            index=t["index"],
            routes=tuple(sorted(chosen.get(t["id"], ()), key=lambda r: net_key(r.dst))),
        )
        for t in tables.values()
    ]
    policies = []
    for p in kinds.get(POLICY, ()):
        t = tables.get(p["table"])
        if t is None:
            continue
        port = p["port"]
        policies.append(
            PolicyDesired(
                id=p["id"],
                table=t["index"],
                index=p["index"],
                priority=p["priority"],
                src=p["src"],
                dst=p["dst"],
                proto=p["proto"],
                port_min=None if port is None else port[0],
                port_max=None if port is None else port[1],
                action=p["action"],
                nexthop=_localise(p["nexthop"], host, peers) if p["action"] == "reroute" else None,
            )
        )
    natgws = []
    for g in gateways.values():
        local = g["host"] == host
        nh = _localise(
            {
                "type": "natgw",
                "ref": g["id"],
                "ip": NATGW_INNER_IP,
                "host": g["host"],
                "port": gateway_ifname(g["id"]),
                "up": g["up"],
            },
            host,
            peers,
        )
        natgws.append(
            NatGwDesired(
                id=g["id"],
                index=g["index"],
                nexthop=nh or NextHop(kind="unreachable", target=f"natgw:{g['id']}"),
                public_ip=g["public_ip"],
                local=local,
                ifname=gateway_ifname(g["id"]),
                snat=tuple(g["subnets"]) if local else (),
                eips=tuple((a, b) for a, b in g["eips"]) if local else (),
                forwards=tuple((a, b, c, d) for a, b, c, d in g["forwards"]) if local else (),
            )
        )
    return {
        "subnets": tuple(sorted(subnets, key=lambda x: x.index)),
        "tables": tuple(sorted(table_docs, key=lambda x: x.index)),
        "policies": tuple(sorted(policies, key=lambda x: (x.table, x.priority, x.id))),
        "natgws": tuple(sorted(natgws, key=lambda x: x.index)),
    }


def _add_peer(peers: dict[str, Peer], host: str, name: str, idx: int, underlay_ip: str) -> None:
    if name != host and name not in peers:
        peers[name] = Peer(
            host=name,
            vtep_index=idx,
            underlay_ip=underlay_ip,
            mac=vtep_mac(idx),
            nexthop=vtep_nexthop(idx),
        )


def assemble(entries: Mapping[str, JsonObj], host: str) -> HostDesired:
    """The `HostDesired` (revision 0) these entries describe for `host`.

    Equal, field for field, to what `controller.netcompile.compile_hosts` gives for the same
    model, plus the volumes the host serves (which the network compiler does not know).
    ValueError when the entries are not a document of `host` (no or another "host" entry,
    an entry without its VPC, an unknown key).
    """
    h = entries.get(HOST_KEY)
    if h is None or h["host"] != host:
        raise ValueError(f"entries are not a document of host {host!r}")
    vpcs: dict[str, JsonObj] = {}
    subs: dict[str, dict[str, list[JsonObj]]] = {}
    volumes: list[VolumeDesired] = []
    for key, value in entries.items():
        if key == HOST_KEY:
            continue
        if key.startswith(VOLUME):
            volumes.append(_volume_desired(value))
            continue
        vpc_id, kind, _obj = parse_key(key)
        if kind is None:
            vpcs[vpc_id] = value
        else:
            subs.setdefault(vpc_id, {}).setdefault(kind, []).append(value)
    if not subs.keys() <= vpcs.keys():
        raise ValueError(f"entries without their VPC entry: {sorted(subs.keys() - vpcs)}")

    vpc_docs: list[VpcDesired] = []
    inst_docs: list[InstanceDesired] = []
    for vpc_id in sorted(vpcs):
        v = vpcs[vpc_id]
        kinds = subs.get(vpc_id, {})
        ms = sorted(kinds.get(MEMBER, ()), key=lambda m: str(m["id"]))
        # Route order of the compiler: by (address, prefixlen); a block before an instance
        # at the same key; instances at the same address by id.
        keyed: list[tuple[tuple[int, int], str, Route]] = [
            (net_key(c), "", Route(dst=c, kind="unreachable")) for c in v["cidrs"]
        ]
        ports: list[Port] = []
        peers: dict[str, Peer] = {}
        for m in ms:
            ip, mid = m["ip"], m["id"]
            addr = (int(ipaddress.IPv4Address(ip)), 32)
            # A member of a subnet served in the IDC stands by: its addresses are the IDC's
            # until a route switch, so no host routes them to it (its own neither). It is
            # its subnet's state, not its address's: the member entry says so.
            routed = not m.get("standby")
            if m["host"] == host:
                ifname = port_ifname(mid)
                ports.append(
                    Port(
                        instance_id=mid,
                        ifname=ifname,
                        ip=ip,
                        prefixlen=m["prefixlen"],
                        gateway=m["gateway"],
                        mac=m["mac"],
                        allowed_ips=tuple(m["allowed_ips"]),
                        forwarder=bool(m.get("forwarder", False)),
                        sgs=tuple(m.get("sgs", ())),
                    )
                )
                if routed:
                    keyed.append((addr, mid, Route(dst=f"{ip}/32", kind="local", port=ifname)))
                    keyed.extend(
                        (net_key(f"{a}/32"), mid, Route(dst=f"{a}/32", kind="local", port=ifname))
                        for a in m["allowed_ips"]
                        if a != ip
                    )
                cmd = m["command"]
                inst_docs.append(
                    InstanceDesired(
                        id=mid,
                        name=m["name"],
                        vpc_id=vpc_id,
                        vni=v["vni"],
                        port=ifname,
                        command=None if cmd is None else tuple(cmd),
                    )
                )
            else:
                if routed:
                    keyed.append((addr, mid, Route(dst=f"{ip}/32", kind="remote", peer=m["host"])))
                    keyed.extend(
                        (
                            net_key(f"{a}/32"),
                            mid,
                            Route(dst=f"{a}/32", kind="remote", peer=m["host"]),
                        )
                        for a in m["allowed_ips"]
                        if a != ip
                    )
                _add_peer(peers, host, m["host"], m["vtep_index"], m["underlay_ip"])
        for g in kinds.get(GATEWAY, ()):
            if g["host"] is not None and g["vtep_index"]:
                _add_peer(peers, host, g["host"], g["vtep_index"], g["underlay_ip"])
        hybrid_entries = sorted(kinds.get(HYBRID, ()), key=lambda g: int(g["index"]))
        for g in hybrid_entries:
            for r in g["replicas"]:
                _add_peer(peers, host, r["host"], r["vtep_index"], r["underlay_ip"])
        keyed.sort(key=lambda e: (e[0], e[1]))
        vpc_docs.append(
            VpcDesired(
                id=vpc_id,
                vni=v["vni"],
                cidrs=tuple(v["cidrs"]),
                gateways=tuple(v["gateways"]),
                ports=tuple(sorted(ports, key=lambda p: p.ifname)),
                peers=tuple(peers[n] for n in sorted(peers)),
                routes=tuple(r for _k, _i, r in keyed),
                **_routing(vpc_id, host, kinds, peers),
                hybrids=tuple(hybrid_desired(g, host, peers) for g in hybrid_entries),
                groups=groups_of_vpc(kinds.get(GROUP, ()), ms),
                acls=tuple(
                    AclDesired(
                        id=a["id"],
                        rules=tuple(AclRuleDesired(**r) for r in a["rules"]),
                        subnets=tuple(a["subnets"]),
                    )
                    for a in sorted(kinds.get(ACL, ()), key=lambda a: str(a["id"]))
                ),
                flowlogs=tuple(
                    FlowLogDesired(**f)
                    for f in sorted(kinds.get(FLOWLOG, ()), key=lambda f: str(f["id"]))
                ),
                vips=tuple(
                    VipDesired(
                        id=x["id"], ip=x["ip"], allowed=tuple(x["allowed"]), epoch=x["epoch"]
                    )
                    for x in sorted(kinds.get(VIP, ()), key=lambda x: str(x["id"]))
                ),
            )
        )
    return HostDesired(
        host=host,
        underlay_ip=h["underlay_ip"],
        vtep_index=h["vtep_index"],
        underlay_mtu=h["underlay_mtu"],
        vpcs=tuple(vpc_docs),
        instances=tuple(sorted(inst_docs, key=lambda i: i.id)),
        volumes=tuple(sorted(volumes, key=lambda x: x.id)),
    )


def entries_of(doc: HostDesired) -> Entries:
    """The entries of a document (for tests and tools): `assemble(entries_of(d), d.host)
    == d` for every document the compiler makes.

    A document does not say everything about remote members (only their address and host),
    so those come back with what it holds: id "~<ip>@<host>", empty name and MAC, prefixlen
    32, no command. Members of one VPC at the same address (which IPAM rules out) may then
    come back in another route order.
    """
    out: Entries = {
        HOST_KEY: host_entry(doc.host, doc.underlay_ip, doc.vtep_index, doc.underlay_mtu)
    }
    insts = {i.id: i for i in doc.instances}
    for vol in doc.volumes:
        out[volume_key(vol.id)] = _volume_json(vol)
    for v in doc.vpcs:
        out[vpc_key(v.id)] = {
            "id": v.id,
            "vni": v.vni,
            "cidrs": list(v.cidrs),
            "gateways": list(v.gateways),
        }
        for p in v.ports:
            inst = insts.get(p.instance_id)
            out[member_key(v.id, p.instance_id)] = {
                "id": p.instance_id,
                "name": inst.name if inst else "",
                "ip": p.ip,
                "mac": p.mac,
                "prefixlen": p.prefixlen,
                "gateway": p.gateway,
                "host": doc.host,
                "vtep_index": doc.vtep_index,
                "underlay_ip": doc.underlay_ip,
                "command": None if inst is None or inst.command is None else list(inst.command),
                "allowed_ips": list(p.allowed_ips),
                **({"sgs": list(p.sgs)} if p.sgs else {}),
            }
        for a in v.acls:
            out[sub_key(v.id, ACL, a.id)] = {
                "id": a.id,
                "rules": [r.model_dump() for r in a.rules],
                "subnets": list(a.subnets),
            }
        for f in v.flowlogs:
            out[sub_key(v.id, FLOWLOG, f.id)] = f.model_dump()
        for x in v.vips:
            out[sub_key(v.id, VIP, x.id)] = vip_entry(x.id, x.ip, x.allowed, x.epoch)
        for g in v.groups:
            out[sub_key(v.id, GROUP, g.id)] = {
                "id": g.id,
                "rules": [r.model_dump() for r in g.rules],
            }
        peers = {p.host: p for p in v.peers}
        for r in v.routes:
            if r.kind != "remote" or r.peer is None:
                continue
            ip = r.dst.split("/")[0]
            peer = peers[r.peer]
            mid = f"~{ip}@{r.peer}"
            sgs = [g.id for g in v.groups if ip in g.members]
            out[member_key(v.id, mid)] = {
                "id": mid,
                "name": "",
                "ip": ip,
                "mac": "",
                "prefixlen": 32,
                "gateway": "",
                "host": peer.host,
                "vtep_index": peer.vtep_index,
                "underlay_ip": peer.underlay_ip,
                "command": None,
                "allowed_ips": [],
                **({"sgs": sgs} if sgs else {}),
            }
    return out
