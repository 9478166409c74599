"""What an API process knows about the hosts: documents, long polls, leases, convergence.

* Documents: the incremental `Engine` follows the store's change log (a subscriber, under
  the store's model lock) and keeps every host's document as keyed entries. A write wakes
  exactly the long polls of the hosts whose documents it changed.
* Leases: an agent's heartbeat and acknowledgement live in memory (`Lease`) and are
  persisted in batches by `persist_leases`, never one write per heartbeat.
* Convergence: write W has converged when every host whose document changed AT W has
  acknowledged a revision >= W. Answered from memory; a waiter is woken only by the
  acknowledgements of the hosts it waits for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from yunhan.controller.engine import Engine
from yunhan.controller.scheduler import host_healthy
from yunhan.net.docentries import Delta
from yunhan.store import Event, Liveness, Store

log = logging.getLogger("yunhan.fleet")

COALESCE = 0.1  # seconds: at most one delta per host per this interval (see `desired`)


@dataclass
class Lease:
    """What a host's agent last said."""

    host: str
    applied_revision: int
    heartbeat_at: float  # wall clock (the app's clock)
    error: str | None
    dirty: bool = True  # not yet persisted
    # Workers its function host held at its last report (this replica's, in memory: the
    # count changes too often to be written; endpoint and key are, in the host's status).
    function_workers: int | None = None
    # Its data path (docs/datapath.md), as last reported: counters change with every
    # packet, so this replica keeps it in memory like the worker count.
    datapath: dict[str, Any] | None = None


