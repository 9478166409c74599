"""The API server's functions: the router fed from the store, hosts from the fleet.

This is where a function resource (spec, versions, traffic) becomes the router's
`Target`s, the hosts' agents become `HostSlot`s with a client each, the router's
decisions become events on the function, and its invocations become usage records.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from yunhan.api.function_hosts import FunctionHostInfo
from yunhan.errors import NotFound, Unreachable
from yunhan.functions.autoscaler import (
    DEFAULT_IDLE_GRACE,
    DEFAULT_PANIC_WINDOW,
    DEFAULT_STABLE_WINDOW,
    Policy,
)
from yunhan.functions.catalog import traffic_of
from yunhan.functions.hostclient import HostClient
from yunhan.functions.metering import Meter
from yunhan.functions.router import DEFAULT_QUEUE, Code, HostSlot, Result, Router, Target
from yunhan.nsexec import netns_path
from yunhan.store import Reader, Resource, Store
from yunhan.store.functions import FunctionRows, VersionRow

log = logging.getLogger(__name__)

PORT_TTL = 2.0  # seconds a function's port (namespace, host) is taken as read
RECONCILE_EVERY = 2.0  # seconds between looks at the store for deleted or min-scaled functions
Notify = Callable[[str, str, str, str], None]  # journal.notice
ClientFactory = Callable[[str, str], HostClient]  # (endpoint, key) -> a host's client


PORT_LABEL = "yunhan.io/function"


def port_of(r: Reader, fn: Resource) -> Resource | None:
    """The function's port instance, if it has one."""
    for inst in r.list("instance", fn.project):
        if inst.labels.get(PORT_LABEL) == fn.id:
            return inst
    return None


