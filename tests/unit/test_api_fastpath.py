"""The agents' fast path answers what the app would, and hands everything else to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cp_fixtures import ADMIN, ADMIN_TOKEN, FakeClock
from fastapi.testclient import TestClient

from yunhan.api.app import create_app
from yunhan.api.fastpath import AgentFastPath
from yunhan.store import Store


@pytest.fixture
def pair(tmp_path: Any) -> Iterator[tuple[TestClient, TestClient, AgentFastPath]]:
    store = Store.open(tmp_path)
    app = create_app(store, admin_token=ADMIN_TOKEN, clock=FakeClock(), max_long_poll=5)
    fast = AgentFastPath(app, app.state.yunhan)
    with TestClient(app) as plain, TestClient(fast) as quick:
        plain.post(
            "/v1/zones", json={"name": "az1", "underlay_cidr": "198.18.1.0/24"}, headers=ADMIN
        )
        for i, h in enumerate(("h1", "h2"), 11):
            plain.put(
                f"/v1/agent/hosts/{h}",
                json={"zone": "az1", "underlay_ip": f"198.18.1.{i}"},
                headers=ADMIN,
            )
        yield plain, quick, fast
    store.close()


def test_a_valid_poll_and_report_are_answered_as_the_app_answers(
    pair: tuple[TestClient, TestClient, AgentFastPath],
) -> None:
    plain, quick, fast = pair
    slow = plain.get("/v1/agent/hosts/h1/desired", params={"after": 0}, headers=ADMIN)
    got = quick.get("/v1/agent/hosts/h1/desired", params={"after": 0}, headers=ADMIN)
    assert fast.served == 1
    assert (got.status_code, got.json()) == (slow.status_code, slow.json())
    assert got.headers["x-yunhan-store"] == slow.headers["x-yunhan-store"]
    assert got.headers["x-request-id"]
    rev = got.json()["revision"]
    unchanged = quick.get(
        "/v1/agent/hosts/h1/desired", params={"after": rev, "timeout": 0}, headers=ADMIN
    )
    assert unchanged.status_code == 204 and fast.served == 2
    r = quick.post(
        "/v1/agent/hosts/h1/status", json={"applied_revision": rev, "instances": {}}, headers=ADMIN
    )
    assert r.status_code == 204 and fast.served == 3
    host = plain.get("/v1/hosts/h1", headers=ADMIN).json()
    assert host["status"]["applied_revision"] == rev and host["status"]["healthy"] is True


@pytest.mark.parametrize(
    ("method", "path", "kw", "status"),
    [
        ("GET", "/v1/agent/hosts/h1/desired?after=0&bogus=1", {}, 400),  # unknown parameter
        ("GET", "/v1/agent/hosts/h1/desired?after=-1", {}, 400),  # out of range
        ("GET", "/v1/agent/hosts/h1/desired?timeout=nan", {}, 400),
        ("GET", "/v1/agent/hosts/nope/desired", {}, 404),  # not registered
        ("POST", "/v1/agent/hosts/h1/status", {"json": {"applied_revision": "x"}}, 400),
        ("POST", "/v1/agent/hosts/nope/status", {"json": {"applied_revision": 1}}, 404),
    ],
)
def test_anything_but_a_valid_request_gets_the_apps_answer(
    pair: tuple[TestClient, TestClient, AgentFastPath],
    method: str,
    path: str,
    kw: dict[str, Any],
    status: int,
) -> None:
    plain, quick, fast = pair
    slow = plain.request(method, path, headers=ADMIN, **kw)
    got = quick.request(method, path, headers=ADMIN, **kw)
    assert fast.served == 0
    assert got.status_code == slow.status_code == status
    assert got.json()["error"]["code"] == slow.json()["error"]["code"]


def test_refused_tokens_are_the_apps_to_answer_and_audit(
    pair: tuple[TestClient, TestClient, AgentFastPath],
) -> None:
    plain, quick, fast = pair
    bad = {"Authorization": "Bearer yh_not-a-token"}
    assert quick.get("/v1/agent/hosts/h1/desired", headers=bad).status_code == 401
    tok = plain.post("/v1/hosts/h2/bootstrap-tokens", headers=ADMIN).json()["token"]
    host = plain.post(
        "/v1/agent/hosts/h2/token", headers={"Authorization": f"Bearer {tok}"}
    ).json()["token"]
    other = {"Authorization": f"Bearer {host}"}
    assert quick.get("/v1/agent/hosts/h1/desired", headers=other).status_code == 403
    assert quick.get("/v1/agent/hosts/h2/desired", headers=other).status_code == 200
    assert fast.served == 1
    records = plain.get("/v1/audit", headers=ADMIN).json()
    items = records["items"] if isinstance(records, dict) else records
    assert {r["result"] for r in items} >= {"unauthorized", "forbidden"}
