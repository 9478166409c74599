"""Control-plane processes for integration tests: a lab topology whose `yunhan server`
replicas and agents the test itself starts, SIGKILLs and restarts.

`yunhan.lab.region.up` owns exactly one server on SQLite; a failover test must kill it,
bring it back on the same database and port, or run two replicas with agents that know
both. So this builds the lab's routed underlay (`yunhan.lab.topology`, the same namespaces
`yunhan up` builds) and runs the processes directly, each with its own log. Every process
carries YUNHAN_REGION=<prefix>, as lab processes do, so `topology.teardown(prefix)` finds
and kills it even when the test dies before `close`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.polling import wait_for
from yunhan.lab import topology
from yunhan.lab.cleanup import REGION_ENV
from yunhan.lab.spec import HostSpec, RegionSpec

REPO = Path(__file__).resolve().parents[2]
LEADING_RE = re.compile(r"leading the controller \(epoch (\d+)\)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """One process of ours, with its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL, and reap it: nothing of it may run on (no graceful release of anything)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)


@dataclass
class Server:
    proc: Proc
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def epochs(self) -> list[int]:
        """The leader epochs this replica has announced in its log, in order."""
        return [int(m) for m in LEADING_RE.findall(self.proc.text())]


@dataclass
class ControlPlaneLab:
    """The topology of `spec` plus servers on `database` and agents, all started on demand."""

    spec: RegionSpec
    workdir: Path
    database: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_file = self.workdir / "admin.token"
        self.log_dir = self.workdir / "logs"

    def __enter__(self) -> ControlPlaneLab:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token + "\n")
        try:
            topology.realise(self.spec)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill our processes, then remove every namespace, process and mount of the prefix."""
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.kill()
            # Should it not die, the teardown below kills by prefix and says so if it cannot.
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=10)
        topology.teardown(self.spec.prefix)

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> Proc:
        log = self.log_dir / f"{name}.log"
        env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **{REGION_ENV: self.spec.prefix},
        )
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "yunhan.cli", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_server(self, name: str, port: int | None = None) -> Server:
        """A `yunhan server` on `database`, listening on 127.0.0.1:`port` (a free one by
        default); returns once its API answers."""
        port = port or free_port()
        state = self.workdir / name
        proc = self._spawn(name, [
            "server", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}",
            "--admin-token-file", str(self.token_file), "--database", self.database,
        ])  # fmt: skip
        server = Server(proc, port)

        def answers() -> bool:
            assert proc.popen.poll() is None, f"server {name} exited:\n{proc.tail()}"
            try:
                return httpx.get(f"{server.endpoint}/v1/revision", headers=self.auth).is_success
            except httpx.TransportError:
                return False

        wait_for(answers, 60, f"server {name} to answer")
        return server

    def start_agent(self, host: HostSpec, endpoints: list[str]) -> Proc:
        """A `yunhan agent` (linux driver) for `host`, given every endpoint in order."""
        return self._spawn(f"agent-{host.name}", [
            "agent", "--api", ",".join(endpoints), "--token-file", str(self.token_file),
            "--host", host.name, "--zone", host.zone, "--underlay-ip", host.underlay_ip,
            "--mtu", str(self.spec.mtu), "--host-netns", host.netns,
            "--prefix", host.agent_prefix, "--state-dir", str(self.workdir / "agents" / host.name),
        ])  # fmt: skip

    # -- the API ---------------------------------------------------------------------------

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def api(self, endpoint: str) -> Api:
        return Api(httpx.Client(base_url=endpoint, headers=self.auth, timeout=30.0))


@dataclass
class Api:
    """The few API calls the failover tests make, failing loudly with the server's answer."""

    http: httpx.Client

    def call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        assert r.is_success, f"{method} {path} -> {r.status_code} {r.text}"
        return r.json() if r.content else None

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.call("POST", path, json=body)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def find(self, path: str) -> Any:
        """GET, or None when the resource is not (yet) there."""
        r = self.http.get(path)
        if r.status_code == 404:
            return None
        assert r.is_success, f"GET {path} -> {r.status_code} {r.text}"
        return r.json()

    def healthy(self) -> set[str]:
        page = self.get("/v1/hosts", limit=1000)  # a page: {"items", "next", "revision"}
        return {h["name"] for h in page["items"] if h["status"]["healthy"]}

    def wait_converged(self, revision: int, timeout: float = 60.0) -> None:
        """Long-poll GET /v1/converged until write `revision` is applied by every host it
        changed (slices of 10 s, so that one slow answer never outlives `timeout`)."""
        last: dict[str, Any] = {}

        def converged() -> bool:
            nonlocal last
            last = self.get("/v1/converged", revision=revision, timeout=10)
            return bool(last["converged"])

        try:
            wait_for(converged, timeout, f"revision {revision} to converge")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {last}") from None

    def wait_running(self, ref: str, timeout: float = 60.0) -> dict[str, Any]:
        """The instance once it runs (a write of another process may not be here yet)."""

        def running() -> dict[str, Any] | None:
            inst: dict[str, Any] | None = self.find(f"/v1/instances/{ref}")
            return inst if inst and inst["status"]["phase"] == "running" else None

        return wait_for(running, timeout, f"instance {ref} running")


def ping(netns: str, ip: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    """`ping` from inside an instance's network namespace."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", ip],
        capture_output=True,
        text=True,
        timeout=30,
    )


class Pinger:
    """A long `ping -i 0.05 -c N` inside a namespace; its replies are counted as they come
    (iputils ping writes a line per reply, flushed), so a test can act mid-ping."""

    def __init__(self, netns: str, ip: str, count: int) -> None:
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-c", str(count), "-i", "0.05", "-W", "1", ip],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def replies(self) -> int:
        return sum(1 for line in list(self.lines) if " bytes from " in line)

    def finish(self, timeout: float) -> str:
        """Wait for ping to end; its whole output."""
        self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return "".join(self.lines)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)
