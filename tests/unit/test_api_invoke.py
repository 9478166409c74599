"""Calling functions through the API (docs/functions.md): the invoke envelope, versions and
the traffic split, the HTTP gateway's bodies, headers and statuses, the activator's 429,
who may call what, no audit records but usage rows, logs from every host, and a deleted
function's workers stopped. The server's real router (yunhan.api.functions.Functions)
runs the requests; only the function hosts are fakes, behind the real HostClient
(fn_fixtures)."""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi.testclient import TestClient
from fn_fixtures import FakeFunctionHost, functions_on

from yunhan.api.functions import Functions
from yunhan.api.gatewayfast import GatewayFastPath
from yunhan.functions.bundle import pack
from yunhan.store import schema as s

if TYPE_CHECKING:
    from pathlib import Path

    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

HELLO = "def handler(event, context):\n    return {'hello': event.get('name')}\n"
BOOM = "def handler(event, context):\n    raise ValueError('bad input: ' + str(event))\n"
SLOW = "import time\n\ndef handler(event, context):\n    time.sleep(1.5)\n    return 1\n"


def _src(tmp_path: Path, code: str) -> str:
    d = tmp_path / f"src{abs(hash(code))}"
    d.mkdir(exist_ok=True)
    (d / "main.py").write_text(code)
    return base64.b64encode(pack(d)).decode()


def deploy(cloud: Cloud, t: dict[str, str], tmp_path: Path, name: str, code: str,
           **kw: Any) -> dict[str, Any]:  # fmt: skip
    body = {"name": name, "handler": "main.handler", "source": {"tar_gz": _src(tmp_path, code)}}
    out: dict[str, Any] = cloud.call("POST", "/v1/functions", t, json={**body, **kw})
    return out


@pytest.fixture
def tenant(cloud: Cloud) -> dict[str, str]:
    return cloud.project("tenant")


@pytest.fixture
def h1() -> FakeFunctionHost:
    return FakeFunctionHost("h1")


@pytest.fixture
def fns(cloud: Cloud, h1: FakeFunctionHost) -> Iterator[Functions]:
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    f = functions_on(st, [h1])
    yield f
    f.stop()


def test_invoke_answers_the_envelope_cold_then_warm(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, h1: FakeFunctionHost, tmp_path: Path
) -> None:
    fn = deploy(cloud, tenant, tmp_path, "hello", HELLO)
    r = cloud.client.post("/v1/functions/hello/invoke", json={"name": "x"}, headers=tenant)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["request_id"] == r.headers["X-Request-Id"]
    assert (first["version"], first["ok"], first["result"]) == (1, True, {"hello": "x"})
    assert first["memory_mb"] == 128 and first["cold_start"] is True
    assert first["duration_ms"] >= 0 and first["billed_duration_ms"] >= 1
    assert isinstance(first["billed_duration_ms"], int)
    assert first["error"] is None and first["traceback"] is None
    # Warm: the same worker; a sane X-Request-Id the caller sent is the invocation's.
    r = cloud.client.post(f"/v1/functions/{fn['id']}/invoke", json={"name": "y"},
                          headers={**tenant, "X-Request-Id": "req-42"})  # fmt: skip
    second = r.json()
    assert second["request_id"] == "req-42" == r.headers["X-Request-Id"]
    assert second["cold_start"] is False and second["result"] == {"hello": "y"}
    # The host got the version once (after a first "version not deployed"), one worker,
    # owned by this router, and each event as sent.
    assert list(h1.versions) == [(fn["id"], 1)]
    assert [w["owner"] for w in h1.workers.values()] == [fns.router.owner]
    assert h1.events == [("hello", 1, {"name": "x"}), ("hello", 1, {"name": "y"})]
    shown = cloud.call("GET", "/v1/functions/hello", tenant)
    assert shown["status"]["workers"] == {"1": 1}  # the router's, live
    # No body: the event is null, which the handler sees as such.
    r = cloud.client.post("/v1/functions/hello/invoke", headers=tenant)
    assert r.status_code == 200 and r.json()["ok"] is False
    assert "AttributeError" in r.json()["error"] and r.json()["traceback"]


