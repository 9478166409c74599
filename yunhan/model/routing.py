"""Rules of distributed routing (docs/routing.md): next hops, custom routes, policy routes,
port forwards and public addresses.

Pure functions over strings and `ipaddress` objects, like `model.network`: they raise
`ValidationError` (422) or `Conflict` (409) with a message naming the value and what would
be accepted. Lookups (which instance is NAME, which subnets a table serves) are the
caller's; these functions get what it read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any

from yunhan.errors import ValidationError
from yunhan.model.network import parse_cidr, parse_ip

IPv4Network = ipaddress.IPv4Network

NEXT_HOP_FORMS = "instance:NAME, vip:IP, natgw:NAME or blackhole"
HYBRID_REFUSED = (
    "hybrid routes are not written by hand: declare the IDC's range as a subnet "
    "(`yunhan subnet create NAME --vpc V --cidr CIDR --location idc:SITE`) and every table "
    "routes it to the VPC's hybrid gateway to that site (docs/hybrid.md)"
)
PROTOS = ("tcp", "udp", "icmp", "any")
ACTIONS = ("drop", "allow", "reroute")
DEFAULT_PRIORITY = 100
MAX_ROUTE_PRIORITY = 65535
MAX_POLICY_PRIORITY = 9999
MAX_INDEX = 65535  # per-VPC indexes (route tables, subnets, policies, gateways)
MAX_ROUTES_PER_TABLE = 10_000  # the issue asks for at least 1,000
MAX_POLICIES_PER_TABLE = 1000
MAX_FORWARDS_PER_GATEWAY = 100
MAX_EIPS_PER_GATEWAY = 64


def parse_next_hop(text: object) -> tuple[str, str | None]:
    """`instance:NAME|vip:IP|natgw:NAME|blackhole` as (type, the name or address).

    `hybrid…` is understood and refused: hybrid routes are generated from the VPC's IDC
    subnets (docs/hybrid.md)."""
    if not isinstance(text, str) or not text:
        raise ValidationError(
            f"next hop {text!r} is not one of {NEXT_HOP_FORMS}", field="next_hop", value=text
        )
    kind, sep, ref = text.partition(":")
    if kind == "hybrid":
        raise ValidationError(HYBRID_REFUSED, field="next_hop", value=text)
    if kind == "blackhole" and not sep:
        return "blackhole", None
    if kind in ("instance", "natgw") and ref:
        return kind, ref
    if kind == "vip" and ref:
        return kind, str(parse_ip(ref, "next-hop VIP"))
    raise ValidationError(
        f"next hop {text!r} is not one of {NEXT_HOP_FORMS}", field="next_hop", value=text
    )


def next_hop_text(nh: dict[str, Any] | None, names: dict[str, str] | None = None) -> str | None:
    """A stored next hop as people write it (`instance:web-1`): `names` maps ids to names
    (ids are shown when a name is unknown)."""
    if not nh:
        return None
    kind = nh.get("type")
    if kind == "blackhole":
        return "blackhole"
    if kind == "vip":
        return f"vip:{nh.get('ip')}"
    ref = str(nh.get("id"))
    return f"{kind}:{(names or {}).get(ref, ref)}"


def blocks_of(cidrs: Iterable[str]) -> list[IPv4Network]:
    return [IPv4Network(c) for c in cidrs]


def inside_blocks(net: IPv4Network, blocks: Iterable[IPv4Network]) -> bool:
    """Is `net` inside (or equal to) one of the VPC's blocks?"""
    return any(net.subnet_of(b) for b in blocks)


def validate_route_dst(dst: object, vpc: str, blocks: list[IPv4Network]) -> IPv4Network:
    """A custom route's destination: a CIDR (host bits zero) that is not a block of the VPC
    (the direct route of a block is generated; a custom one equal to it would take the
    whole VPC's traffic away from its own instances)."""
    net = parse_cidr(dst, "destination")
    if net in blocks:
        raise ValidationError(
            f"destination {net} is a block of VPC {vpc}: its direct route is generated; "
            "route a smaller prefix inside it, or another destination",
            field="dst",
            value=dst,
        )
    return net


def forms_loop(
    dst: IPv4Network | None,
    blocks: list[IPv4Network],
    next_hop_subnet: str | None,
    table_subnets: Iterable[str],
    *,
    policy: bool = False,
) -> bool:
    """Would traffic for `dst` sent to a next hop in `next_hop_subnet` come back to it?

    Traffic a next-hop instance forwards leaves from its own port, so its own subnet's
    table routes it again. When that is the same table, a custom route inside the VPC's
    blocks (which beats their direct routes) sends it back to the next hop; so does a
    policy whose destination overlaps the blocks (`dst` None: any), as policies come
    before destination routing (docs/routing.md)."""
    if next_hop_subnet is None or next_hop_subnet not in set(table_subnets):
        return False
    if dst is None:
        return policy
    if policy:
        return any(dst.overlaps(b) for b in blocks)
    return inside_blocks(dst, blocks)


def parse_port_range(port: object) -> tuple[int, int]:
    """`N` or `N-M` (1..65535, N <= M) as (lo, hi)."""
    text = str(port)
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise ValidationError(
            f"port {text!r} is not a port N or a range N-M", field="port", value=text
        ) from None
    for p in (lo, hi):
        if not 1 <= p <= 65535:
            raise ValidationError(f"port {p} is out of range 1..65535", field="port", value=text)
    if lo > hi:
        raise ValidationError(
            f"port range {text} runs backwards: write {hi}-{lo}", field="port", value=text
        )
    return lo, hi


def validate_policy(
    proto: str, port: object | None, action: str, has_next_hop: bool
) -> tuple[int, int] | None:
    """The fields of a policy route that depend on each other: a port only with tcp or
    udp, a next hop exactly when the action is reroute. Returns the port range."""
    rng = None
    if port is not None:
        if proto not in ("tcp", "udp"):
            raise ValidationError(
                f"a port matches only tcp or udp, not protocol {proto}; give --proto tcp or udp",
                field="port",
                value=port,
            )
        rng = parse_port_range(port)
    if action == "reroute" and not has_next_hop:
        raise ValidationError(
            f"action reroute needs a next hop ({NEXT_HOP_FORMS})", field="next_hop"
        )
    if action != "reroute" and has_next_hop:
        raise ValidationError(
            f"action {action} takes no next hop (only reroute does)", field="next_hop"
        )
    return rng


def parse_forward_target(text: object) -> tuple[str, int]:
    """`INSTANCE:PORT` of a port forward as (instance name or id, port)."""
    name, sep, port_s = str(text).rpartition(":")
    if not sep or not name or not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValidationError(
            f"forward target {text!r} is not INSTANCE:PORT (a port 1..65535)",
            field="to",
            value=text,
        )
    return name, int(port_s)


def pool_addresses(pools: Iterable[str]) -> Iterator[str]:
    """Every address a public pool can give out, in order (a pool's network and broadcast
    addresses are not given, except in /31 and /32 pools, which have none)."""
    for pool in pools:
        yield from (str(a) for a in IPv4Network(pool).hosts())
