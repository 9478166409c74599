"""Replicas over one PostgreSQL: wake-ups by LISTEN/NOTIFY, acknowledgements shared.

Every replica keeps the model and the documents in memory (store, fleet). Two things must
cross between them quickly:

* writes: a committing replica sends `NOTIFY yunhan_events` in its transaction; the others
  follow the change log as soon as it arrives (the store's poll is only the fallback);
* acknowledgements: an agent talks to one replica, a client waiting for `converged` may
  talk to another. Leases are persisted in batches every few seconds, too slow for that,
  so each replica also publishes the acknowledgements it receives, batched every few
  milliseconds, on `yunhan_acks`; the others fold them into their leases.

A replica ignores its own notifications (each carries the sender's id).
"""

from __future__ import annotations

import logging
import secrets
import threading
from contextlib import suppress
from typing import Any

from yunhan.api.fleet import Fleet
from yunhan.store import Store
from yunhan.store.store import NOTIFY_CHANNEL

log = logging.getLogger("yunhan.replicas")

ACK_CHANNEL = "yunhan_acks"
ACK_FLUSH = 0.01  # seconds between two batches of published acknowledgements
MAX_PAYLOAD = 7000  # PostgreSQL refuses NOTIFY payloads of 8000 bytes and more


class ReplicaBridge:
    """Follows the other replicas (one listening thread) and publishes our acks (one
    flushing thread). `start()`, then `stop()`; both threads end promptly."""

    def __init__(self, store: Store, fleet: Fleet) -> None:
        self.store = store
        self.fleet = fleet
        self.id = secrets.token_hex(4)
        self._stop = threading.Event()
        self._pending: dict[str, tuple[int, float, str | None]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.notified = 0
        self.acks_published = 0
        self.acks_received = 0

    def start(self) -> None:
        self.fleet.on_ack = self._queue
        for name, target in (("listen", self._listen), ("acks", self._flush_loop)):
            t = threading.Thread(target=target, name=f"replica-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.fleet.on_ack = None
        for t in self._threads:
            t.join(timeout=3.0)

    # -- acknowledgements out ----------------------------------------------------------

    def _queue(self, host: str, applied: int, at: float, error: str | None) -> None:
        with self._lock:
            self._pending[host] = (applied, at, error)

    def _flush_loop(self) -> None:
        while not self._stop.wait(ACK_FLUSH):
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                continue
            try:
                self._publish(batch)
            except Exception:
                log.exception("could not publish acknowledgements to the other replicas")
                with self._lock:  # keep the newest of each for the next try
                    for h, v in batch.items():
                        self._pending.setdefault(h, v)
                self._stop.wait(1.0)

    def _publish(self, batch: dict[str, tuple[int, float, str | None]]) -> None:
        lines = [
            f"{h}\t{a}\t{at:.3f}\t{1 if err else 0}" for h, (a, at, err) in sorted(batch.items())
        ]
        payloads: list[str] = []
        cur = self.id
        for line in lines:
            if len(cur) + len(line) + 1 > MAX_PAYLOAD:
                payloads.append(cur)
                cur = self.id
            cur += "\n" + line
        payloads.append(cur)
        with self.store.engine.connect() as conn:
            for p in payloads:
                conn.exec_driver_sql("SELECT pg_notify(%(c)s, %(p)s)", {"c": ACK_CHANNEL, "p": p})
            conn.commit()
        self.acks_published += len(lines)

    # -- the other replicas in ---------------------------------------------------------

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen_once()
            except Exception:
                log.exception("lost the notification connection; reconnecting")
                self._stop.wait(1.0)

    def _listen_once(self) -> None:
        raw = self.store.engine.raw_connection()
        try:
            pg: Any = raw.driver_connection
            pg.autocommit = True
            pg.execute(f"LISTEN {NOTIFY_CHANNEL}")
            pg.execute(f"LISTEN {ACK_CHANNEL}")
            # Writes committed before LISTEN took effect: follow the log once now.
            self.store.refresh()
            while not self._stop.is_set():
                # One at a time: a write must be followed as soon as its NOTIFY arrives.
                for n in pg.notifies(timeout=0.5, stop_after=1):
                    if n.channel == NOTIFY_CHANNEL:
                        self.notified += 1
                        self.store.refresh()
                    elif n.channel == ACK_CHANNEL:
                        self._fold(n.payload)
        finally:
            with suppress(Exception):
                raw.close()

    def _fold(self, payload: str) -> None:
        sender, _, body = payload.partition("\n")
        if sender == self.id or not body:
            return
        for line in body.split("\n"):
            try:
                host, applied, at, err = line.split("\t")
                self.fleet.remote_ack(host, int(applied), float(at), err == "1")
                self.acks_received += 1
            except ValueError:
                log.warning("ignoring a malformed acknowledgement line %r", line[:200])