def test_version_picks_a_version_and_the_split_is_followed(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, tmp_path: Path
) -> None:
    deploy(cloud, tenant, tmp_path, "f", "def handler(e, c):\n    return 'one'\n")
    deploy(cloud, tenant, tmp_path, "f", "def handler(e, c):\n    return 'two'\n")

    def call(path: str = "/v1/functions/f/invoke") -> tuple[int, str]:
        ans = cloud.call("POST", path, tenant, json={})
        return ans["version"], ans["result"]

    assert call() == (2, "two")  # everything to the latest
    assert call("/v1/functions/f/invoke?version=1") == (1, "one")
    assert call("/v1/functions/f/invoke?version=2") == (2, "two")
    cloud.rejected("POST", "/v1/functions/f/invoke?version=3", 404, "f has no version 3", tenant,
                   json={})  # fmt: skip
    cloud.rejected("POST", "/v1/functions/f/invoke?version=0", 400, "", tenant, json={})
    cloud.call("PATCH", "/v1/functions/f", tenant, json={"spec": {"traffic": {"1": 80, "2": 20}}})
    seen = Counter(call()[0] for _ in range(100))
    assert set(seen) == {1, 2} and 65 <= seen[1] <= 92, seen
    assert call("/v1/functions/f/invoke?version=2") == (2, "two")  # a qualifier beats it
    cloud.call("PATCH", "/v1/functions/f", tenant, json={"spec": {"traffic": {"1": 0, "2": 100}}})
    assert {call()[0] for _ in range(20)} == {2}


def test_the_gateway_answers_the_result_or_the_failure(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, h1: FakeFunctionHost, tmp_path: Path
) -> None:
    deploy(cloud, tenant, tmp_path, "hello", HELLO)
    deploy(cloud, tenant, tmp_path, "boom", BOOM)
    deploy(cloud, tenant, tmp_path, "slow", SLOW, timeout_s=1)
    r = cloud.client.post("/fn/tenant/hello", json={"name": "web"}, headers=tenant)
    assert r.status_code == 200 and r.json() == {"hello": "web"}
    assert r.headers["X-Yunhan-Function-Version"] == "1"
    assert r.headers["X-Yunhan-Cold-Start"] == "true"
    assert float(r.headers["X-Yunhan-Duration-Ms"]) >= 0
    assert int(r.headers["X-Yunhan-Billed-Duration-Ms"]) >= 1
    assert r.headers["X-Request-Id"]
    project_id = cloud.call("GET", "/v1/whoami", tenant)["project"]["id"]
    r = cloud.client.post(f"/fn/{project_id}/hello", json={"name": 1}, headers=tenant)
    assert r.status_code == 200 and r.json() == {"hello": 1}
    assert r.headers["X-Yunhan-Cold-Start"] == "false"
    # The admin may call any project's function, by the project's name or id.
    r = cloud.client.post("/fn/tenant/hello", json={"name": "admin"}, headers=cloud.admin)
    assert r.status_code == 200 and r.json() == {"hello": "admin"}
    # A raising handler: 502 with its error and traceback; the worker lives on.
    r = cloud.client.post("/fn/tenant/boom", json=[1], headers=tenant)
    assert r.status_code == 502
    err = r.json()["error"]
    assert (err["code"], err["message"]) == ("function_error", "ValueError: bad input: [1]")
    assert 'File "main.py", line 2, in handler' in err["details"]["traceback"]
    assert r.headers["X-Yunhan-Function-Version"] == "1"
    # A timeout: 504; the host killed the worker.
    r = cloud.client.post("/fn/tenant/slow", json={}, headers=tenant)
    assert r.status_code == 504
    err = r.json()["error"]
    assert (err["code"], err["message"]) == ("function_timeout", "timed out after 1 s")
    slow = cloud.call("GET", "/v1/functions/slow", tenant)["id"]
    assert [w for w in h1.workers.values() if w["function"] == slow] == []
    # Another project's token cannot call into this one; unknown names are 404.
    other = cloud.project("other")
    cloud.rejected("POST", "/fn/tenant/hello", 403, "belongs to project other", other, json={})
    cloud.rejected("POST", "/fn/other/hello", 404, "no function 'hello'", other, json={})
    cloud.rejected("POST", "/fn/tenant/nope", 404, "no function 'nope'", tenant, json={})
    cloud.rejected("POST", "/fn/nosuch/hello", 404, "no project 'nosuch'", json={})
    cloud.rejected("POST", "/v1/functions/nope/invoke", 404, "no function 'nope'", tenant,
                   json={})  # fmt: skip
    cloud.rejected("POST", "/v1/functions/hello/invoke", 404, "no function 'hello'", other,
                   json={})  # fmt: skip


