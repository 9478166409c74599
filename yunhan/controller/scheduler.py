"""Placement of instances on hosts: pure, deterministic for equal inputs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from yunhan.errors import Conflict


@dataclass(frozen=True)
class Candidate:
    """A host as the scheduler sees it."""

    name: str
    zone: str  # zone id
    healthy: bool
    instances: int  # how many instances it already carries


class NoHost(Conflict):
    """A zone without any host refused a placement (the API also notes it as an event)."""

    @property
    def zone_name(self) -> str:
        return str(self.details.get("zone", ""))


def schedule(zone: str, zone_name: str, hosts: Iterable[Candidate]) -> str:
    """The host of `zone` to place a new instance on: healthy first, then least loaded.

    An unhealthy host is still chosen when it is the only kind the zone has: its agent may
    be restarting, and the instance will come up when it is back (the phase says so).
    Raises Conflict when the zone has no host at all.
    """
    in_zone = [h for h in hosts if h.zone == zone]
    if not in_zone:
        raise NoHost(
            f"zone {zone_name} has no host to run the instance; start an agent in that zone "
            "or choose another zone",
            zone=zone_name,
        )
    best = min(in_zone, key=lambda h: (not h.healthy, h.instances, h.name))
    return best.name


HEALTHY_WITHIN = 15.0  # seconds since the last heartbeat (docs/api.md)


class Heartbeat(Protocol):
    @property
    def heartbeat_at(self) -> float: ...


def host_healthy(lease: Heartbeat | None, now: float) -> bool:
    """A host is healthy while its agent's last heartbeat is recent."""
    return lease is not None and now - lease.heartbeat_at < HEALTHY_WITHIN
