"""Address and MAC allocation: pure functions over what is already in use.

The API calls these inside the instance-create transaction, so the create response already
carries `status.ip` and `status.mac`, and two concurrent creates cannot take one address
(the store serialises writers).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Container, Mapping

from yunhan.errors import Conflict, ValidationError
from yunhan.model import capacity, validate_fixed_ip
from yunhan.model.network import RESERVED_AT_START

MAC_PREFIX = "fa:16:3e"  # the OpenStack OUI convention for instance ports
# Seeded once from the system: MACs need to be spread, not secret (and a SystemRandom
# reads the kernel's entropy for every draw).
_RNG = random.Random(random.SystemRandom().getrandbits(64))


def allocate_ip(
    subnet: str,
    cidr: str,
    used: Mapping[str, str],
    requested: str | None,
    start: int | None = None,
) -> str:
    """The requested address if it is allowed, else the lowest free one from the third on
    (from `start` on, when a hint says nothing below it is free).

    `used` maps address -> name of the instance holding it.
    """
    if requested is not None:
        return validate_fixed_ip(subnet, cidr, requested, used)
    net = ipaddress.IPv4Network(cidr)
    first = int(net.network_address) + RESERVED_AT_START
    if start is not None and start > first:
        first = start
    last = int(net.broadcast_address) - 1
    # At most len(used) + 1 candidates are examined: the walk stops at the first gap.
    for n in range(first, last + 1):
        ip = str(ipaddress.IPv4Address(n))
        if ip not in used:
            return ip
    raise Conflict(
        f"subnet {subnet} ({cidr}) has no free address: all {capacity(cidr)} are in use; "
        "delete an instance or create another subnet",
        subnet=subnet,
    )


class AddressHints:
    """Where to start looking for a subnet's lowest free address.

    A hint only (kept in memory, never the truth): it is at or below the lowest free
    address this process knows of, so the walk in `allocate_ip` starts there instead of at
    the subnet's first address and a create costs O(1) in a subnet of thousands. Writes of
    other replicas are still seen, because every candidate is checked against `used`.
    """

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def start(self, subnet_id: str) -> int | None:
        return self._next.get(subnet_id)

    def taken(self, subnet_id: str, ip: str) -> None:
        """`ip` was the lowest free address from the hint on (call it under the writers'
        lock, where allocations are serialised)."""
        n = int(ipaddress.IPv4Address(ip))
        current = self._next.get(subnet_id)
        if current is None or n >= current:
            self._next[subnet_id] = n + 1

    def freed(self, subnet_id: str, ip: str) -> None:
        n = int(ipaddress.IPv4Address(ip))
        if subnet_id in self._next and n < self._next[subnet_id]:
            self._next[subnet_id] = n


def available(cidr: str, used_count: int) -> int:
    """Free instance addresses of a subnet."""
    return max(capacity(cidr) - used_count, 0)


def allocate_mac(used: Container[str], rng: random.Random | None = None) -> str:
    """A random "fa:16:3e:xx:xx:xx" MAC that is not in `used`."""
    rng = rng or _RNG
    for _ in range(1000):
        mac = MAC_PREFIX + "".join(f":{rng.randrange(256):02x}" for _ in range(3))
        if mac not in used:
            return mac
    raise ValidationError("could not find a free MAC address after 1000 tries")
