"""Control-plane convergence at scale: N simulated agents against a real `yunhan server`.

What it does, in order (issue 6):

1. Starts real `yunhan server` process(es) on loopback ports, running the code of
   PYTHONPATH (default: this repository): SQLite in a temp state dir by default; with
   `--backend postgresql`, a throwaway cluster (`yunhan.store.pgserver`, unix socket only)
   shared by `--replicas R` servers. Agents, and the fill's connections, are spread over
   the replicas.
2. Runs N simulated agents over real HTTP in this one asyncio process, on a small raw
   HTTP/1.1 client (`RawConn`: 0.2 ms of client CPU per request, where httpx took 2-3 ms
   with a client per connection and 18-29 ms with one shared pool, measured with 1,000
   simultaneous long polls; `--client httpx` to compare). Like the real agent, each one
   registers (PUT /v1/agent/hosts/{name}), long-polls GET .../desired?after=R&timeout=20
   with the digest of its copy, applies what comes (a snapshot replaces the entries; a
   delta removes keys first, with everything under key + "/", then puts entries), then
   acknowledges that document with POST .../status before it polls again, and heartbeats
   every 5 s. Every document received and every acknowledgement (its 204) is timestamped.
3. Fill: zones az1..azK, N/10 VPCs with one /20 subnet each, then 10 instances per host,
   created over 16 connections with a zone only (the server's scheduler places them),
   planned (`fill_plan`) so that each host carries `--vpcs-per-host` VPCs. Prints creates/s
   while it runs, then when every agent held exactly the entry keys the final placement
   implies, and the server's view of the last create.
4. Times 100 changes of each kind, one at a time: instance create, then instance delete
   (of those creates). Route and VIP changes are a marked hook in `Bench.change_kinds`.
   For one change: t0 just before the API write, W = the revision in its response.
   Affected agents = those that received a document of revision >= W after t0 (changes
   are sequential, so this is unambiguous); the change converged when the last of them had
   its acknowledgement of a revision >= W answered. That is the headline. Cross-checks:
   the agents that should be affected, read from their entries before the write (must be
   the same set), and GET /v1/converged?revision=W&timeout=10 (its answer time is "srv").
   Per change: server CPU (utime+stime of every replica from /proc; PostgreSQL's apart),
   documents and body bytes the agents received. At the end: RSS of the servers, the
   servers' /metrics against what the agents counted, and every agent's entries against
   a fresh snapshot (incremental == full, over the wire).

Last line: `RESULT hosts=N creates_per_s=.. conv_p50_ms=.. conv_p99_ms=.. cpu_ms_per_change=..
rss_mb=.. backend=.. replicas=..`. Counts and waits are bounded (--max-seconds for the whole
run); every process and temp dir is removed in `finally` blocks, also on Ctrl-C or SIGTERM,
and the servers get SIGTERM if this process dies (PR_SET_PDEATHSIG). Only loopback.

Run: `PYTHONPATH=. python bench/convergence.py --hosts 100 [--backend postgresql
--replicas 2]` (no root needed; PostgreSQL runs as the `postgres` user when run as root).
The machine's load average is printed: simulated agents and servers share its CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ctypes
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from yunhan.net.docentries import combine, entry_hash

LOOPBACK = "127.0.0.1"
LONG_POLL = 20.0  # the real agent's LONG_POLL_TIMEOUT
HEARTBEAT = 5.0  # the real agent's HEARTBEAT_INTERVAL
INSTANCES_PER_HOST = 10
HOSTS_PER_VPC = 10  # N/10 VPCs
FILL_CONNECTIONS = 16
CHANGES_PER_KIND = 100
STORE_HEADER = "x-yunhan-store"
MAX_HOSTS = 2000  # VPC blocks are 10.<v>.0.0/16, v < 256
MAX_ANOMALIES_SHOWN = 12
AGENT_WAIT = 30.0  # bound on one change's convergence, agents' view
SERVER_WAIT = 10.0  # GET /v1/converged?timeout=
GRACE = 2.0  # for acks the server's "converged" does not wait for


# -- HTTP: one small interface, two clients (raw asyncio HTTP/1.1, httpx) -------------------


class TransportError(Exception):
    """The request got no complete answer (refused, reset, timed out)."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Conn(Protocol):
    """One keep-alive connection's worth of requests, issued one at a time."""

    async def request(
        self, method: str, path: str, body: Any = None, timeout: float = 30.0
    ) -> Reply: ...

    async def close(self) -> None: ...

    def set_token(self, token: str) -> None: ...


class RawConn:
    """HTTP/1.1 over one asyncio stream, kept alive and reopened when the server closed it.

    The simulated agents share two cores with the server they measure, so their client
    must cost little (see `HttpxConn` for the measurement). It parses what uvicorn sends:
    content-length or chunked bodies, no body for 204.
    """

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.set_token(token)
        self._rw: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def set_token(self, token: str) -> None:
        self._head = f"Host: {LOOPBACK}:{self.port}\r\nAuthorization: Bearer {token}\r\n"

    async def request(
        self, method: str, path: str, body: Any = None, timeout: float = 30.0
    ) -> Reply:
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\n{self._head}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        elif method in ("POST", "PUT"):
            head += "Content-Length: 0\r\n"
        data = head.encode() + b"\r\n" + payload
        try:
            async with asyncio.timeout(timeout):
                for attempt in (0, 1):
                    reused = self._rw is not None
                    if self._rw is not None and self._rw[0].at_eof():
                        await self.close()  # the server closed an idle keep-alive
                        reused = False
                    if self._rw is None:
                        self._rw = await asyncio.open_connection(LOOPBACK, self.port)
                    reader, writer = self._rw
                    try:
                        writer.write(data)
                        await writer.drain()
                        return await self._read(reader)
                    except (asyncio.IncompleteReadError, ConnectionError) as exc:
                        await self.close()
                        # A kept-alive connection the server closed as we sent: the request
                        # was never read, so sending it again cannot do it twice.
                        nothing = not isinstance(exc, asyncio.IncompleteReadError) or (
                            not exc.partial
                        )
                        if not (reused and nothing and attempt == 0):
                            raise
                raise AssertionError("unreachable")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            await self.close()
            raise TransportError(f"{method} {path}: {type(exc).__name__} {exc}") from exc

    async def _read(self, reader: asyncio.StreamReader) -> Reply:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        if status in (204, 304) or status < 200:
            body = b""
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers from uvicorn
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, headers, body)

    async def close(self) -> None:
        if self._rw is not None:
            writer = self._rw[1]
            self._rw = None
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()


