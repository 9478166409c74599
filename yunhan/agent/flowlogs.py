"""The agent's flow logs: a collector per VPC namespace that has logged ports, a bounded
queue of records, and a shipper that posts them to the control plane (docs/flowlogs.md).

Logging must not be able to take a host down: the queue holds at most MAX_QUEUE records and
counts what it had to drop per instance (`skipped` of the ingest protocol); a collector
that fails is logged and retried at the next interval; nothing here blocks the agent's
apply loop (`update` only starts and stops threads, and compares ports).

Threads: one poller (every `interval`: each collector's conntrack listing and its rejected
packets into the queue), one shipper (every `interval`: batches of at most MAX_BATCH
records; on failure they stay queued and it backs off), and each collector's NFLOG reader.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import httpx

from yunhan.net.desired import HostDesired, port_flowlog
from yunhan.net.flowcollect import LoggedPort, NamespaceCollector, Record
from yunhan.net.naming import Naming

log = logging.getLogger("yunhan.agent.flowlogs")

MAX_QUEUE = 20_000  # records held for shipping; more are dropped and counted
MAX_BATCH = 5000  # records per request (the server refuses more, 422)
DEFAULT_INTERVAL = 5.0
MAX_BACKOFF = 60.0


class Collector(Protocol):
    netns: str

    @property
    def ports(self) -> Mapping[str, LoggedPort]: ...

    def set_ports(self, ports: Mapping[str, LoggedPort]) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def poll(self) -> tuple[list[Record], Counter[str]]: ...

    @property
    def overruns(self) -> int: ...


def logged_ports(desired: HostDesired, naming: Naming) -> dict[str, dict[str, LoggedPort]]:
    """netns -> ifname -> port: the local ports some flow log covers, by VPC namespace
    (pure). A VPC none of whose local ports is covered has no entry: no collector."""
    out: dict[str, dict[str, LoggedPort]] = {}
    for vpc in desired.vpcs:
        ports = {}
        for p in vpc.ports:
            f = port_flowlog(vpc, p)
            if f is not None:
                ports[p.ifname] = LoggedPort(p.instance_id, p.ifname, p.ip, f, p.allowed_ips)
        if ports:
            out[naming.vpc_netns(vpc.vni)] = ports
    return out


class RecordQueue:
    """At most `limit` records waiting to be shipped, oldest first, and the records that
    had to be dropped since the last successful post, per instance (thread-safe)."""

    def __init__(self, limit: int = MAX_QUEUE) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._items: deque[Record] = deque()
        self._skipped: Counter[str] = Counter()
        self.dropped_total = 0  # dropped for room, since start (for a person reading logs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, records: Iterable[Record]) -> int:
        """Queue what fits; the rest is counted as skipped. Returns how many were dropped."""
        dropped = 0
        with self._lock:
            for r in records:
                if len(self._items) >= self.limit:
                    self._skipped[r.instance] += 1
                    dropped += 1
                else:
                    self._items.append(r)
            self.dropped_total += dropped
        return dropped

    def skip(self, counts: Mapping[str, int]) -> None:
        """Count records dropped before they reached the queue."""
        with self._lock:
            self._skipped.update({k: v for k, v in counts.items() if v > 0})

    def peek(self, n: int) -> tuple[list[Record], dict[str, int]]:
        """The oldest `n` records and the skipped counts, left in place."""
        with self._lock:
            return [self._items[i] for i in range(min(n, len(self._items)))], dict(self._skipped)

    def done(self, n: int, skipped: Mapping[str, int]) -> None:
        """The first `n` records and `skipped` reached the server (or were refused for
        good): forget them. Records queued and skips counted meanwhile stay."""
        with self._lock:
            for _ in range(min(n, len(self._items))):
                self._items.popleft()
            self._skipped.subtract(skipped)
            self._skipped = +self._skipped  # drop the zeros

    def skipped(self) -> dict[str, int]:
        with self._lock:
            return dict(self._skipped)


def next_delay(delay: float, ok: bool, interval: float) -> float:
    """The shipper's wait after a post: the interval after a success; doubled after each
    failure, up to MAX_BACKOFF (a control plane that is down is not hammered)."""
    return interval if ok else min(max(delay, interval) * 2, MAX_BACKOFF)


CollectorFactory = Callable[[str, Mapping[str, LoggedPort]], Collector]


class FlowLogs:
    """Flow logs of one host's agent: collectors as the applied documents say, shipping
    to `path("/flows")` with `client` (the agent's own client, auth included).

    `update(desired)` after each apply; `start()` once; `stop()` stops every thread.
    `on_error` is told about a transport failure (the agent moves to the next endpoint)."""

    def __init__(
        self,
        *,
        naming: Naming,
        client: httpx.Client,
        path: Callable[[str], str],
        interval: float = DEFAULT_INTERVAL,
        factory: CollectorFactory | None = None,
        queue: RecordQueue | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"flow log interval {interval} must be a positive number")
        self.naming = naming
        self.interval = interval
        self._client = client
        self._path = path
        self._factory: CollectorFactory = factory or (
            lambda ns, ports: NamespaceCollector(ns, ports)
        )
        self.queue = queue if queue is not None else RecordQueue()  # an empty one is falsy
        self._on_error = on_error
        self._lock = threading.Lock()
        self._collectors: dict[str, Collector] = {}
        self._overruns: dict[str, int] = {}  # per netns, what was already counted
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.refused = 0  # records the server refused for good (422), since start
        self.failures = 0  # posts that failed and will be retried

    @property
    def namespaces(self) -> list[str]:
        with self._lock:
            return sorted(self._collectors)

    def update(self, desired: HostDesired) -> None:
        """Collect for exactly the namespaces and ports `desired` logs. Never raises."""
        try:
            want = logged_ports(desired, self.naming)
        except Exception:  # a document we cannot read must not stop the apply loop
            log.exception("flow logs: cannot read the document's flow logs")
            return
        with self._lock:
            gone = [c for ns, c in self._collectors.items() if ns not in want]
            for c in gone:
                del self._collectors[c.netns]
                self._overruns.pop(c.netns, None)
            for ns, ports in want.items():
                have = self._collectors.get(ns)
                if have is None:
                    made = self._factory(ns, ports)
                    self._collectors[ns] = made
                    if self._threads:  # running: a new namespace starts at once
                        made.start()
                    log.info("flow logs: collecting in %s (%d ports)", ns, len(ports))
                elif have.ports != ports:
                    have.set_ports(ports)
        for c in gone:
            log.info("flow logs: no more ports logged in %s", c.netns)
            c.stop()

    def poll_once(self) -> int:
        """Every collector's records since its last poll into the queue; returns how many
        records were collected."""
        with self._lock:
            collectors = list(self._collectors.values())
        n = 0
        for c in collectors:
            try:
                records, skipped = c.poll()
            except Exception:  # a collector's bug must not stop the others
                log.exception("flow logs: poll of %s failed", c.netns)
                continue
            n += len(records)
            self.queue.skip(skipped)
            dropped = self.queue.put(records)
            if dropped:
                log.warning("flow logs: queue full, %d records of %s dropped", dropped, c.netns)
            self._count_overruns(c)
        return n

    def _count_overruns(self, c: Collector) -> None:
        # The kernel dropped NFLOG messages (ENOBUFS): whose, nobody can say. Each instance
        # of the namespace whose rejected packets are kept is told that it may miss some.
        seen = self._overruns.get(c.netns, 0)
        now = c.overruns
        if now > seen:
            log.warning("flow logs: %d NFLOG overruns in %s", now - seen, c.netns)
            self.queue.skip(Counter(p.instance for p in c.ports.values() if p.filter != "ACCEPT"))
        self._overruns[c.netns] = now

    def ship_once(self) -> bool:
        """Post one batch (records and skipped counts). True when it reached the server,
        was refused for good (dropped, counted) or there was nothing to send; False when it
        is to be retried."""
        batch, skipped = self.queue.peek(MAX_BATCH)
        if not batch and not skipped:
            return True
        body: dict[str, Any] = {"records": [r.to_json() for r in batch], "skipped": skipped}
        try:
            r = self._client.post(self._path("/flows"), json=body)
        except httpx.HTTPError as exc:
            self.failures += 1
            log.warning("flow logs: shipping %d records failed: %s", len(batch), exc)
            if self._on_error is not None:
                self._on_error(exc)
            return False
        if r.status_code == 422:
            # Retrying the same batch cannot help: dropped, counted, said.
            self.refused += len(batch)
            log.error("flow logs: %d records refused: %s", len(batch), r.text[:300])
            self.queue.done(len(batch), skipped)
            return True
        if r.status_code >= 300:
            self.failures += 1
            log.warning("flow logs: shipping refused: %s %s", r.status_code, r.text[:300])
            return False
        self.queue.done(len(batch), skipped)
        return True

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()

    def _ship_loop(self) -> None:
        delay = self.interval
        while not self._stop.wait(delay):
            ok = True
            # Drain what is queued (several batches after an outage), then wait.
            while ok and not self._stop.is_set():
                ok = self.ship_once()
                if ok and len(self.queue) < MAX_BATCH:
                    break
            delay = next_delay(delay, ok, self.interval)

    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for c in self._collectors.values():
                c.start()
            self._threads = [
                threading.Thread(target=self._poll_loop, name="flowlog-poll", daemon=True),
                threading.Thread(target=self._ship_loop, name="flowlog-ship", daemon=True),
            ]
            for t in self._threads:
                t.start()

    def stop(self) -> None:
        """Stop the threads and every collector; what is queued is not shipped."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5.0)
        with self._lock:
            collectors = list(self._collectors.values())
            self._collectors.clear()
        for c in collectors:
            c.stop()
