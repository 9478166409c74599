"""Address rules of the network model: VPC blocks, subnets, reserved and fixed addresses.

Pure functions over strings and `ipaddress` objects; they raise `ValidationError` or
`Conflict` with a message that names the offending value and what would be accepted, so
that the API can hand it to a person unchanged. They never look anything up: the caller
passes in the neighbours (other blocks, other subnets, used addresses) it has read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from yunhan.errors import Conflict, ValidationError

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address

PRIVATE_RANGES: tuple[IPv4Network, ...] = (
    IPv4Network("10.0.0.0/8"),
    IPv4Network("172.16.0.0/12"),
    IPv4Network("192.168.0.0/16"),
)
MAX_PREFIXLEN = 29  # smallest block or subnet: 8 addresses, 5 usable for instances
RESERVED_AT_START = 2  # network address and gateway
RESERVED_AT_END = 1  # broadcast


def parse_cidr(cidr: object, what: str = "CIDR") -> IPv4Network:
    """Parse an IPv4 CIDR "a.b.c.d/n"; host bits must be zero (10.0.0.1/24 is refused)."""
    if not isinstance(cidr, str) or "/" not in cidr:
        raise ValidationError(
            f"{what} {cidr!r} is not an IPv4 CIDR like 10.0.0.0/16", field="cidr", value=cidr
        )
    try:
        return IPv4Network(cidr, strict=True)
    except ValueError as exc:
        try:
            loose = IPv4Network(cidr, strict=False)
        except ValueError:
            raise ValidationError(
                f"{what} {cidr!r} is not an IPv4 CIDR like 10.0.0.0/16", field="cidr", value=cidr
            ) from exc
        raise ValidationError(
            f"{what} {cidr} has host bits set; did you mean {loose}?",
            field="cidr",
            value=cidr,
        ) from exc


def parse_ip(ip: object, what: str = "address") -> IPv4Address:
    """Parse a dotted IPv4 address."""
    if not isinstance(ip, str):
        raise ValidationError(f"{what} {ip!r} is not an IPv4 address like 10.0.1.5", value=ip)
    try:
        return IPv4Address(ip)
    except ValueError as exc:
        raise ValidationError(
            f"{what} {ip!r} is not an IPv4 address like 10.0.1.5", value=ip
        ) from exc


def _ranges_text() -> str:
    return ", ".join(str(r) for r in PRIVATE_RANGES)


def validate_vpc_block(cidr: str) -> IPv4Network:
    """One VPC block: inside a private range, between the range's size and /29."""
    net = parse_cidr(cidr, "VPC block")
    container = next((r for r in PRIVATE_RANGES if net.subnet_of(r)), None)
    if container is None:
        raise ValidationError(
            f"VPC block {net} is not inside a private range ({_ranges_text()})",
            field="cidrs",
            value=cidr,
        )
    if net.prefixlen > MAX_PREFIXLEN:
        raise ValidationError(
            f"VPC block {net} is too small: the longest prefix allowed is /{MAX_PREFIXLEN}",
            field="cidrs",
            value=cidr,
        )
    return net


def validate_vpc_blocks(vpc: str, cidrs: Iterable[str]) -> tuple[str, ...]:
    """All blocks of one VPC: each valid, at least one, none overlapping another.

    Returns the blocks normalised (as `str(IPv4Network)`), in the order given.
    """
    nets: list[IPv4Network] = []
    for cidr in cidrs:
        net = validate_vpc_block(cidr)
        for other in nets:
            if net.overlaps(other):
                raise ValidationError(
                    f"VPC block {net} overlaps block {other} of VPC {vpc}",
                    field="cidrs",
                    value=cidr,
                )
        nets.append(net)
    if not nets:
        raise ValidationError(f"VPC {vpc} needs at least one CIDR block", field="cidrs")
    return tuple(str(n) for n in nets)


