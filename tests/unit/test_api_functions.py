"""Functions through the API (docs/functions.md): deploys make versions with their config,
bad deploys are refused whole with nothing written, traffic splits are checked, usage is
summed and priced for the caller's project only, and events name the function."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from yunhan.functions.bundle import pack
from yunhan.functions.metering import PriceTable
from yunhan.store import schema as s
from yunhan.store.functions import effective_traffic

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

HELLO = "def handler(event, context):\n    return {'hello': event.get('name')}\n"


def _tar(files: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def _body(name: str = "hello", source: str | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "handler": "main.handler",
        "source": {"tar_gz": source or _tar({"main.py": HELLO.encode()})},
        **kw,
    }


def _side_rows(cloud: Cloud) -> tuple[int, int]:
    with cloud.store.engine.connect() as conn:
        code = len(conn.execute(s.function_code.select()).all())
        versions = len(conn.execute(s.function_versions.select()).all())
    return code, versions


def _host_limit(cloud: Cloud, mb: int) -> None:
    """Host h1's function endpoint reports `mb` (as the agent does in its status)."""
    admin = cloud.client.app.state.yunhan.admin_project_id  # type: ignore[attr-defined]
    with cloud.store.transaction() as tx:
        h = tx.by_name("host", admin, "h1")
        assert h is not None
        tx.update(h, status={**h.status, "functions": {"memory_mb": mb, "workers": 0}})


def test_deploy_makes_v1_then_v2_with_the_config_snapshot(
    cloud: Cloud, net: dict[str, Any], tmp_path: Path
) -> None:
    t = net["t"]
    v1 = cloud.call("POST", "/v1/functions", t, json=_body(env={"A": "1"}))
    assert v1["id"].startswith("fn-") and v1["kind"] == "function"
    assert v1["spec"] == {"concurrency": 1, "min_scale": 0, "max_scale": 10, "idle_grace_s": 30,
                          "scale_window_s": 60,
                          "traffic": None, "vpc": None, "subnet": None}  # fmt: skip
    assert (v1["status"]["latest_version"], v1["status"]["traffic"]) == (1, {"1": 100})
    (src := tmp_path / "src").mkdir()
    (src / "main.py").write_text(HELLO.replace("hello", "bonjour"))
    (src / "lib").mkdir()
    (src / "lib" / "__init__.py").write_text("X = 1\n")
    v2 = cloud.call(
        "POST", "/v1/functions", t,
        json=_body(source=base64.b64encode(pack(src)).decode(), memory_mb=256, timeout_s=10,
                   env={"B": "2"}, max_scale=4, subnet="web"),
    )  # fmt: skip
    assert v2["id"] == v1["id"]
    assert v2["status"]["latest_version"] == 2 and v2["status"]["traffic"] == {"2": 100}
    assert v2["spec"]["max_scale"] == 4 and v2["spec"]["min_scale"] == 0
    assert v2["spec"]["subnet"] == net["web"]["id"] and v2["spec"]["vpc"] == net["vpc"]["id"]
    versions = cloud.call("GET", "/v1/functions/hello/versions", t)["items"]
    assert [(v["version"], v["memory_mb"], v["timeout_s"], v["env"]) for v in versions] == [
        (1, 128, 3.0, {"A": "1"}),
        (2, 256, 10.0, {"B": "2"}),
    ]
    assert versions[0]["sha256"] != versions[1]["sha256"]
    rows = cloud.client.app.state.yunhan.function_rows  # type: ignore[attr-defined]
    code = rows.code(versions[1]["sha256"])
    with tarfile.open(fileobj=io.BytesIO(code), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["lib/__init__.py", "main.py"]
    assert rows.version(v1["id"], 1).env == {"A": "1"}
    # Listed, shown by name or id, invisible to another project.
    assert [f["name"] for f in cloud.call("GET", "/v1/functions", t)["items"]] == ["hello"]
    assert cloud.call("GET", f"/v1/functions/{v1['id']}", t)["name"] == "hello"
    other = cloud.project("other")
    cloud.rejected("GET", "/v1/functions/hello", 404, "no function 'hello'", other)
    events = cloud.call("GET", "/v1/events", t, params={"for": "function/hello"})["items"]
    assert [e["reason"] for e in events] == ["FunctionDeployed"]
    assert "version 2 deployed" in events[0]["message"] and events[0]["count"] == 2


def _bomb() -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.addfile(tarfile.TarInfo("main.py"), io.BytesIO(b""))
        big = tarfile.TarInfo("data.bin")
        big.size = 51 * 1024 * 1024
        tar.addfile(big, io.BytesIO(bytes(big.size)))
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body(source=_tar({"main.py": b"def handler(event, context)\n"})), "main.py:1:"),
        (_body(source=_tar({"main.py": b"def other(e, c):\n    pass\n"})), "defines no 'handler'"),
        (_body(source=_tar({"app.py": HELLO.encode()})), "no module 'main'"),
        (_body(memory_mb=63), "memory 63 MB: must be between 64 MB"),
        (_body(memory_mb=2048), "host's limit of 1024 MB"),
        (_body(timeout_s=0.5), "timeout 0.5 s"),
        (_body(timeout_s=901), "timeout 901"),
        (_body(source=_tar({"main.py": HELLO.encode(), "../evil.py": b""})), "'..'"),
        (_body(source=_tar({"/etc/evil.py": b"", "main.py": HELLO.encode()})), "absolute path"),
        (_body(source=_bomb()), "more than 50 MB unpacked"),
        (_body(source="not base64!"), "not base64"),
        (_body(source=base64.b64encode(b"plain text").decode()), "not a tar.gz"),
        (_body(handler="nodot"), "expected module.func"),
        (_body(min_scale=5, max_scale=2), "min_scale 5 is above max_scale 2"),
        (_body(vpc="prod"), "give --subnet with --vpc"),
        (_body(env={"1BAD": "x"}), "environment variable '1BAD'"),
    ],
)
def test_bad_deploys_are_refused_with_nothing_written(
    cloud: Cloud, net: dict[str, Any], body: dict[str, Any], message: str
) -> None:
    _host_limit(cloud, 1024)
    cloud.rejected("POST", "/v1/functions", 422, message, net["t"], json=body)
    assert _side_rows(cloud) == (0, 0)
    assert cloud.call("GET", "/v1/functions", net["t"])["items"] == []


