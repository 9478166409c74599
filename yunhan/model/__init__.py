"""Resource schemas and their validation: pure, no I/O (ARCHITECTURE §5)."""

from yunhan.model.names import KIND_PREFIX, looks_like_id, new_id, validate_name
from yunhan.model.network import (
    capacity,
    check_block_removal,
    gateway,
    parse_cidr,
    parse_ip,
    reserved,
    validate_fixed_ip,
    validate_mtu,
    validate_subnet,
    validate_underlay_cidr,
    validate_vpc_block,
    validate_vpc_blocks,
)

__all__ = [
    "KIND_PREFIX",
    "capacity",
    "check_block_removal",
    "gateway",
    "looks_like_id",
    "new_id",
    "parse_cidr",
    "parse_ip",
    "reserved",
    "validate_fixed_ip",
    "validate_mtu",
    "validate_name",
    "validate_subnet",
    "validate_underlay_cidr",
    "validate_vpc_block",
    "validate_vpc_blocks",
]
