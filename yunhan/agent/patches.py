"""The agent's part of fleet hot patching (docs/hotpatch.md, "Fleet rollouts"): apply the
patches the control plane assigns to this host to every matching process here, catch the
processes started later, watch the patched ones through the health window, roll back on
request, and report per process.

Protocol (specs/spec13.md, "Agent protocol"):
  GET  /v1/agent/hosts/{name}/patches        the assignments, polled every `interval` s
  GET  /v1/agent/patches/{digest}            the .yhp, fetched once, verified, cached
  POST /v1/agent/hosts/{name}/patch-reports  states and per-process results, batched

Discovery: a process is a target of a patch when it maps an object (its executable or a
library) with the manifest's build-id, checked by content through /proc/PID/map_files
(`yunhan.hotpatch.loader.locate`), and it is in this agent's scope (`Scope`): with
--host-netns (the lab, where every host is a namespace of one machine) the processes of
the host namespace and of this agent's instance namespaces; on a real host every process.
Never the agent itself, nor a helper it started (a descendant outside its instance
namespaces; the instances' workloads, started detached in their namespaces, are targets).
Processes started later are seen through the kernel's process-event connector
(`procevents`): an exec'ed pid is checked a few times over the next second, as the dynamic
loader maps its libraries after the exec. A full /proc scan runs every RESCAN_INTERVAL s
anyway (the connector may be unavailable, or lose events under load).

One patcher thread calls the engine, one process at a time (it is blocking and stops the
target's threads). A process whose patched function is always active is retried
BUSY_TRIES times with a doubling backoff, then reported `busy`; never forced. A refusal is
reported `refused` with the engine's reason. A process whose journal already carries the
patch counts as applied without a second apply (an agent restarted mid-rollout). A process
patched less than the health window ago that disappears is reported `died`, once.

Reports wait in a bounded queue (`Reports`): one row per process (the newest result wins)
and the newest state per patch; a poster sends them every BATCH_DELAY and retries with a
backoff on failure, so nothing is lost while the agent runs (beyond MAX_PENDING rows, the
oldest are dropped and counted).

Threads: a poller (assignments and files, HTTP only), the patcher (engine), the connector
reader, and the reporter.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from yunhan import hotpatch, procstat
from yunhan.agent.procevents import ConnectorError, Exec, ProcConnector
from yunhan.errors import Conflict, HotpatchError, NotFound, YunhanError
from yunhan.hotpatch import journal, procfs
from yunhan.hotpatch.loader import locate
from yunhan.hotpatch.manifest import Manifest
from yunhan.net.naming import Naming
from yunhan.nsexec import NETNS_DIR, netns_path

log = logging.getLogger("yunhan.agent.patches")

DEFAULT_INTERVAL = 2.0  # seconds between polls when the control plane has no long poll
LONG_POLL = 20.0  # seconds a poll of this host's patches may wait for a change
MIN_POLL_GAP = 0.2  # seconds between two polls, at least (a list that keeps changing)
RESCAN_INTERVAL = 10.0  # seconds between two full /proc scans per patch being applied
EXEC_CHECKS = (0.05, 0.3, 1.0)  # seconds after an exec at which its pid is checked
MAX_EXEC_CHECKS = 4096  # pids waiting for a check; more: a full rescan instead
BUSY_TRIES = 5  # engine applies of a process whose function stays active, then `busy`
BUSY_BACKOFF = 0.5  # seconds before the second try, doubled each time (~7.5 s in all)
# Each engine try waits ~0.65 s for the functions to become inactive (10 stops).
ENGINE_RETRY = hotpatch.Retry(attempts=10, first_backoff=0.002, max_backoff=0.2)
HEALTH_TICK = 0.5  # seconds between two looks at the processes in their health window
BATCH_DELAY = 0.2  # seconds to gather results in one report
MAX_PENDING = 10_000  # process rows waiting to be reported
MAX_BATCH = 1000  # process rows per post
MAX_REPORTS = 100  # patches per post (the server's bound)
MAX_REASON = 1000  # characters of a reason reported (the server's bound)
MAX_BACKOFF = 30.0
CONNECTOR_RETRY = 30.0  # seconds before trying the connector again after it failed

Want = Literal["apply", "rollback"]
State = Literal["applying", "applied", "failed", "rolling_back", "rolled_back"]
Result = Literal["applied", "refused", "busy", "died", "rolled_back", "rollback_failed"]


# -- what the control plane says ------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """One patch this host is to apply or roll back (GET .../patches)."""

    id: str
    name: str
    digest: str
    patch_id: str
    build_id: str
    want: Want
    health_window: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Assignment:
        want = d["want"]
        if want not in ("apply", "rollback"):
            raise ValueError(f"unknown want {want!r}")
        return cls(
            id=str(d["id"]),
            name=str(d.get("name") or d["id"]),
            digest=str(d["digest"]).lower(),
            patch_id=str(d["patch_id"]),
            build_id=str(d["build_id"]),
            want=want,
            health_window=float(d.get("health_window") or 0.0),
        )


# -- this machine's processes ---------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    start: int  # start time in clock ticks since boot: with the pid, one process for good
    comm: str
    ppid: int
    netns: int | None  # inode of its network namespace (None: unreadable)
    alive: bool  # not a zombie


@dataclass(frozen=True)
class Scope:
    """Whose processes this agent patches: every process (`everything`, a real host) or
    those of the network namespaces in `namespaces`; `namespaces` also names the instance
    each of its instance namespaces belongs to (None: the host's own, or unknown)."""

    everything: bool
    namespaces: Mapping[int, str | None]

    def admits(self, netns: int | None) -> bool:
        return self.everything or (netns is not None and netns in self.namespaces)

    def instance(self, netns: int | None) -> str | None:
        return None if netns is None else self.namespaces.get(netns)

    def in_instance(self, netns: int | None) -> bool:
        """Is `netns` one of the agent's instance namespaces (not the host's)?"""
        return netns is not None and self.namespaces.get(netns) is not None


def scope_of(
    host_netns: str | None,
    naming: Naming,
    named: Mapping[str, int],
    instance_ids: Iterable[str],
) -> Scope:
    """The scope of an agent (pure). `named`: the named network namespaces of the machine
    (name -> inode, as in /run/netns); `instance_ids`: the instances of its document.

    With `host_netns` (the lab): the host namespace and every namespace named like one of
    this agent's instances (`<prefix>i-...`; one not in the document yet is in scope, with
    no instance id). Without: everything, the instance namespaces still naming their
    instance. An instance namespace maps to its id, or "" when unknown.
    """
    by_name = {naming.instance_netns(i): i for i in instance_ids}
    inst_prefix = naming.prefix + "i-"
    spaces: dict[int, str | None] = {}
    for name, inode in named.items():
        if name.startswith(inst_prefix):
            spaces[inode] = by_name.get(name, "")
    if host_netns is not None:
        host = named.get(Path(host_netns).name)  # a name under /run/netns, or its path
        if host is not None:
            spaces.setdefault(host, None)
    return Scope(everything=host_netns is None, namespaces=spaces)


def own_helper(
    info: ProcInfo, agent_pid: int, parent: Callable[[int], int | None], scope: Scope
) -> bool:
    """Is `info` the agent or one of its helpers? The agent and its descendants are, except
    those inside an instance namespace (an instance's workload, which the agent starts)."""
    if info.pid == agent_pid:
        return True
    if scope.in_instance(info.netns):
        return False
    pid: int | None = info.ppid
    for _ in range(32):  # bounded: a parent chain read while processes come and go
        if pid is None or pid <= 1:
            return False
        if pid == agent_pid:
            return True
        pid = parent(pid)
    return False


class Processes(Protocol):
    """This machine's processes and the hot-patching engine, as the worker uses them (the
    real one is `LinuxProcesses`; unit tests give a fake that behaves)."""

    def pids(self) -> list[int]: ...
    def info(self, pid: int) -> ProcInfo | None: ...
    def namespaces(self) -> dict[str, int]: ...
    def maps_target(self, pid: int, manifest: Manifest) -> bool: ...
    def carries(self, pid: int, start: int, patch_id: str) -> float | None: ...
    def carriers(self, patch_id: str) -> list[tuple[int, int]]: ...
    def apply(self, pid: int, path: Path) -> None: ...
    def rollback(self, pid: int, patch_id: str) -> None: ...


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(comm, ppid) from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    return comm, int(text[text.rindex(")") + 2 :].split()[1])


class EventSource(Protocol):
    """Exec events of the machine (the real one is procevents.ProcConnector)."""

    def receive(self, timeout: float) -> list[Exec]: ...
    def close(self) -> None: ...


class LinuxProcesses:
    """`Processes` of the real machine: /proc, /run/netns, and the engine with its journal
    in `journal_dir` (None: the engine's default, shared with `yunhan hotpatch`)."""

    def __init__(self, journal_dir: Path | None = None) -> None:
        self.journal_dir = journal_dir

    @property
    def _root(self) -> Path:
        return self.journal_dir or journal.default_dir()

    def pids(self) -> list[int]:
        return [int(e) for e in os.listdir("/proc") if e.isdigit()]

    def info(self, pid: int) -> ProcInfo | None:
        st = procstat.read(pid)
        cp = _read_stat(pid)
        if st is None or cp is None:
            return None
        try:
            netns: int | None = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            netns = None
        return ProcInfo(pid, st.start_time, cp[0], cp[1], netns, st.alive)

    def namespaces(self) -> dict[str, int]:
        out = {}
        try:
            names = os.listdir(NETNS_DIR)
        except OSError:
            return {}
        for name in names:
            try:
                out[name] = os.stat(netns_path(name)).st_ino
            except OSError:
                continue
        return out

    def maps_target(self, pid: int, manifest: Manifest) -> bool:
        # By name first, then by build-id read through map_files (the engine's own test).
        try:
            locate(pid, procfs.read_maps(pid), manifest, by_name_only=True)
        except (YunhanError, OSError):
            return False
        return True

    def carries(self, pid: int, start: int, patch_id: str) -> float | None:
        try:
            # A fork of a patched process runs the patch without a record of its own.
            hotpatch.inherit(pid, journal_dir=self._root)
            jr = journal.load(self._root, pid, start)
        except HotpatchError:
            return None
        rec = jr.find(patch_id)
        return rec.applied_at if rec is not None and rec.state == "applied" else None

    def carriers(self, patch_id: str) -> list[tuple[int, int]]:
        out = []
        for pid, start, _path in journal.all_journals(self._root):
            st = procstat.read(pid)
            if st is None or st.start_time != start:
                continue  # that process is gone
            try:
                if journal.load(self._root, pid, start).find(patch_id) is not None:
                    out.append((pid, start))
            except HotpatchError:
                continue
        return out

    def apply(self, pid: int, path: Path) -> None:
        hotpatch.apply(pid, path, journal_dir=self.journal_dir, retry=ENGINE_RETRY)

    def rollback(self, pid: int, patch_id: str) -> None:
        hotpatch.rollback(pid, patch_id, journal_dir=self.journal_dir, retry=ENGINE_RETRY)


Verdict = Literal["busy", "gone", "applied", "refused"]


def classify(exc: Exception) -> Verdict:
    """What an engine error means for the worker (pure): `busy` (the functions stayed
    active: retry later), `gone` (the process exited), `applied` (it carries the patch
    already: a race with another tool), else `refused`."""
    if isinstance(exc, NotFound):
        return "gone"
    if isinstance(exc, HotpatchError) and "reasons" in exc.details:
        return "busy"  # raised by the switch after its stops found a function active
    if isinstance(exc, Conflict) and "is already applied" in exc.message:
        return "applied"
    return "refused"


def busy_delay(tries: int) -> float:
    """Seconds before try `tries + 1` of a busy process: BUSY_BACKOFF doubled each time."""
    return float(BUSY_BACKOFF * 2 ** max(tries - 1, 0))


# -- reports --------------------------------------------------------------------------


@dataclass
class _PendingReport:
    state: State
    message: str | None
    rows: OrderedDict[tuple[int, int], dict[str, Any]] = field(default_factory=OrderedDict)


class Reports:
    """What waits to be posted: per patch its newest state and one row per process (a
    newer result replaces an older one not yet sent); at most `limit` rows, the oldest
    dropped beyond (counted). Thread-safe."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, _PendingReport] = OrderedDict()
        self._rows = 0
        self.dropped = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def put(
        self,
        patch: str,
        state: State,
        rows: Iterable[dict[str, Any]] = (),
        message: str | None = None,
    ) -> None:
        message = message[:MAX_REASON] if message else None  # the server's bound
        with self._lock:
            p = self._pending.get(patch)
            if p is None:
                p = self._pending[patch] = _PendingReport(state, message)
            p.state, p.message = state, message
            for row in rows:
                key = (int(row["pid"]), int(row["start"]))
                if key in p.rows:
                    del p.rows[key]
                    self._rows -= 1
                p.rows[key] = row
                self._rows += 1
            while self._rows > self.limit:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        oldest = min(
            ((p, k) for p in self._pending.values() for k in p.rows),
            key=lambda pk: pk[0].rows[pk[1]]["at"],
        )
        del oldest[0].rows[oldest[1]]
        self._rows -= 1
        self.dropped += 1

    def batch(self, max_rows: int = MAX_BATCH) -> list[dict[str, Any]]:
        """The next body's `reports` (left in place until `done`)."""
        out: list[dict[str, Any]] = []
        room = max_rows
        with self._lock:
            for patch, p in self._pending.items():
                rows = list(p.rows.values())[:room]
                if len(rows) < len(p.rows) and out:
                    break  # the rest of this patch in the next post, whole
                room -= len(rows)
                body: dict[str, Any] = {"patch": patch, "state": p.state, "processes": rows}
                if p.message:
                    body["message"] = p.message
                out.append(body)
                if room <= 0 or len(out) >= MAX_REPORTS:
                    break
        return out

    def done(self, sent: list[dict[str, Any]]) -> None:
        """`sent` reached the server (or was refused for good): forget what is unchanged
        since; a newer state or row queued meanwhile stays."""
        with self._lock:
            for body in sent:
                p = self._pending.get(body["patch"])
                if p is None:
                    continue
                for row in body["processes"]:
                    key = (int(row["pid"]), int(row["start"]))
                    if p.rows.get(key) is row:
                        del p.rows[key]
                        self._rows -= 1
                if not p.rows and p.state == body["state"] and p.message == body.get("message"):
                    del self._pending[body["patch"]]


def next_delay(delay: float, ok: bool) -> float:
    """The reporter's wait after a post: BATCH_DELAY after a success; after each failure
    doubled (from 0.5 s), up to MAX_BACKOFF."""
    return BATCH_DELAY if ok else min(max(delay * 2, 0.5), MAX_BACKOFF)


# -- per patch ------------------------------------------------------------------------


@dataclass
class _Target:
    """One process of one patch."""

    pid: int
    start: int
    comm: str
    instance: str | None
    result: Result | None = None  # the final result, once there is one
    reason: str | None = None
    at: float = 0.0  # when `result` was reached (unix s)
    tries: int = 0
    due: float = 0.0  # when to try (again)
    patched_at: float | None = None  # for the health window

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "pid": self.pid,
            "start": self.start,
            "comm": self.comm[:64],
            "instance": self.instance,
            "result": self.result,
            "at": self.at,
        }
        if self.reason:
            row["reason"] = self.reason[:MAX_REASON]
        return row


