"""Credentials (issue 7): host tokens, revocation, expiry, no token in plaintext on disk;
the audit trail and its chain; events."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.testclient import TestClient
from sqlalchemy import delete, update

from yunhan.api.app import create_app
from yunhan.store import Store
from yunhan.store import schema as s

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _host_token(cloud: Cloud, host: str) -> dict[str, str]:
    boot = cloud.call("POST", f"/v1/hosts/{host}/bootstrap-tokens", json={"expires_in": 60})
    assert boot["token"].startswith("yhb_") and boot["kind"] == "bootstrap"
    got = cloud.call("POST", f"/v1/agent/hosts/{host}/token", _bearer(boot["token"]))
    assert got["token"].startswith("yhh_") and got["kind"] == "host" and got["host"] == host
    # One use: the bootstrap token is consumed by the exchange.
    cloud.rejected("POST", f"/v1/agent/hosts/{host}/token", 401, "revoked", _bearer(boot["token"]))
    return _bearer(got["token"])


def test_a_host_token_serves_its_own_host_only(cloud: Cloud, net: dict[str, Any]) -> None:
    h1 = _host_token(cloud, "h1")
    reg = {"zone": "az1", "underlay_ip": "198.18.1.11", "mtu": 1500}
    assert cloud.call("PUT", "/v1/agent/hosts/h1", h1, json=reg)["name"] == "h1"
    cloud.heartbeat("h1", 0)
    r = cloud.client.get("/v1/agent/hosts/h1/desired", params={"after": 0}, headers=h1)
    assert r.status_code == 200 and r.json()["host"] == "h1"
    cloud.call("POST", "/v1/agent/hosts/h1/status", h1, json={"applied_revision": 0})
    # Another host's document and endpoints: 403.
    for method, path in (
        ("GET", "/v1/agent/hosts/h2/desired"),
        ("POST", "/v1/agent/hosts/h2/status"),
        ("PUT", "/v1/agent/hosts/h2"),
    ):
        body = {"applied_revision": 0} if method == "POST" else reg
        cloud.rejected(method, path, 403, "serves host h1 only", h1, json=body)
    # Tenant and admin resources: 403.
    vpc = f"/v1/vpcs/{net['vpc']['id']}"
    for path in ("/v1/vpcs", "/v1/instances", "/v1/zones", "/v1/hosts", "/v1/projects",
                 "/v1/whoami", vpc, "/v1/audit", "/v1/tokens"):  # fmt: skip
        cloud.rejected("GET", path, 403, "valid only for host h1", h1)
    cloud.rejected("POST", "/v1/vpcs", 403, "agent endpoints", h1, json={"name": "x", "cidrs": []})
    # A bootstrap token for h1 cannot be exchanged as h2, nor used elsewhere.
    boot = cloud.call("POST", "/v1/hosts/h1/bootstrap-tokens")["token"]
    cloud.rejected("POST", "/v1/agent/hosts/h2/token", 403, "host h2", _bearer(boot))
    cloud.rejected("GET", "/v1/vpcs", 403, "bootstrap token", _bearer(boot))
    cloud.rejected("GET", "/v1/agent/hosts/h1/desired", 403, "own token", _bearer(boot))
    # A new exchange re-keys the host: the earlier host token is revoked.
    cloud.call("POST", "/v1/agent/hosts/h1/token", _bearer(boot))
    cloud.rejected("GET", "/v1/agent/hosts/h1/desired", 401, "revoked", h1)


def test_a_revoked_or_expired_token_is_refused_on_its_next_request(cloud: Cloud) -> None:
    t = cloud.project("alpha")
    made = cloud.call("POST", "/v1/projects/alpha/tokens", json={"description": "ci"})
    tok = _bearer(made["token"])
    assert cloud.call("GET", "/v1/vpcs", tok) is not None
    listed = cloud.call("GET", "/v1/projects/alpha/tokens")["items"]
    assert sorted(str(x["description"]) for x in listed) == ["None", "ci"]
    text = str(cloud.call("GET", "/v1/tokens"))
    assert made["token"] not in text and "hash" not in text  # metadata only
    gone = cloud.call("DELETE", f"/v1/tokens/{made['id']}")
    assert gone["revoked_at"] == cloud.clock.now
    cloud.rejected("GET", "/v1/vpcs", 401, f"token {made['id']} was revoked", tok)
    assert cloud.call("GET", "/v1/vpcs", t) is not None  # the project's other token
    short = cloud.call("POST", "/v1/projects/alpha/tokens", json={"expires_in": 30})["token"]
    assert cloud.call("GET", "/v1/vpcs", _bearer(short)) is not None
    cloud.clock.advance(31)
    cloud.rejected("GET", "/v1/vpcs", 401, "expired", _bearer(short))


TOKEN_RE = re.compile(rb"yh[bh]?_[A-Za-z0-9_-]{20,}")


def test_no_token_in_plaintext_in_the_state_dir(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state")
    app = create_app(store, admin_token="yh_admin-token-for-this-test-0123456789")
    tokens = []
    with TestClient(app) as c:
        admin = _bearer("yh_admin-token-for-this-test-0123456789")
        tokens.append(c.post("/v1/projects", json={"name": "p"}, headers=admin).json()["token"])
        tokens.append(c.post("/v1/projects/p/tokens", headers=admin).json()["token"])
        c.post("/v1/zones", json={"name": "az1", "underlay_cidr": "198.18.1.0/24"}, headers=admin)
        boot = c.post("/v1/hosts/h1/bootstrap-tokens", headers=admin).json()["token"]
        host = c.post("/v1/agent/hosts/h1/token", headers=_bearer(boot)).json()["token"]
        tokens += [boot, host, "yh_admin-token-for-this-test-0123456789"]
        c.get("/v1/vpcs", headers=_bearer("yh_wrong-token-aaaaaaaaaaaaaaaaaaaaaaaaaaa"))
        c.get("/v1/audit", headers=admin)  # flushes the audit trail
    store.close()
    files = [f for f in (tmp_path / "state").rglob("*") if f.is_file()]
    assert any(f.name == "yunhan.db" for f in files)
    for f in files:
        data = f.read_bytes()
        assert TOKEN_RE.findall(data) == [], f
        for t in tokens:
            assert t.encode() not in data, f


def _audit(cloud: Cloud, headers: dict[str, str] | None = None, **params: Any) -> list[Any]:
    return list(cloud.call("GET", "/v1/audit", headers, params=params)["items"])


def test_audit_records_writes_and_refusals_chained(cloud: Cloud) -> None:
    t = cloud.project("alpha")
    r = cloud.client.post(
        "/v1/vpcs",
        json={"name": "prod", "cidrs": ["10.0.0.0/16"]},
        headers={**t, "X-Request-Id": "my-req-1"},
    )
    assert r.status_code == 201 and r.headers["x-request-id"] == "my-req-1"
    vpc = r.json()["id"]
    gen = cloud.client.get("/v1/vpcs", headers=t).headers["x-request-id"]
    assert gen.startswith("req-")
    cloud.client.get("/v1/vpcs", headers=_bearer("yh_not-a-token"))
    cloud.client.get("/v1/projects", headers=t)  # 403
    recs = _audit(cloud)
    mine = [x for x in recs if x["request_id"] == "my-req-1"]
    assert len(mine) == 1
    rec = mine[0]
    pid = cloud.call("GET", "/v1/whoami", t)["project"]["id"]
    assert (rec["method"], rec["path"], rec["resource"], rec["result"], rec["status"]) == (
        "POST", "/v1/vpcs", vpc, "accepted", 201)  # fmt: skip
    assert rec["project"] == pid and rec["token_id"].startswith("tok-")
    assert [x["result"] for x in recs if x["status"] in (401, 403)] == [
        "unauthorized", "forbidden"]  # fmt: skip
    assert not any(x["method"] == "GET" and x["status"] == 200 for x in recs)
    assert all(x["prev_hash"] == p["hash"] for p, x in itertools.pairwise(recs))
    # A project sees only its own records; the admin filters by project.
    assert {x["project"] for x in _audit(cloud, t)} == {pid}
    assert {x["project"] for x in _audit(cloud, project="alpha")} == {pid}
    cloud.rejected("GET", "/v1/audit", 403, "its own", t, params={"project": "admin"})
    assert _audit(cloud, since=cloud.clock.now + 1) == []
    assert cloud.call("GET", "/v1/audit/verify") == {"ok": True, "broken": None}


def _tamper(store: Store, seq: int, **values: Any) -> None:
    with store.engine.begin() as conn:
        if values:
            conn.execute(update(s.audit).where(s.audit.c.seq == seq).values(**values))
        else:
            conn.execute(delete(s.audit).where(s.audit.c.seq == seq))


def test_audit_verify_names_an_altered_or_removed_record(cloud: Cloud) -> None:
    for i in range(4):
        cloud.call("POST", "/v1/projects", json={"name": f"p{i}"})
    assert cloud.call("GET", "/v1/audit/verify")["ok"] is True
    _tamper(cloud.store, 2, path="/v1/projects/forged")
    ans = cloud.call("GET", "/v1/audit/verify")
    assert ans["ok"] is False and ans["broken"]["seq"] == 2
    assert "altered" in ans["broken"]["reason"]
    _tamper(cloud.store, 2)  # removed altogether
    ans = cloud.call("GET", "/v1/audit/verify")
    assert ans["broken"]["seq"] == 3 and "missing" in ans["broken"]["reason"]


def _events(cloud: Cloud, headers: dict[str, str] | None = None, **params: Any) -> list[Any]:
    return list(cloud.call("GET", "/v1/events", headers, params=params)["items"])


def test_events_for_the_four_cases(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    cloud.heartbeat("h1", 0)
    cloud.heartbeat("h2", 0)
    # A scheduling refusal: a zone without hosts, twice (one event, count 2).
    cloud.zone("az3", "198.18.3.0/24")
    for _ in range(2):
        cloud.rejected("POST", "/v1/instances", 409, "no host", t,
                       json={"name": "x", "subnet": "web", "zone": "az3"})  # fmt: skip
    (ev,) = _events(cloud, t, **{"for": "az3"})
    assert ev["reason"] == "SchedulingRefused" and ev["count"] == 2 and "az3" in ev["message"]
    # An instance that failed to start, and why; its host's apply error (admin only).
    inst = cloud.call(
        "POST", "/v1/instances", t, json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    failed = {inst["id"]: {"phase": "failed", "message": "exec: no such file"}}
    report = {"applied_revision": cloud.revision(), "instances": failed,
              "error": "nft: table yh-x: Permission denied"}  # fmt: skip
    cloud.call("POST", "/v1/agent/hosts/h1/status", json=report)
    (ev,) = _events(cloud, t, **{"for": "a"})
    assert ev["reason"] == "InstanceFailed" and "exec: no such file" in ev["message"]
    assert "ApplyError" not in {e["reason"] for e in _events(cloud, t)}
    (ev,) = _events(cloud, **{"for": "h1"})
    assert ev["reason"] == "ApplyError" and "Permission denied" in ev["message"]
    # A host that stopped heartbeating: h2's lease expires.
    cloud.heartbeat("h1", cloud.revision())
    cloud.clock.advance(20)
    cloud.heartbeat("h1", cloud.revision())
    cloud.client.app.state.yunhan.journal.tick()  # type: ignore[attr-defined]
    (ev,) = _events(cloud, **{"for": "h2"})
    assert ev["reason"] == "HostNotHeartbeating" and ev["count"] == 1
    assert ev["first_time"] and ev["last_time"]
    assert all(e["reason"] != "HostNotHeartbeating" for e in _events(cloud, **{"for": "h1"}))
    assert _events(cloud, t, **{"for": "h2"}) == []  # tenants do not see hosts' events
    # Kept for a bounded time.
    cloud.clock.advance(3601)
    assert _events(cloud, t) == []
