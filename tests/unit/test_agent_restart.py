"""Restarts that change nothing (issue 14), on the fake data plane over the real API app.

An agent restarted while the API is away keeps its host as it is (it applies nothing it
cannot confirm); once the API answers, here a restarted API process over the same store,
it resumes from the revision it held: no whole document is sent, no object is re-created,
and its restart is an event.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.polling import wait_for
from yunhan.agent.dataplane import DataPlane
from yunhan.agent.main import SAVED_DOC, Agent, AgentConfig
from yunhan.api.app import create_app
from yunhan.controller import Controller
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming
from yunhan.store import Store
from yunhan.supervised import CAUSE_ENV, RESTARTS_ENV

ADMIN_TOKEN = "yh_test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class _Switch(httpx.BaseTransport):
    """The agent's way to the API: to an app (a TestClient), or nowhere (None: refused)."""

    def __init__(self) -> None:
        self.client: TestClient | None = None
        self.refused = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.client is None:
            self.refused += 1
            raise httpx.ConnectError("connection refused", request=request)
        r = self.client.send(request)
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)


def _agent(state_dir: Path, fabric: FakeFabric, via: _Switch) -> Agent:
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
        state_dir=state_dir,
        resync_interval=30.0,
    )
    dp = DataPlane(
        naming=Naming("h1-"), host_netns=None, driver="fake", state_dir=state_dir, fabric=fabric
    )
    return Agent(cfg, dp, transport=via)


def _server(path: Path) -> tuple[Store, TestClient]:
    store = Store.open(path, poll_interval=0.05)
    app = create_app(store, admin_token=ADMIN_TOKEN, max_long_poll=30)
    return store, TestClient(app, headers=ADMIN)


def test_restarted_agent_and_server_resume_without_resend_or_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, api = _server(tmp_path / "db")
    api.post("/v1/zones", json={"name": "az1", "underlay_cidr": "198.18.1.0/24"})
    t = {"Authorization": "Bearer " + api.post("/v1/projects", json={"name": "t"}).json()["token"]}
    api.post("/v1/vpcs", headers=t, json={"name": "prod", "cidrs": ["10.0.0.0/16"]})
    api.post("/v1/subnets", headers=t, json={"name": "web", "vpc": "prod", "cidr": "10.0.1.0/24"})
    fabric, via, state = FakeFabric(), _Switch(), tmp_path / "agent"
    state.mkdir()
    via.client = api
    first = _agent(state, fabric, via)
    runner = threading.Thread(target=first.run, daemon=True)
    runner.start()
    wait_for(lambda: api.get("/v1/hosts/h1").status_code == 200, 10, "host registered")
    api.post("/v1/instances", headers=t, json={"name": "a", "subnet": "web", "zone": "az1"})
    Controller(store).reconcile_once()
    wait_for(
        lambda: first.report is not None and "running" in {
            r.phase for r in first.report.instances.values()
        },
        10,
        "instance running",
    )  # fmt: skip
    held = first.applied_revision
    carried = first.dataplane.observe()
    first.stop()
    runner.join(10)
    assert (state / SAVED_DOC).exists()

    # The agent starts again while the API is away (its supervisor said why).
    via.client = None
    monkeypatch.setenv(RESTARTS_ENV, "1")
    monkeypatch.setenv(CAUSE_ENV, "killed by SIGKILL")
    second = _agent(state, fabric, via)
    assert second.applied_revision == held and second.desired is not None
    runner = threading.Thread(target=second.run, daemon=True)
    runner.start()
    try:
        wait_for(lambda: via.refused >= 3, 10, "the agent trying the API")
        assert second.report is None  # nothing applied: nothing confirmed
        assert second.dataplane.observe() == carried

        # The API comes back as a new process over the same store.
        api.close()
        store.close()
        store, api = _server(tmp_path / "db")
        fleet = api.app.state.yunhan.fleet  # type: ignore[attr-defined]
        via.client = api
        doc_rev = api.get("/v1/hosts/h1").json()["status"]["desired_revision"]
        wait_for(lambda: second.applied_revision == doc_rev and second.report, 10, "resumed")
        assert second.report is not None and second.report.changes == 0
        assert second.dataplane.observe() == carried
        # An empty delta (the store moved on: instance phases) or none (it did not): never
        # the whole document.
        assert fleet.snapshots_sent == 0
        events = api.get("/v1/events", params={"for": "h1"}).json()["items"]
        assert [e["reason"] for e in events] == ["AgentRestarted"]
        assert "killed by SIGKILL" in events[0]["message"]
    finally:
        second.stop()
        runner.join(10)
        api.close()
        store.close()
