"""The console's server side (docs/console.md): its page and assets, the session cookie and
its CSRF token, the admin's project switch, and GET /v1/topology (one answer and a watch).
The browser itself is driven in tests/browser."""

from __future__ import annotations

import re
import threading
import time
from typing import TYPE_CHECKING, Any

from yunhan.api.deps import csrf_token

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def _token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def _sign_in(cloud: Cloud, token: str) -> dict[str, Any]:
    cloud.client.cookies.clear()
    r = cloud.client.post("/console/session", json={"token": token})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_the_page_and_its_assets_come_from_the_server_itself(cloud: Cloud) -> None:
    page = cloud.client.get("/console")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # Nothing the page loads comes from another origin (an air-gapped region works).
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith(("/console/static/", "#", "data:")) for r in refs), refs
    for ref in refs:
        if ref.startswith("/console/static/"):
            asset = cloud.client.get(ref)
            assert asset.status_code == 200, ref
            text = asset.text.replace('"http://www.w3.org/2000/svg"', "")  # a name, no fetch
            assert "http://" not in text and "https://" not in text, ref
    assert cloud.client.get("/console/static/../app.py").status_code == 404
    assert cloud.client.get("/console/static/nothing.js").status_code == 404


def test_sign_in_sets_an_http_only_strict_cookie_and_answers_the_csrf_token(
    cloud: Cloud, net: dict[str, Any]
) -> None:
    token = _token(net["t"])
    r = cloud.client.post("/console/session", json={"token": token})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert "yunhan_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    body = r.json()
    assert body["csrf_token"] == csrf_token(token)
    assert body["project"]["name"] == "tenant" and body["admin"] is False
    assert cloud.client.get("/console/session").json()["csrf_token"] == body["csrf_token"]
    # The cookie reads the project's resources, without an Authorization header.
    vpcs = cloud.client.get("/v1/vpcs")
    assert [v["name"] for v in vpcs.json()["items"]] == ["prod"]


