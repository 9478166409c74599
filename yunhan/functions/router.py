"""The server's side of functions: pools of workers on hosts, the activator, the scaler.

A request picks a version by the function's traffic split, then a worker of that
version's pool with a free slot (`concurrency` in flight each). When none is free the
activator holds it (at most `queue` per version, then `Throttled`, a 429) while the
scaler brings workers up; a request arriving at zero starts a worker at once instead of
waiting for the next tick (Knative's activator pokes its autoscaler the same way).

Every `tick` seconds each pool records its average concurrency (in flight plus held,
integrated over time, not sampled) and asks its `Kpa` how many workers it wants; the
difference is spawned on the least loaded function host, or retired (idle ones, least
recently used first). Each change of mind is an event on the function. Each invocation
is metered: billed milliseconds x memory.

Workers belong to this router (`owner`): a function host reaps the workers of a router
that stopped touching them, and `stop` retires them all.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from yunhan.errors import (
    Conflict,
    NotFound,
    Throttled,
    TimedOut,
    Unreachable,
    WorkerGone,
    YunhanError,
)
from yunhan.functions.autoscaler import Kpa, Policy
from yunhan.functions.hostclient import VersionMissing

log = logging.getLogger(__name__)

TICK = 0.5
DEFAULT_QUEUE = 100  # requests held per version before 429
SPAWN_RETRIES = 2


class HostPort(Protocol):
    """A function host as the router sees it (yunhan.functions.hostclient.HostClient)."""

    def put_version(
        self,
        function: str,
        version: int,
        *,
        name: str,
        handler: str,
        memory_mb: int,
        timeout_s: float,
        env: Mapping[str, str],
        tar_gz: bytes,
        sha256: str | None = None,
    ) -> None: ...

    def spawn(
        self, function: str, version: int, owner: str, netns: str | None = None
    ) -> tuple[str, float]: ...

    def invoke(self, wid: str, request_id: str, event: Any, timeout_s: float) -> dict[str, Any]: ...

    def stop(self, wid: str) -> Any: ...


@dataclass(frozen=True)
class HostSlot:
    """A function host the router may place workers on."""

    name: str
    memory_mb: int
    client: HostPort


@dataclass(frozen=True)
class Code:
    """A version as a host deploys it."""

    name: str
    handler: str
    memory_mb: int
    timeout_s: float
    env: Mapping[str, str]
    tar_gz: bytes
    sha256: str


@dataclass(frozen=True)
class Target:
    """One version of one function: what the router needs to run it."""

    function: str  # id
    name: str
    project: str
    version: int
    memory_mb: int
    timeout_s: float
    concurrency: int
    policy: Policy
    code: Callable[[], Code]  # what put_version sends (read from the store when needed)
    netns: str | None = None  # the network namespace workers join (None: one of their own)
    host: str | None = None  # the host workers must run on (where that namespace is)


@dataclass(frozen=True)
class Result:
    """One invocation as the caller sees it."""

    request_id: str
    version: int
    ok: bool
    result: Any
    error: str | None
    traceback: str | None
    duration_ms: float
    billed_ms: int
    memory_mb: int
    cold_start: bool
    cold_start_ms: float | None  # arrival to a worker ready, when it waited for one

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "version": self.version,
            "ok": self.ok,
            "duration_ms": round(self.duration_ms, 3),
            "billed_duration_ms": self.billed_ms,
            "memory_mb": self.memory_mb,
            "cold_start": self.cold_start,
        }
        if self.ok:
            out["result"] = self.result
        else:
            out["error"] = self.error
            if self.traceback:
                out["traceback"] = self.traceback
        return out


@dataclass(eq=False)
class _Worker:
    host: HostSlot
    wid: str
    memory_mb: int
    started: float
    inflight: int = 0
    used: bool = False
    last_used: float = 0.0
    retiring: bool = False
    placed: bool = True  # its memory still counts on its host


class _Gauge:
    """Concurrency integrated over time: the average since the last `take`."""

    def __init__(self, now: float) -> None:
        self.value = 0
        self._area = 0.0
        self._since = now
        self._last = now

    def add(self, delta: int, now: float) -> None:
        self._area += self.value * (now - self._last)
        self._last = now
        self.value += delta

    def take(self, now: float) -> float:
        self._area += self.value * (now - self._last)
        span = now - self._since
        avg = self._area / span if span > 0 else float(self.value)
        self._area, self._since, self._last = 0.0, now, now
        return avg


Emit = Callable[[str, str, str, str], None]  # (project, function id, reason, message)
Meter = Callable[[Target, Result, bool], None]  # (target, result, error)


class _Pool:
    """One version's workers, held requests and scaler."""

    def __init__(self, router: Router, target: Target, queue: int) -> None:
        self.r = router
        self.target = target
        self.queue = queue
        self.cond = threading.Condition()
        self.workers: list[_Worker] = []
        self.pending = 0  # spawns under way
        self.held = 0
        now = router.clock()
        self.gauge = _Gauge(now)
        self.kpa = Kpa(target.policy)
        self.want = 0
        self.spawn_error: str | None = None

    # -- the request path ------------------------------------------------------------

    def _free(self) -> _Worker | None:
        free = [w for w in self.workers if not w.retiring and w.inflight < self.target.concurrency]
        return min(free, key=lambda w: w.inflight, default=None)

    def acquire(self, deadline: float) -> tuple[_Worker, float | None]:
        """A worker with a free slot, and how long the request was held (None if it was
        not)."""
        arrived = time.monotonic()
        with self.cond:
            self.gauge.add(1, self.r.clock())
            w = self._free()
            if w is not None:
                w.inflight += 1
                return w, None
            if self.held >= self.queue:
                self.gauge.add(-1, self.r.clock())
                raise Throttled(
                    f"function {self.target.name} v{self.target.version}: {self.held} "
                    "requests already held waiting for a worker; retry later",
                    function=self.target.name,
                )
            self.held += 1
            try:
                if not self.workers and self.pending == 0:
                    self.spawn_error = None
                    self._spawn_locked(1, "a request arrived at zero workers")
                while True:
                    w = self._free()
                    if w is not None:
                        w.inflight += 1
                        return w, (time.monotonic() - arrived) * 1000
                    if self.spawn_error and self.pending == 0 and not self.workers:
                        raise Unreachable(
                            f"function {self.target.name}: no worker could be started: "
                            f"{self.spawn_error}"
                        )
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimedOut(
                            f"function {self.target.name}: no worker was free within the "
                            f"function's timeout ({self.target.timeout_s:g} s)"
                        )
                    self.cond.wait(left)
            except BaseException:
                self.gauge.add(-1, self.r.clock())
                raise
            finally:
                self.held -= 1

    def release(self, w: _Worker, gone: bool) -> None:
        with self.cond:
            now = self.r.clock()
            self.gauge.add(-1, now)
            w.inflight -= 1
            w.used = True
            w.last_used = now
            if gone and w in self.workers:
                self.workers.remove(w)
            self.cond.notify()

    # -- scaling ---------------------------------------------------------------------

    def _spawn_locked(self, n: int, why: str) -> None:
        self.pending += n
        for _ in range(n):
            self.r._jobs.submit(self._spawn_one, why)

    def _spawn_one(self, why: str) -> None:
        err = None
        w = None
        try:
            w = self.r._start_worker(self.target)
        except YunhanError as exc:
            err = exc.message
        except Exception as exc:  # a host that answers nonsense must not wedge the pool
            log.exception("spawning a worker for %s failed", self.target.name)
            err = str(exc)
        with self.cond:
            self.pending -= 1
            if w is not None:
                self.workers.append(w)
            else:
                self.spawn_error = err
            self.cond.notify_all()
        if err:
            self.r._emit(self.target, "WorkerFailed", f"a worker could not start: {err}")

    def tick(self, now: float) -> None:
        with self.cond:
            self.kpa.record(now, self.gauge.take(now))
            ready = len([w for w in self.workers if not w.retiring])
            d = self.kpa.decide(now, ready)
            have = ready + self.pending
            retire: list[_Worker] = []
            if d.want > have:
                self._spawn_locked(d.want - have, d.why)
            elif d.want < have:
                idle = sorted(
                    (w for w in self.workers if not w.retiring and w.inflight == 0),
                    key=lambda w: w.last_used,
                )
                for w in idle[: have - d.want]:
                    w.retiring = True
                    self.workers.remove(w)
                    retire.append(w)
            before, self.want = self.want, d.want
        for w in retire:
            self.r._jobs.submit(self.r._stop_worker, w)
        if d.want != before:
            verb = "ScaledUp" if d.want > before else "ScaledDown"
            if d.want == 0:
                verb = "ScaledToZero"
            self.r._emit(
                self.target,
                verb,
                f"v{self.target.version}: {before} -> {d.want} worker(s) ({d.why})",
            )

    def drain(self) -> list[_Worker]:
        with self.cond:
            out, self.workers = self.workers, []
            return out


