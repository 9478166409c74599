"""The host's function runtime: what the agent (and later the router) calls.

    rt = FunctionRuntime(state_dir, prefix="a1b2")
    rt.start()                                  # the zygote, ready to fork
    dep = rt.deploy(FunctionSpec("hello", 1, "main.handler", memory_mb=128), Path("src/"))
    w = rt.spawn(dep)                           # a cold start: fork + import user code
    inv = rt.invoke(w, {"x": 1})                # Invocation(ok, result, duration_ms, ...)
    rt.stop_worker(w); rt.stop()                # nothing left behind

Every worker runs in cgroups of its own (memory = --memory, cpu.shares in proportion,
pids.max), in a network namespace (a fresh one with only lo, or the one given), as the
function's own uid, with its code read-only. Invocations on one worker are serialised
(concurrency 1 per worker in this slice); different workers can be invoked from
different threads at once.

A worker that times out, runs out of memory or dies is gone after that invocation
(`Invocation.worker_exited`): the caller spawns another.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yunhan.errors import DriverError, FunctionRuntimeError, ValidationError, WorkerGone
from yunhan.functions import deploy, framing
from yunhan.functions.cgroups import CgroupLayout, Limits, WorkerCgroup
from yunhan.functions.spec import (
    DEFAULT_PIDS_MAX,
    FunctionSpec,
    UidRange,
    billed_ms,
    choose_uid,
    cpu_shares,
    validate,
)
from yunhan.functions.worker import Setup
from yunhan.functions.zygote_client import Exit, ZygoteClient
from yunhan.nsexec import netns_path


@dataclass(frozen=True)
class Deployment:
    """One deployed, checked version: what `spawn` needs."""

    spec: FunctionSpec
    code_dir: Path
    uid: int  # also its gid


@dataclass(frozen=True)
class WorkerExit:
    code: int | None
    signal: int | None
    oom: bool  # the memory cgroup's OOM killer killed it
    max_memory_bytes: int = 0  # the most its cgroup held (Lambda's "Max Memory Used")

    def describe(self, memory_mb: int) -> str:
        if self.oom:
            return f"out of memory (limit {memory_mb} MB)"
        if self.signal is not None:
            return f"the worker was killed by signal {self.signal}"
        return f"the worker exited with status {self.code}"


@dataclass(frozen=True)
class Invocation:
    """The outcome of one invocation. `duration_ms` is measured in the worker around the
    handler call alone (or by the runtime up to the kill, for a timeout or a crash);
    `billed_ms` is that rounded up to the next millisecond."""

    request_id: str
    ok: bool
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    duration_ms: float = 0.0
    billed_ms: int = 0
    worker_exited: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(eq=False)
class Worker:
    id: str
    deployment: Deployment
    pid: int
    cgroup: WorkerCgroup
    cold_start_ms: float
    _sock: socket.socket = field(repr=False)
    _decoder: framing.Decoder = field(default_factory=framing.Decoder, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    exit: WorkerExit | None = None
    # Where the cold start went, in ms: "fork" (request to the child running), "sandbox"
    # (cgroups, netns, fds, uid), "import" (the user's module), "ready" (back to us).
    cold_start_phases: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.exit is None


def host_memory_mb(layout: CgroupLayout) -> int:
    """The most a function may ask for: the host's RAM, or less if the runtime's own
    memory cgroup is limited."""
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    own = layout.bases["memory"].parent.parent  # <mount>/<own group>/yunhan/fn
    try:
        limit = int((own / "memory.limit_in_bytes").read_text())
    except (OSError, ValueError):
        limit = 1 << 62
    return min(total_kb // 1024, limit // (1 << 20))


class FunctionRuntime:
    """Zygote, code, workers and their cgroups on one host, under one name prefix.

    `prefix` names every worker and cgroup (`<prefix>-<n>`), so that two runtimes never
    collide and a sweep finds what a crashed one left (`start` does one).
    """

    def __init__(
        self,
        state_dir: Path,
        prefix: str,
        *,
        layout: CgroupLayout | None = None,
        uids: UidRange = UidRange(),  # noqa: B008 (frozen)
        pids_max: int = DEFAULT_PIDS_MAX,
        python: str = sys.executable,
    ) -> None:
        self.state_dir = state_dir
        self.prefix = prefix
        self.layout = layout or CgroupLayout.discover()
        self.uids = uids
        self.pids_max = pids_max
        self.host_memory_mb = host_memory_mb(self.layout)
        self._zygote = ZygoteClient(python, state_dir / "logs" / "zygote.log")
        self._workers: dict[str, Worker] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Sweep what a crashed runtime of this prefix left, then start the zygote."""
        self.sweep()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Workers run as other users and reach their code through a descriptor the
        # worker opens before it drops root (yunhan.functions.worker), not by name: the
        # directories above stay closed to them.
        self.state_dir.chmod(0o700)
        (self.state_dir / "code").mkdir(exist_ok=True)
        (self.state_dir / "code").chmod(0o700)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        (self.state_dir / "logs").chmod(0o700)
        self._zygote.start()

    def stop(self) -> None:
        """Kill every worker and the zygote; remove every cgroup. Code and logs stay."""
        for w in list(self._workers.values()):
            w.cgroup.kill()
        self._zygote.stop()
        for w in list(self._workers.values()):
            self._retire(w, Exit(None, 9))
        self.sweep()

    def __enter__(self) -> FunctionRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sweep(self) -> None:
        """Remove every cgroup of this prefix (killing what is in it)."""
        for g in self.layout.groups(self.prefix):
            g.remove()

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid

    @property
    def zygote_alive(self) -> bool:
        """False once the zygote has exited: its workers went with it (parent death
        signal) and no spawn can succeed; the agent stops and starts the runtime."""
        return self._zygote.alive

    def workers(self) -> list[Worker]:
        return [w for w in self._workers.values() if w.alive]

    def log_path(self, function: str) -> Path:
        """The function's log: its workers' stdout and stderr, and the runtime's notes
        (timeouts, OOM kills, tracebacks)."""
        return self.state_dir / "logs" / f"{function}.log"

    # -- code --------------------------------------------------------------------------

    def deploy(self, spec: FunctionSpec, source: Path) -> Deployment:
        """Install `source` (a .py file or a directory) as version `spec.version`.

        Refused whole (ValidationError, nothing kept) for a bad spec, a syntax error, a
        missing handler module, or a module that fails to import or lacks the handler:
        the last two are found by importing it in a sandboxed worker, as a cold start
        would, before the version is accepted.
        """
        validate(spec, host_memory_mb=self.host_memory_mb)
        reserved = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
        uid = choose_uid(spec.name, deploy.deployed_gids(self.state_dir), reserved, self.uids)
        dest = deploy.code_dir(self.state_dir, spec)
        deploy.install(source, dest, uid, spec)
        dep = Deployment(spec, dest, uid)
        try:
            self.stop_worker(self.spawn(dep))
        except BaseException:
            deploy.remove(dest)
            raise
        return dep

    # -- workers -----------------------------------------------------------------------

    def spawn(
        self, dep: Deployment, *, netns: str | Path | None = None, init_timeout: float = 10.0
    ) -> Worker:
        """A cold start: fork a worker from the zygote and wait until it has imported the
        handler. `netns` (a name under /run/netns or a path) puts it in that network
        namespace (the function's VPC subnet); None gives it a fresh one with only lo.
        ValidationError when the handler cannot be loaded (its message says why)."""
        spec = dep.spec
        wid = f"{self.prefix}-{next(self._ids)}"
        cg = self.layout.group(wid)
        t0 = time.monotonic_ns()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno()]
        pid: int | None = None
        try:
            cg.create(Limits(spec.memory_mb << 20, cpu_shares(spec.memory_mb), self.pids_max))
            fds.append(
                os.open(self.log_path(spec.name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            )
            if netns is not None:
                fds.append(os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC))
            setup = Setup(
                worker_id=wid,
                function=spec.name,
                version=spec.version,
                handler=spec.handler,
                code_dir=str(dep.code_dir),
                memory_mb=spec.memory_mb,
                uid=dep.uid,
                gid=dep.uid,
                env=dict(spec.env),
                cgroup_procs=tuple(cg.procs_files()),
                own_netns=netns is None,
            )
            pid = self._zygote.spawn(setup.to_json(), fds, netns=netns is not None)
        except OSError as exc:
            mine.close()
            cg.remove()
            raise DriverError(f"{spec.key}: spawn: {exc}", errno=exc.errno, netns=netns) from exc
        except BaseException:
            mine.close()
            cg.remove()
            raise
        finally:
            theirs.close()
            for fd in fds[1:]:
                os.close(fd)
        mine.settimeout(init_timeout)
        w = Worker(wid, dep, pid, cg, 0.0, mine)
        with self._lock:
            self._workers[wid] = w
        try:
            ready = framing.recv(mine, w._decoder)
        except (TimeoutError, framing.FrameError, OSError) as exc:
            gone = self._kill_and_retire(w)
            why = "did not start in time" if isinstance(exc, TimeoutError) else "exited"
            raise FunctionRuntimeError(
                f"{spec.key}: the worker {why} ({gone.describe(spec.memory_mb)})", worker=wid
            ) from exc
        if not ready.get("ready"):
            self._kill_and_retire(w)
            err = ValidationError(
                f"{spec.key}: {ready.get('error')}", field="handler", stage=ready.get("stage")
            )
            err.details["traceback"] = ready.get("traceback")
            raise err
        t1 = time.monotonic_ns()
        w.cold_start_ms = (t1 - t0) / 1e6
        marks = ready.get("marks", {})
        if {"forked", "sandboxed", "imported"} <= marks.keys():
            w.cold_start_phases = {
                "fork": (marks["forked"] - t0) / 1e6,
                "sandbox": (marks["sandboxed"] - marks["forked"]) / 1e6,
                "import": (marks["imported"] - marks["sandboxed"]) / 1e6,
                "ready": (t1 - marks["imported"]) / 1e6,
            }
        return w

    def invoke(
        self,
        w: Worker,
        event: Any,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Invocation:
        """Run the handler once on `w` (which must be alive: WorkerGone otherwise).

        The timeout (the function's own when None) kills the worker and all it started;
        the result then says "timed out after N s". An OOM kill says "out of memory
        (limit N MB)". A handler that raises gives its error and traceback (the worker
        lives on)."""
        rid = request_id or uuid.uuid4().hex
        limit = w.deployment.spec.timeout_s if timeout is None else timeout
        with w._lock:
            if not w.alive:
                raise WorkerGone(f"worker {w.id} has exited; spawn another", worker=w.id)
            t0 = time.monotonic_ns()
            deadline = t0 + int(limit * 1e9)
            try:
                framing.send(w._sock, {"id": rid, "event": event, "deadline_ns": deadline})
                while True:
                    w._sock.settimeout(max(0.0, (deadline - time.monotonic_ns()) / 1e9))
                    reply = framing.recv(w._sock, w._decoder)
                    if reply.get("id") == rid:
                        break
            except TimeoutError:
                self._kill_and_retire(w)
                return self._failed(w, rid, t0, f"timed out after {limit:g} s")
            except (framing.FrameError, OSError):
                gone = self._kill_and_retire(w)
                return self._failed(w, rid, t0, gone.describe(w.deployment.spec.memory_mb))
        return Invocation(
            request_id=rid,
            ok=bool(reply["ok"]),
            result=reply.get("result"),
            error=reply.get("error"),
            traceback=reply.get("traceback"),
            duration_ms=float(reply["duration_ms"]),
            billed_ms=int(reply["billed_ms"]),
        )

    def _failed(self, w: Worker, rid: str, t0: int, error: str) -> Invocation:
        ns = time.monotonic_ns() - t0
        self._note(w, f"[{rid}] {error}")
        return Invocation(
            rid,
            False,
            error=error,
            duration_ms=ns / 1e6,
            billed_ms=billed_ms(ns),
            worker_exited=True,
        )

    def _note(self, w: Worker, line: str) -> None:
        with open(self.log_path(w.deployment.spec.name), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {w.id}: {line}\n")

    def stop_worker(self, w: Worker) -> WorkerExit:
        """Stop `w` (SIGKILL to its whole cgroup) and remove its cgroup."""
        with w._lock:
            if w.exit is not None:
                return w.exit
            return self._kill_and_retire(w)

    def collect(self) -> list[Worker]:
        """Retire every worker that exited on its own while idle (its cgroup removed);
        returns them. The agent calls this on its loop."""
        gone = [w for w in self.workers() if self._zygote.exited(w.pid)]
        for w in gone:
            with w._lock:
                if w.exit is None:
                    self._kill_and_retire(w)
        return gone

    def _kill_and_retire(self, w: Worker) -> WorkerExit:
        w.cgroup.kill()
        how = self._zygote.wait_exit(w.pid, timeout=5.0) or Exit(None, 9)
        return self._retire(w, how)

    def _retire(self, w: Worker, how: Exit) -> WorkerExit:
        if w.exit is None:
            w.exit = WorkerExit(
                how.code,
                how.signal,
                oom=w.cgroup.oom_kills() > 0,
                max_memory_bytes=w.cgroup.max_usage_bytes(),
            )
        with contextlib.suppress(OSError):
            w._sock.close()
        w.cgroup.remove()
        with self._lock:
            self._workers.pop(w.id, None)
        return w.exit
