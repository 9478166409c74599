"""A running lab region: topology + API server + one agent per host, and its record.

    up(spec, state_dir)   realise the topology, start the internet's echo server and the API
                          server, create the zones, start the agents (each announcing its
                          NAT gateways' public addresses to the core), wait until every
                          agent is registered and healthy (all under the region's supervisor)
    down(state_dir)       stop and remove all of it (idempotent; works after a half-failed up)
    status(state_dir)     the record, which lab processes live, zones and hosts from the API
    sweep()               remove what crashed regions left (prefix-owned, no live record)

State dir layout (default $YUNHAN_HOME or /var/lib/yunhan), one region at a time:

    region.json                 the record: prefix, spec, endpoint, the supervisor (pid + start
                                time) and, while a foreground `up` runs, that `up`
    <prefix>/supervisor.json    the supervisor's own record of the server and agents it runs:
                                pids, restarts, how each last exited (yunhan.lab.supervisor)
    <prefix>/admin.token.sha256 the admin token's sha256 (the server needs no more)
    <prefix>/server/            the API server's data (SQLite)
    <prefix>/agents/<host>/     each agent's data; host.token (0600) is its own credential

No tenant or admin token is written under the state dir: the admin token lives in the
memory of `up`, which hands it to the user's CLI config (~/.config/yunhan/config.json,
0600); each agent gets a one-time bootstrap token on its standard input and exchanges it
for a token valid only for its own host's agent endpoints (docs/credentials.md).
    logs/<prefix>/*.log         one log per process; kept after a failed `up` for diagnosis

Supervision: `up` starts one supervisor per region (`yunhan lab-supervisor`, its own
session), hands it the server and then each agent, and waits until they are healthy. The
supervisor restarts whichever dies, with backoff and a crash-loop limit. `up` on a region
whose processes died revives it in place (same region, same store, same instances): it
starts a new supervisor, which adopts what still runs and starts the rest, or tells a live
one to retry what it gave up. Only `down` removes a region.

The record is written before anything is built, so `down` always knows what to remove. A
second index, /run/yunhan/regions/<prefix>.json (tmpfs, gone at reboot like the namespaces),
points from a prefix to its state dir so that `sweep` can tell a live region from an orphan
whichever state dir it used. Lab processes carry YUNHAN_REGION=<prefix> in their
environment: that is how a sweep finds a server or agent whose region record is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yunhan.errors import Conflict, TimedOut, YunhanError
from yunhan.lab import cleanup, topology
from yunhan.lab.cleanup import REGION_ENV, RUN_DIR, Removed
from yunhan.lab.spec import ECHO_PORT, REGION_PREFIX_RE, HostSpec, RegionSpec
from yunhan.lab.supervisor import (
    FAILED,
    RUNNING,
    Program,
    RestartPolicy,
    SupervisorState,
    program_line,
)
from yunhan.nsexec import nsenter_argv
from yunhan.polling import poll_until

if TYPE_CHECKING:
    import httpx  # imported where used: `yunhan host list` reads the region record only

DEFAULT_STATE_DIR = Path("/var/lib/yunhan")
RECORD = "region.json"
REGISTRY = RUN_DIR / "regions"
STARTUP_TIMEOUT = 90.0
STOP_GRACE = 3.0


class LabError(YunhanError):
    """A lab region could not be brought up or down; the message names what failed."""

    code = "lab"


def default_state_dir() -> Path:
    """$YUNHAN_HOME, else /var/lib/yunhan."""
    return Path(os.environ.get("YUNHAN_HOME") or DEFAULT_STATE_DIR)


# -- the record ------------------------------------------------------------------------------


@dataclass
class ProcessRecord:
    """One lab process: what it is, how to find it again, where it logs."""

    role: str  # "up" (a foreground `yunhan up`) | "supervisor" | "server" | "agent" | "echo"
    name: str
    pid: int
    started: int | None
    log: str = ""
    # What the supervisor says of a server or an agent (yunhan.lab.supervisor).
    state: str = RUNNING
    restarts: int = 0
    last_exit: str = ""

    def alive(self) -> bool:
        return cleanup.same_process(self.pid, self.started)


@dataclass
class RegionRecord:
    """What `down`, `status` and `sweep` need to know about a region, stored as JSON."""

    prefix: str
    state_dir: str
    spec: dict[str, Any]
    endpoint: str = ""
    detached: bool = True
    created_at: float = field(default_factory=time.time)
    processes: list[ProcessRecord] = field(default_factory=list)

    @property
    def region_spec(self) -> RegionSpec:
        return RegionSpec.from_dict(self.spec)

    @property
    def data_dir(self) -> Path:
        return Path(self.state_dir) / self.prefix

    @property
    def log_dir(self) -> Path:
        return Path(self.state_dir) / "logs" / self.prefix

    @property
    def token_hash_file(self) -> Path:
        return self.data_dir / "admin.token.sha256"

    @property
    def supervisor_file(self) -> Path:
        return self.data_dir / "supervisor.json"

    def supervised(self) -> list[ProcessRecord]:
        """The server and agents, as the region's supervisor last wrote them down."""
        st = SupervisorState.load(self.supervisor_file)
        return [
            ProcessRecord(p.role, p.name, p.pid, p.started, p.log, p.state, p.restarts, p.last_exit)
            for p in (st.programs if st else [])
        ]

    def every_process(self) -> list[ProcessRecord]:
        """The record's own processes (supervisor, foreground `up`), then the supervised."""
        return [*self.processes, *self.supervised()]

    def live(self) -> bool:
        """True while any of the region's processes (or the `up` supervising it) runs."""
        return any(p.alive() for p in self.every_process())

    def save(self) -> None:
        path = Path(self.state_dir) / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)
        REGISTRY.mkdir(parents=True, exist_ok=True)
        (REGISTRY / f"{self.prefix}.json").write_text(json.dumps({"state_dir": self.state_dir}))

    @classmethod
    def load(cls, state_dir: Path) -> RegionRecord | None:
        try:
            data = json.loads((state_dir / RECORD).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"region record {state_dir / RECORD} is unreadable: {exc}") from exc
        # A record written by another version of yunhan (a region of another checkout) may
        # carry fields this one does not know: read what it knows (its prefix, pids, state
        # dir), never take it for unreadable (a sweep would tear a live region down).
        known = {f.name for f in fields(ProcessRecord)}
        procs = [
            ProcessRecord(**{k: v for k, v in p.items() if k in known})
            for p in data.pop("processes", [])
        ]
        mine = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in mine}, processes=procs)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise up/down/sweep on one state dir (a foreground `up` and a `down` may race)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(state_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


locked = _locked  # public: `yunhan lab idc` (yunhan.lab.idc) changes a region under it too


# -- up ------------------------------------------------------------------------------------


@dataclass
class RegionHandle:
    """A region that is up: where its API is, with which token, and how to take it down."""

    record: RegionRecord
    token: str
    popens: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    reused: bool = False  # True when `up --detach` found this region already up
    revived: bool = False  # True when `up --detach` found it with dead processes, revived

    @property
    def prefix(self) -> str:
        return self.record.prefix

    @property
    def endpoint(self) -> str:
        return self.record.endpoint

    @property
    def state_dir(self) -> Path:
        return Path(self.record.state_dir)

    @property
    def spec(self) -> RegionSpec:
        return self.record.region_spec

    def down(self) -> Removed:
        return down(self.state_dir)

    def __enter__(self) -> RegionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def _shape(spec: RegionSpec) -> tuple[int, tuple[int, ...], int]:
    return len(spec.zones), tuple(len(z.hosts) for z in spec.zones), spec.mtu


def _wanted(spec: RegionSpec) -> set[tuple[str, str]]:
    return {("server", "server"), ("echo", "echo")} | {("agent", h.name) for h in spec.hosts}


def _whole(record: RegionRecord) -> bool:
    # Every process a finished `up` starts is there and alive (not a half-started region).
    running = {(p.role, p.name) for p in record.every_process() if p.alive()}
    return ("supervisor", "supervisor") in running and _wanted(record.region_spec) <= running


def _free_port() -> int:
    # Bind to port 0 and let the kernel choose; the tiny window before the server binds it
    # again is acceptable on a lab machine (the server's failure would say "address in use").
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (log is empty)"


def _yunhan_argv() -> list[str]:
    # The `yunhan` console script next to this interpreter, so that `ps` and `pgrep -f
    # "yunhan agent"` show what runs; `python -m yunhan.cli` when it is not installed.
    script = Path(sys.executable).with_name("yunhan")
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "yunhan.cli"]


