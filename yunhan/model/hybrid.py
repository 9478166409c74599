"""Hybrid cloud: IDC sites, subnets located in one, hybrid gateways (docs/hybrid.md).

An IDC site is the operator's record of a customer data centre joined to the region by a
dedicated line: the ranges it holds, its router's ASN and address on the line, and the
line itself (a VXLAN segment, see `yunhan.net.desired.HYBRID_LINE_PORT`). A subnet of a
VPC may be *located* in a site (`idc:NAME`): its addresses are the IDC's, and the VPC
reaches them through a hybrid gateway, until a route switch serves the prefix in the cloud
(its instances take the addresses over) and back.

The pure rules shared by the API, the engine and the reference compiler live here: what a
gateway announces to the IDC, and the line addresses of its replicas.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from yunhan.errors import ValidationError
from yunhan.model.network import parse_cidr

MAX_REPLICAS = 8  # the site router's `maximum-paths`: more would not be used
DEFAULT_ASN = 64512  # ours when not given: the first private 2-byte ASN
LINE_FIRST_HOST = 11  # replicas' line addresses start at .11 (.1 the site router)
CLOUD = "cloud"
IDC = "idc"


def replica_up(rep: Mapping[str, Any]) -> bool:
    """Whether hosts send to a replica (its host's condition aside): its agent reported its
    BGP session Established *and* routes learned from the IDC. A session comes up a second
    or so before the IDC's routes arrive; sending to the replica in between drops it all
    (measured: 1.1 s of loss after a replica came back)."""
    return rep.get("state") == "Established" and bool(rep.get("learned"))


def parse_location(value: str | None) -> str | None:
    """`cloud` (or nothing) -> None; `idc:SITE` -> the site's name."""
    if value is None or value == CLOUD:
        return None
    kind, _, site = value.partition(":")
    if kind != IDC or not site:
        raise ValidationError(
            f"location {value!r}: write `cloud` or `idc:SITE` (a site of `yunhan idc list`)",
            field="location",
            value=value,
        )
    return site


def validate_asn(asn: int, what: str) -> int:
    if not 1 <= asn <= 4_294_967_294 or asn == 23456:
        raise ValidationError(f"{what} {asn} is not a usable AS number", field=what, value=asn)
    return asn


def validate_site(
    cidrs: Iterable[str], router_ip: str, line_cidr: str, line_vni: int, line_vtep: str
) -> tuple[list[str], str, str, str]:
    """A site's ranges, router address, line CIDR and line VTEP, checked and normalised."""
    nets = sorted(
        {parse_cidr(c, "cidr") for c in cidrs}, key=lambda n: (n.network_address, n.prefixlen)
    )
    if not nets:
        raise ValidationError("an IDC site needs at least one range (cidrs)", field="cidrs")
    for a, b in itertools.pairwise(nets):
        if a.overlaps(b):
            raise ValidationError(f"the site's ranges {a} and {b} overlap", field="cidrs")
    line = parse_cidr(line_cidr, "line_cidr")
    try:
        router = IPv4Address(router_ip)
        vtep = IPv4Address(line_vtep)
    except ValueError as exc:
        raise ValidationError(f"not an IPv4 address: {exc}", field="router_ip") from exc
    if router not in line or router in (line.network_address, line.broadcast_address):
        raise ValidationError(
            f"the router address {router} is not a host address of the line {line}",
            field="router_ip",
        )
    if not 1 <= line_vni < 1 << 24:
        raise ValidationError(f"line VNI {line_vni} is not in 1..16777215", field="line_vni")
    return [str(n) for n in nets], str(router), str(line), str(vtep)


def line_address(line_cidr: str, router_ip: str, taken: Iterable[str]) -> str:
    """The first free replica address on a line ("a.b.c.d/len"), from .11 on."""
    line = IPv4Network(line_cidr)
    used = {ip.split("/", 1)[0] for ip in taken} | {router_ip}
    for n in range(LINE_FIRST_HOST, line.num_addresses - 1):
        addr = str(line.network_address + n)
        if addr not in used:
            return f"{addr}/{line.prefixlen}"
    raise ValidationError(f"the line {line} has no free address for another replica")


def _net_key(n: IPv4Network) -> tuple[int, int]:
    return (int(n.network_address), n.prefixlen)


def announced(blocks: Iterable[str], idc_subnets: Iterable[tuple[str, str]]) -> list[str]:
    """What a hybrid gateway announces to the IDC: the VPC's blocks without the subnets
    served in the IDC, and each IDC subnet served in the cloud as its two halves, so that
    it beats the IDC's own (connected) route for the whole prefix without anyone touching
    the IDC's configuration. `idc_subnets`: (cidr, "idc" | "cloud")."""
    in_idc = [IPv4Network(c) for c, serve in idc_subnets if serve == IDC]
    out: set[IPv4Network] = set()
    for b in blocks:
        parts = [IPv4Network(b)]
        for hole in in_idc:
            nxt: list[IPv4Network] = []
            for p in parts:
                if hole.subnet_of(p):
                    nxt.extend(p.address_exclude(hole))
                elif not p.subnet_of(hole):
                    nxt.append(p)
            parts = nxt
        out.update(parts)
    for c, serve in idc_subnets:
        if serve == CLOUD:
            net = IPv4Network(c)
            out.update(net.subnets(1) if net.prefixlen < 32 else [net])
    return [str(n) for n in sorted(out, key=_net_key)]


def served_in_idc(idc_subnets: Iterable[tuple[str, str]]) -> list[str]:
    """The IDC subnets a gateway carries traffic to (served in the IDC), sorted."""
    nets = {IPv4Network(c) for c, serve in idc_subnets if serve == IDC}
    return [str(n) for n in sorted(nets, key=_net_key)]


def in_any(cidr: str, ranges: Iterable[str]) -> bool:
    net = ipaddress.IPv4Network(cidr)
    return any(net.subnet_of(ipaddress.IPv4Network(r)) for r in ranges)