class Functions:
    """One per API server process: `invoke` a function resource, `stop` at shutdown."""

    def __init__(
        self,
        store: Store,
        rows: FunctionRows,
        meter: Meter,
        notify: Notify,
        hosts: Callable[[], Sequence[FunctionHostInfo]],
        *,
        client_factory: ClientFactory = HostClient,
        queue: int = DEFAULT_QUEUE,
        rng: random.Random | None = None,
    ) -> None:
        """`client_factory` makes each host's client (tests give one over an in-memory
        transport); `queue` and `rng` go to the router (requests held per version, the
        traffic split's dice)."""
        self.store = store
        self.rows = rows
        self.meter = meter
        self._hosts = hosts  # the healthy function hosts
        self._client_factory = client_factory
        self._clients: dict[tuple[str, str], HostClient] = {}
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, int], VersionRow] = {}
        self._ports: dict[str, tuple[str, str, float]] = {}  # function -> netns, host, when
        self._stopping = threading.Event()
        self._reconciler: threading.Thread | None = None
        self.router = Router(self._slots, emit=notify, meter=self._metered, queue=queue, rng=rng)

    def start(self) -> None:
        self.router.start()
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="fn-reconcile")
        self._reconciler.daemon = True
        self._reconciler.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._reconciler is not None:
            self._reconciler.join(timeout=5)
        self.router.stop()
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.close()

    def _slots(self) -> list[HostSlot]:
        out = []
        for h in self._hosts():
            with self._lock:
                c = self._clients.get((h.endpoint, h.key))
                if c is None:
                    c = self._clients[(h.endpoint, h.key)] = self._client_factory(h.endpoint, h.key)
            out.append(HostSlot(h.host, h.memory_mb, c))
        return out

    def _metered(self, t: Target, res: Result, error: bool) -> None:
        self.meter.record(
            t.project,
            t.function,
            t.name,
            t.version,
            res.billed_ms,
            t.memory_mb,
            cold=res.cold_start,
            error=error,
            at=time.time(),
        )

    def _version(self, function_id: str, version: int) -> VersionRow | None:
        """Versions never change: each is read from the store once."""
        key = (function_id, version)
        row = self._versions.get(key)
        if row is None:
            row = self.rows.version(function_id, version)
            if row is not None:
                self._versions[key] = row
        return row

    def target(self, fn: Resource, version: int) -> Target:
        row = self._version(fn.id, version)
        if row is None:
            raise NotFound(f"function {fn.name} has no version {version}")
        spec = fn.spec
        concurrency = int(spec.get("concurrency") or 1)
        window = float(spec.get("scale_window_s") or DEFAULT_STABLE_WINDOW)
        policy = Policy(
            target=float(concurrency),
            min_scale=int(spec.get("min_scale") or 0),
            max_scale=int(spec.get("max_scale") or 10),
            stable_window=window,
            panic_window=window * DEFAULT_PANIC_WINDOW / DEFAULT_STABLE_WINDOW,
            idle_grace=float(spec.get("idle_grace_s", DEFAULT_IDLE_GRACE)),
        )
        sha = row.code_sha256

        def code() -> Code:
            content = self.rows.code(sha)
            if content is None:
                raise NotFound(f"the code of {fn.name} v{version} is gone from the store")
            return Code(fn.name, row.handler, row.memory_mb, row.timeout_s, row.env, content, sha)

        netns, host = self._port(fn)
        return Target(
            function=fn.id,
            name=fn.name,
            project=fn.project,
            version=version,
            memory_mb=row.memory_mb,
            timeout_s=row.timeout_s,
            concurrency=concurrency,
            policy=policy,
            code=code,
            netns=netns,
            host=host,
        )

    def _port(self, fn: Resource) -> tuple[str | None, str | None]:
        """Where a function in a subnet runs: its port's namespace and host."""
        if not fn.spec.get("subnet"):
            return None, None
        now = time.monotonic()
        with self._lock:
            known = self._ports.get(fn.id)
        if known is not None and now - known[2] < PORT_TTL:
            return known[0], known[1]
        with self.store.read() as r:
            port = port_of(r, fn)
        if port is None:
            raise Unreachable(
                f"function {fn.name} has no network port in its subnet (deploy it again)"
            )
        ns, host, phase = (port.status.get(k) for k in ("netns", "host", "phase"))
        if phase != "running" or not ns or not host:
            raise Unreachable(
                f"function {fn.name}'s network port {port.name} is {phase}, not running yet; "
                "retry in a moment"
            )
        with self._lock:
            self._ports[fn.id] = (str(netns_path(ns)), str(host), now)
        return str(netns_path(ns)), str(host)

    def invoke(
        self, fn: Resource, event: Any, request_id: str | None = None, version: int | None = None
    ) -> Result:
        """Run `fn` once: on `version`, or on one chosen by its traffic split."""
        if version is None:
            latest = int(fn.status.get("latest_version") or 0)
            version = self.router.choose(traffic_of(fn.spec, latest))
        return self.router.invoke(self.target(fn, version), event, request_id)

    def drop(self, function_id: str) -> None:
        """A deleted function: its workers go now."""
        self.router.drop(function_id)
        with self._lock:
            for key in [k for k in self._versions if k[0] == function_id]:
                del self._versions[key]

    def _reconcile_loop(self) -> None:
        while not self._stopping.wait(RECONCILE_EVERY):
            try:
                self.reconcile()
            except Exception:
                log.exception("reconciling functions with the store")

    def reconcile(self) -> None:
        """Follow the store, whoever wrote it (another API replica too): a deleted
        function's workers go; a version given traffic by a function with `min_scale`
        gets its pool, whose scaler then keeps that many workers warm."""
        with self.store.read() as r:
            live = {f.id: f for f in r.list("function")}
        for fid in {k[0] for k in self.router.workers()} - set(live):
            self.drop(fid)
        for fn in live.values():
            if int(fn.spec.get("min_scale") or 0) <= 0:
                continue
            latest = int(fn.status.get("latest_version") or 0)
            for version, share in traffic_of(fn.spec, latest).items():
                if share > 0:
                    self.router.pool(self.target(fn, version))

    def logs(self, function_id: str, tail: int) -> list[str]:
        """The function's log lines from every function host, each prefixed by its host."""
        out: list[str] = []
        for slot in self._slots():
            client = slot.client
            assert isinstance(client, HostClient)
            out += [f"[{slot.name}] {line}" for line in client.logs(function_id, tail)]
        return out
