"""The agent loop against a real control plane (`yunhan server` on loopback) and fake hosts.

No root needed: the agents drive `fake` data planes sharing one FakeFabric, which answers
whether a packet from one instance reaches an address. What is checked is what a user of the
region sees: writes converge, instances run, packets arrive; an agent that was away catches
up; drift on a host is repaired by the periodic resync without any upstream change.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.polling import wait_for
from yunhan.agent.dataplane import DataPlane
from yunhan.agent.main import Agent, AgentConfig
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming

TOKEN = "yh_test_admin_token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    url: str
    http: httpx.Client

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post(path, json=body)
        assert r.status_code < 300, r.text
        data: dict[str, Any] = r.json()
        return data

    def get(self, path: str, **params: Any) -> Any:
        r = self.http.get(path, params=params)
        assert r.status_code < 300, r.text
        return r.json()

    def converged(self, revision: int) -> bool:
        return bool(self.get("/v1/converged", revision=revision, timeout=0)["converged"])


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    port = _free_port()
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    yunhan = [sys.executable, "-m", "yunhan.cli"]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [*yunhan, "server", "--state-dir", str(tmp_path / "server"),
         "--listen", f"127.0.0.1:{port}", "--admin-token-file", str(token_file)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    try:

        def up() -> bool:
            try:
                return http.get("/v1/zones").status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None  # fail fast below if it died

        wait_for(up, 30, "API server")
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        yield ControlPlane(url, http)
    finally:
        http.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Hosts:
    """Agents in threads, each with a fake data plane on one shared fabric."""

    def __init__(self, cp: ControlPlane, state: Path) -> None:
        self.cp = cp
        self.state = state
        self.fabric = FakeFabric()
        self.agents: dict[str, tuple[Agent, threading.Thread]] = {}

    def start(self, name: str, zone: str, ip: str, resync: float = 30.0) -> Agent:
        cfg = AgentConfig(
            api_url=self.cp.url,
            token=TOKEN,
            host_name=name,
            zone=zone,
            underlay_ip=ip,
            mtu=1500,
            host_netns=None,
            prefix=f"{name}-",
            driver="fake",
            state_dir=self.state / name,
            resync_interval=resync,
        )
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        dp = DataPlane(
            naming=Naming(cfg.prefix),
            host_netns=None,
            driver="fake",
            state_dir=cfg.state_dir,
            fabric=self.fabric,
        )
        agent = Agent(cfg, dataplane=dp)
        t = threading.Thread(target=agent.run, name=f"agent-{name}", daemon=True)
        t.start()
        self.agents[name] = (agent, t)
        return agent

    def stop(self, name: str) -> None:
        agent, t = self.agents.pop(name)
        agent.stop()
        t.join(timeout=40)
        assert not t.is_alive(), f"agent {name} did not stop"

    def stop_all(self) -> None:
        for name in list(self.agents):
            self.stop(name)


@pytest.fixture
def hosts(cp: ControlPlane, tmp_path: Path) -> Iterator[Hosts]:
    h = Hosts(cp, tmp_path / "agents")
    try:
        yield h
    finally:
        h.stop_all()


def _region(cp: ControlPlane, hosts: Hosts, resync: float = 30.0) -> None:
    cp.post("/v1/zones", {"name": "az1", "underlay_cidr": "198.18.1.0/24"})
    cp.post("/v1/zones", {"name": "az2", "underlay_cidr": "198.18.2.0/24"})
    hosts.start("az1-h1", "az1", "198.18.1.11", resync)
    hosts.start("az2-h1", "az2", "198.18.2.11", resync)
    wait_for(lambda: all(h["status"].get("healthy") for h in cp.get("/v1/hosts"))
             and len(cp.get("/v1/hosts")) == 2, 20, "hosts healthy")  # fmt: skip


def _vpc_with_two_instances(cp: ControlPlane) -> tuple[dict[str, Any], dict[str, Any]]:
    cp.post("/v1/vpcs", {"name": "prod", "cidrs": ["10.0.0.0/16"]})
    cp.post("/v1/subnets", {"name": "web", "vpc": "prod", "cidr": "10.0.1.0/24"})
    a = cp.post("/v1/instances", {"name": "a", "subnet": "web", "zone": "az1"})
    b = cp.post("/v1/instances", {"name": "b", "subnet": "web", "zone": "az2"})
    return a, b


def test_writes_converge_and_packets_flow(cp: ControlPlane, hosts: Hosts) -> None:
    _region(cp, hosts)
    a, b = _vpc_with_two_instances(cp)
    wait_for(lambda: cp.converged(b["revision"]), 20, "convergence")
    for inst in (a, b):
        wait_for(lambda i=inst: cp.get(f"/v1/instances/{i['id']}")["status"]["phase"] == "running",
                 20, "running")  # fmt: skip
    assert hosts.fabric.trace(a["id"], b["status"]["ip"]).delivered
    assert hosts.fabric.trace(b["id"], a["status"]["ip"]).delivered
    assert not hosts.fabric.trace(a["id"], "10.0.1.200").delivered
    # Deleting b is carried to both hosts: a can no longer reach b's address.
    r = cp.http.delete(f"/v1/instances/{b['id']}")
    assert r.status_code < 300, r.text
    rev = int(cp.get("/v1/revision")["revision"])
    wait_for(lambda: cp.converged(rev), 20, "delete converged")
    assert not hosts.fabric.trace(a["id"], b["status"]["ip"]).delivered


def test_agent_away_catches_up_and_converged_waits_for_it(cp: ControlPlane, hosts: Hosts) -> None:
    _region(cp, hosts)
    a, b = _vpc_with_two_instances(cp)
    wait_for(lambda: cp.converged(b["revision"]), 20, "convergence")
    hosts.stop("az2-h1")
    c = cp.post("/v1/instances", {"name": "c", "subnet": "web", "zone": "az2"})
    # az2-h1 must carry c and is away: the write is not converged, and says who is pending.
    got = cp.get("/v1/converged", revision=c["revision"], timeout=1)
    assert not got["converged"] and "az2-h1" in got["pending"]
    hosts.start("az2-h1", "az2", "198.18.2.11")
    wait_for(lambda: cp.converged(c["revision"]), 20, "catch-up")
    assert hosts.fabric.trace(a["id"], c["status"]["ip"]).delivered
    # The data plane of the host was kept while its agent was away: b never lost its port.
    assert hosts.fabric.trace(a["id"], b["status"]["ip"]).delivered


def test_periodic_resync_repairs_drift(cp: ControlPlane, hosts: Hosts) -> None:
    _region(cp, hosts, resync=0.5)
    a, b = _vpc_with_two_instances(cp)
    wait_for(lambda: cp.converged(b["revision"]), 20, "convergence")
    # The agents' reports of their instances (phase running) are writes too: let them land.
    for i in (a, b):
        wait_for(
            lambda i=i: cp.get(f"/v1/instances/{i['id']}")["status"]["phase"] == "running",
            20,
            "running",
        )
    assert hosts.fabric.trace(a["id"], b["status"]["ip"]).delivered
    kernel = hosts.fabric.host(Naming("az1-h1-"), None)
    routes = [k for k in kernel.objs if k[0] == "route" and b["status"]["ip"] in str(k)]
    assert routes, "no route to b on az1-h1"
    for k in routes:
        del kernel.objs[k]  # someone deletes the route by hand
    assert not hosts.fabric.trace(a["id"], b["status"]["ip"]).delivered
    rev = int(cp.get("/v1/revision")["revision"])
    wait_for(lambda: hosts.fabric.trace(a["id"], b["status"]["ip"]).delivered, 20, "repair")
    assert int(cp.get("/v1/revision")["revision"]) == rev  # repaired with no upstream change
