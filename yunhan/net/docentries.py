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
  "underlay_ip", "command", "allowed_ips"}``.

A document holds "host" and, per VPC the host carries, the VPC entry and all its members;
the host's own members become ports and instances, the others remote routes and peers.
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

# Entry values are JSON objects whose shape the builders below fix; they travel as JSON and
# the agent reads them as JSON, so a typed wrapper would only be converted back and forth.
JsonObj = dict[str, Any]
Entries = dict[str, JsonObj]

HOST_KEY = "host"
_VPC = "vpc/"
_MEMBERS = "/m/"


def vpc_key(vpc_id: str) -> str:
    return f"{_VPC}{vpc_id}"


def member_key(vpc_id: str, instance_id: str) -> str:
    return f"{_VPC}{vpc_id}{_MEMBERS}{instance_id}"


def parse_key(key: str) -> tuple[str, str | None]:
    """("vpc id", None) for a VPC entry, ("vpc id", "instance id") for a member.

    Raises ValueError for "host" and any key this version does not know.
    """
    if key.startswith(_VPC):
        rest = key[len(_VPC) :]
        vpc_id, sep, inst = rest.partition(_MEMBERS)
        if vpc_id and "/" not in vpc_id and (not sep or (inst and "/" not in inst)):
            return vpc_id, (inst if sep else None)
    raise ValueError(f"not a VPC or member entry key: {key!r}")


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
) -> JsonObj:
    """One member: an instance placed on `host`, in a subnet (`subnet_cidr`) of the VPC."""
    gw, plen = gateway_of(subnet_cidr)
    return {
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


def assemble(entries: Mapping[str, JsonObj], host: str) -> HostDesired:
    """The `HostDesired` (revision 0) these entries describe for `host`.

    Equal, field for field, to what `controller.netcompile.compile_hosts` gives for the same
    model. ValueError when the entries are not a document of `host` (no or another "host"
    entry, a member without its VPC, an unknown key).
    """
    h = entries.get(HOST_KEY)
    if h is None or h["host"] != host:
        raise ValueError(f"entries are not a document of host {host!r}")
    vpcs: dict[str, JsonObj] = {}
    members: dict[str, list[JsonObj]] = {}
    for key, value in entries.items():
        if key == HOST_KEY:
            continue
        vpc_id, inst = parse_key(key)
        if inst is None:
            vpcs[vpc_id] = value
        else:
            members.setdefault(vpc_id, []).append(value)
    if not members.keys() <= vpcs.keys():
        raise ValueError(f"members without their VPC entry: {sorted(members.keys() - vpcs)}")

    vpc_docs: list[VpcDesired] = []
    inst_docs: list[InstanceDesired] = []
    for vpc_id in sorted(vpcs):
        v = vpcs[vpc_id]
        ms = sorted(members.get(vpc_id, ()), key=lambda m: str(m["id"]))
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
                    )
                )
                keyed.append((addr, mid, Route(dst=f"{ip}/32", kind="local", port=ifname)))
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
                keyed.append((addr, mid, Route(dst=f"{ip}/32", kind="remote", peer=m["host"])))
                if m["host"] not in peers:
                    idx = m["vtep_index"]
                    peers[m["host"]] = Peer(
                        host=m["host"],
                        vtep_index=idx,
                        underlay_ip=m["underlay_ip"],
                        mac=vtep_mac(idx),
                        nexthop=vtep_nexthop(idx),
                    )
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
            )
        )
    return HostDesired(
        host=host,
        underlay_ip=h["underlay_ip"],
        vtep_index=h["vtep_index"],
        underlay_mtu=h["underlay_mtu"],
        vpcs=tuple(vpc_docs),
        instances=tuple(sorted(inst_docs, key=lambda i: i.id)),
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
            }
        peers = {p.host: p for p in v.peers}
        for r in v.routes:
            if r.kind != "remote" or r.peer is None:
                continue
            ip = r.dst.split("/")[0]
            peer = peers[r.peer]
            mid = f"~{ip}@{r.peer}"
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
            }
    return out