def _server_argv(record: RegionRecord) -> list[str]:
    listen = record.endpoint.removeprefix("http://")
    return [*_yunhan_argv(),
        "server", "--state-dir", str(record.data_dir / "server"),
        "--listen", listen, "--admin-token-hash-file", str(record.token_hash_file),
        "--public-pool", record.region_spec.public_pool,
    ]  # fmt: skip


def _echo_argv(record: RegionRecord) -> list[str]:
    # nsenter execs the server itself inside the namespace: the recorded pid is the server's.
    echo = [sys.executable, "-m", "yunhan.lab.echo", "--listen", f"0.0.0.0:{ECHO_PORT}"]
    return nsenter_argv(echo, net=record.region_spec.internet_netns)


def _agent_argv(record: RegionRecord, host: HostSpec) -> list[str]:
    spec = record.region_spec
    return [*_yunhan_argv(),
        "agent", "--api", record.endpoint, "--token-file", "-",
        "--host", host.name, "--zone", host.zone, "--underlay-ip", host.underlay_ip,
        "--mtu", str(spec.mtu), "--host-netns", host.netns,
        "--uplink-netns", spec.core_netns, "--uplink-via", host.underlay_ip,
        "--prefix", host.agent_prefix,
        "--datapath", spec.datapath,
        "--state-dir", str(record.data_dir / "agents" / host.name),
        # The zone's volume pool: shared by its hosts, as a zone's SAN would be.
        "--volume-dir", str(record.data_dir / "zones" / host.zone / "volumes"),
    ]  # fmt: skip


