"""Where an instance runs: `place` is the only path that gives an instance its host.

The instance create (inside its create transaction, through `choose`, so that the
instance is written once, with its host) and the controller's pass over instances still
without a host (their zone had none, through `place`) decide with the same `choose`, so
health, load and the zone rule are the same whoever places it. The choice itself is the pure
`scheduler.schedule`; this module reads its inputs from the store and writes its answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from yunhan.controller.loads import HostLoads
from yunhan.controller.scheduler import Candidate, Heartbeat, host_healthy, schedule
from yunhan.errors import Conflict
from yunhan.store import Reader, Resource, Tx


def candidates(
    r: Reader,
    leases: Mapping[str, Heartbeat],
    now: float,
    zone: str,
    loads: HostLoads | None = None,
) -> list[Candidate]:
    """The hosts of `zone` as the scheduler sees them: health from leases, load from the
    instance-by-host index (which sees the transaction's own writes).

    With `loads`, only the few lightest hosts of the zone are looked at, so a placement
    costs the same in a zone of 5 hosts or of 500.
    """
    if loads is not None:
        names = loads.lightest(zone, lambda h: host_healthy(leases.get(h), now))
    else:
        names = [h.name for h in r.find("host", "zone", zone)]
    return [
        Candidate(
            name=n,
            zone=zone,
            healthy=host_healthy(leases.get(n), now),
            instances=r.count_of("instance", "host", n),
        )
        for n in names
    ]


def choose(
    r: Reader,
    zone_id: str,
    leases: Mapping[str, Heartbeat],
    now: float,
    loads: HostLoads | None = None,
    *,
    exclude: str | None = None,
) -> str:
    """The host of zone `zone_id` for a new instance (healthy first, then least loaded),
    never `exclude` (the host a migrating instance leaves).

    Raises Conflict naming the zone when the zone has no host (but `exclude`).
    """
    zone = r.get("zone", zone_id)
    hosts = [h for h in candidates(r, leases, now, zone_id, loads) if h.name != exclude]
    return schedule(zone_id, zone.name if zone else zone_id, hosts)


def place(
    tx: Tx,
    instance: Resource,
    leases: Mapping[str, Heartbeat],
    now: float,
    loads: HostLoads | None = None,
) -> Resource:
    """Give `instance` a host of its zone (`choose`) and write it: status `host` and
    phase "scheduled". Returns the instance as written; nothing is written on Conflict."""
    host = choose(tx, instance.spec["zone"], leases, now, loads)
    return tx.update(instance, status={**instance.status, "host": host, "phase": "scheduled"})


def place_pending(
    tx: Tx, leases: Mapping[str, Heartbeat], now: float, loads: HostLoads | None = None
) -> int:
    """Place the instances that have no host; returns how many were placed.

    Instances whose zone still has no host stay pending. Each placement counts in the
    load the next one sees (the transaction's own writes are in its indexes).
    """
    placed = 0
    for inst in tx.find("instance", "unplaced", "yes"):
        try:
            place(tx, inst, leases, now, loads)
        except Conflict:
            continue
        placed += 1
    return placed
