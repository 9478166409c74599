"""The CLI against the real API app (yunhan.api.app over a real Store in tmp_path).

`Region` wires `yunhan.cli.main.main` to the app through `AppTransport` (the CLI's
Transport interface over Starlette's TestClient, in process, no socket), and plays the
host agents: a thread per test long-polls each host's desired document, acknowledges the
revision and reports the instances it carries as running, as a real agent would. Tests
then assert on what a user sees: stdout, stderr and the exit code.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from yunhan.api.app import create_app
from yunhan.cli.client import Reply
from yunhan.cli.main import main
from yunhan.store import Store

ADMIN_TOKEN = "yh_cli-test-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ENDPOINT = "http://yunhan.test"


class AppTransport:
    """The CLI's transport into the ASGI app, through Starlette's TestClient."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def __call__(
        self,
        base: str,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Reply:
        r = self._client.request(method, target, headers=headers, content=body)
        return Reply(r.status_code, r.content, {k.lower(): v for k, v in r.headers.items()})

    def close(self) -> None:
        pass


class CountingTransport:
    """A transport that notes each request (method, path) before passing it on: a test
    sees that a refused command sent nothing."""

    def __init__(self, inner: AppTransport) -> None:
        self.inner = inner
        self.sent: list[tuple[str, str]] = []

    def __call__(
        self,
        base: str,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Reply:
        self.sent.append((method, target))
        return self.inner(base, method, target, headers, body, timeout)

    def close(self) -> None:
        pass


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, (self.code, self.stderr)
        return json.loads(self.stdout)


@dataclass
class Region:
    """The app, its HTTP client, the agents the test plays, and a way to run the CLI."""

    http: TestClient
    capsys: pytest.CaptureFixture[str]
    transport: AppTransport | CountingTransport
    hosts: list[str] = field(default_factory=list)
    # Hosts whose agent acknowledges nothing, and hosts that report an apply error.
    silent: set[str] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def cli(self, *args: str) -> Run:
        self.capsys.readouterr()
        code = main(list(args), transport=self.transport)
        out = self.capsys.readouterr()
        return Run(code, out.out, out.err)

    def ok(self, *args: str) -> Run:
        r = self.cli(*args)
        assert r.code == 0, (args, r.stderr)
        return r

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, headers=ADMIN, **kw)
        assert r.status_code < 300, r.text
        return r.json() if r.content else None

    def add_host(self, name: str, zone: str, ip: str) -> None:
        self.api("PUT", f"/v1/agent/hosts/{name}", json={"zone": zone, "underlay_ip": ip})
        self.hosts.append(name)
        self.report(name, 0, {})  # a first heartbeat: the host is healthy

    def report(
        self,
        host: str,
        applied: int,
        instances: dict[str, Any],
        volumes: dict[str, Any] | None = None,
    ) -> None:
        body = {
            "applied_revision": applied,
            "error": "nft: boom" if host in self.failing else None,
            "instances": instances,
            "volumes": volumes or {},
        }
        self.api("POST", f"/v1/agent/hosts/{host}/status", json=body)

    def play_agents(self) -> None:
        """One pass of every agent: take the document's changes, apply, acknowledge."""
        for host in list(self.hosts):
            if host in self.silent:
                continue
            r = self.http.get(
                f"/v1/agent/hosts/{host}/desired",
                params={"after": 0, "timeout": 0},
                headers=ADMIN,
            )
            if r.status_code != 200:
                continue
            doc = r.json()
            members = {
                key.rsplit("/", 1)[1]: value
                for key, value in doc["entries"].items()
                if "/m/" in key and value.get("host") == host
            }
            volumes = {
                key.split("/", 1)[1]: _volume_report(value)
                for key, value in doc["entries"].items()
                if key.startswith("volume/")
            }
            self.report(host, doc["revision"], {i: {"phase": "running"} for i in members}, volumes)

    def agents_loop(self) -> None:
        while not self.stop.wait(0.05):
            self.play_agents()


def _volume_report(entry: dict[str, Any]) -> dict[str, Any]:
    """What a volume's agent would say once it applied `entry`: attached or available, the
    last restore done, and (protected) restore points every second of the last hour; or,
    deleted, that its data is gone."""
    now = time.time_ns()
    timeline = [{"from_ns": now - 3600 * 10**9, "to_ns": now, "every_s": 1}]
    if entry.get("delete"):
        return {"phase": "deleted"}  # its data removed
    return {
        "phase": "attached" if entry["attach"] else "available",
        "mounted": bool(entry["attach"]),
        "restored_serial": (entry["restore"] or {}).get("serial", 0),
        "timeline": timeline if entry["tiers"] else [],
        "used_bytes": 4096,
    }


@pytest.fixture
def region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Region]:
    """Zones az1 and az2 with a host each (az1-h1, az2-h1), agents played in a thread; the
    CLI configured by environment with the admin token and a HOME of its own."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("YUNHAN_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("YUNHAN_TOKEN", ADMIN_TOKEN)
    store = Store.open(tmp_path / "state")
    app = create_app(store, admin_token=ADMIN_TOKEN, max_long_poll=5)
    with TestClient(app) as http:
        reg = Region(http, capsys, AppTransport(http))
        reg.api("POST", "/v1/zones", json={"name": "az1", "underlay_cidr": "198.18.1.0/24"})
        reg.api("POST", "/v1/zones", json={"name": "az2", "underlay_cidr": "198.18.2.0/24"})
        reg.add_host("az1-h1", "az1", "198.18.1.11")
        reg.add_host("az2-h1", "az2", "198.18.2.11")
        agents = threading.Thread(target=reg.agents_loop, name="test-agents")
        agents.start()
        try:
            yield reg
        finally:
            reg.stop.set()
            agents.join()
    store.close()