def _program(
    record: RegionRecord, role: str, name: str, argv: list[str], secret: str | None = None
) -> str:
    """The supervisor's line for a program; its log exists from now on (read on failure)."""
    log = record.log_dir / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    return program_line(name, role, argv, log, secret)


def _programs(record: RegionRecord) -> list[str]:
    """Every program of the region, without secrets (what a new supervisor is given)."""
    spec = record.region_spec
    lines = [
        _program(record, "echo", "echo", _echo_argv(record)),
        _program(record, "server", "server", _server_argv(record)),
    ]
    lines += [_program(record, "agent", h.name, _agent_argv(record, h)) for h in spec.hosts]
    return lines


def _spawn_supervisor(
    record: RegionRecord, policy: RestartPolicy | None
) -> subprocess.Popen[bytes]:
    """Start the region's supervisor in its own session; programs go to its stdin."""
    record.log_dir.mkdir(parents=True, exist_ok=True)
    if policy is not None or SupervisorState.load(record.supervisor_file) is None:
        old = SupervisorState.load(record.supervisor_file) or SupervisorState()
        old.policy = policy or old.policy
        old.save(record.supervisor_file)
    log = record.log_dir / "supervisor.log"
    env = dict(os.environ, **{REGION_ENV: record.prefix, "PYTHONUNBUFFERED": "1"})
    with open(log, "ab") as out:
        # A new session: Ctrl-C on the terminal reaches only `yunhan up`, which then takes
        # the region down in order; a detached region outlives its `up`.
        popen = subprocess.Popen(
            [*_yunhan_argv(), "lab-supervisor", "--state-file", str(record.supervisor_file)],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    record.processes.append(
        ProcessRecord(
            "supervisor", "supervisor", popen.pid, cleanup.start_time(popen.pid), str(log)
        )
    )
    record.save()
    return popen


def _give(popen: subprocess.Popen[bytes], line: str) -> None:
    # Secrets for the children go through this pipe: never on disk, never in `ps`.
    assert popen.stdin is not None
    try:
        popen.stdin.write(line.encode())
        popen.stdin.flush()
    except OSError as exc:
        raise LabError(f"the region's supervisor is gone ({exc})") from exc


def _trouble(
    record: RegionRecord,
    popen: subprocess.Popen[bytes] | None,
    names: set[str],
    *,
    strict: bool,
) -> LabError | None:
    """Why the programs `names` cannot come up: the supervisor exited, one of them is in a
    crash loop or (`strict`, a fresh start) exited at all; None when nothing is wrong."""
    if popen is not None and (code := popen.poll()) is not None:
        log = str(record.log_dir / "supervisor.log")
        return LabError(
            f"the region's supervisor exited with code {code}; last lines of {log}:\n{_tail(log)}"
        )
    for p in record.supervised():
        if p.name in names and (p.state == FAILED or (strict and p.last_exit)):
            return LabError(
                f"{p.role} {p.name} {p.last_exit} during start-up"
                + (" (a crash loop: left down)" if p.state == FAILED else "")
                + f"; last lines of {p.log}:\n{_tail(p.log)}"
            )
    return None


def up(
    spec: RegionSpec,
    state_dir: Path | None = None,
    *,
    detach: bool = True,
    timeout: float = STARTUP_TIMEOUT,
    policy: RestartPolicy | None = None,
    token: str | None = None,
) -> RegionHandle:
    """Bring a region up and return once every agent is registered and healthy.

    `detach=True` marks the region as one that outlives this process (`yunhan up
    --detach`). If a detached region of the same shape is recorded in `state_dir`, it is
    kept: when all its processes run its handle is returned (`reused`) and nothing
    changes; when some died it is revived (`revived`): the dead ones are started again
    over the same store and agent state, every resource and instance kept, and `token`
    (the admin's, when the caller has it) lets this wait for the agents' health too.
    With `detach=False` the caller owns the region and must call `down` (the handle is a
    context manager). `policy` is the supervisor's restart policy (default
    `RestartPolicy()`). On any failure of a fresh start, including Ctrl-C, everything
    built so far is removed (logs are kept) and the error names what failed; a failed
    revival removes nothing.
    """
    state_dir = Path(state_dir or default_state_dir()).absolute()
    spec.validate()
    with _locked(state_dir):
        old = RegionRecord.load(state_dir)
        if old is not None:
            return _again(old, spec, detach, timeout, policy, token)
        # Agents and cleanup find their namespaces by name under the prefix: a region whose
        # prefix is (or nests in) a live one's ("a" / "a-az1-h1-i"), in any state dir, would
        # have its namespaces taken for the other's (and removed).
        for other, rec in _registered().items():
            nested = (
                other == spec.prefix
                or cleanup.owned(other, spec.prefix)
                or cleanup.owned(spec.prefix, other)
            )
            if nested and rec is not None and rec.live():
                raise Conflict(
                    f"region {other} is up (state dir {rec.state_dir}): a region prefix must "
                    f"neither equal nor extend another's with '-'; choose another than "
                    f"{spec.prefix!r}"
                )
        _prune_logs(state_dir)
        port = _free_port()
        record = RegionRecord(
            prefix=spec.prefix,
            state_dir=str(state_dir),
            spec=spec.to_dict(),
            endpoint=f"http://127.0.0.1:{port}",
            detached=detach,
        )
        # The `up` itself counts as the region's process while it starts (so that a sweep
        # never takes a starting region for an orphan) and, in the foreground, for good.
        me = os.getpid()
        record.processes.append(ProcessRecord("up", "up", me, cleanup.start_time(me)))
        record.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        record.save()
        try:
            handle = _start(record, spec, timeout, policy)
            if detach:
                record.processes = [p for p in record.processes if p.role != "up"]
                record.save()
            return handle
        except BaseException:
            # KeyboardInterrupt included: a Ctrl-C during start-up must not leave a half region.
            _teardown(record.prefix, record, keep_logs=True)
            raise


def _again(
    old: RegionRecord,
    spec: RegionSpec,
    detach: bool,
    timeout: float,
    policy: RestartPolicy | None,
    token: str | None,
) -> RegionHandle:
    """`up` where a region is recorded: reuse it, revive it, or say why not."""
    where = old.state_dir
    foreground = any(p.role == "up" and p.alive() for p in old.processes)
    if foreground or not detach:
        raise Conflict(
            f"region {old.prefix} is already up in {where} (endpoint {old.endpoint}"
            + (", in the foreground of another `yunhan up`" if foreground else "")
            + "); `yunhan up --detach` revives a region whose processes died, "
            "run `yunhan down` first to start another"
        )
    if _shape(old.region_spec) != _shape(spec):
        zones, hosts, mtu = _shape(old.region_spec)
        raise Conflict(
            f"region {old.prefix} is recorded in {where} with {zones} zones, hosts per zone "
            f"{list(hosts)} and MTU {mtu}; `yunhan up --detach` with that shape revives it, "
            "`yunhan down` removes it (and its instances) to start another"
        )
    if _whole(old):
        # `up --detach` is idempotent (setup.sh may run twice): same shape, same region,
        # nothing to do. Its admin token is where the first `up` put it (the user's CLI
        # config): it was never kept here.
        return RegionHandle(old, token or "", reused=True)
    return _revive(old, timeout, policy, token)


def _revive(
    record: RegionRecord, timeout: float, policy: RestartPolicy | None, token: str | None
) -> RegionHandle:
    import httpx

    deadline = time.monotonic() + timeout
    # Namespaces vanish at a reboot (they live in /run): complete the topology; the agents
    # rebuild what their documents say on top of it. On a live topology this changes nothing.
    topology.realise(record.region_spec)
    record.processes = [p for p in record.processes if p.role != "up"]  # a dead foreground up
    _adopt_unsupervised(record)
    record.detached = True
    handle = RegionHandle(record, token or "", reused=True, revived=True)
    sup = SupervisorState.load(record.supervisor_file)
    popen: subprocess.Popen[bytes] | None = None
    if sup is not None and sup.alive() and policy is None:
        os.kill(sup.pid, signal.SIGHUP)  # retry now what waits or gave up
    else:
        if sup is not None and sup.alive():
            cleanup.kill([sup.pid], grace=STOP_GRACE)  # a new policy: a new supervisor
        record.processes = [p for p in record.processes if p.role != "supervisor"]
        popen = _spawn_supervisor(record, policy)
        handle.popens["supervisor"] = popen
        for line in _programs(record):  # adopted when running, started when not
            _give(popen, line)
        assert popen.stdin is not None
        popen.stdin.close()
    record.save()
    names = {n for _, n in _wanted(record.region_spec)}

    def running() -> bool:
        if err := _trouble(record, popen, names, strict=False):
            raise err
        alive = {(p.role, p.name) for p in record.supervised() if p.alive()}
        return _wanted(record.region_spec) <= alive

    if not poll_until(running, deadline - time.monotonic(), interval=0.1, max_interval=0.2):
        down_ = sorted(n for r, n in _wanted(record.region_spec) - _running(record))
        raise TimedOut(f"revived processes not running in time: {', '.join(down_)}")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=record.endpoint, headers=headers, timeout=5.0) as api:
        _wait_api(api, record, popen, deadline, strict=False)
        if token:
            agents = {h.name for h in record.region_spec.hosts}
            _wait_agents(api, record, popen, agents, deadline, strict=False)
    return handle


