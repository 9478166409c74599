"""The agent when its control plane comes back with another store (a new database).

Revisions of the old store mean nothing to the new one: an agent that keeps asking for
documents "after" its old revision must not keep the old store's document (and keep
re-applying it) while the new store's document has a lower revision.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from fastapi.testclient import TestClient

from tests.polling import wait_for
from yunhan.agent.dataplane import DataPlane
from yunhan.agent.main import Agent, AgentConfig
from yunhan.api.app import create_app
from yunhan.controller import Controller
from yunhan.net.naming import Naming
from yunhan.store import Store

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

ADMIN_TOKEN = "yh_test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class _Via(httpx.BaseTransport):
    """Carries the agent's requests to the app behind `client` (a TestClient); pointing
    it at another app is the control plane coming back on a new database."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.client.send(request)
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)


def _agent(tmp_path: Path, transport: httpx.BaseTransport) -> Agent:
    cfg = AgentConfig(
        api_url="http://testserver",
        token=ADMIN_TOKEN,
        host_name="h1",
        zone="az1",
        underlay_ip="198.18.1.11",
        mtu=1500,
        host_netns=None,
        prefix="h1-",
        driver="fake",
        state_dir=tmp_path / "agent",
        resync_interval=0.3,
    )
    cfg.state_dir.mkdir(parents=True)
    dp = DataPlane(naming=Naming("h1-"), host_netns=None, driver="fake", state_dir=cfg.state_dir)
    return Agent(cfg, dp, transport=transport)


def test_agent_adopts_a_new_stores_document_with_a_lower_revision(
    cloud: Cloud, net: dict[str, Any], tmp_path: Path
) -> None:
    inst = cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    cloud.reconcile()
    via = _Via(TestClient(cloud.client.app))
    agent = _agent(tmp_path, via)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        wait_for(
            lambda: agent.desired is not None and [i.id for i in agent.desired.instances],
            10,
            "agent applied the old store's document",
        )
        assert agent.desired is not None and agent.desired.instances[0].id == inst["id"]
        old_applied = agent.applied_revision

        # The control plane restarts on a fresh database: the host is registered again,
        # its (empty) document has a low revision, and the store has moved past the
        # revision the agent remembers.
        store = Store.open(tmp_path / "new", poll_interval=0.05)
        app = create_app(store, admin_token=ADMIN_TOKEN, max_long_poll=30)
        new = TestClient(app, headers=ADMIN)
        assert new.post("/v1/zones", json={"name": "az1", "underlay_cidr": "198.18.1.0/24"})
        new.put(
            "/v1/agent/hosts/h1", json={"zone": "az1", "underlay_ip": "198.18.1.11", "mtu": 1500}
        )
        Controller(store).reconcile_once()
        doc_revision = new.get("/v1/hosts/h1").json()["status"]["desired_revision"]
        assert doc_revision < old_applied
        n = 0
        while store.revision() <= old_applied:
            n += 1
            assert new.post("/v1/projects", json={"name": f"p{n}"}).status_code == 201
        via.client = new

        wait_for(
            lambda: (
                agent.applied_revision == doc_revision
                and agent.desired is not None
                and agent.desired.instances == ()
            ),
            10,
            "agent applied the new store's document",
        )
        assert agent.dataplane.plan(agent.desired) == []  # the old instance is gone
    finally:
        agent.stop()
        runner.join(10)