def test_a_wrong_token_or_a_host_token_cannot_sign_in(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.client.cookies.clear()
    r = cloud.client.post("/console/session", json={"token": "yh_wrong"})
    assert r.status_code == 401
    assert "set-cookie" not in r.headers
    host = cloud.call("POST", "/v1/hosts/h1/bootstrap-tokens")["token"]
    r = cloud.client.post("/console/session", json={"token": host})
    assert r.status_code == 403 and "cannot sign in" in r.json()["error"]["message"]
    assert "set-cookie" not in r.headers


def test_a_write_with_the_cookie_needs_the_csrf_token(cloud: Cloud, net: dict[str, Any]) -> None:
    csrf = _sign_in(cloud, _token(net["t"]))["csrf_token"]
    before = cloud.revision()
    body = {"name": "other", "cidrs": ["10.9.0.0/16"]}
    for headers in ({}, {"X-CSRF-Token": "0" * 64}, {"X-CSRF-Token": csrf_token("yh_other")}):
        r = cloud.client.post("/v1/vpcs", json=body, headers=headers)
        assert r.status_code == 403, r.text
        assert "CSRF" in r.json()["error"]["message"]
    assert cloud.revision() == before
    r = cloud.client.post("/v1/vpcs", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    # A bearer token needs no CSRF token (a browser never sends it by itself).
    cloud.client.cookies.clear()
    cloud.call("DELETE", "/v1/vpcs/other", net["t"])


def test_sign_out_needs_the_csrf_token_and_clears_the_cookie(
    cloud: Cloud, net: dict[str, Any]
) -> None:
    csrf = _sign_in(cloud, _token(net["t"]))["csrf_token"]
    assert cloud.client.delete("/console/session").status_code == 403
    r = cloud.client.delete("/console/session", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204
    assert 'yunhan_session=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]
    assert cloud.client.get("/console/session").status_code == 401


def test_the_admin_acts_in_a_project_by_naming_it(cloud: Cloud, net: dict[str, Any]) -> None:
    mine = cloud.call("GET", "/v1/vpcs")["items"]
    assert mine == []
    theirs = cloud.call("GET", "/v1/vpcs", {**cloud.admin, "X-Yunhan-Project": "tenant"})
    assert [v["name"] for v in theirs["items"]] == ["prod"]
    cloud.rejected("GET", "/v1/vpcs", 404, "no project 'nope'",
                   {**cloud.admin, "X-Yunhan-Project": "nope"})  # fmt: skip
    # A project's token cannot: the header is ignored, it sees its own only.
    other = cloud.project("other")
    seen = cloud.call("GET", "/v1/vpcs", {**other, "X-Yunhan-Project": "tenant"})
    assert seen["items"] == []


def test_topology_is_the_caller_s_own_and_the_region_s(cloud: Cloud, net: dict[str, Any]) -> None:
    other = cloud.project("other")
    cloud.call("POST", "/v1/vpcs", other, json={"name": "theirs", "cidrs": ["10.5.0.0/16"]})
    cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a1", "subnet": "web", "zone": "az2"}
    )
    t = cloud.call("GET", "/v1/topology", net["t"])
    assert {z["name"] for z in t["zones"]} == {"az1", "az2"}
    assert {h["name"] for h in t["hosts"]} == {"h1", "h2"}
    assert [v["name"] for v in t["vpcs"]] == ["prod"]
    assert [s["name"] for s in t["subnets"]] == ["web"]
    (inst,) = t["instances"]
    assert inst["name"] == "a1" and inst["status"]["host"] == "h2"
    assert t["revision"] == cloud.revision()
    # The admin sees every project's.
    everything = cloud.call("GET", "/v1/topology")
    assert {v["name"] for v in everything["vpcs"]} == {"prod", "theirs"}
    assert {p["name"] for p in everything["projects"]} >= {"tenant", "other"}


def test_topology_waits_for_a_change_and_answers_it(cloud: Cloud, net: dict[str, Any]) -> None:
    rev = cloud.call("GET", "/v1/topology", net["t"])["revision"]
    r = cloud.client.get(f"/v1/topology?after={rev}&timeout=0.2", headers=net["t"])
    assert r.status_code == 204
    answer: dict[str, Any] = {}

    def watch() -> None:
        r = cloud.client.get(f"/v1/topology?after={rev}&timeout=10", headers=net["t"])
        answer["status"], answer["body"], answer["at"] = r.status_code, r.json(), time.monotonic()

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.3)
    cloud.call("POST", "/v1/subnets", net["t"],
               json={"name": "db", "vpc": "prod", "cidr": "10.0.2.0/24"})  # fmt: skip
    t.join(15)
    assert answer["status"] == 200
    assert {s["name"] for s in answer["body"]["subnets"]} == {"web", "db"}
    assert answer["body"]["revision"] > rev
    cloud.rejected("GET", "/v1/topology?after=-1", 400, "after", net["t"])


def test_topology_carries_no_secret(cloud: Cloud, net: dict[str, Any]) -> None:
    from test_api_hybrid import SECRET, SITE, _gw

    cloud.call("PUT", "/v1/idc-sites/dc1", json=SITE)
    _gw(cloud, net["t"], md5_secret=SECRET)
    fn = {"endpoint": "http://198.18.1.11:9100", "key": "fn-key-secret", "memory_mb": 512}
    cloud.call("POST", "/v1/agent/hosts/h1/status",
               json={"applied_revision": 0, "instances": {}, "functions": fn})  # fmt: skip
    for headers in (net["t"], cloud.admin):
        text = cloud.client.get("/v1/topology", headers=headers).text
        assert SECRET not in text and "md5_secret" not in text
    # The host's function key is the admin's to see (as in GET /v1/hosts), no tenant's.
    assert "fn-key-secret" in cloud.client.get("/v1/topology", headers=cloud.admin).text
    assert "fn-key-secret" not in cloud.client.get("/v1/topology", headers=net["t"]).text