class Router:
    """All pools of this server. `invoke` blocks (call it from a worker thread)."""

    def __init__(
        self,
        hosts: Callable[[], Sequence[HostSlot]],
        *,
        emit: Emit,
        meter: Meter,
        owner: str | None = None,
        queue: int = DEFAULT_QUEUE,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock  # the scaler's time (tests replay it)
        self._hosts = hosts
        self._emit_fn = emit
        self._meter = meter
        self.owner = owner or f"router-{uuid.uuid4().hex[:8]}"
        self._queue = queue
        self._rng = rng or random.Random()
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._lock = threading.Lock()
        self._jobs = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fn-router")
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._placed: dict[str, int] = {}  # host -> MB of workers placed there

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._ticker = threading.Thread(target=self._run, name="fn-scaler", daemon=True)
        self._ticker.start()

    def stop(self) -> None:
        """Retire every worker this router runs."""
        self._stop.set()
        if self._ticker:
            self._ticker.join(timeout=5)
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for p in pools:
            for w in p.drain():
                self._stop_worker(w)
        self._jobs.shutdown(wait=True, cancel_futures=False)

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            self.tick()

    def tick(self) -> None:
        now = self.clock()
        with self._lock:
            pools = list(self._pools.values())
        for p in pools:
            try:
                p.tick(now)
            except Exception:
                log.exception("scaling %s v%d", p.target.name, p.target.version)

    # -- what the API calls ----------------------------------------------------------

    def pool(self, target: Target) -> _Pool:
        key = (target.function, target.version)
        with self._lock:
            p = self._pools.get(key)
            if p is None:
                p = self._pools[key] = _Pool(self, target, self._queue)
            elif p.target.policy != target.policy:
                p.kpa.retune(target.policy)
                p.target = target
            return p

    def choose(self, traffic: dict[int, int]) -> int:
        """A version by the traffic split (percentages)."""
        versions = sorted(traffic)
        roll = self._rng.uniform(0, sum(traffic.values()))
        for v in versions:
            roll -= traffic[v]
            if roll < 0:
                return v
        return versions[-1]

    def invoke(self, target: Target, event: Any, request_id: str | None = None) -> Result:
        rid = request_id or uuid.uuid4().hex
        pool = self.pool(target)
        deadline = time.monotonic() + max(target.timeout_s, 10.0)
        for attempt in range(2):
            w, held_ms = pool.acquire(deadline)
            cold = not w.used
            gone = True
            retry = False
            try:
                raw = w.host.client.invoke(w.wid, rid, event, target.timeout_s)
                gone = bool(raw.get("worker_exited"))
            except (WorkerGone, NotFound):
                # Gone before it ran this (its host restarted, or reaped it): never ran,
                # so another worker may run it.
                raw = {"ok": False, "error": "the worker had gone before it ran this; retry"}
                retry = attempt == 0
            except YunhanError as exc:
                raw = {"ok": False, "error": f"function host {w.host.name}: {exc.message}"}
            finally:
                pool.release(w, gone)
            if gone:
                self._forget(w)
            if not retry:
                break
        res = Result(
            request_id=rid,
            version=target.version,
            ok=bool(raw.get("ok")),
            result=raw.get("result"),
            error=raw.get("error"),
            traceback=raw.get("traceback"),
            duration_ms=float(raw.get("duration_ms") or 0.0),
            billed_ms=int(raw.get("billed_ms") or 0),
            memory_mb=target.memory_mb,
            cold_start=cold,
            cold_start_ms=held_ms if cold else None,
        )
        self._meter(target, res, not res.ok)
        return res

    def workers(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return {k: len(p.workers) for k, p in self._pools.items()}

    def drop(self, function: str) -> None:
        """A deleted function: retire its workers."""
        with self._lock:
            keys = [k for k in self._pools if k[0] == function]
            pools = [self._pools.pop(k) for k in keys]
        for p in pools:
            for w in p.drain():
                self._jobs.submit(self._stop_worker, w)

    # -- hosts -----------------------------------------------------------------------

    def _place(self, target: Target) -> HostSlot:
        hosts = list(self._hosts())
        if target.host is not None:
            hosts = [h for h in hosts if h.name == target.host]
            if not hosts:
                raise Unreachable(
                    f"host {target.host}, where function {target.name}'s network port is, "
                    "runs no function host or is not healthy"
                )
        if not hosts:
            raise Unreachable("no function host is registered and healthy")
        with self._lock:
            fits = [
                h for h in hosts if self._placed.get(h.name, 0) + target.memory_mb <= h.memory_mb
            ]
            if not fits:
                raise Conflict(
                    f"no function host has {target.memory_mb} MB free for another worker"
                )
            h = min(fits, key=lambda h: self._placed.get(h.name, 0) / max(1, h.memory_mb))
            self._placed[h.name] = self._placed.get(h.name, 0) + target.memory_mb
            return h

    def _unplace(self, host: str, memory_mb: int) -> None:
        with self._lock:
            self._placed[host] = max(0, self._placed.get(host, 0) - memory_mb)

    def _start_worker(self, target: Target) -> _Worker:
        h = self._place(target)
        try:
            for _ in range(SPAWN_RETRIES):
                try:
                    wid, _ms = h.client.spawn(
                        target.function, target.version, self.owner, target.netns
                    )
                    return _Worker(h, wid, target.memory_mb, time.monotonic())
                except VersionMissing:
                    c = target.code()
                    h.client.put_version(
                        target.function,
                        target.version,
                        name=c.name,
                        handler=c.handler,
                        memory_mb=c.memory_mb,
                        timeout_s=c.timeout_s,
                        env=c.env,
                        tar_gz=c.tar_gz,
                        sha256=c.sha256,
                    )
            raise Unreachable(f"host {h.name} keeps losing version {target.version}")
        except BaseException:
            self._unplace(h.name, target.memory_mb)
            raise

    def _stop_worker(self, w: _Worker) -> None:
        try:
            w.host.client.stop(w.wid)
        except YunhanError as exc:
            log.info("stopping worker %s on %s: %s", w.wid, w.host.name, exc.message)
        finally:
            self._forget(w)

    def _forget(self, w: _Worker) -> None:
        """The worker's memory no longer counts on its host (once)."""
        with self._lock:
            if w.placed:
                w.placed = False
                self._placed[w.host.name] = max(0, self._placed.get(w.host.name, 0) - w.memory_mb)

    def _emit(self, target: Target, reason: str, message: str) -> None:
        try:
            self._emit_fn(target.project, target.function, reason, message)
        except Exception:
            log.exception("recording %s on function %s", reason, target.name)


__all__ = ["Code", "HostSlot", "Result", "Router", "Target"]