def check_block_removal(
    vpc: str, cidrs: Iterable[str], cidr: str, subnets: Mapping[str, str]
) -> tuple[str, ...]:
    """Remove block `cidr` from a VPC; refused while a subnet lies in it or if it is the last.

    `subnets` maps subnet name -> CIDR. Returns the remaining blocks.
    """
    net = parse_cidr(cidr, "VPC block")
    blocks = [IPv4Network(c) for c in cidrs]
    if net not in blocks:
        have = ", ".join(str(b) for b in blocks)
        raise ValidationError(
            f"{net} is not a block of VPC {vpc} ({have})", field="cidr", value=cidr
        )
    inside = sorted(name for name, s in subnets.items() if IPv4Network(s).subnet_of(net))
    if inside:
        raise Conflict(
            f"block {net} of VPC {vpc} still holds subnet(s) {', '.join(inside)}; "
            "delete them first",
            subnets=inside,
        )
    if len(blocks) == 1:
        raise Conflict(f"{net} is the last block of VPC {vpc}; delete the VPC instead")
    return tuple(str(b) for b in blocks if b != net)


def validate_subnet(
    vpc: str, vpc_cidrs: Iterable[str], cidr: str, others: Mapping[str, str]
) -> IPv4Network:
    """A subnet: inside one block of its VPC, at most /29, overlapping no other subnet.

    `others` maps the names of the VPC's other subnets to their CIDRs.
    """
    net = parse_cidr(cidr, "subnet")
    blocks = [IPv4Network(c) for c in vpc_cidrs]
    if not any(net.subnet_of(b) for b in blocks):
        have = ", ".join(str(b) for b in blocks)
        raise ValidationError(
            f"{net} is not inside any block of VPC {vpc} ({have})", field="cidr", value=cidr
        )
    if net.prefixlen > MAX_PREFIXLEN:
        raise ValidationError(
            f"subnet {net} is too small: the longest prefix allowed is /{MAX_PREFIXLEN}",
            field="cidr",
            value=cidr,
        )
    for name, other in sorted(others.items()):
        if net.overlaps(IPv4Network(other)):
            raise Conflict(
                f"subnet {net} overlaps subnet {name} ({other}) of VPC {vpc}",
                field="cidr",
                value=cidr,
            )
    return net


def gateway(cidr: str) -> str:
    """The subnet gateway: the first usable address (10.0.1.1 in 10.0.1.0/24)."""
    return str(IPv4Network(cidr).network_address + 1)


def reserved(cidr: str) -> frozenset[str]:
    """Addresses no instance may take: network, gateway, broadcast."""
    net = IPv4Network(cidr)
    return frozenset(
        {str(net.network_address), str(net.network_address + 1), str(net.broadcast_address)}
    )


def capacity(cidr: str) -> int:
    """How many instance addresses the subnet has in all."""
    return IPv4Network(cidr).num_addresses - RESERVED_AT_START - RESERVED_AT_END


def validate_fixed_ip(subnet: str, cidr: str, ip: str, used: Mapping[str, str]) -> str:
    """A requested address: inside the subnet, not reserved, not held by another instance.

    `used` maps address -> the name of the instance holding it, or what else holds it
    when that is not an instance ("VIP web-vip": names have no spaces).
    """
    addr = parse_ip(ip, "requested IP")
    net = IPv4Network(cidr)
    if addr not in net:
        raise ValidationError(
            f"requested IP {addr} is not inside subnet {subnet} ({net})", field="ip", value=ip
        )
    if str(addr) in reserved(cidr):
        first = net.network_address + RESERVED_AT_START
        raise ValidationError(
            f"requested IP {addr} is reserved in subnet {subnet} ({net}): the network address, "
            f"the gateway {gateway(cidr)} and the broadcast address are; "
            f"instances may use {first} to {net.broadcast_address - 1}",
            field="ip",
            value=ip,
        )
    holder = used.get(str(addr))
    if holder is not None:
        who = holder if " " in holder else f"instance {holder}"
        raise Conflict(
            f"requested IP {addr} is already used by {who} in subnet {subnet}",
            field="ip",
            value=ip,
            holder=holder,
        )
    return str(addr)


def validate_underlay_cidr(cidr: str) -> str:
    """A zone's underlay network (any IPv4 CIDR with host bits zero)."""
    return str(parse_cidr(cidr, "underlay CIDR"))


def validate_mtu(mtu: int) -> int:
    """Underlay MTU: large enough to carry a VXLAN-encapsulated 1280-byte packet."""
    if not 1330 <= mtu <= 65535:
        raise ValidationError(f"mtu {mtu} is out of range 1330..65535", field="mtu", value=mtu)
    return mtu