RID = "def handler(event, context):\n    return context.request_id\n"


def test_the_servers_gateway_fast_path_answers_as_the_route(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, h1: FakeFunctionHost, tmp_path: Path
) -> None:
    """The server wraps the app in GatewayFastPath (api.server): valid gateway calls are
    answered beside the framework, the same as the route does; the rest go to the app."""
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    fast = GatewayFastPath(cloud.client.app, st)
    client = TestClient(fast)
    try:
        deploy(cloud, tenant, tmp_path, "rid", RID)
        deploy(cloud, tenant, tmp_path, "boom", BOOM)
        for c in (cloud.client, client):  # the route, then the fast path
            r = c.post("/fn/tenant/rid", json={}, headers=tenant)
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            # The id the function ran under is the one the caller is given.
            assert r.json() == r.headers["X-Request-Id"]
            assert r.headers["X-Yunhan-Function-Version"] == "1"
            r = c.post("/fn/tenant/rid", json={}, headers={**tenant, "X-Request-Id": "mine-1"})
            assert r.json() == "mine-1" == r.headers["X-Request-Id"]
            r = c.post("/fn/tenant/boom", json=1, headers=tenant)
            assert r.status_code == 502 and r.json()["error"]["code"] == "function_error"
        assert fast.served == 3
        # Refusals and unknown names are the app's answers (and its audit records).
        other = cloud.project("other")
        assert client.post("/fn/tenant/rid", json={}, headers=other).status_code == 403
        assert client.post("/fn/tenant/nope", json={}, headers=tenant).status_code == 404
        assert client.post("/fn/tenant/rid", content=b"{", headers=tenant).status_code == 400
        assert fast.served == 3
    finally:
        fast.close()


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_body_not_sent_as_json_is_read_as_json(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, content_type: str | None, tmp_path: Path
) -> None:
    """`curl -d '{"name": "x"}' URL` sends the body form-urlencoded: the event is its JSON
    all the same (as the gateway's fast path reads it), and a body that is not JSON is a
    400, not the server's error."""
    deploy(cloud, tenant, tmp_path, "hello", HELLO)
    h = {**tenant, **({"Content-Type": content_type} if content_type else {})}
    r = cloud.client.post("/fn/tenant/hello", content=b'{"name": "curl"}', headers=h)
    assert r.status_code == 200 and r.json() == {"hello": "curl"}
    r = cloud.client.post("/v1/functions/hello/invoke", content=b'{"name": "d"}', headers=h)
    assert r.status_code == 200 and r.json()["result"] == {"hello": "d"}
    for path in ("/fn/tenant/hello", "/v1/functions/hello/invoke"):
        err = cloud.rejected("POST", path, 400, "", h, content=b"{nope")
        assert err["code"] == "bad_request" and "JSON" in err["message"]


def test_a_full_queue_is_429(cloud: Cloud, tenant: dict[str, str], h1: FakeFunctionHost,
                             tmp_path: Path) -> None:  # fmt: skip
    """One request may be held per version: the first waits for a worker whose spawn the
    host holds back, so the second is refused at once."""
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    fns = functions_on(st, [h1], queue=1)
    try:
        deploy(cloud, tenant, tmp_path, "hello", HELLO)
        h1.spawn_gate.clear()
        first: list[httpx.Response] = []
        t = threading.Thread(target=lambda: first.append(cloud.client.post(
            "/v1/functions/hello/invoke", json={"name": "a"}, headers=tenant)))  # fmt: skip
        t.start()
        assert h1.spawning.wait(5)  # the first request is held, its worker on its way
        err = cloud.rejected("POST", "/v1/functions/hello/invoke", 429, "requests already held",
                             tenant, json={})  # fmt: skip
        assert err["code"] == "throttled"
        cloud.rejected("POST", "/fn/tenant/hello", 429, "retry later", tenant, json={})
        h1.spawn_gate.set()
        t.join(10)
        assert first[0].status_code == 200, first[0].text
        assert first[0].json()["result"] == {"hello": "a"} and first[0].json()["cold_start"]
        assert h1.events == [("hello", 1, {"name": "a"})]  # the refused ones never ran
    finally:
        h1.spawn_gate.set()
        fns.stop()


