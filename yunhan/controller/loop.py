"""The controller: a thin level-triggered loop around the pure reconcilers.

Host documents are not the controller's to write any more: every API process compiles
them from the change log (`controller.engine`, a view that needs no leader). What is left
here writes to the model, so exactly one process runs it at a time (`store.leader`):
placing instances that have no host yet (`placement.place_pending`).
A pass that finds nothing to do writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from yunhan.controller.loads import HostLoads
from yunhan.controller.placement import place_pending
from yunhan.controller.scheduler import Heartbeat
from yunhan.store import Store

log = logging.getLogger("yunhan.controller")

Leases = Callable[[], Mapping[str, Heartbeat]]


class Controller:
    """Runs the reconcilers whenever the store revision moves. Stop it with `stop`."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        leases: Leases = dict,
        loads: HostLoads | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.leases = leases
        self.loads = loads
        self.epoch: int | None = None  # the leader epoch that fences our writes

    def _idle(self) -> bool:
        with self.store.read() as r:
            return r.count_of("instance", "unplaced", "yes") == 0

    def reconcile_once(self) -> int:
        """One pass; returns the revision it saw."""
        with self.store.read() as r:
            unplaced = r.count_of("instance", "unplaced", "yes")
            seen = r.revision
        if unplaced:
            with self.store.transaction(fence=self.epoch) as tx:
                placed = place_pending(tx, self.leases(), self.clock(), self.loads)
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
                    if self._idle():
                        seen = self.store.revision()  # nothing to place: no thread hop
                    else:
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
