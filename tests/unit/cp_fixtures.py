"""Fixtures for control-plane tests: a store (SQLite and PostgreSQL), the app, a client.

Import the fixtures into a test module with `from cp_fixtures import *` (tests/unit is on
sys.path under pytest's default import mode).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from yunhan.api.app import create_app
from yunhan.controller import Controller
from yunhan.store import Store

ADMIN_TOKEN = "yh_test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class FakeClock:
    """A clock the test moves by hand (STYLE §12)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Cloud:
    """A control plane under test: API client, store, controller and clock."""

    client: TestClient
    store: Store
    controller: Controller
    clock: FakeClock
    admin: dict[str, str] = field(default_factory=lambda: dict(ADMIN))

    def revision(self) -> int:
        return self.store.revision()

    def call(self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        """Call the API expecting success; returns the decoded JSON (None for 204)."""
        r = self.client.request(method, path, headers=headers or ADMIN, **kw)
        assert r.status_code < 300, (r.status_code, r.text)
        return r.json() if r.status_code != 204 else None

    def rejected(
        self,
        method: str,
        path: str,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """Call expecting an error: checks status, shape, message, and that the store
        revision did not move (a rejected request changes nothing)."""
        before = self.revision()
        r = self.client.request(method, path, headers=headers or ADMIN, **kw)
        assert r.status_code == status, (r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) == {"code", "message", "details"}
        assert message in err["message"], err["message"]
        assert self.revision() == before
        return err

    def project(self, name: str) -> dict[str, str]:
        """Create a project; returns the Authorization header of its token."""
        body = self.call("POST", "/v1/projects", json={"name": name})
        assert body["token"].startswith("yh_")
        return {"Authorization": f"Bearer {body['token']}"}

    def zone(self, name: str, cidr: str) -> dict[str, Any]:
        return self.call("POST", "/v1/zones", json={"name": name, "underlay_cidr": cidr})

    def host(self, name: str, zone: str, ip: str) -> dict[str, Any]:
        return self.call(
            "PUT", f"/v1/agent/hosts/{name}", json={"zone": zone, "underlay_ip": ip, "mtu": 1500}
        )

    def heartbeat(self, host: str, applied: int, instances: dict[str, Any] | None = None) -> None:
        self.call(
            "POST",
            f"/v1/agent/hosts/{host}/status",
            json={"applied_revision": applied, "instances": instances or {}},
        )

    def reconcile(self) -> int:
        return self.controller.reconcile_once()


@pytest.fixture
def cloud(store_url: str) -> Iterator[Cloud]:
    """A control plane on each backend (SQLite, then PostgreSQL): the API suites run on
    both, as the store's own suite does."""
    clock = FakeClock()
    store = Store.connect(store_url, poll_interval=0.05)
    app = create_app(store, admin_token=ADMIN_TOKEN, clock=clock, max_long_poll=30)
    with TestClient(app) as client:
        yield Cloud(client, store, Controller(store, clock=clock), clock)
    store.close()


@pytest.fixture
def net(cloud: Cloud) -> dict[str, Any]:
    """Two zones, a host in each, a tenant with VPC prod (10.0.0.0/16) and subnet web."""
    cloud.zone("az1", "198.18.1.0/24")
    cloud.zone("az2", "198.18.2.0/24")
    cloud.host("h1", "az1", "198.18.1.11")
    cloud.host("h2", "az2", "198.18.2.11")
    t = cloud.project("tenant")
    vpc = cloud.call("POST", "/v1/vpcs", t, json={"name": "prod", "cidrs": ["10.0.0.0/16"]})
    web = cloud.call(
        "POST", "/v1/subnets", t, json={"name": "web", "vpc": "prod", "cidr": "10.0.1.0/24"}
    )
    return {"t": t, "vpc": vpc, "web": web}