def _adopt_unsupervised(record: RegionRecord) -> None:
    """A region started before regions had supervisors lists its server and agents in its
    record: hand them to the supervisor's file, so that the new supervisor adopts those
    that run instead of starting second copies."""
    legacy = [p for p in record.processes if p.role in ("server", "agent", "echo")]
    if not legacy or record.supervisor_file.exists():
        return
    argv = {"server": _server_argv(record), "echo": _echo_argv(record)}
    argv.update({h.name: _agent_argv(record, h) for h in record.region_spec.hosts})
    now = time.time()
    programs = [
        Program(p.name, p.role, argv.get(p.name, []), p.log, p.pid, p.started, now, RUNNING)
        for p in legacy
    ]
    SupervisorState(programs=programs).save(record.supervisor_file)
    record.processes = [p for p in record.processes if p not in legacy]


def _running(record: RegionRecord) -> set[tuple[str, str]]:
    return {(p.role, p.name) for p in record.supervised() if p.alive()}


def _start(
    record: RegionRecord, spec: RegionSpec, timeout: float, policy: RestartPolicy | None
) -> RegionHandle:
    import httpx

    deadline = time.monotonic() + timeout
    topology.realise(spec)
    token = "yh_" + secrets.token_urlsafe(32)
    record.token_hash_file.write_text(hashlib.sha256(token.encode()).hexdigest() + "\n")
    handle = RegionHandle(record, token)
    sup = _spawn_supervisor(record, policy)
    handle.popens["supervisor"] = sup
    _give(sup, _program(record, "echo", "echo", _echo_argv(record)))
    _give(sup, _program(record, "server", "server", _server_argv(record)))
    with httpx.Client(
        base_url=record.endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=5.0
    ) as api:
        _wait_api(api, record, sup, deadline, strict=True)
        for zone in spec.zones:
            try:
                r = api.post("/v1/zones", json={"name": zone.name, "underlay_cidr": zone.cidr})
            except httpx.HTTPError as exc:
                raise LabError(f"creating zone {zone.name} failed: {exc}") from exc
            if r.status_code not in (200, 201, 409):
                raise LabError(f"creating zone {zone.name} failed: HTTP {r.status_code} {r.text}")
        for host in spec.hosts:
            # Each agent gets a one-time bootstrap token on its stdin, through the
            # supervisor's (which keeps it in memory for a restart before the exchange).
            boot = _bootstrap_token(api, record.prefix, host.name)
            _give(sup, _program(record, "agent", host.name, _agent_argv(record, host), boot))
        assert sup.stdin is not None
        sup.stdin.close()
        _wait_agents(api, record, sup, {h.name for h in spec.hosts}, deadline, strict=True)
    if err := _trouble(record, sup, {"echo"}, strict=True):
        raise err
    return handle