def test_invocations_are_metered_not_audited(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, tmp_path: Path
) -> None:
    deploy(cloud, tenant, tmp_path, "hello", HELLO)
    deploy(cloud, tenant, tmp_path, "boom", BOOM)
    cloud.call("POST", "/v1/functions/hello/invoke", tenant, json={"name": 1})
    cloud.call("POST", "/v1/functions/hello/invoke?version=1", tenant, json={"name": 2})
    assert cloud.client.post("/fn/tenant/hello", json={}, headers=tenant).status_code == 200
    assert cloud.client.post("/fn/tenant/boom", json={}, headers=tenant).status_code == 502
    paths = [(a["method"], a["path"]) for a in cloud.call("GET", "/v1/audit")["items"]]
    assert paths.count(("POST", "/v1/functions")) == 2
    assert not [p for p in paths if "/invoke" in p[1] or p[1].startswith("/fn/")], paths
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    assert len(st.meter.pending()) == 2 and _usage_rows(cloud) == 0  # not written yet
    assert st.meter.flush() == 2  # one row per (function, version, minute)
    assert _usage_rows(cloud) == 2
    items = cloud.call("GET", "/v1/usage", tenant)["items"]
    assert [(u["name"], u["requests"], u["errors"], u["cold_starts"]) for u in items] == [
        ("boom", 1, 1, 1),
        ("hello", 3, 0, 1),
    ]
    assert all(u["gb_seconds"] > 0 for u in items)


def _usage_rows(cloud: Cloud) -> int:
    with cloud.store.engine.connect() as conn:
        return len(conn.execute(s.function_usage.select()).all())


def test_without_a_router_the_routes_answer_503(
    cloud: Cloud, tenant: dict[str, str], tmp_path: Path
) -> None:
    deploy(cloud, tenant, tmp_path, "hello", HELLO)
    msg = "this server runs no function router"
    err = cloud.rejected("POST", "/v1/functions/hello/invoke", 503, msg, tenant, json={})
    assert err["code"] == "unreachable"
    cloud.rejected("POST", "/fn/tenant/hello", 503, msg, tenant, json={})
    cloud.rejected("GET", "/v1/functions/hello/logs", 503, msg, tenant)
    # ... but an unknown function is still 404 first.
    cloud.rejected("POST", "/v1/functions/nope/invoke", 404, "no function 'nope'", tenant,
                   json={})  # fmt: skip


def test_logs_come_from_every_host_prefixed(
    cloud: Cloud, tenant: dict[str, str], tmp_path: Path
) -> None:
    h1, h2 = FakeFunctionHost("h1"), FakeFunctionHost("h2")
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    fns = functions_on(st, [h1, h2])
    try:
        fn = deploy(cloud, tenant, tmp_path, "hello", HELLO)
        ans = cloud.call("POST", "/v1/functions/hello/invoke", tenant, json={})
        ran, idle = (h1, h2) if h1.workers else (h2, h1)
        idle.logs[fn["id"]] = ["old 1", "old 2", "old 3"]
        logs = cloud.call("GET", "/v1/functions/hello/logs", tenant)
        assert logs["function"] == fn["id"]
        assert sorted(logs["lines"]) == sorted(
            [f"[{ran.name}] START {ans['request_id']} v1"]
            + [f"[{idle.name}] old {i}" for i in (1, 2, 3)]
        )
        tail = cloud.call("GET", "/v1/functions/hello/logs?tail=1", tenant)["lines"]
        assert sorted(tail) == sorted([f"[{ran.name}] START {ans['request_id']} v1",
                                       f"[{idle.name}] old 3"])  # fmt: skip
        cloud.rejected("GET", "/v1/functions/hello/logs?tail=0", 400, "", tenant)
        cloud.rejected("GET", "/v1/functions/nope/logs", 404, "no function 'nope'", tenant)
    finally:
        fns.stop()