def test_a_bad_new_version_leaves_the_function_as_it_was(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    v1 = cloud.call("POST", "/v1/functions", t, json=_body())
    cloud.rejected("POST", "/v1/functions", 422, "main.py:2:", t,
                   json=_body(source=_tar({"main.py": b"x = 1\ndef (\n"})))  # fmt: skip
    assert cloud.call("GET", "/v1/functions/hello", t)["revision"] == v1["revision"]
    assert _side_rows(cloud) == (1, 1)


def test_traffic_patch_is_checked(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    cloud.call("POST", "/v1/functions", t, json=_body())
    cloud.call("POST", "/v1/functions", t, json=_body(memory_mb=256))
    cloud.rejected("PATCH", "/v1/functions/hello", 422, "has no version 3 (it has v1, v2)", t,
                   json={"spec": {"traffic": {"1": 90, "3": 10}}})  # fmt: skip
    cloud.rejected("PATCH", "/v1/functions/hello", 422, "sum to 95%, not 100%", t,
                   json={"spec": {"traffic": {"v1": 90, "v2": 5}}})  # fmt: skip
    cloud.rejected("PATCH", "/v1/functions/hello", 422, "whole percent from 0 to 100", t,
                   json={"spec": {"traffic": {"1": 150, "2": -50}}})  # fmt: skip
    cloud.rejected("PATCH", "/v1/functions/hello", 400, "", t,
                   json={"spec": {"traffic": {"one": 100}}})  # fmt: skip
    cloud.rejected("PATCH", "/v1/functions/hello", 400, "", t, json={"spec": {"memory_mb": 512}})
    f = cloud.call("PATCH", "/v1/functions/hello", t,
                   json={"spec": {"traffic": {"v1": 90, "v2": 10}, "min_scale": 1}})  # fmt: skip
    assert f["spec"]["traffic"] == {"1": 90, "2": 10} and f["spec"]["min_scale"] == 1
    assert f["status"]["traffic"] == {"1": 90, "2": 10}
    with cloud.store.read() as r:
        fn = r.get("function", f["id"])
    assert fn is not None and effective_traffic(fn) == {1: 90, 2: 10}
    # A new version keeps the split (it gets no share until given one) ...
    v3 = cloud.call("POST", "/v1/functions", t, json=_body(memory_mb=512))
    assert v3["status"]["traffic"] == {"1": 90, "2": 10}
    # ... and null sends everything to the latest again.
    f = cloud.call("PATCH", "/v1/functions/hello", t, json={"spec": {"traffic": None}})
    assert (f["spec"]["traffic"], f["status"]["traffic"]) == (None, {"3": 100})
    stale = {"If-Match": f'"{v3["revision"]}"', **t}
    cloud.rejected("DELETE", "/v1/functions/hello", 412, "", stale)
    events = cloud.call("GET", "/v1/events", t, params={"for": "function/hello"})["items"]
    reasons = [e["reason"] for e in events]
    assert reasons.count("FunctionTrafficChanged") == 1  # folded: one row with a count
    gone = cloud.call("DELETE", "/v1/functions/hello", t)
    assert gone["name"] == "hello" and _side_rows(cloud) == (0, 0)


def _record(cloud: Cloud, project: str, fn: str, name: str, billed: int, mb: int, at: float,
            **kw: bool) -> None:  # fmt: skip
    meter = cloud.client.app.state.yunhan.meter  # type: ignore[attr-defined]
    meter.record(project, fn, name, 1, billed, mb, cold=kw.get("cold", False),
                 error=kw.get("error", False), at=at)  # fmt: skip


def test_usage_is_summed_priced_and_per_project(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    st.prices = PriceTable(per_request=0.5, per_gb_second=2.0, currency="EUR")
    tenant = cloud.call("GET", "/v1/whoami", t)["project"]
    other_h = cloud.project("other")
    other = cloud.call("GET", "/v1/whoami", other_h)["project"]
    now = cloud.clock()
    for i in range(10):  # 10 x 100 ms at 1024 MB: 1 GB-s
        _record(cloud, tenant["id"], "fn-a", "a", 100, 1024, now + i * 7, cold=i == 0)
    _record(cloud, tenant["id"], "fn-b", "b", 2000, 512, now + 86_400, error=True)
    _record(cloud, other["id"], "fn-c", "c", 1, 128, now)
    ans = cloud.call("GET", "/v1/usage", t)
    assert ans["project"] == tenant["id"] and ans["currency"] == "EUR"
    assert [(u["name"], u["requests"], u["cold_starts"], u["errors"], u["gb_seconds"])
            for u in ans["items"]] == [("a", 10, 1, 0, 1.0), ("b", 1, 0, 1, 1.0)]  # fmt: skip
    assert ans["items"][0]["cost"] == pytest.approx(10 * 0.5 + 1.0 * 2.0)
    assert ans["totals"]["requests"] == 11
    assert ans["totals"]["cost"] == pytest.approx(11 * 0.5 + 2.0 * 2.0)
    days = cloud.call("GET", "/v1/usage", t, params={"by": "day"})["items"]
    assert [(d["requests"], d["gb_seconds"]) for d in days] == [(10, 1.0), (1, 1.0)]
    assert days[0]["day"] < days[1]["day"]
    since = cloud.call("GET", "/v1/usage", t, params={"since": now + 3600})
    assert [u["name"] for u in since["items"]] == ["b"]
    # A project sees its own only; the admin every project, or the one it names.
    cloud.rejected("GET", "/v1/usage", 403, "its own usage only", t, params={"project": "other"})
    assert (
        cloud.call("GET", "/v1/usage", t, params={"project": "tenant"})["totals"]["requests"] == 11
    )
    everyone = cloud.call("GET", "/v1/usage")
    assert {u["project_name"] for u in everyone["items"]} == {"tenant", "other"}
    assert everyone["totals"]["requests"] == 12
    one = cloud.call("GET", "/v1/usage", params={"project": "other"})
    assert [(u["name"], u["project"]) for u in one["items"]] == [("c", other["id"])]
    cloud.rejected("GET", "/v1/usage", 404, "no project", params={"project": "nope"})
    cloud.rejected("GET", "/v1/usage", 400, "", t, params={"by": "week"})