def _bootstrap_token(api: httpx.Client, prefix: str, host: str) -> str:
    """A one-time token for `host`'s agent (it never gets the admin token)."""
    import httpx

    try:
        r = api.post(
            f"/v1/hosts/{host}/bootstrap-tokens",
            json={"expires_in": 600, "description": f"lab region {prefix}"},
        )
    except httpx.HTTPError as exc:
        raise LabError(f"creating the bootstrap token of host {host} failed: {exc}") from exc
    if r.status_code != 201:
        raise LabError(f"creating the bootstrap token of host {host} failed: HTTP {r.status_code}")
    return str(r.json()["token"])


def _wait_api(
    api: httpx.Client,
    record: RegionRecord,
    popen: subprocess.Popen[bytes] | None,
    deadline: float,
    *,
    strict: bool,
) -> None:
    import httpx

    last = "no answer yet"
    log = str(record.log_dir / "server.log")

    def answers() -> bool:
        nonlocal last
        if err := _trouble(record, popen, {"server"}, strict=strict):
            raise err
        try:
            r = api.get("/v1/revision")
            if r.status_code == 200 or (r.status_code == 401 and not strict):
                return True  # (a revival without the admin token: it answers, that is all)
            last = f"HTTP {r.status_code} {r.text[:200]}"
        except httpx.TransportError as exc:
            last = str(exc) or type(exc).__name__
        return False

    if not poll_until(answers, deadline - time.monotonic(), interval=0.1, max_interval=0.1):
        raise TimedOut(
            f"the API server did not answer at {api.base_url} in time ({last}); "
            f"last lines of {log}:\n{_tail(log)}"
        )