class HttpxConn:
    """The same face over an httpx.AsyncClient of its own (`--client httpx`, to compare).

    Measured with 1,000 simultaneous long polls against a trivial responder: 0.2 ms of
    client CPU per request for `RawConn`, 2-3 ms for httpx with a client per connection and
    18-29 ms with one shared pool (its pool scans every waiting request on each event).
    """

    def __init__(self, port: int, token: str) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            base_url=f"http://{LOOPBACK}:{port}",
            headers={"Authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=1),
        )

    async def request(
        self, method: str, path: str, body: Any = None, timeout: float = 30.0
    ) -> Reply:
        import httpx

        try:
            r = await self._client.request(method, path, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {path}: {type(exc).__name__} {exc}") from exc
        return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    async def close(self) -> None:
        await self._client.aclose()

    def set_token(self, token: str) -> None:
        self._client.headers["Authorization"] = f"Bearer {token}"


class Dialer:
    """Makes connections to replica `i % replicas` with the chosen client."""

    def __init__(self, kind: str, ports: list[int], token: str) -> None:
        self.kind = kind
        self.ports = ports
        self.token = token

    def conn(self, replica: int) -> Conn:
        port = self.ports[replica % len(self.ports)]
        return HttpxConn(port, self.token) if self.kind == "httpx" else RawConn(port, self.token)


class ApiError(Exception):
    def __init__(self, method: str, path: str, reply: Reply) -> None:
        super().__init__(f"{method} {path} -> {reply.status}: {reply.body[:400]!r}")
        self.reply = reply


class Api:
    """The admin's client: a pool of connections spread over the replicas."""

    def __init__(self, dialer: Dialer, conns: int) -> None:
        self._pool: asyncio.Queue[Conn] = asyncio.Queue()
        self._all = [dialer.conn(i) for i in range(conns)]
        for c in self._all:
            self._pool.put_nowait(c)

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        conn = await self._pool.get()
        try:
            r = await conn.request(method, path, body, timeout)
        finally:
            self._pool.put_nowait(conn)
        if r.status >= 300:
            raise ApiError(method, path, r)
        return r.json() if r.body else None

    async def aclose(self) -> None:
        for c in self._all:
            await c.close()


# -- server processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the server gets SIGTERM if this bench is killed without cleanup.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class ServerProc:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Postgres:
    """The throwaway cluster of `--backend postgresql` and the servers' --database URL."""

    url: str
    data_dir: Path

    def cpu_seconds(self) -> float:
        """CPU of the cluster: the postmaster, its live children, and the exited children it
        reaped (cutime/cstime), so backends that came and went are counted too."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return 0.0
        ticks = sum(int(x) for x in rest[11:15])
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                child = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if child[1] == str(pid):
                ticks += int(child[11]) + int(child[12])
        return ticks / os.sysconf("SC_CLK_TCK")


PG_PREFIX = "yhconv"


@contextlib.contextmanager
def postgres_cluster(fsync: bool) -> Iterator[Postgres]:
    """A PostgreSQL cluster of this run (yunhan.store.pgserver: unix socket only, prefixed,
    removed on exit; clusters of killed runs of this bench are swept first)."""
    from yunhan.store import pgserver

    pgserver.sweep(PG_PREFIX)
    prefix = f"{PG_PREFIX}{secrets.token_hex(3)}"
    directory = Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-"))
    directory.rmdir()  # PgServer makes it, owned by the server's user
    with pgserver.PgServer(directory, prefix=prefix, fsync=fsync) as pg:
        yield Postgres(pg.create_database(f"{prefix}_store"), pg.data_dir)


def start_servers(tmp: Path, replicas: int, token_file: Path, extra: list[str]) -> list[ServerProc]:
    # The server runs the code of PYTHONPATH, by default the repository this bench is in.
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    servers: list[ServerProc] = []
    for i in range(replicas):
        port = free_port()
        log = tmp / f"server{i}.log"
        state = tmp / f"state{i}"
        argv = [sys.executable, "-m", "yunhan.cli", "server", "--state-dir", str(state)]
        argv += ["--listen", f"{LOOPBACK}:{port}", "--admin-token-file", str(token_file), *extra]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=tmp,  # `-m` puts the cwd first on sys.path: PYTHONPATH must decide
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
                preexec_fn=_die_with_parent,
            )
        servers.append(ServerProc(proc, port, log))
    return servers


def stop_servers(servers: list[ServerProc]) -> None:
    for s in servers:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for s in servers:
        try:
            s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()


async def wait_ready(servers: list[ServerProc], token: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for s in servers:
        conn = RawConn(s.port, token)
        try:
            while True:
                if s.proc.poll() is not None:
                    raise RuntimeError(f"yunhan server exited ({s.proc.returncode}):\n{s.tail()}")
                try:
                    if (await conn.request("GET", "/v1/revision", timeout=2)).status == 200:
                        break
                except TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"yunhan server not ready in {timeout:.0f}s:\n{s.tail()}")
                await asyncio.sleep(0.1)  # a process starting up: nothing to wait on but time
        finally:
            await conn.close()


# -- the simulated agent ---------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    revision: int
    t: float
    nbytes: int
    snapshot: bool


@dataclass
class Counters:
    docs: int = 0
    body_bytes: int = 0
    snapshots: int = 0
    empty_polls: int = 0
    requests: int = 0
    errors: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def anomaly(self, kind: str, detail: str) -> None:
        self.anomalies[kind] = self.anomalies.get(kind, 0) + 1
        if len(self.examples) < MAX_ANOMALIES_SHOWN:
            self.examples.append(f"{kind}: {detail}")


def apply_delta(entries: dict[str, Any], removed: list[str], put: dict[str, Any]) -> None:
    """Removals first (a key and everything under key + "/"), then puts (protocol.md)."""
    for key in removed:
        entries.pop(key, None)
        under = key + "/"
        for k in [k for k in entries if k.startswith(under)]:
            del entries[k]
    entries.update(put)


class EntryDigest:
    """`docentries.digest` of a mapping that changes a few entries at a time.

    The digest is the sum of the entries' `entry_hash`es; each entry's hash is kept while its
    value is the same object, so a poll after a delta hashes only what the delta brought. A
    real agent pays the whole digest on its own host; here N agents would pay it on the
    server's machine and slow the server they measure.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[object, int]] = {}

    def __call__(self, entries: dict[str, Any]) -> str:
        items = self._items
        for k in [k for k in items if k not in entries]:
            del items[k]
        for k, v in entries.items():
            cached = items.get(k)
            if cached is None or cached[0] is not v:
                items[k] = (v, entry_hash(k, v))
        return combine(h for _v, h in items.values())


class SimAgent:
    """One host's agent, minus the data plane: it keeps the entries and acknowledges them.

    Like `yunhan.agent.main.Agent`: poll, apply, report, poll again; the heartbeat shares
    the report lock so that an older report never lands after a newer one.
    """

    def __init__(
        self,
        name: str,
        zone: str,
        underlay_ip: str,
        poll: Conn,
        status: Conn,
        counters: Counters,
        on_ack: Callable[[SimAgent, float], None],
        heartbeat_phase: float,
        send_digest: bool,
    ) -> None:
        self.name = name
        self.zone = zone
        self.underlay_ip = underlay_ip
        self._poll = poll
        self._status = status
        self._c = counters
        self._on_ack = on_ack
        self._phase = heartbeat_phase
        self._digest = EntryDigest() if send_digest else None
        self.digest: str | None = None  # of the entries held, sent with every poll
        self._lock = asyncio.Lock()
        self.base = f"/v1/agent/hosts/{name}"
        self.entries: dict[str, Any] = {}
        self.revision = 0  # of the entries held
        self.acked = 0  # highest applied_revision the server answered 204 to
        self.store: str | None = None
        self.received: list[Received] = []
        self.acks: list[tuple[int, float]] = []  # (applied_revision, monotonic time of 204)
        self._ack_revisions: list[int] = []  # increasing: acks only move forward

    async def enroll(self, bootstrap: str) -> None:
        """Exchange a bootstrap token for this host's token and use that from now on, as
        the real agent does (docs/credentials.md)."""
        self._status.set_token(bootstrap)
        r = await self._status.request("POST", self.base + "/token")
        if r.status != 201:
            raise RuntimeError(f"{self.name}: token exchange refused {r.status} {r.body[:300]!r}")
        token = str(r.json()["token"])
        self._status.set_token(token)
        self._poll.set_token(token)

    async def register(self) -> None:
        body = {"zone": self.zone, "underlay_ip": self.underlay_ip, "mtu": 1500}
        for attempt in range(10):
            try:
                r = await self._status.request("PUT", self.base, body)
            except TransportError:
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            if r.status < 300:
                return
            raise RuntimeError(f"{self.name}: registration refused {r.status} {r.body[:300]!r}")
        raise RuntimeError(f"{self.name}: registration failed 10 times")

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch())
            tg.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        await asyncio.sleep(self._phase)
        while True:
            await self._report()
            await asyncio.sleep(HEARTBEAT)

    async def _report(self) -> None:
        async with self._lock:
            applied = self.revision
            body: dict[str, Any] = {"applied_revision": applied, "error": None, "instances": {}}
            self._c.requests += 1
            try:
                r = await self._status.request("POST", self.base + "/status", body)
            except TransportError as exc:
                self._c.errors += 1
                self._c.anomaly("status failed", f"{self.name}: {exc}")
                return
            if r.status != 204:
                self._c.anomaly("status refused", f"{self.name}: {r.status} {r.body[:200]!r}")
                return
            if applied > self.acked:
                t = time.monotonic()
                self.acked = applied
                self.acks.append((applied, t))
                self._ack_revisions.append(applied)
                self._on_ack(self, t)

    async def _watch(self) -> None:
        backoff = 0.2
        while True:
            path = f"{self.base}/desired?after={self.revision}&timeout={LONG_POLL:g}"
            if self.revision and self.digest:
                path += f"&digest={self.digest}"
            self._c.requests += 1
            try:
                r = await self._poll.request("GET", path, timeout=LONG_POLL + 10)
            except TransportError as exc:
                self._c.errors += 1
                self._c.anomaly("poll failed", f"{self.name}: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            store = r.headers.get(STORE_HEADER)
            if store and store != self.store:
                if self.store is not None:
                    self._c.anomaly("store changed", f"{self.name}: {self.store} -> {store}")
                    self.revision = 0
                    self.entries = {}
                    self.digest = None
                self.store = store
            if r.status == 204:
                self._c.empty_polls += 1
                continue
            if r.status == 404:
                await self.register()
                continue
            if r.status != 200:
                self._c.anomaly("poll refused", f"{self.name}: {r.status} {r.body[:200]!r}")
                await asyncio.sleep(1.0)
                continue
            t = time.monotonic()
            self._accept(r.json(), len(r.body), t)
            await self._report()

    def _accept(self, doc: dict[str, Any], nbytes: int, t: float) -> None:
        rev = int(doc["revision"])
        snapshot = bool(doc.get("snapshot"))
        self._c.docs += 1
        self._c.body_bytes += nbytes
        if doc.get("host") != self.name:
            self._c.anomaly("wrong host", f"{self.name} got a document of {doc.get('host')}")
        if rev <= self.revision and not (snapshot and self.revision == 0):
            self._c.anomaly("not newer", f"{self.name}: revision {rev} after {self.revision}")
        if snapshot:
            self._c.snapshots += 1
            if doc.get("removed"):
                self._c.anomaly("snapshot removes", f"{self.name}: {doc['removed'][:3]}")
            self.entries = dict(doc.get("entries", {}))
        else:
            if self.revision == 0:
                self._c.anomaly("delta without base", f"{self.name} at revision {rev}")
            apply_delta(self.entries, list(doc.get("removed", [])), doc.get("entries", {}))
        self.revision = rev
        if self._digest is not None:
            # As the real agent: once per document applied, sent with every poll after.
            self.digest = self._digest(self.entries)
        self.received.append(Received(rev, t, nbytes, snapshot))

    def first_ack_at_least(self, revision: int, since: float) -> float | None:
        """When the first acknowledgement of a revision >= `revision` came, if after `since`."""
        i = bisect.bisect_left(self._ack_revisions, revision)
        if i < len(self.acks) and self.acks[i][1] >= since:
            return self.acks[i][1]
        return None

    async def close(self) -> None:
        await self._poll.close()
        await self._status.close()


class Waiter:
    """Done when every agent satisfies `ok`, checked again at each of its acks.

    `times[name]` is the monotonic time of the ack at which it first did (or of its last
    ack, for those that already did when the waiter was made).
    """

    def __init__(self, agents: list[SimAgent], ok: Callable[[SimAgent], bool]) -> None:
        self.ok = ok
        self.pending: set[str] = set()
        self.times: dict[str, float] = {}
        self.done = asyncio.Event()
        now = time.monotonic()
        for a in agents:
            if ok(a):
                self.times[a.name] = a.acks[-1][1] if a.acks else now
            else:
                self.pending.add(a.name)
        if not self.pending:
            self.done.set()

    def note(self, agent: SimAgent, t: float) -> None:
        if agent.name in self.pending and self.ok(agent):
            self.pending.discard(agent.name)
            self.times[agent.name] = t
            if not self.pending:
                self.done.set()

    async def wait(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.done.wait()
        return self.done.is_set()


# -- the region and its changes --------------------------------------------------------------


def host_name(i: int) -> str:
    return f"h{i:04d}"  # zero-padded: the scheduler breaks load ties by name


def zone_of(i: int, zones: int) -> int:
    return i % zones + 1


def underlay_ip(i: int, zones: int) -> str:
    idx = i // zones + 1
    return f"100.{64 + zone_of(i, zones)}.{idx >> 8}.{idx & 255}"


Chunk = list[tuple[int, int]]  # (host index, vpc) of up to 10 creates in one zone


def fill_plan(hosts: int, zones: int, vpcs: int, vpcs_per_host: int) -> list[list[Chunk]]:
    """Rounds of chunks: round r creates one instance per host; a chunk is 10 hosts of one
    zone, consecutive in name order, whose instances all join one VPC.

    The scheduler gives each create the least loaded host of its zone (ties by name), so
    when a zone's chunks are created one after the other (`Bench.fill` waits for a chunk's
    creates before the zone's next chunk), chunk c lands on exactly its 10 hosts whatever
    order its own creates commit in. Chunk g of round r gets VPC (g + offset) % vpcs, with
    `vpcs_per_host` distinct offsets: each host carries that many VPCs and each VPC has
    about 10 members per round on about 10 * vpcs_per_host hosts.
    """
    s = max(1, min(vpcs_per_host, vpcs))
    offsets = [(j * vpcs) // s for j in range(s)]
    by_zone = [list(range(z, hosts, zones)) for z in range(zones)]
    chunks = [
        by_zone[z][c : c + HOSTS_PER_VPC]
        for c in range(0, max(len(h) for h in by_zone), HOSTS_PER_VPC)
        for z in range(zones)
        if by_zone[z][c : c + HOSTS_PER_VPC]
    ]
    return [
        [[(k, (g + offsets[r % s]) % vpcs) for k in chunk] for g, chunk in enumerate(chunks)]
        for r in range(INSTANCES_PER_HOST)
    ]


def expected_keys(instances: list[dict[str, Any]], hosts: list[str]) -> dict[str, set[str]]:
    """The entry keys each host's document must hold for this placement (protocol.md)."""
    members: dict[str, list[str]] = {}
    carried: dict[str, set[str]] = {h: set() for h in hosts}
    for inst in instances:
        st = inst["status"]
        members.setdefault(st["vpc"], []).append(inst["id"])
        if st.get("host") in carried:
            carried[st["host"]].add(st["vpc"])
    out: dict[str, set[str]] = {}
    for h, vpcs in carried.items():
        keys = {"host"}
        for v in vpcs:
            keys.add(f"vpc/{v}")
            keys.update(f"vpc/{v}/m/{i}" for i in members[v])
        out[h] = keys
    return out


@dataclass
class ChangeResult:
    kind: str
    revision: int
    agents_ms: float | None  # the headline: last ack of an affected agent - t0
    write_ms: float  # the API write's own answer - t0
    server_ms: float  # GET /v1/converged answered (converged) - t0
    server_converged: bool
    affected: int
    missing: int  # expected to be affected, received nothing >= W
    extra: int  # received a document >= W without being expected to
    docs: int
    body_bytes: int
    cpu_s: float
    pg_cpu_s: float


@dataclass
class Change:
    """One write to time: `write` returns its response; `expected` names the agents it
    should reach, from their entries before the write (and the response)."""

    kind: str
    write: Callable[[], Any]
    expected: Callable[[dict[str, Any] | None], set[str]]


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        servers: list[ServerProc],
        token: str,
        pg: Postgres | None,
    ) -> None:
        self.args = args
        self.servers = servers
        self.pg = pg
        self.counters = Counters()
        self.dialer = Dialer(args.client, [s.port for s in servers], token)
        self.api = Api(self.dialer, FILL_CONNECTIONS)
        self.waiters: set[Waiter] = set()
        rng = random.Random(args.seed)
        self.agents = [
            SimAgent(
                host_name(i),
                f"az{zone_of(i, args.zones)}",
                underlay_ip(i, args.zones),
                self.dialer.conn(i),
                self.dialer.conn(i),
                self.counters,
                self._acked,
                rng.uniform(0, HEARTBEAT),
                args.digest,
            )
            for i in range(args.hosts)
        ]
        self.by_name = {a.name: a for a in self.agents}
        self.vpc_ids: list[str] = []
        self.subnet_ids: list[str] = []
        self.created: list[dict[str, Any]] = []  # instances made by the create changes

    def _acked(self, agent: SimAgent, t: float) -> None:
        for w in list(self.waiters):
            w.note(agent, t)

    async def wait_for(self, ok: Callable[[SimAgent], bool], timeout: float) -> Waiter:
        w = Waiter(self.agents, ok)
        self.waiters.add(w)
        try:
            await w.wait(timeout)
        finally:
            self.waiters.discard(w)
        return w

    def server_cpu(self) -> float:
        return sum(proc_cpu_seconds(s.proc.pid) for s in self.servers)

    def pg_cpu(self) -> float:
        return self.pg.cpu_seconds() if self.pg else 0.0

    def server_rss_mb(self) -> float:
        return sum(proc_rss_mb(s.proc.pid) for s in self.servers)

    async def close(self) -> None:
        await self.api.aclose()
        for a in self.agents:
            await a.close()

    # -- phases ----------------------------------------------------------------------------

    async def start_agents(self, tg: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        for z in range(1, self.args.zones + 1):
            await self.api.call(
                "POST", "/v1/zones", {"name": f"az{z}", "underlay_cidr": f"100.{64 + z}.0.0/16"}
            )
        sem = asyncio.Semaphore(FILL_CONNECTIONS)

        async def reg(a: SimAgent) -> None:
            async with sem:
                if self.args.auth == "host":
                    boot = await self.api.call(
                        "POST",
                        f"/v1/hosts/{a.name}/bootstrap-tokens",
                        {"description": "bench/convergence"},
                    )
                    await a.enroll(str(boot["token"]))
                await a.register()

        t0 = time.monotonic()
        async with asyncio.TaskGroup() as regs:
            for a in self.agents:
                regs.create_task(reg(a))
        tasks = [tg.create_task(a.run(), name=a.name) for a in self.agents]
        w = await self.wait_for(lambda a: a.acked > 0 and a.acked >= a.revision, 60)
        if w.pending:
            raise RuntimeError(f"{len(w.pending)} agents never acknowledged a first document")
        print(
            f"agents: {len(self.agents)} registered and acknowledged their first document "
            f"in {time.monotonic() - t0:.2f}s ({self.args.client} client, "
            f"{self.args.auth} token)"
        )
        return tasks

    async def fill(self) -> tuple[float, float]:
        """Returns (creates per second, seconds from the first create to convergence)."""
        a = self.args
        vpcs = max(1, a.hosts // HOSTS_PER_VPC)
        for v in range(vpcs):
            vpc = await self.api.call(
                "POST", "/v1/vpcs", {"name": f"v{v:03d}", "cidrs": [f"10.{v}.0.0/16"]}
            )
            sub = await self.api.call(
                "POST",
                "/v1/subnets",
                {"name": f"s{v:03d}", "vpc": vpc["id"], "cidr": f"10.{v}.0.0/20"},
            )
            self.vpc_ids.append(vpc["id"])
            self.subnet_ids.append(sub["id"])
        plan = fill_plan(a.hosts, a.zones, vpcs, a.vpcs_per_host)
        total = sum(len(chunk) for round_ in plan for chunk in round_)
        done = 0
        last_revision = 0
        cpu0, pg0 = self.server_cpu(), self.pg_cpu()
        t_start = time.monotonic()

        async def ticker() -> None:
            prev, t_prev = 0, t_start
            while True:
                await asyncio.sleep(2.0)
                now = time.monotonic()
                print(
                    f"  fill: {done}/{total} instances, {(done - prev) / (now - t_prev):.1f}"
                    f" creates/s (overall {done / (now - t_start):.1f})"
                )
                prev, t_prev = done, now

        async def create(r: int, k: int, v: int) -> None:
            nonlocal done, last_revision
            body = {
                "name": f"i{r}-{k:04d}",
                "subnet": self.subnet_ids[v],
                "zone": f"az{zone_of(k, a.zones)}",
            }
            res = await self.api.call("POST", "/v1/instances", body)  # waits for 1 of 16
            last_revision = max(last_revision, int(res["revision"]))
            done += 1

        async def zone_chain(r: int, chunks: list[Chunk]) -> None:
            for chunk in chunks:  # one after the other: see fill_plan
                async with asyncio.TaskGroup() as tg:
                    for k, v in chunk:
                        tg.create_task(create(r, k, v))

        async with asyncio.TaskGroup() as tg:
            tick = tg.create_task(ticker())
            for r, round_ in enumerate(plan):
                # Zones side by side, sharing the 16 connections; rounds one at a time (the
                # next round's creates would find this round's last hosts least loaded).
                async with asyncio.TaskGroup() as zones:
                    for z in range(a.zones):
                        mine = [ch for ch in round_ if zone_of(ch[0][0], a.zones) == z + 1]
                        zones.create_task(zone_chain(r, mine))
            tick.cancel()
        t_end = time.monotonic()
        cpu, pg_cpu = self.server_cpu() - cpu0, self.pg_cpu() - pg0
        rate = total / (t_end - t_start)
        print(
            f"fill: {total} instances in {t_end - t_start:.2f}s = {rate:.1f} creates/s over "
            f"{FILL_CONNECTIONS} connections; server CPU {cpu / total * 1000:.1f} ms per create"
            + (f", PostgreSQL {pg_cpu / total * 1000:.1f} ms" if self.pg else "")
        )

        instances: list[Any] = []
        cursor: str | None = None
        while True:  # the list is paged ({"items", "next"}): follow the cursor
            path = "/v1/instances?limit=1000" + (f"&cursor={quote(cursor)}" if cursor else "")
            page = await self.api.call("GET", path, timeout=120)
            instances.extend(page["items"])
            cursor = page.get("next")
            if not cursor:
                break
        target = expected_keys(instances, [x.name for x in self.agents])
        conv_task = asyncio.create_task(self._converged(last_revision, 60))
        w = await self.wait_for(
            lambda ag: ag.acked >= ag.revision and set(ag.entries) == target[ag.name],
            max(60.0, a.hosts / 5),
        )
        server_ok, server_t = await conv_task
        if w.pending:
            sample = sorted(w.pending)[:3]
            diffs = [
                f"{n}: missing {sorted(target[n] - set(self.by_name[n].entries))[:3]} "
                f"extra {sorted(set(self.by_name[n].entries) - target[n])[:3]}"
                for n in sample
            ]
            raise RuntimeError(
                f"fill did not converge: {len(w.pending)} agents lack the expected entries; "
                + "; ".join(diffs)
            )
        t_conv = max(w.times.values())
        print(
            f"fill converged (agents' view) {t_conv - t_end:.2f}s after the last create, "
            f"{t_conv - t_start:.2f}s after the first; server's view of revision "
            f"{last_revision}: converged={server_ok} {server_t - t_end:.2f}s after the last create"
        )
        self._print_layout(instances, target)
        sizes = []
        for ag in self.agents[:: max(1, len(self.agents) // 10)]:
            sizes.append(len(json.dumps(await self.api.call("GET", f"{ag.base}/desired?after=0"))))
        print(f"snapshot after the fill: {sum(sizes) / len(sizes) / 1024:.1f} kB on average")
        return rate, t_conv - t_start

    async def _converged(self, revision: int, timeout: float) -> tuple[bool, float]:
        """GET /v1/converged: (its `converged`, the monotonic time its answer came)."""
        res = await self.api.call(
            "GET", f"/v1/converged?revision={revision}&timeout={timeout:g}", timeout=timeout + 15
        )
        return bool(res.get("converged")), time.monotonic()

    def _print_layout(self, instances: list[dict[str, Any]], target: dict[str, set[str]]) -> None:
        per_host: dict[str, set[str]] = {}
        hosts_of: dict[str, set[str]] = {}
        for inst in instances:
            h, v = inst["status"].get("host"), inst["status"]["vpc"]
            per_host.setdefault(h, set()).add(v)
            hosts_of.setdefault(v, set()).add(h)
        load = Counter(inst["status"].get("host") for inst in instances)
        iph = [load.get(a.name, 0) for a in self.agents]
        vph = [len(v) for v in per_host.values()]
        hpv = [len(h) for h in hosts_of.values()]
        sizes = [len(t) for t in target.values()]
        print(
            f"layout: {len(instances)} instances, {min(iph)}..{max(iph)} per host; "
            f"VPCs per host min/mean/max "
            f"{min(vph)}/{sum(vph) / len(vph):.1f}/{max(vph)}; hosts per VPC "
            f"{min(hpv)}/{sum(hpv) / len(hpv):.1f}/{max(hpv)}; entries per document mean "
            f"{sum(sizes) / len(sizes):.0f}"
        )

    async def idle_cpu(self, seconds: float) -> tuple[float, float]:
        """Server and PostgreSQL CPU, ms per second, with nothing changing (heartbeats and
        long polls only)."""
        c0, p0, t0 = self.server_cpu(), self.pg_cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        dt = time.monotonic() - t0
        return (self.server_cpu() - c0) / dt * 1000, (self.pg_cpu() - p0) / dt * 1000

    async def measure(self, change: Change) -> ChangeResult:
        expected = change.expected(None)
        marks = [len(a.received) for a in self.agents]
        docs0, bytes0 = self.counters.docs, self.counters.body_bytes
        cpu0, pg0 = self.server_cpu(), self.pg_cpu()
        t0 = time.monotonic()
        res = await change.write()
        t_write = time.monotonic()
        w = int(res["revision"])
        expected |= change.expected(res)
        conv_task = asyncio.create_task(self._converged(w, SERVER_WAIT))
        waiter = Waiter(
            self.agents, lambda a: a.name not in expected or a.first_ack_at_least(w, t0) is not None
        )
        self.waiters.add(waiter)
        try:
            done = asyncio.create_task(waiter.done.wait())
            await asyncio.wait({done, conv_task}, timeout=AGENT_WAIT, return_when="FIRST_COMPLETED")
            if not done.done():
                # The server answered first: if it says converged, expected agents still
                # silent get a short grace, not the whole bound (they may never hear of it).
                grace = AGENT_WAIT - (time.monotonic() - t0)
                if conv_task.done() and conv_task.result()[0]:
                    grace = min(grace, GRACE)
                await asyncio.wait({done}, timeout=max(0.0, grace))
            done.cancel()
        finally:
            self.waiters.discard(waiter)
        server_ok, server_t = await conv_task
        observed = {
            a.name
            for a, m in zip(self.agents, marks, strict=True)
            if any(r.revision >= w and r.t >= t0 for r in a.received[m:])
        }
        # Agents that got the write without being expected to: wait for their acks too.
        await self.wait_for(
            lambda a: a.name not in observed or a.first_ack_at_least(w, t0) is not None, GRACE
        )
        acks = [self.by_name[n].first_ack_at_least(w, t0) for n in observed]
        acked = [t for t in acks if t is not None]
        agents_ms = (max(acked) - t0) * 1000 if acked and len(acked) == len(acks) else None
        if waiter.pending:
            self.counters.anomaly(
                "not converged", f"{change.kind} W={w}: no ack from {sorted(waiter.pending)[:5]}"
            )
        return ChangeResult(
            kind=change.kind,
            revision=w,
            agents_ms=agents_ms,
            write_ms=(t_write - t0) * 1000,
            server_ms=(server_t - t0) * 1000,
            server_converged=server_ok,
            affected=len(observed),
            missing=len(expected - observed),
            extra=len(observed - expected),
            docs=self.counters.docs - docs0,
            body_bytes=self.counters.body_bytes - bytes0,
            cpu_s=self.server_cpu() - cpu0,
            pg_cpu_s=self.pg_cpu() - pg0,
        )

    async def metrics(self) -> dict[str, float]:
        """GET /metrics of every replica, unlabelled samples summed over replicas."""
        out: dict[str, float] = {}
        for i in range(len(self.servers)):
            conn = self.dialer.conn(i)
            try:
                r = await conn.request("GET", "/metrics")
            finally:
                await conn.close()
            if r.status != 200:
                return {}
            for line in r.body.decode().splitlines():
                name, _, value = line.rpartition(" ")
                if name and not line.startswith("#") and "{" not in name:
                    out[name] = out.get(name, 0.0) + float(value)
        return out

    def holders(self, key: str) -> set[str]:
        return {a.name for a in self.agents if key in a.entries}

    def change_kinds(self) -> list[Callable[[int], Change]]:
        """The kinds of change to time, in this order: each makes its n-th change when its
        turn comes (a delete removes what the n-th create made)."""
        a = self.args
        vpcs = len(self.vpc_ids)

        def create(n: int) -> Change:
            v = n % vpcs

            async def write() -> Any:
                body = {
                    "name": f"c{n:03d}",
                    "subnet": self.subnet_ids[v],
                    "zone": f"az{n % a.zones + 1}",
                }
                res = await self.api.call("POST", "/v1/instances", body)
                self.created.append(res)
                return res

            def expected(res: dict[str, Any] | None) -> set[str]:
                if res is None:
                    return self.holders(f"vpc/{self.vpc_ids[v]}")
                return {str(res["status"]["host"])}

            return Change("create", write, expected)

        def delete(n: int) -> Change:
            inst = self.created[n]
            key = f"vpc/{inst['status']['vpc']}/m/{inst['id']}"

            async def write() -> Any:
                return await self.api.call("DELETE", f"/v1/instances/{inst['id']}")

            def expected(res: dict[str, Any] | None) -> set[str]:
                return self.holders(key) if res is None else set()

            return Change("delete", write, expected)

        kinds: list[Callable[[int], Change]] = [create, delete]
        # HOOK(issue 6): route and VIP changes do not exist yet. When they do, add a
        # `Change` factory per kind here (its write and the agents it must reach, read from
        # their entries) and the tables below report it like the others.
        return kinds

    async def check_snapshots(self) -> tuple[int, list[str]]:
        """Compare every agent's entries (built from deltas) with a fresh snapshot."""
        sem = asyncio.Semaphore(FILL_CONNECTIONS)
        bad: list[str] = []

        async def one(ag: SimAgent) -> None:
            async with sem:
                doc = await self.api.call("GET", f"{ag.base}/desired?after=0&timeout=0")
            if doc.get("entries") != ag.entries or int(doc["revision"]) != ag.revision:
                have, want = set(ag.entries), set(doc.get("entries", {}))
                changed = [k for k in have & want if ag.entries[k] != doc["entries"][k]]
                bad.append(
                    f"{ag.name}: revision {ag.revision} vs {doc['revision']}, missing "
                    f"{sorted(want - have)[:2]}, extra {sorted(have - want)[:2]}, "
                    f"different {changed[:2]}"
                )

        async with asyncio.TaskGroup() as tg:
            for ag in self.agents:
                tg.create_task(one(ag))
        return len(self.agents) - len(bad), bad


# -- statistics and report -------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def table(results: list[ChangeResult], pg: bool) -> list[str]:
    kinds = [*dict.fromkeys(r.kind for r in results), "all"]
    head = (
        f"{'kind':<7}{'n':>4}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}  |{'srv p50':>8}"
        f"{'srv p99':>8}{'write':>7}  |{'affected':>9}{'docs':>7}{'kB':>8}{'cpu ms':>8}"
        + (f"{'pg ms':>8}" if pg else "")
    )
    lines = [
        "convergence per change, ms from just before the write: the last affected agent's ack;"
        " srv = GET /v1/converged answered; write = p50 of the write's own answer."
        " Means per change: affected agents, documents and kB they received, server CPU",
        head,
    ]
    for kind in kinds:
        rs = [r for r in results if kind in ("all", r.kind)]
        ok = [r.agents_ms for r in rs if r.agents_ms is not None]
        srv = [r.server_ms for r in rs]
        n = len(rs)
        if not ok:
            lines.append(f"{kind:<7}{n:>4}  (no change converged)")
            continue
        lines.append(
            f"{kind:<7}{n:>4}{pct(ok, 0.5):>8.1f}{pct(ok, 0.95):>8.1f}{pct(ok, 0.99):>8.1f}"
            f"{max(ok):>8.1f}  |{pct(srv, 0.5):>8.1f}{pct(srv, 0.99):>8.1f}"
            f"{pct([r.write_ms for r in rs], 0.5):>7.1f}  |"
            f"{sum(r.affected for r in rs) / n:>9.1f}{sum(r.docs for r in rs) / n:>7.1f}"
            f"{sum(r.body_bytes for r in rs) / n / 1024:>8.1f}"
            f"{sum(r.cpu_s for r in rs) / n * 1000:>8.1f}"
            + (f"{sum(r.pg_cpu_s for r in rs) / n * 1000:>8.1f}" if pg else "")
        )
    return lines


async def run(
    args: argparse.Namespace, servers: list[ServerProc], token: str, pg: Postgres | None
) -> str:
    await wait_ready(servers, token)
    load0 = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load0:.2f} at the start")
    bench = Bench(args, servers, token, pg)
    cpu_bench0 = time.process_time()
    try:
        async with asyncio.TaskGroup() as tg:
            agent_tasks = await bench.start_agents(tg)
            try:
                creates_per_s, _ = await bench.fill()
                idle, idle_pg = await bench.idle_cpu(args.idle_seconds)
                print(
                    f"idle: server CPU {idle:.1f} ms/s"
                    + (f", PostgreSQL {idle_pg:.1f} ms/s" if bench.pg else "")
                    + f" ({args.hosts} agents heartbeating every {HEARTBEAT:g}s, polling)"
                )
                results: list[ChangeResult] = []
                m0, agent0 = await bench.metrics(), (bench.counters.docs, bench.counters.body_bytes)
                for make in bench.change_kinds():
                    for n in range(args.changes):
                        results.append(await bench.measure(make(n)))
                m1, agent1 = await bench.metrics(), (bench.counters.docs, bench.counters.body_bytes)
                rss = bench.server_rss_mb()
                ok, bad = await bench.check_snapshots()
            finally:
                for t in agent_tasks:
                    t.cancel()
    finally:
        await bench.close()
    c = bench.counters
    for line in table(results, bench.pg is not None):
        print(line)
    unconv = [r for r in results if r.agents_ms is None]
    srv_no = [r for r in results if not r.server_converged]
    mism = [r for r in results if r.missing or r.extra]
    print(
        f"checks: {len(unconv)} changes not converged by the agents' view in {AGENT_WAIT:g}s, "
        f"{len(srv_no)} answered converged=false by the server, {len(mism)} whose affected "
        f"agents differed from the expected ones (missing {sum(r.missing for r in results)},"
        f" extra {sum(r.extra for r in results)})"
    )
    resnaps = sum(max(0, sum(r.snapshot for r in a.received) - 1) for a in bench.agents)
    print(
        f"delta check: {ok}/{len(bench.agents)} agents hold exactly a fresh snapshot; "
        f"{resnaps} snapshots beyond each agent's first (digest "
        f"{'sent' if args.digest else 'not sent'} with each poll)"
    )
    for line in bad[:5]:
        print(f"  {line}")
    print(
        f"agents: {c.docs} documents ({c.snapshots} snapshots), {c.body_bytes / 1e6:.1f} MB, "
        f"{c.empty_polls} empty polls, {c.errors} transport errors; bench CPU "
        f"{time.process_time() - cpu_bench0:.1f}s for {c.requests} agent requests"
    )
    if c.anomalies:
        print(f"anomalies: {c.anomalies}")
        for e in c.examples:
            print(f"  {e}")
    print(
        f"server: RSS {rss:.1f} MB over {len(servers)} process(es); load average "
        f"{os.getloadavg()[0]:.2f} at the end ({load0:.2f} at the start)"
    )
    if m0 and m1:

        def d(name: str) -> float:
            return m1.get(name, 0.0) - m0.get(name, 0.0)

        compiles, commits = d("yunhan_compiles_total"), d("yunhan_store_commits_total")
        print(
            f"server /metrics over the {len(results)} changes (all replicas): documents sent "
            f"{d('yunhan_documents_sent_total'):.0f} (agents received {agent1[0] - agent0[0]}), "
            f"bytes {d('yunhan_document_bytes_sent_total'):.0f} ({agent1[1] - agent0[1]}); "
            f"{d('yunhan_store_transactions_total'):.0f} transactions in {commits:.0f} commits "
            f"({d('yunhan_store_commit_seconds_total') / max(commits, 1) * 1000:.2f} ms each); "
            f"{compiles:.0f} compiles "
            f"({d('yunhan_compile_seconds_total') / max(compiles, 1) * 1000:.2f} ms each)"
        )
    all_ok = [r.agents_ms for r in results if r.agents_ms is not None]
    cpu_ms = sum(r.cpu_s for r in results) / len(results) * 1000
    return (
        f"RESULT hosts={args.hosts} creates_per_s={creates_per_s:.1f} "
        f"conv_p50_ms={pct(all_ok, 0.5) if all_ok else float('nan'):.1f} "
        f"conv_p99_ms={pct(all_ok, 0.99) if all_ok else float('nan'):.1f} "
        f"cpu_ms_per_change={cpu_ms:.1f} rss_mb={rss:.1f} "
        f"backend={args.backend} replicas={len(servers)}"
    )


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally, like Ctrl-C


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, required=True, help=f"simulated agents (<= {MAX_HOSTS})")
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--replicas", type=int, default=1, help="API servers (postgresql only)")
    ap.add_argument(
        "--fsync", action="store_true", help="PostgreSQL with fsync (default off: throwaway)"
    )
    ap.add_argument(
        "--no-digest",
        dest="digest",
        action="store_false",
        help="agents do not send their digest with each poll (the real agent does)",
    )
    ap.add_argument("--zones", type=int, default=3)
    ap.add_argument("--vpcs-per-host", type=int, default=3)
    ap.add_argument("--changes", type=int, default=CHANGES_PER_KIND, help="per kind")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw")
    ap.add_argument(
        "--auth",
        choices=("host", "admin"),
        default="host",
        help="agents use their own host token (as the real agent) or the admin token",
    )
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="whole run bound")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = ap.parse_args()
    if not 1 <= args.hosts <= MAX_HOSTS:
        ap.error(f"--hosts must be 1..{MAX_HOSTS}")
    if not 1 <= args.zones <= 60 or not 1 <= args.changes <= 1000:
        ap.error("--zones must be 1..60 and --changes 1..1000")
    if not 1 <= args.replicas <= 8 or (args.replicas > 1 and args.backend == "sqlite"):
        ap.error("--replicas must be 1..8, and more than 1 needs --backend postgresql")
    signal.signal(signal.SIGTERM, _on_sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="yunhan-conv-"))
    token = secrets.token_hex(16)
    token_file = tmp / "admin.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    servers: list[ServerProc] = []
    failed = True
    try:
        with contextlib.ExitStack() as stack:
            pg = None
            extra: list[str] = []
            if args.backend == "postgresql":
                pg = stack.enter_context(postgres_cluster(args.fsync))
                extra = ["--database", pg.url]
            try:
                servers = start_servers(tmp, args.replicas, token_file, extra)

                async def bounded() -> str:
                    async with asyncio.timeout(args.max_seconds):
                        return await run(args, servers, token, pg)

                result = asyncio.run(bounded())
            finally:
                stop_servers(servers)
        print(result)
        failed = False
        return 0
    finally:
        if failed:
            for i, s in enumerate(servers):
                print(f"--- server {i} log tail ({s.log}):\n{s.tail()}", file=sys.stderr)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