def test_deleting_a_function_stops_its_workers(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, h1: FakeFunctionHost, tmp_path: Path
) -> None:
    fn = deploy(cloud, tenant, tmp_path, "hello", HELLO)
    deploy(cloud, tenant, tmp_path, "keep", HELLO)
    cloud.call("POST", "/v1/functions/hello/invoke", tenant, json={})
    cloud.call("POST", "/v1/functions/keep/invoke", tenant, json={})
    (wid,) = [w for w, d in h1.workers.items() if d["function"] == fn["id"]]
    assert (fn["id"], 1) in fns.router.workers()
    cloud.call("DELETE", "/v1/functions/hello", tenant)
    deadline = time.monotonic() + 5
    while not h1.stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h1.stopped == [(wid, fn["id"], 1)]
    assert (fn["id"], 1) not in fns.router.workers()
    assert [d["function"] for d in h1.workers.values()] != [fn["id"]]  # keep's stays
    assert len(h1.workers) == 1
    cloud.rejected("POST", "/v1/functions/hello/invoke", 404, "no function 'hello'", tenant,
                   json={})  # fmt: skip


def test_reconcile_warms_min_scale_and_drops_what_another_replica_deleted(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, h1: FakeFunctionHost, tmp_path: Path
) -> None:
    warm = deploy(cloud, tenant, tmp_path, "warm", HELLO, min_scale=2)
    gone = deploy(cloud, tenant, tmp_path, "gone", HELLO)
    cloud.call("POST", "/v1/functions/gone/invoke", tenant, json={})
    fns.reconcile()  # a pool for warm's version, though nobody called it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        fns.router.tick()
        if fns.router.workers().get((warm["id"], 1)) == 2:
            break
        time.sleep(0.05)
    assert fns.router.workers()[(warm["id"], 1)] == 2
    # Another replica deletes `gone`: the store no longer has it, this router was not told.
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    with st.store.transaction() as tx:
        tx.delete(tx.get("function", gone["id"]))
    fns.reconcile()
    assert (gone["id"], 1) not in fns.router.workers()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(s[1] == gone["id"] for s in h1.stopped):
        time.sleep(0.01)
    assert [s for s in h1.stopped if s[1] == gone["id"]]


def test_a_function_in_a_subnet_runs_in_its_port_on_the_ports_host(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, h1: FakeFunctionHost, tmp_path: Path
) -> None:
    cloud.call("POST", "/v1/vpcs", tenant, json={"name": "v", "cidrs": ["10.0.0.0/16"]})
    cloud.call("POST", "/v1/subnets", tenant, json={"name": "s", "vpc": "v", "cidr": "10.0.1.0/24"})
    body = {"name": "inside", "handler": "main.handler", "vpc": "v", "subnet": "s",
            "source": {"tar_gz": _src(tmp_path, HELLO)}}  # fmt: skip
    before = cloud.revision()  # no zone has a host: refused whole, nothing written
    cloud.rejected("POST", "/v1/functions", 409, "no zone has a host", tenant, json=body)
    assert cloud.revision() == before
    cloud.zone("az1", "198.18.1.0/24")
    cloud.host("h1", "az1", "198.18.1.11")
    fn = deploy(cloud, tenant, tmp_path, "inside", HELLO, vpc="v", subnet="s")
    ports = [i for i in cloud.call("GET", "/v1/instances", tenant)["items"]
             if i["labels"].get("yunhan.io/function") == fn["id"]]  # fmt: skip
    assert [p["name"] for p in ports] == ["fn-inside"]
    assert ports[0]["spec"]["subnet"] == fn["spec"]["subnet"]
    # Not running yet: a clear 503, nothing started.
    cloud.rejected("POST", "/v1/functions/inside/invoke", 503, "not running yet", tenant,
                   json={})  # fmt: skip
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    with st.store.transaction() as tx:  # as its agent would report it
        port = tx.get("instance", ports[0]["id"])
        tx.update(port, status={**port.status, "phase": "running", "netns": "ns-port",
                                "host": "h1"})  # fmt: skip
    cloud.call("POST", "/v1/functions/inside/invoke", tenant, json={})
    (spawn,) = [w for w in h1.workers.values() if w["function"] == fn["id"]]
    assert spawn["netns"] == "/run/netns/ns-port"
    cloud.call("DELETE", "/v1/functions/inside", tenant)
    names = [i["name"] for i in cloud.call("GET", "/v1/instances", tenant)["items"]]
    assert "fn-inside" not in names
