"""The controller: a thin level-triggered loop around the pure reconcilers.

Host documents are not the controller's to write any more: every API process compiles
them from the change log (`controller.engine`, a view that needs no leader). What is left
here writes to the model, so exactly one process runs it at a time (`store.leader`):
placing instances that have no host yet (their zone had none when they were created).
A pass that finds nothing to do writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from yunhan.controller.scheduler import Candidate, Heartbeat, host_healthy, schedule
from yunhan.store import Reader, Store, Tx

log = logging.getLogger("yunhan.controller")

Leases = Callable[[], Mapping[str, Heartbeat]]


def candidates(
    r: Reader, leases: Mapping[str, Heartbeat], now: float, zone: str | None = None
) -> list[Candidate]:
    """Hosts (of `zone`, if given) as the scheduler sees them: health from leases, load
    from the instance-by-host index, so the cost is the zone's hosts, not the region."""
    hosts = r.find("host", "zone", zone) if zone is not None else r.list("host")
    return [
        Candidate(
            name=h.name,
            zone=h.spec["zone"],
            healthy=host_healthy(leases.get(h.name), now),
            instances=r.count_of("instance", "host", h.name),
        )
        for h in hosts
    ]


def schedule_pending(tx: Tx, leases: Mapping[str, Heartbeat], now: float) -> int:
    """Place instances that have no host (their zone had none when they were created).

    Returns how many were placed. Instances whose zone still has no host stay pending.
    """
    pending = tx.find("instance", "unplaced", "yes")
    if not pending:
        return 0
    zones = {z.id: z.name for z in tx.list("zone")}
    cands = candidates(tx, leases, now)
    placed = 0
    for inst in pending:
        zone = inst.spec["zone"]
        if not any(c.zone == zone for c in cands):
            continue
        name = schedule(zone, zones.get(zone, zone), cands)
        tx.update(inst, status={**inst.status, "host": name, "phase": "scheduled"})
        placed += 1
        cands = [
            Candidate(c.name, c.zone, c.healthy, c.instances + (c.name == name)) for c in cands
        ]
    return placed


class Controller:
    """Runs the reconcilers whenever the store revision moves. Stop it with `stop`."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        leases: Leases = dict,
    ) -> None:
        self.store = store
        self.clock = clock
        self.leases = leases
        self.epoch: int | None = None  # the leader epoch that fences our writes

    def reconcile_once(self) -> int:
        """One pass; returns the revision it saw."""
        with self.store.read() as r:
            unplaced = r.count_of("instance", "unplaced", "yes")
            seen = r.revision
        if unplaced:
            with self.store.transaction(fence=self.epoch) as tx:
                placed = schedule_pending(tx, self.leases(), self.clock())
                seen = tx.next_revision if tx.wrote else tx.revision
            if placed:
                log.info("placed %d pending instance(s)", placed)
        return seen

    async def run(self, stop: asyncio.Event, *, retry_delay: float = 1.0) -> None:
        """Reconcile on every change until `stop` is set. A failing pass is retried."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                try:
                    seen = await asyncio.to_thread(self.reconcile_once)
                except Exception:
                    log.exception("controller pass failed; retrying")
                    seen = -1
                    waiting: asyncio.Task[Any] = asyncio.create_task(asyncio.sleep(retry_delay))
                else:
                    waiting = asyncio.create_task(self.store.wait_revision_async(seen, 30.0))
                await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                with suppress(asyncio.CancelledError):
                    await waiting
        finally:
            stopping.cancel()
            with suppress(asyncio.CancelledError):
                await stopping