@dataclass(eq=False)
class _ConvWaiter:
    revision: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Fleet:
    """Documents, leases and convergence for one API process (see the module docstring)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.engine = Engine()
        self.leases: dict[str, Lease] = {}
        self._doc_waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._last_answer: dict[str, float] = {}  # host -> loop time of its last delta
        self._conv_waiters: dict[str, set[_ConvWaiter]] = {}
        self._rev_waiters: set[_ConvWaiter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interrupted = False
        # Called with every acknowledgement received here (replicas publish them).
        self.on_ack: Callable[[str, int, float, str | None], None] | None = None
        # metrics
        self.documents_sent = 0
        self.snapshots_sent = 0  # of which whole documents
        self.bytes_sent = 0
        self.compile_seconds = 0.0
        self.compiles = 0
        for lv in store.liveness().values():
            self.leases[lv.host] = Lease(
                lv.host, lv.applied_revision, lv.heartbeat_at, lv.error, dirty=False
            )
        store.subscribe(self._on_events, load=self.engine.load)

    # -- following the change log (called under the store's model lock) ----------------

    def _on_events(self, revision: int, events: list[Event]) -> None:
        t0 = time.perf_counter()
        try:
            hosts = self.engine.apply(revision, events)
        except Exception:
            # A write the engine cannot take incrementally: the full path, from the model
            # (which already holds this write). Every host's long poll is woken.
            log.exception("document engine refused revision %d; recompiling in full", revision)
            self.engine.load(revision, list(self.store.model.objs.values()))
            hosts = self.engine.hosts()
        self.compile_seconds += time.perf_counter() - t0
        self.compiles += 1
        loop = self._loop
        if loop is None:
            return
        for h in hosts:
            for fut in self._doc_waiters.pop(h, ()):
                with suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, fut)
        waiters = [w for w in self._rev_waiters if w.revision <= revision]
        for w in waiters:
            self._rev_waiters.discard(w)
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(w.wake.set)

    def _bind(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    def interrupt(self) -> None:
        """The process is stopping: every open long poll answers now."""
        self._interrupted = True
        loop = self._loop
        if loop is None:
            return
        with self.store.read():
            futs = [f for fs in self._doc_waiters.values() for f in fs]
            self._doc_waiters.clear()
            conv = [w for ws in self._conv_waiters.values() for w in ws] + list(self._rev_waiters)
        for f in futs:
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, f)
        for w in conv:
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(w.wake.set)

    # -- documents ---------------------------------------------------------------------

    def doc_revision(self, host: str) -> int | None:
        with self.store.read():
            return self.engine.doc_revision(host)

    async def desired(
        self, host: str, after: int, timeout: float, digest: str | None = None
    ) -> Delta | None:
        """The changes of `host`'s document since `after` (a snapshot when `after` cannot
        be answered from the logs, or the agent's digest disagrees); waits up to `timeout`
        seconds for one when there is none yet; None when none came."""
        self._bind()
        if after > self.store.revision():
            # Another replica may be ahead of us: follow the log before judging.
            await asyncio.to_thread(self.store.refresh)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # Coalescing: a host is sent at most one delta per COALESCE seconds. A burst of
        # writes then reaches it as one delta (one answer, one apply, one acknowledgement)
        # instead of one per write; a lone change is not delayed.
        hold = self._last_answer.get(host, -COALESCE) + COALESCE - loop.time()
        if after and hold > 0:
            await asyncio.sleep(min(hold, max(deadline - loop.time(), 0.0)))
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            with self.store.read() as r:
                d = self._answer(host, after, digest, r.revision)
                if d is not None:
                    self._last_answer[host] = loop.time()
                    return d
                self._doc_waiters.setdefault(host, set()).add(fut)
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._interrupted:
                self._drop_waiter(host, fut)
                return None
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                self._drop_waiter(host, fut)
                return None
            hold = self._last_answer.get(host, -COALESCE) + COALESCE - loop.time()
            if hold > 0 and not self._interrupted:
                await asyncio.sleep(min(hold, max(deadline - loop.time(), 0.0)))

    def _answer(self, host: str, after: int, digest: str | None, revision: int) -> Delta | None:
        current = self.engine.doc_revision(host)
        if current is None:
            return None  # registered, but the engine has not seen it yet
        if after == 0 or after > revision:
            return self._sent(self.engine.delta(host, 0))
        if digest is not None and after == current and digest != self.engine.digest(host):
            log.warning("host %s reports a document digest that differs: sending it whole", host)
            return self._sent(self.engine.delta(host, 0))
        if current > after:
            if digest is not None and digest == self.engine.digest(host):
                # The agent holds this very document at an older revision: typically this
                # server (re)started since, and its logs begin at its load, where a delta
                # from before would be a snapshot. It needs the revision, not a resend.
                return self._sent(Delta(host, current, False))
            return self._sent(self.engine.delta(host, after))
        return None

    def _sent(self, d: Delta) -> Delta:
        self.documents_sent += 1
        self.snapshots_sent += d.snapshot
        return d

    def _drop_waiter(self, host: str, fut: asyncio.Future[None]) -> None:
        with self.store.read():
            ws = self._doc_waiters.get(host)
            if ws is not None:
                ws.discard(fut)
                if not ws:
                    del self._doc_waiters[host]

    @property
    def long_polls(self) -> int:
        return sum(len(ws) for ws in self._doc_waiters.values())

    # -- leases ------------------------------------------------------------------------

    def ack(self, host: str, applied: int, error: str | None) -> None:
        """Record a heartbeat / acknowledgement (in memory) and wake who waits on it."""
        self._bind()
        now = self.clock()
        lease = self.leases.get(host)
        if lease is None:
            lease = self.leases[host] = Lease(host, applied, now, error)
        else:
            lease.applied_revision = applied
            lease.heartbeat_at = now
            lease.error = error
            lease.dirty = True
        self._wake_acked(host, applied)
        if self.on_ack is not None:
            self.on_ack(host, applied, now, error)

    def _wake_acked(self, host: str, applied: int) -> None:
        for w in list(self._conv_waiters.get(host, ())):
            if applied >= w.revision:
                w.wake.set()

    def remote_ack(self, host: str, applied: int, at: float, has_error: bool) -> None:
        """An acknowledgement another replica received (any thread)."""
        loop = self._loop
        if loop is None:
            self._fold_remote(host, applied, at, has_error)
        else:
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fold_remote, host, applied, at, has_error)

    def _fold_remote(self, host: str, applied: int, at: float, has_error: bool) -> None:
        lease = self.leases.get(host)
        if lease is not None and lease.heartbeat_at > at:
            return  # we heard from the agent more recently ourselves
        error = "the agent reports an error (to another replica)" if has_error else None
        if lease is None:
            self.leases[host] = Lease(host, applied, at, error, dirty=False)
        else:
            if lease.error and has_error:
                error = lease.error
            lease.applied_revision, lease.heartbeat_at, lease.error = applied, at, error
        self._wake_acked(host, applied)

    def persist_leases(self) -> int:
        """Write the leases that changed since the last call, in one transaction."""
        dirty = [lease for lease in list(self.leases.values()) if lease.dirty]
        if not dirty:
            return 0
        for lease in dirty:
            lease.dirty = False
        with self.store.transaction() as tx:
            for lease in dirty:
                tx.set_liveness(
                    Liveness(lease.host, lease.applied_revision, lease.heartbeat_at, lease.error)
                )
        return len(dirty)

    # -- convergence -------------------------------------------------------------------

    def convergence(self, revision: int) -> dict[str, object]:
        """Is write `revision` applied by every host whose document it changed?

        A host whose agent is unhealthy stays in `pending`: it is never skipped. `failed`
        lists affected hosts that applied it but report errors.
        """
        now = self.clock()
        with self.store.read() as r:
            seen = r.revision
            affected = self.engine.affected(revision) if seen >= revision else frozenset()
            if affected is None:  # older than the engine remembers: be conservative
                affected = frozenset(
                    h for h in self.engine.hosts() if (self.engine.doc_revision(h) or 0) >= revision
                )
        pending, unhealthy, failed = [], [], []
        for h in affected:
            lease = self.leases.get(h)
            if lease is None or lease.applied_revision < revision:
                pending.append(h)
                if not host_healthy(lease, now):
                    unhealthy.append(h)
            elif lease.error:
                failed.append(h)
        return {
            "revision": revision,
            "converged": seen >= revision and not pending,
            "pending": sorted(pending),
            "unhealthy": sorted(unhealthy),
            "failed": sorted(failed),
            "controller_revision": seen,
        }

    async def wait_converged(self, revision: int, timeout: float) -> dict[str, object]:
        self._bind()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            state = self.convergence(revision)
            remaining = deadline - loop.time()
            if state["converged"] or remaining <= 0 or self._interrupted:
                return state
            w = _ConvWaiter(revision)
            pending = list(state["pending"])  # type: ignore[call-overload]
            with self.store.read() as r:
                if r.revision < revision:
                    self._rev_waiters.add(w)
            for h in pending:
                self._conv_waiters.setdefault(h, set()).add(w)
            try:
                # Unhealthy hosts and replicas' acknowledgements have no wake-up: re-check.
                await asyncio.wait_for(w.wake.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
            finally:
                for h in pending:
                    ws = self._conv_waiters.get(h)
                    if ws is not None:
                        ws.discard(w)
                        if not ws:
                            del self._conv_waiters[h]
                with self.store.read():
                    self._rev_waiters.discard(w)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
