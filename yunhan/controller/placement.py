"""Where an instance runs: `place` is the only path that gives an instance its host.

The instance create (inside its create transaction) and the controller's pass over
instances still without a host (their zone had none) both call `place`, so health, load
and the zone rule are the same whoever places it. The choice itself is the pure
`scheduler.schedule`; this module reads its inputs from the store and writes its answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from yunhan.controller.scheduler import Candidate, Heartbeat, host_healthy, schedule
from yunhan.errors import Conflict
from yunhan.store import Reader, Resource, Tx


def candidates(
    r: Reader, leases: Mapping[str, Heartbeat], now: float, zone: str
) -> list[Candidate]:
    """The hosts of `zone` as the scheduler sees them: health from leases, load from the
    instance-by-host index, so the cost is the zone's hosts, not the region's."""
    return [
        Candidate(
            name=h.name,
            zone=h.spec["zone"],
            healthy=host_healthy(leases.get(h.name), now),
            instances=r.count_of("instance", "host", h.name),
        )
        for h in r.find("host", "zone", zone)
    ]


def place(tx: Tx, instance: Resource, leases: Mapping[str, Heartbeat], now: float) -> Resource:
    """Give `instance` a host of its zone (healthy first, then least loaded) and write it:
    status `host` and phase "scheduled". Returns the instance as written.

    Raises Conflict naming the zone when the zone has no host; nothing is written then.
    """
    zone_id = instance.spec["zone"]
    zone = tx.get("zone", zone_id)
    host = schedule(zone_id, zone.name if zone else zone_id, candidates(tx, leases, now, zone_id))
    return tx.update(instance, status={**instance.status, "host": host, "phase": "scheduled"})


def place_pending(tx: Tx, leases: Mapping[str, Heartbeat], now: float) -> int:
    """Place the instances that have no host; returns how many were placed.

    Instances whose zone still has no host stay pending. Each placement counts in the
    load the next one sees (the transaction's own writes are in its indexes).
    """
    placed = 0
    for inst in tx.find("instance", "unplaced", "yes"):
        try:
            place(tx, inst, leases, now)
        except Conflict:
            continue
        placed += 1
    return placed