def _wait_agents(
    api: httpx.Client,
    record: RegionRecord,
    popen: subprocess.Popen[bytes] | None,
    agents: set[str],
    deadline: float,
    *,
    strict: bool,
) -> None:
    import httpx

    pending = sorted(agents)

    def registered() -> bool:
        nonlocal pending
        if err := _trouble(record, popen, {"server", *agents}, strict=strict):
            raise err
        try:
            r = api.get("/v1/hosts")
        except httpx.TransportError:
            return False  # the server's own exit is reported above on the next pass
        if r.status_code == 200:
            hosts = r.json()["items"]  # a lab has far fewer hosts than a page holds
            healthy = {h["name"] for h in hosts if (h.get("status") or {}).get("healthy")}
            pending = sorted(agents - healthy)
        return not pending

    if not poll_until(registered, deadline - time.monotonic(), interval=0.2, max_interval=0.2):
        logs = "\n".join(
            f"  {log}:\n{_tail(log, 5)}"
            for n in pending
            for log in [str(record.log_dir / f"{n}.log")]
        )
        raise TimedOut(f"agents not registered and healthy in time: {', '.join(pending)}\n{logs}")


# -- down / sweep ----------------------------------------------------------------------------


def down(state_dir: Path | None = None, *, keep_logs: bool = False) -> Removed:
    """Stop and remove the region of `state_dir`: processes, namespaces, mounts, state files.

    Idempotent: with no region (or after a half-failed `up`) it removes what is there and
    returns an empty `Removed` when nothing was left.
    """
    state_dir = Path(state_dir or default_state_dir()).absolute()
    with _locked(state_dir):
        record = RegionRecord.load(state_dir)
        if record is None:
            return Removed()
        return _teardown(record.prefix, record, keep_logs=keep_logs)


