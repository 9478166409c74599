"""The AI services through the API (docs/ai.md): listed per project, enabled as the
function ai-<service> (once: a second enable changes nothing), disabled, and called with
JSON or a multipart upload on the server's real router. The function host is the
in-memory fake of fn_fixtures, its handlers replaced (the models are not needed to see
which event reached the service)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from fn_fixtures import FakeFunctionHost, functions_on

from yunhan.ai import catalog
from yunhan.api.functions import Functions

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))
LABEL = "yunhan.io/ai-service"
KNOWN = "the services are faces, langid, ocr, sentiment, speech"


@pytest.fixture
def tenant(cloud: Cloud) -> dict[str, str]:
    return cloud.project("tenant")


@pytest.fixture
def h1() -> FakeFunctionHost:
    h = FakeFunctionHost("h1")
    for name in catalog.SERVICES:
        h.handlers[f"ai-{name}"] = lambda event, ctx: {"service": ctx.function_name}
    return h


@pytest.fixture
def fns(cloud: Cloud, h1: FakeFunctionHost) -> Iterator[Functions]:
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    f = functions_on(st, [h1])
    yield f
    f.stop()


def _services(cloud: Cloud, who: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in cloud.call("GET", "/v1/ai/services", who)["items"]}


def test_list_enable_twice_and_disable(cloud: Cloud, tenant: dict[str, str]) -> None:
    listed = cloud.call("GET", "/v1/ai/services", tenant)["items"]
    assert [s["name"] for s in listed] == sorted(catalog.SERVICES)
    for s in listed:
        svc = catalog.SERVICES[s["name"]]
        assert (s["enabled"], s["function"]) == (False, None)
        assert (s["input"], s["memory_mb"], s["timeout_s"]) == (
            svc.field,
            svc.memory_mb,
            svc.timeout_s,
        )
    r = cloud.client.put("/v1/ai/services/sentiment", headers=tenant)
    assert r.status_code == 201, r.text
    fn = r.json()
    assert fn["name"] == "ai-sentiment" and fn["labels"] == {LABEL: "sentiment"}
    assert fn["status"]["latest_version"] == 1
    (v1,) = cloud.call("GET", "/v1/functions/ai-sentiment/versions", tenant)["items"]
    assert (v1["handler"], v1["memory_mb"], v1["timeout_s"]) == ("main.handler", 128, 5.0)
    # Enabled again: nothing new, the same resource.
    before = cloud.revision()
    r = cloud.client.put("/v1/ai/services/sentiment", headers=tenant)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == fn["id"] and r.json()["revision"] == fn["revision"]
    assert cloud.revision() == before
    assert len(cloud.call("GET", "/v1/functions/ai-sentiment/versions", tenant)["items"]) == 1
    shown = _services(cloud, tenant)
    assert (shown["sentiment"]["enabled"], shown["sentiment"]["function"]) == (True, fn["id"])
    assert not shown["ocr"]["enabled"]
    # Another project has enabled nothing.
    other = cloud.project("other")
    assert not any(s["enabled"] for s in _services(cloud, other).values())
    # It is a function like any: listed; its enable is audited.
    assert [f["name"] for f in cloud.call("GET", "/v1/functions", tenant)["items"]] == [
        "ai-sentiment"
    ]
    audit = [(a["method"], a["path"]) for a in cloud.call("GET", "/v1/audit")["items"]]
    assert ("PUT", "/v1/ai/services/sentiment") in audit
    gone = cloud.call("DELETE", "/v1/ai/services/sentiment", tenant)
    assert gone["id"] == fn["id"]
    assert not _services(cloud, tenant)["sentiment"]["enabled"]
    assert cloud.call("GET", "/v1/functions", tenant)["items"] == []
    cloud.rejected("DELETE", "/v1/ai/services/sentiment", 404, "ai-sentiment", tenant)


def test_unknown_and_disabled_services_are_refused(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, h1: FakeFunctionHost
) -> None:
    for method, path in (("PUT", "/v1/ai/services/nope"), ("DELETE", "/v1/ai/services/nope"),
                         ("POST", "/v1/ai/nope")):  # fmt: skip
        err = cloud.rejected(method, path, 422, KNOWN, tenant, json={"text": "x"})
        assert "unknown AI service 'nope'" in err["message"]
    err = cloud.rejected("POST", "/v1/ai/ocr", 404, "`yunhan ai enable ocr`", tenant,
                         json={"image": base64.b64encode(PNG).decode()})  # fmt: skip
    assert "not enabled in project tenant" in err["message"]
    cloud.rejected("POST", "/v1/ai/sentiment", 404, "`yunhan ai enable sentiment`", tenant,
                   files={"file": ("t.txt", b"hello")})  # fmt: skip
    assert h1.events == []


def test_a_non_image_upload_to_ocr_is_refused_and_runs_nothing(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, h1: FakeFunctionHost
) -> None:
    cloud.call("PUT", "/v1/ai/services/ocr", tenant)
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    cloud.rejected("POST", "/v1/ai/ocr", 422, "is not an image: send PNG, JPEG", tenant,
                   files={"file": ("notes.txt", b"just some text")})  # fmt: skip
    cloud.rejected("POST", "/v1/ai/ocr", 422, "no part named 'file'", tenant,
                   files={"image": ("a.png", PNG)})  # fmt: skip
    cloud.rejected("POST", "/v1/ai/ocr", 422, "string field 'image' (base64)", tenant,
                   json={"text": "hi"})  # fmt: skip
    cloud.rejected("POST", "/v1/ai/ocr", 422, "content type 'text/plain'",
                   {**tenant, "Content-Type": "text/plain"}, content=b"x")  # fmt: skip
    assert h1.events == [] and h1.workers == {} and st.meter.pending() == []


def test_json_and_multipart_calls_reach_the_service(
    cloud: Cloud, tenant: dict[str, str], fns: Functions, h1: FakeFunctionHost
) -> None:
    cloud.call("PUT", "/v1/ai/services/ocr", tenant)
    cloud.call("PUT", "/v1/ai/services/sentiment", tenant)
    r = cloud.client.post("/v1/ai/sentiment", json={"text": "I love it"}, headers=tenant)
    assert r.status_code == 200, r.text
    ans = r.json()
    assert ans["request_id"] == r.headers["X-Request-Id"]
    assert (ans["ok"], ans["result"], ans["version"]) == (True, {"service": "ai-sentiment"}, 1)
    assert ans["memory_mb"] == 128 and ans["cold_start"] is True
    ans = cloud.call("POST", "/v1/ai/sentiment", tenant,
                     files={"file": ("t.txt", "très bien".encode())})  # fmt: skip
    assert ans["ok"] and ans["cold_start"] is False
    ans = cloud.call("POST", "/v1/ai/ocr", tenant, files={"file": ("scan.png", PNG, "image/png")})
    assert ans["ok"] and ans["memory_mb"] == 1024
    b64 = base64.b64encode(PNG).decode()
    cloud.call("POST", "/v1/ai/ocr", tenant, json={"image": b64, "extra": 1})
    assert h1.events == [
        ("ai-sentiment", 1, {"text": "I love it"}),
        ("ai-sentiment", 1, {"text": "très bien"}),
        ("ai-ocr", 1, {"image": b64}),
        ("ai-ocr", 1, {"image": b64, "extra": 1}),
    ]
    # Metered as the project's functions; not audited (the data plane).
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    st.meter.flush()
    usage = cloud.call("GET", "/v1/usage", tenant)["items"]
    assert sorted((u["name"], u["requests"]) for u in usage) == [("ai-ocr", 2),
                                                                  ("ai-sentiment", 2)]  # fmt: skip
    audit = [(a["method"], a["path"]) for a in cloud.call("GET", "/v1/audit")["items"]]
    assert not [a for a in audit if a[0] == "POST" and a[1].startswith("/v1/ai/")], audit


def test_a_call_without_a_router_is_503(cloud: Cloud, tenant: dict[str, str]) -> None:
    cloud.call("PUT", "/v1/ai/services/langid", tenant)
    cloud.rejected("POST", "/v1/ai/langid", 503, "runs no function router", tenant,
                   json={"text": "bonjour"})  # fmt: skip
