"""How a VPC namespace's security groups and network ACLs judge the first packet of a new
flow, read off the compiled `Firewall` (net.state) instead of the kernel: the fake data
plane and `yunhan trace` both ask this, so that they agree with `net.nftsg`'s table.

The order is the table's (docs/secgroups.md): network ACLs first, stateless, on the port the
packet comes from (egress) and the one it goes to (ingress), traffic inside the port's own
subnet unchecked; then the security groups, the egress rules of the port it comes from and
the ingress rules of the port it goes to, first match by order deciding, none matching
dropping. A port without rules (a gateway, vxlan0, an instance without groups) checks
nothing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from yunhan.net.desired import AclRuleDesired, SgRuleDesired
from yunhan.net.state import Firewall


@dataclass(frozen=True)
class Packet:
    src: ipaddress.IPv4Address
    dst: ipaddress.IPv4Address
    proto: str  # tcp | udp | icmp
    dport: int | None


@dataclass(frozen=True)
class Refusal:
    """Who drops the packet, and why in words."""

    by: Literal["network-acl", "security-group"]
    port: str  # the port whose rules refuse it
    direction: Literal["ingress", "egress"]
    rule: str  # the rule's id (a group) or number (an ACL); "" when none matched
    detail: str


def _ports_match(proto: str, lo: int | None, hi: int | None, pkt: Packet) -> bool:
    if lo is None or proto not in ("tcp", "udp"):
        return True
    top = hi if hi is not None else lo
    return pkt.dport is not None and lo <= pkt.dport <= top


def sg_matches(rule: SgRuleDesired, fw: Firewall, pkt: Packet, peer: ipaddress.IPv4Address) -> bool:
    if rule.proto != "any" and rule.proto != pkt.proto:
        return False
    if not _ports_match(rule.proto, rule.port_min, rule.port_max, pkt):
        return False
    if rule.group is not None:
        return str(peer) in dict(fw.groups).get(rule.group, ())
    if rule.cidr is not None:
        return peer in ipaddress.IPv4Network(rule.cidr)
    return True


def acl_matches(rule: AclRuleDesired, pkt: Packet, peer: ipaddress.IPv4Address) -> bool:
    if rule.proto != "any" and rule.proto != pkt.proto:
        return False
    if not _ports_match(rule.proto, rule.port_min, rule.port_max, pkt):
        return False
    return peer in ipaddress.IPv4Network(rule.cidr)


def verdict(fw: Firewall, iif: str, oif: str | None, pkt: Packet) -> Refusal | None:
    """Why the first packet of a flow forwarded from `iif` to `oif` is dropped (None: it
    passes)."""
    acls = {a.ifname: a for a in fw.acls}
    for dev, what, peer in ((iif, "egress", pkt.dst), (oif, "ingress", pkt.src)):
        a = acls.get(dev or "")
        if a is None or dev is None or peer in ipaddress.IPv4Network(a.subnet):
            continue
        rules = a.egress if what == "egress" else a.ingress
        match = next((r for r in rules if acl_matches(r, pkt, peer)), None)
        if match is None or match.action == "deny":
            n = "no rule" if match is None else f"rule {match.number}"
            return Refusal(
                "network-acl",
                dev,
                what,  # type: ignore[arg-type]
                "" if match is None else str(match.number),
                f"network ACL of {dev}: {what} {n} denies it",
            )
    ports = {p.ifname: p for p in fw.ports}
    for dev, what, peer in ((iif, "egress", pkt.dst), (oif, "ingress", pkt.src)):
        p = ports.get(dev or "")
        if p is None or dev is None:
            continue
        sg_rules = p.egress if what == "egress" else p.ingress
        rule = next((r for r in sg_rules if sg_matches(r, fw, pkt, peer)), None)
        if rule is None:
            return Refusal(
                "security-group",
                dev,
                what,  # type: ignore[arg-type]
                "",
                f"security groups of {dev}: no {what} rule allows it",
            )
        if rule.action == "deny":
            return Refusal(
                "security-group",
                dev,
                what,  # type: ignore[arg-type]
                rule.id,
                f"security groups of {dev}: {what} rule {rule.id} denies it",
            )
    return None