@dataclass
class _Rollout:
    a: Assignment
    path: Path | None = None
    manifest: Manifest | None = None
    failed: str | None = None
    targets: dict[tuple[int, int], _Target] = field(default_factory=dict)
    next_scan: float = 0.0  # 0: scan at once
    scanned: bool = False
    state: State | None = None  # the state last queued


def host_state(
    want: Want, targets: Iterable[_Target], scanned: bool, before: State | None
) -> State:
    """The state to report (pure): `applied` once a scan is done and every process found
    has a final result, and it stays so (later processes are reported as they come);
    likewise `rolled_back`."""
    final: State = "applied" if want == "apply" else "rolled_back"
    if before == final:
        return final
    working: State = "applying" if want == "apply" else "rolling_back"
    if not scanned or any(t.result is None for t in targets):
        return working
    return final


# -- the worker -----------------------------------------------------------------------


class Patches:
    """Fleet patching on one host (see the module). `start()` once, `stop()` waits for an
    engine call in flight (a patch half loaded must not lose its tracer). `poll_once`,
    `work_once`, `exec_seen` and `flush_once` are the threads' steps, callable directly."""

    def __init__(
        self,
        *,
        naming: Naming,
        client: httpx.Client,
        api: Callable[[str], str],
        host_name: str,
        host_netns: str | None,
        cache_dir: Path,
        interval: float = DEFAULT_INTERVAL,
        instances: Callable[[], Iterable[str]] = list,
        processes: Processes | None = None,
        connector: Callable[[], EventSource] | None = ProcConnector,
        rescan_interval: float = RESCAN_INTERVAL,
        agent_pid: int | None = None,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"patch interval {interval} must be a positive number of seconds")
        self.naming = naming
        self.interval = interval
        self._etag = ""  # of the last list of assignments (the long poll's token)
        self.host_name = host_name
        self.host_netns = host_netns
        self.cache_dir = cache_dir
        self.rescan_interval = rescan_interval
        self.procs: Processes = processes if processes is not None else LinuxProcesses()
        self.reports = Reports()
        self._client = client
        self._api = api
        self._instances = instances
        self._connector = connector
        self._agent_pid = os.getpid() if agent_pid is None else agent_pid
        self._clock = clock
        self._on_error = on_error
        self._lock = threading.Lock()
        self._rollouts: dict[str, _Rollout] = {}
        self._exec_checks: dict[int, list[float]] = {}  # pid -> times left to check it
        self._rescan_due = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.connected = False  # the connector is delivering events
        self.refused = 0  # report rows the server refused for good (400/422)
        self.failures = 0  # posts and polls that failed

    # -- the control plane -----------------------------------------------------------

    def _url(self, tail: str) -> str:
        return self._api(tail)

    def poll_once(self, wait: float = 0.0) -> bool:
        """Fetch the assignments; fetch and check the files of new ones. False when the
        control plane could not be asked (the rollouts go on as they were).

        With `wait`, a long poll: the control plane answers when the list differs from the
        one this agent has (its etag), or after `wait` seconds."""
        params: dict[str, str | float] = {}
        if wait > 0 and self._etag:
            params = {"etag": self._etag, "timeout": wait}
        try:
            r = self._client.get(
                self._url(f"/v1/agent/hosts/{self.host_name}/patches"),
                params=params,
                timeout=httpx.Timeout(10.0, read=wait + 10.0),
            )
            r.raise_for_status()
            body = r.json()
            assignments = [Assignment.from_json(d) for d in body["patches"]]
            etag = str(body.get("etag") or "")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.failures += 1
            log.warning("patches: cannot get this host's patches: %s", exc)
            if self._on_error is not None and isinstance(exc, httpx.HTTPError):
                self._on_error(exc)
            return False
        if self._stop.is_set():
            return True  # a long poll answered after stop(): nothing to act on
        self._etag = etag
        with self._lock:
            known = dict(self._rollouts)
        fresh: dict[str, _Rollout] = {}
        for a in assignments:
            ro = known.get(a.id)
            if ro is not None and ro.a.digest == a.digest:
                if ro.a.want != a.want:
                    log.info("patches: %s: now %s", a.name, a.want)
                    ro = _Rollout(a, ro.path, ro.manifest, ro.failed)
                else:
                    ro.a = a
            else:
                ro = _Rollout(a)
                log.info("patches: %s (%s): %s", a.name, a.patch_id, a.want)
            if ro.a.want == "apply" and ro.manifest is None and ro.failed is None:
                self._prepare(ro)
            fresh[a.id] = ro
        with self._lock:
            self._rollouts = fresh
        self._wake.set()
        return True

    def _prepare(self, ro: _Rollout) -> None:
        """The verified .yhp of `ro` in the cache and its manifest; sets `ro.failed` (and
        queues the report) when the file is not what the control plane said. A transient
        failure leaves it for the next poll."""
        a = ro.a
        path = self.cache_dir / f"{a.digest}.yhp"
        try:
            if not path.is_file() or _sha256(path.read_bytes()) != a.digest:
                r = self._client.get(self._url(f"/v1/agent/patches/{a.digest}"))
                if r.status_code >= 500:
                    r.raise_for_status()
                if r.status_code >= 300:
                    self._fail(ro, f"the patch file could not be fetched: {r.status_code}")
                    return
                got = _sha256(r.content)
                if got != a.digest:
                    self._fail(ro, f"the patch file's sha256 is {got}, not the digest {a.digest}")
                    return
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(r.content)
                tmp.replace(path)
        except httpx.HTTPError as exc:
            self.failures += 1
            log.warning("patches: fetching %s failed (%s); retrying", a.name, exc)
            if self._on_error is not None:
                self._on_error(exc)
            return
        except OSError as exc:
            self._fail(ro, f"the patch file could not be cached: {exc}")
            return
        try:
            manifest = hotpatch.read_manifest(str(path))
        except YunhanError as exc:
            self._fail(ro, f"the patch file has no readable manifest: {exc.message}")
            return
        if (manifest.build_id, manifest.patch_id) != (a.build_id, a.patch_id):
            self._fail(
                ro,
                f"the patch file is {manifest.patch_id} for build-id {manifest.build_id}, "
                f"not {a.patch_id} for {a.build_id}",
            )
            return
        ro.path, ro.manifest = path, manifest

    def _fail(self, ro: _Rollout, reason: str) -> None:
        log.error("patches: %s: %s", ro.a.name, reason)
        ro.failed = reason
        ro.state = "failed"
        self.reports.put(ro.a.id, "failed", message=reason)

    def flush_once(self) -> bool:
        """Post what is pending (at most MAX_BATCH rows). True when it reached the server,
        was refused for good (dropped, counted) or there was nothing; False: retry."""
        batch = self.reports.batch()
        if not batch:
            return True
        try:
            r = self._client.post(
                self._url(f"/v1/agent/hosts/{self.host_name}/patch-reports"),
                json={"reports": batch},
            )
        except httpx.HTTPError as exc:
            self.failures += 1
            log.warning("patches: reporting failed: %s", exc)
            if self._on_error is not None:
                self._on_error(exc)
            return False
        if r.status_code in (400, 422):
            self.refused += sum(len(b["processes"]) for b in batch)
            log.error("patches: report refused: %s", r.text[:300])
            self.reports.done(batch)
            return True
        if r.status_code >= 300:
            self.failures += 1
            log.warning("patches: report refused: %s %s", r.status_code, r.text[:300])
            return False
        self.reports.done(batch)
        return True

    # -- the processes ---------------------------------------------------------------

    @property
    def rollouts(self) -> dict[str, _Rollout]:
        with self._lock:
            return dict(self._rollouts)

    @property
    def exec_checks(self) -> int:
        """Exec'ed pids still waiting for a check."""
        with self._lock:
            return len(self._exec_checks)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def exec_seen(self, pid: int) -> None:
        """A process exec'ed (the connector): check it over the next second."""
        now = self._clock()
        with self._lock:
            if not any(r.a.want == "apply" and r.manifest for r in self._rollouts.values()):
                return
            if len(self._exec_checks) >= MAX_EXEC_CHECKS:
                self._rescan_due = True
            else:
                self._exec_checks[pid] = [now + d for d in EXEC_CHECKS]
        self._wake.set()

    def _scope(self) -> Scope:
        return scope_of(self.host_netns, self.naming, self.procs.namespaces(), self._instances())

    def _candidate(self, pid: int, scope: Scope) -> ProcInfo | None:
        info = self.procs.info(pid)
        if info is None or not info.alive or not scope.admits(info.netns):
            return None
        if own_helper(info, self._agent_pid, self._parent, scope):
            return None
        return info

    def _parent(self, pid: int) -> int | None:
        info = self.procs.info(pid)
        return None if info is None else info.ppid

    def _add(self, ro: _Rollout, info: ProcInfo, scope: Scope, now: float) -> _Target | None:
        key = (info.pid, info.start)
        if key in ro.targets:
            return None
        t = _Target(info.pid, info.start, info.comm, scope.instance(info.netns) or None, due=now)
        ro.targets[key] = t
        return t

    def _scan(self, ro: _Rollout, scope: Scope, now: float) -> None:
        """Find every target of `ro` (level-triggered: what is found already is kept)."""
        if ro.a.want == "apply":
            assert ro.manifest is not None
            for pid in self.procs.pids():
                info = self._candidate(pid, scope)
                if (
                    info is not None
                    and (info.pid, info.start) not in ro.targets
                    and self.procs.maps_target(pid, ro.manifest)
                ):
                    self._add(ro, info, scope, now)
        else:
            for pid, start in self.procs.carriers(ro.a.patch_id):
                info = self._candidate(pid, scope)
                if info is not None and info.start == start:
                    self._add(ro, info, scope, now)
        # Processes gone and past their health window are forgotten (their rows are sent).
        for key, t in list(ro.targets.items()):
            if t.result is not None and not self._watching(ro, t, now) and not self._alive(t):
                del ro.targets[key]
        ro.scanned = True
        ro.next_scan = now + self.rescan_interval

    def _alive(self, t: _Target) -> bool:
        info = self.procs.info(t.pid)
        return info is not None and info.start == t.start and info.alive

    def _watching(self, ro: _Rollout, t: _Target, now: float) -> bool:
        return (
            t.result == "applied"
            and t.patched_at is not None
            and now - t.patched_at < ro.a.health_window
        )

    def work_once(self) -> float:
        """Do what is due: scans, exec checks, engine calls, health checks; returns the
        seconds until something is due again (at most 1)."""
        now = self._clock()
        rollouts = [r for r in self.rollouts.values() if r.failed is None]
        active = [r for r in rollouts if r.a.want == "rollback" or r.manifest is not None]
        with self._lock:
            rescan, self._rescan_due = self._rescan_due, False
            checks = {p: ts for p, ts in self._exec_checks.items() if ts[0] <= now}
        scope: Scope | None = None
        for ro in active:
            if rescan or not ro.scanned or now >= ro.next_scan:
                scope = scope or self._scope()
                self._scan(ro, scope, now)
            self._queue_state(ro)
        if checks:
            scope = scope or self._scope()
            self._check_execs(checks, [r for r in active if r.a.want == "apply"], scope, now)
        for ro in active:
            for t in list(ro.targets.values()):
                if self._stop.is_set() or self.rollouts.get(ro.a.id) is not ro:
                    break  # stopping, or the assignment changed (want, digest) meanwhile
                if t.result is None and t.due <= self._clock():
                    self._run(ro, t)
            self._health(ro, self._clock())
            self._queue_state(ro)
        return self._next_due(active)

    def _check_execs(
        self, checks: dict[int, list[float]], applying: list[_Rollout], scope: Scope, now: float
    ) -> None:
        for pid, times in checks.items():
            info = self._candidate(pid, scope)
            found = False
            for ro in applying:
                assert ro.manifest is not None
                if info is not None and self.procs.maps_target(pid, ro.manifest):
                    found = True
                    if self._add(ro, info, scope, now) is not None:
                        log.info("patches: new process %d (%s) maps %s", pid, info.comm,
                                 ro.manifest.target_name)  # fmt: skip
            with self._lock:
                left = times[1:]
                if found or not left or info is None or self._exec_checks.get(pid) is not times:
                    if self._exec_checks.get(pid) is times:
                        del self._exec_checks[pid]
                else:
                    self._exec_checks[pid] = left

    def _next_due(self, active: list[_Rollout]) -> float:
        now = self._clock()
        due = [now + 1.0]
        for ro in active:
            due.append(ro.next_scan)
            for t in ro.targets.values():
                if t.result is None:
                    due.append(t.due)
                elif self._watching(ro, t, now):
                    due.append(now + HEALTH_TICK)
        with self._lock:
            due.extend(ts[0] for ts in self._exec_checks.values())
        return max(0.0, min(due) - now)

    def _run(self, ro: _Rollout, t: _Target) -> None:
        """One engine call for `t`; its result, or its next try."""
        info = self.procs.info(t.pid)
        if info is None or info.start != t.start or not info.alive:
            del ro.targets[(t.pid, t.start)]  # gone before we got to it: nothing to say
            return
        if ro.a.want == "apply":
            applied_at = self.procs.carries(t.pid, t.start, ro.a.patch_id)
            if applied_at is not None:
                self._final(ro, t, "applied", patched_at=applied_at)
                return
        t.tries += 1
        try:
            if ro.a.want == "apply":
                assert ro.path is not None
                self.procs.apply(t.pid, ro.path)
            else:
                self.procs.rollback(t.pid, ro.a.patch_id)
        except Exception as exc:
            verdict = classify(exc)
            reason = exc.message if isinstance(exc, YunhanError) else str(exc)
            if not isinstance(exc, YunhanError):
                log.exception("patches: engine failed on process %d", t.pid)
            if verdict == "gone":
                del ro.targets[(t.pid, t.start)]
            elif verdict == "applied" and ro.a.want == "apply":
                self._final(ro, t, "applied", patched_at=self._clock())
            elif verdict == "busy" and t.tries < BUSY_TRIES:
                t.due = self._clock() + busy_delay(t.tries)
                log.info("patches: %s busy in process %d (try %d): %s", ro.a.name, t.pid,
                         t.tries, reason)  # fmt: skip
            elif ro.a.want == "apply":
                self._final(ro, t, "busy" if verdict == "busy" else "refused", reason)
            else:
                self._final(ro, t, "rollback_failed", reason)
            return
        if ro.a.want == "apply":
            self._final(ro, t, "applied", patched_at=self._clock())
        else:
            self._final(ro, t, "rolled_back")

    def _final(
        self,
        ro: _Rollout,
        t: _Target,
        result: Result,
        reason: str | None = None,
        patched_at: float | None = None,
    ) -> None:
        t.result, t.reason, t.at = result, reason, self._clock()
        t.patched_at = patched_at
        log.info("patches: %s on process %d (%s): %s%s", ro.a.name, t.pid, t.comm, result,
                 f" ({reason})" if reason else "")  # fmt: skip
        self.reports.put(ro.a.id, host_state(ro.a.want, ro.targets.values(), ro.scanned,
                                             ro.state), [t.row()])  # fmt: skip

    def _health(self, ro: _Rollout, now: float) -> None:
        for t in ro.targets.values():
            if self._watching(ro, t, now) and not self._alive(t):
                log.warning("patches: process %d (%s) died %.1f s after %s", t.pid, t.comm,
                            now - (t.patched_at or now), ro.a.name)  # fmt: skip
                self._final(ro, t, "died", "exited within the health window")

    def _queue_state(self, ro: _Rollout) -> None:
        state = host_state(ro.a.want, ro.targets.values(), ro.scanned, ro.state)
        if state != ro.state:
            if state in ("applied", "rolled_back"):
                done = sum(t.result in ("applied", "rolled_back") for t in ro.targets.values())
                log.info("patches: %s %s on %d process(es)", ro.a.name, state, done)
            ro.state = state
            self.reports.put(ro.a.id, state)

    # -- threads ---------------------------------------------------------------------

    def _poll_loop(self) -> None:
        # A long poll when the control plane gives an etag (it answers as soon as this
        # host's list changes); every `interval` seconds otherwise, and after a failure.
        while not self._stop.is_set():
            started = time.monotonic()
            ok = self.poll_once(LONG_POLL if self._etag else 0.0)
            if not ok or not self._etag or time.monotonic() - started < MIN_POLL_GAP:
                self._stop.wait(self.interval if not ok or not self._etag else MIN_POLL_GAP)

    def _patch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.work_once()
            except Exception:  # one bad pass must not end the worker
                log.exception("patches: pass failed")
                wait = 1.0
            self._wake.wait(wait)
            self._wake.clear()

    def _connector_loop(self) -> None:
        assert self._connector is not None
        while not self._stop.is_set():
            try:
                conn = self._connector()
            except (ConnectorError, OSError) as exc:
                log.warning("patches: no process-event connector (%s): /proc scans only", exc)
                self._stop.wait(CONNECTOR_RETRY)
                continue
            self.connected = True
            try:
                while not self._stop.is_set():
                    try:
                        events = conn.receive(0.5)
                    except ConnectorError as exc:
                        log.warning("patches: %s; rescanning", exc)
                        with self._lock:
                            self._rescan_due = True
                        self._wake.set()
                        if exc.errno != errno.ENOBUFS:
                            break
                        continue
                    for ev in events:
                        if ev.tgid != self._agent_pid:
                            self.exec_seen(ev.tgid)
            finally:
                self.connected = False
                conn.close()

    def _report_loop(self) -> None:
        delay = BATCH_DELAY
        while not self._stop.wait(delay):
            try:
                ok = self.flush_once()
            except Exception:  # the worker must survive a bug in one answer
                log.exception("patches: reporting failed")
                ok = False
            delay = next_delay(delay, ok)

    def start(self) -> None:
        if self._threads:
            return
        loops: list[tuple[Callable[[], None], str]] = [
            (self._poll_loop, "patch-poll"),
            (self._patch_loop, "patcher"),
            (self._report_loop, "patch-report"),
        ]
        if self._connector is not None:
            loops.append((self._connector_loop, "proc-events"))
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            if target != self._poll_loop:
                # The poller may sit in a long poll: `stop` does not wait for it (it acts on
                # nothing once stopped, and a daemon thread ends with the process).
                self._threads.append(t)
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every thread. The patcher finishes its engine call first: a process left
        with a half-loaded patch and no tracer would be killed (docs/hotpatch.md §6)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