def _teardown(prefix: str, record: RegionRecord | None, *, keep_logs: bool = False) -> Removed:
    removed = Removed()
    if record is not None:
        # Server and agents together, with a short grace: a server drains its agents' long
        # polls (up to 20 s) before it exits, and what either would save on a graceful stop
        # is deleted below anyway. All are gone before any namespace is touched, so no agent
        # rebuilds what we delete. A foreground `up` supervising the region is left alone:
        # it notices that its record is gone and exits (killing it could deadlock on the lock).
        # The supervisor first, so that it restarts nothing of what follows; then what it
        # ran, as its file says once it is gone (it writes every start down at once).
        sups = [p.pid for p in record.processes if p.role == "supervisor" and p.alive()]
        removed.processes += cleanup.kill(sups, grace=STOP_GRACE)
        alive = [
            p.pid
            for p in record.every_process()
            if p.role in ("agent", "server", "echo") and p.alive()
        ]
        removed.processes += cleanup.kill(alive, grace=STOP_GRACE)
    # Another registered region whose prefix extends ours ("<prefix>-b") shares every
    # name pattern of ours: its names are never ours to remove.
    spare = [p for p in _registered() if p != prefix and cleanup.owned(p, prefix)]
    rest = topology.teardown(prefix, spare)
    removed.processes += rest.processes
    removed.namespaces, removed.mounts, removed.links = rest.namespaces, rest.mounts, rest.links
    if record is not None:
        shutil.rmtree(record.data_dir, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(record.log_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                record.log_dir.parent.rmdir()  # "logs/", when no other region's logs are left
        rec = Path(record.state_dir) / RECORD
        with contextlib.suppress(FileNotFoundError):
            if json.loads(rec.read_text()).get("prefix") == prefix:
                rec.unlink()
    with contextlib.suppress(FileNotFoundError):
        (REGISTRY / f"{prefix}.json").unlink()
    return removed


def _prune_logs(state_dir: Path) -> None:
    logs = state_dir / "logs"
    if logs.is_dir():
        shutil.rmtree(logs, ignore_errors=True)


def _registered() -> dict[str, RegionRecord | None]:
    """prefix -> its record (None when the index points to a state dir without it)."""
    found: dict[str, RegionRecord | None] = {}
    if not REGISTRY.is_dir():
        return found
    for entry in REGISTRY.glob("*.json"):
        prefix = entry.stem
        try:
            state_dir = Path(json.loads(entry.read_text())["state_dir"])
            record = RegionRecord.load(state_dir)
        except (OSError, ValueError, KeyError, YunhanError):
            record = None
        found[prefix] = record if record is not None and record.prefix == prefix else None
    return found


def sweep(prefixes: list[str] | None = None, state_dir: Path | None = None) -> dict[str, Removed]:
    """Remove orphans: everything of a region prefix that has no live region record.

    By default it looks for lab region prefixes ("yh" + 4 hex) among namespaces, lab
    processes, root links and the /run/yunhan index; pass `prefixes` to restrict it (tests
    pass their own). A live region (any of its processes running) is never touched.
    Returns what was removed, per prefix.
    """
    registered = _registered()
    local = RegionRecord.load(Path(state_dir or default_state_dir()).absolute())
    if local is not None:
        registered.setdefault(local.prefix, local)
    if prefixes is None:
        found: set[str] = set(registered)
        for ns in cleanup.list_netns():
            head = ns.split("-", 1)[0]
            if REGION_PREFIX_RE.match(head):
                found.add(head)
        found.update(cleanup.marked_pids(lambda r: bool(REGION_PREFIX_RE.match(r))).values())
        for pid in os.listdir("/proc"):
            netns = cleanup.agent_netns_of(int(pid)) if pid.isdigit() else None
            if netns and REGION_PREFIX_RE.match(netns.split("-", 1)[0]):
                found.add(netns.split("-", 1)[0])
        for link in cleanup.root_links():
            head = link.split("-", 1)[0]
            if REGION_PREFIX_RE.match(head) and link != head:
                found.add(head)
        prefixes = sorted(found)
    result = {}
    for prefix in prefixes:
        record = registered.get(prefix)
        if record is None:
            result[prefix] = _teardown(prefix, None)
            continue
        with _locked(Path(record.state_dir)):
            # Read again under the lock: an `up` may have finished (or started) meanwhile.
            record = RegionRecord.load(Path(record.state_dir))
            if record is not None and record.prefix != prefix:
                record = None
            if record is None or not record.live():
                result[prefix] = _teardown(prefix, record)
    return result


# -- status ----------------------------------------------------------------------------------


@dataclass
class RegionStatus:
    """What `yunhan status` shows: the record, which processes live, and the API's view."""

    record: RegionRecord
    processes: list[tuple[ProcessRecord, bool]]
    api_error: str | None = None
    zones: list[dict[str, Any]] = field(default_factory=list)
    hosts: list[dict[str, Any]] = field(default_factory=list)


def status(state_dir: Path | None = None, token: str | None = None) -> RegionStatus | None:
    """The region of `state_dir` and its health, or None when no region is recorded there.

    Zones and hosts are asked of the API with `token` (the admin's; the region keeps no
    token): without it, `api_error` says so."""
    import httpx

    state_dir = Path(state_dir or default_state_dir()).absolute()
    record = RegionRecord.load(state_dir)
    if record is None:
        return None
    st = RegionStatus(record, [(p, p.alive()) for p in record.every_process()])
    if not token:
        st.api_error = "no admin token (yunhan up wrote it to the CLI config)"
        return st
    try:
        with httpx.Client(
            base_url=record.endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=5.0
        ) as api:
            for path, attr in (("/v1/zones", "zones"), ("/v1/hosts", "hosts")):
                r = api.get(path, params={"limit": 1000})
                r.raise_for_status()
                setattr(st, attr, r.json()["items"])
    except (OSError, httpx.HTTPError, ValueError) as exc:
        st.api_error = str(exc) or type(exc).__name__
    return st
