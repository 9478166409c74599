"""NAT gateways on the host that runs them: the objects beyond the VPC namespace.

A gateway (`NatGwDesired` with `local=True`) is a namespace of its own between the VPC and
the host (docs/routing.md, spec section 4):

    VPC ns  g-<id> ║ vpc0  <prefix>g-<id>  pub0 ║ n-<id>  host ns ── underlay
                         NATGW_INNER_IP/32       public_ip/32

Both links are veth pairs whose four MACs are derived from the gateway id, so that each
side holds a permanent neighbour for the other (no ARP between them, and the addresses
involved, NATGW_LINK_IP above all, exist on no interface). The gateway namespace holds one
nft table (`ip yunhan`) doing the NAT; the host routes the public addresses into it; and,
when the agent has an uplink, the uplink routes them to the host (`Announce`, the lab's
stand-in for a BGP announcement to the top-of-rack router).

This module holds the object kinds that only gateways use and the rendering and reading
back of the NAT table (pure); `state.compile_state` builds the objects, the drivers realise
them. It imports nothing of `state` (which imports it).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any, TypeAlias

# Markers standing for namespaces whose name only the driver knows: the agent's host
# namespace (the lab host's, or the root namespace on a real host) and the uplink's.
HOST_NETNS = "@host"
UPLINK_NETNS = "@uplink"

GW_VPC_IFNAME = "vpc0"  # the gateway's end of its link to the VPC namespace
GW_PUB_IFNAME = "pub0"  # the gateway's end of its link to the host namespace

NAT_FAMILY = "ip"
NAT_TABLE = "yunhan"
BROKEN = "<broken>"

Key: TypeAlias = tuple[str, ...]


@dataclass(frozen=True)
class Uplink:
    """Where an agent announces its gateways' public addresses: `netns` (None: the
    agent's own) routes each of them via `via` (this host's underlay address) onlink."""

    netns: str | None
    via: str


def gw_mac(natgw_id: str, end: str) -> str:
    """The MAC of one end of a gateway's links (locally administered, unicast, stable)."""
    digest = hashlib.sha256(f"{natgw_id}/{end}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


@dataclass(frozen=True)
class VethPair:
    """A veth pair whose both ends are ours and named: `ifname` in `netns` (a gateway
    namespace) and `peer_ifname` in `peer_netns` (a VPC namespace, or HOST_NETNS), each
    with a fixed MAC. Observed with `peer_netns` None when the other end is not found."""

    netns: str
    ifname: str
    mac: str
    peer_netns: str | None
    peer_ifname: str
    peer_mac: str
    mtu: int

    @property
    def key(self) -> Key:
        return ("link", self.netns, self.ifname)


@dataclass(frozen=True)
class NatTable:
    """The NAT of one gateway namespace, written and read as one nft table.

    `public_ip` is the address its SNAT and port-forward rules use ("" when it has none of
    either). Precedence: an EIP's own 1:1 rules come before the gateway's SNAT.
    """

    netns: str
    public_ip: str
    snat: tuple[str, ...] = ()  # served CIDRs
    eips: tuple[tuple[str, str], ...] = ()  # (instance ip, public ip)
    forwards: tuple[tuple[str, int, str, int], ...] = ()  # (proto, port, instance ip, port)

    @property
    def key(self) -> Key:
        return ("nat", self.netns)


@dataclass(frozen=True)
class Announce:
    """The uplink routes public address `ip` to this host (`ip/32 via <uplink via> dev
    <the uplink's port toward us> onlink`). Observed only while the route points at us:
    an address another host took over is no longer ours to withdraw."""

    ip: str
    netns: str = UPLINK_NETNS

    @property
    def key(self) -> Key:
        return ("announce", self.ip)


# -- the NAT table in nft JSON -----------------------------------------------------------

_CHAINS = {
    "pre": {"type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"},
    "post": {"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"},
}


def _m(left: Any, right: Any) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _addr(cidr: str) -> Any:
    net = ipaddress.IPv4Network(cidr)
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _iif(name: str) -> dict[str, Any]:
    return _m({"meta": {"key": "iifname"}}, name)


def _oif(name: str) -> dict[str, Any]:
    return _m({"meta": {"key": "oifname"}}, name)


def _ip(field: str, value: Any) -> dict[str, Any]:
    return _m({"payload": {"protocol": "ip", "field": field}}, value)


def nat_rules(t: NatTable) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(chain, comment, expressions) of every rule of `t`, in order.

    Inbound only from the internet side (an EIP is reachable from there and nowhere else);
    outbound only toward it. Each comment carries the rule's whole meaning, which is how
    observation reads the table back (and then checks the rule says exactly that).
    """
    rules: list[tuple[str, str, list[dict[str, Any]]]] = []
    for inst, eip in t.eips:
        expr = [_iif(GW_PUB_IFNAME), _ip("daddr", eip), {"dnat": {"addr": inst}}]
        rules.append(("pre", f"eip-in {inst} {eip}", expr))
    for proto, port, inst, to_port in t.forwards:
        rules.append(
            (
                "pre",
                f"fwd {proto} {port} {inst} {to_port} {t.public_ip}",
                [
                    _iif(GW_PUB_IFNAME),
                    _ip("daddr", t.public_ip),
                    _m({"payload": {"protocol": proto, "field": "dport"}}, port),
                    {"dnat": {"addr": inst, "port": to_port}},
                ],
            )
        )
    for inst, eip in t.eips:
        expr = [_oif(GW_PUB_IFNAME), _ip("saddr", inst), {"snat": {"addr": eip}}]
        rules.append(("post", f"eip-out {inst} {eip}", expr))
    for cidr in t.snat:
        rules.append(
            (
                "post",
                f"snat {cidr} {t.public_ip}",
                [_oif(GW_PUB_IFNAME), _ip("saddr", _addr(cidr)), {"snat": {"addr": t.public_ip}}],
            )
        )
    return rules


def nat_batch(t: NatTable) -> dict[str, Any]:
    """One atomic transaction that replaces the whole table (created if missing): no
    packet ever sees half of the old rules and half of the new."""
    table = {"family": NAT_FAMILY, "name": NAT_TABLE}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": table}},
        {"delete": {"table": table}},
        {"add": {"table": table}},
    ]
    for name, hook in _CHAINS.items():
        cmds.append(
            {"add": {"chain": {"family": NAT_FAMILY, "table": NAT_TABLE, "name": name, **hook}}}
        )
    for chain, comment, expr in nat_rules(t):
        rule = {"family": NAT_FAMILY, "table": NAT_TABLE, "chain": chain, "comment": comment}
        cmds.append({"add": {"rule": {**rule, "expr": expr}}})
    return {"nftables": cmds}


def delete_nat_cmd() -> dict[str, Any]:
    return {"nftables": [{"delete": {"table": {"family": NAT_FAMILY, "name": NAT_TABLE}}}]}


def parse_nat(netns: str, listing: dict[str, Any]) -> NatTable:
    """The table a `list table ip yunhan` JSON listing holds.

    Fields are read from the rule comments; the whole table (chains, rules, order,
    verdicts) must then be exactly what those fields render to, else it reads as
    `public_ip == BROKEN`, which never equals a wanted table (the next apply rewrites it).
    """
    chains: dict[str, dict[str, Any]] = {}
    listed: list[tuple[str, str, list[dict[str, Any]]]] = []
    for item in listing.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            chains[c["name"]] = {k: c.get(k) for k in ("type", "hook", "prio", "policy")}
        elif "rule" in item:
            r = item["rule"]
            listed.append((r["chain"], str(r.get("comment", "")), r["expr"]))
    public = ""
    snat: list[str] = []
    eips: list[tuple[str, str]] = []
    forwards: list[tuple[str, int, str, int]] = []
    try:
        for _chain, comment, _expr in listed:
            words = comment.split()
            match words:
                case ["eip-in", inst, eip]:
                    eips.append((inst, eip))
                case ["eip-out", _inst, _eip]:
                    pass  # the same pair as its eip-in rule; checked by the rendering
                case ["fwd", proto, port, inst, to_port, pub]:
                    forwards.append((proto, int(port), inst, int(to_port)))
                    public = public or pub
                case ["snat", cidr, pub]:
                    snat.append(cidr)
                    public = public or pub
                case _:
                    raise ValueError(comment)
        got = NatTable(netns, public, tuple(snat), tuple(eips), tuple(forwards))
        if chains != _CHAINS or listed != nat_rules(got):
            raise ValueError("not our rules")
        return got
    except (ValueError, TypeError):
        return NatTable(netns, BROKEN)
