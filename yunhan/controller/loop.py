"""The controller: a thin level-triggered loop around the pure reconcilers.

Host documents are not the controller's to write any more: every API process compiles
them from the change log (`controller.engine`, a view that needs no leader). What is left
here writes to the model, so exactly one process runs it at a time (`store.leader`):
placing instances that have no host yet (`placement.place_pending`), judging hosts by
their leases and placing NAT gateways (`natgw`), settling VIPs whose flap damping has
run its course (`vips.settle_damped`; VIPs are never moved for a lost host),
repairing what older versions left (`repair`: default route tables, subnet indexes),
and taking fleet patch rollouts a step (`rollout.advance`: canary, health windows, rolling
back).
A pass that finds nothing to do writes nothing. Leases age without any write, so the loop
also wakes every `TICK` seconds, not only when the revision moves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from yunhan.controller import hybrid, natgw, rollout, vips
from yunhan.controller.loads import HostLoads
from yunhan.controller.placement import place_pending
from yunhan.controller.repair import needs_repair, repair
from yunhan.controller.scheduler import Heartbeat
from yunhan.store import Notice, Reader, Store

log = logging.getLogger("yunhan.controller")

Leases = Callable[[], Mapping[str, Heartbeat]]
TICK = 1.0  # seconds between two passes when nothing is written (lease ageing)


class Controller:
    """Runs the reconcilers whenever the store revision moves. Stop it with `stop`."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        leases: Leases = dict,
        loads: HostLoads | None = None,
        vip_damping: vips.Damping | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.leases = leases
        self.loads = loads
        self.vip_damping = vip_damping or vips.Damping()
        self.epoch: int | None = None  # the leader epoch that fences our writes
        self.started: float | None = None  # when this controller began its passes
        self.repaired = False  # repair runs once per term as leader (upgrades)

    def _judge_lost(self, now: float) -> bool:
        if self.started is None:
            self.started = now
        return now - self.started >= natgw.STARTUP_GRACE

    def _idle(self) -> bool:
        now = self.clock()
        with self.store.read() as r:
            if r.count_of("instance", "unplaced", "yes"):
                return False
            if not self.repaired:
                return False
            if vips.damped_due(r, now, self.vip_damping):
                return False
            if rollout.due(r, now):
                return False
            leases = self.leases()
            judge = self._judge_lost(now)
            if natgw.decide(r, leases, now, judge)[0]:
                return False
            return not self._replicas(r, leases, now, judge)[0]

    def _replicas(
        self, r: Reader, leases: Mapping[str, Heartbeat], now: float, judge: bool
    ) -> tuple[dict[str, dict[str, Any]], list[Notice]]:
        verdict = natgw.verdicts(r.list("host"), leases, now, judge)
        return hybrid.decide(r, verdict, now)

    def reconcile_once(self) -> int:
        """One pass; returns the revision it saw."""
        now = self.clock()
        leases = self.leases()
        judge = self._judge_lost(now)
        with self.store.read() as r:
            unplaced = r.count_of("instance", "unplaced", "yes")
            broken = not self.repaired and needs_repair(r)
            gateways = natgw.decide(r, leases, now, judge)[0]
            replicas = self._replicas(r, leases, now, judge)[0]
            settling = vips.damped_due(r, now, self.vip_damping)
            rolling = rollout.due(r, now)
            seen = r.revision
        if unplaced or broken or gateways or replicas or settling or rolling:
            with self.store.transaction(fence=self.epoch) as tx:
                placed = place_pending(tx, leases, now, self.loads) if unplaced else 0
                fixed = repair(tx) if broken else 0
                moved = natgw.apply(tx, natgw.decide(tx, leases, now, judge)[0])
                moved += hybrid.apply(tx, self._replicas(tx, leases, now, judge))
                settled = vips.settle_damped(tx, now, self.vip_damping)
                tx.add_notices(settled)
                stepped = rollout.advance(tx, now)
                tx.add_notices(stepped)
                seen = tx.next_revision if tx.wrote else tx.revision
            if placed:
                log.info("placed %d pending instance(s)", placed)
            if fixed:
                log.info("repaired %d object(s) left by older versions", fixed)
            if moved:
                log.info("wrote %d host condition(s) and NAT gateway placement(s)", moved)
            if settled:
                log.info("%d damped VIP(s) settled on their latest holder", len(settled))
            if stepped:
                log.info("%d fleet patch rollout step(s): %s", len(stepped), stepped[0].message)
        self.repaired = True
        return seen

    async def run(self, stop: asyncio.Event, *, retry_delay: float = 1.0) -> None:
        """Reconcile on every change, and every TICK seconds, until `stop` is set. A failing
        pass is retried. Each call is a term as leader: hosts are not judged lost in its
        first seconds, and what older versions left is repaired once."""
        self.started = None
        self.repaired = False
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                try:
                    if self._idle():
                        seen = self.store.revision()  # nothing to place: no thread hop
                    else:
                        seen = await asyncio.to_thread(self.reconcile_once)
                except Exception:
                    log.exception("controller pass failed; retrying")
                    seen = -1
                    waiting: asyncio.Task[Any] = asyncio.create_task(asyncio.sleep(retry_delay))
                else:
                    waiting = asyncio.create_task(self.store.wait_revision_async(seen, TICK))
                await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                with suppress(asyncio.CancelledError):
                    await waiting
        finally:
            stopping.cancel()
            with suppress(asyncio.CancelledError):
                await stopping
