"""The API's conventions (docs/api.md): cursor pages, filters, labels, If-Match,
Idempotency-Key and merge patches, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from cp_fixtures import ADMIN_TOKEN, Cloud
from fastapi.testclient import TestClient

from yunhan.api.app import create_app
from yunhan.model import new_id
from yunhan.store import Store

pytest_plugins = ["cp_fixtures"]


def walk(cloud: Cloud, path: str, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, page by page, following `next`."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {**params, **({"cursor": cursor} if cursor else {})}
        page = cloud.call("GET", path, headers, params=q)
        assert set(page) == {"items", "next", "revision"}
        items.extend(page["items"])
        cursor = page["next"]
        if cursor is None:
            return items


# -- pagination --------------------------------------------------------------------------


def test_walk_of_2500_items_during_writes_misses_nothing_and_repeats_nothing(
    cloud: Cloud, net: dict[str, Any]
) -> None:
    """A cursor is a position (name, id), not an offset: while another writer creates and
    deletes VPCs all along the walk, every VPC that exists throughout is returned exactly
    once, and no VPC twice."""
    project = cloud.call("GET", "/v1/whoami", net["t"])["project"]["id"]
    with cloud.store.transaction() as tx:
        for n in range(2500):
            tx.create("vpc", new_id("vpc"), project, f"v{n:05d}", {"cidrs": []}, {"vni": n + 10})
    with cloud.store.read() as r:
        initial = {v.id for v in r.list("vpc", project)}
    stop = threading.Event()
    touched: set[str] = set()  # created or deleted by the writer during the walk
    n_writes = 0

    def writer() -> None:
        nonlocal n_writes
        k = 0
        while not stop.is_set():
            k += 1
            with cloud.store.transaction() as tx:
                # New names before and after anywhere the cursor may be, and deletes of
                # names it has passed and not yet reached.
                for name in (f"v{(k * 37) % 2500:05d}x", f"a{k:05d}", f"z{k:05d}"):
                    touched.add(
                        tx.create(
                            "vpc",
                            new_id("vpc"),
                            project,
                            name,
                            {"cidrs": []},
                            {"vni": 100_000 + 3 * k},
                        ).id
                    )
                victim = tx.by_name("vpc", project, f"v{(k * 101) % 2500:05d}")
                if victim is not None:
                    touched.add(victim.id)
                    tx.delete(victim)
            n_writes += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        seen = [v["id"] for v in walk(cloud, "/v1/vpcs", net["t"], limit=100)]
    finally:
        stop.set()
        t.join()
    assert n_writes > 0
    assert len(seen) == len(set(seen)), "an item was returned twice"
    throughout = initial - touched
    assert throughout <= set(seen), f"{len(throughout - set(seen))} items missed"
    assert len(throughout) > 2000


def test_limit_bounds_and_bad_cursor(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    for n in range(5):
        cloud.call("POST", "/v1/vpcs", t, json={"name": f"x{n}", "cidrs": [f"10.{n + 1}.0.0/16"]})
    page = cloud.call("GET", "/v1/vpcs", t, params={"limit": 2})
    assert [v["name"] for v in page["items"]] == ["prod", "x0"] and page["next"]
    assert page["revision"] == cloud.revision()
    assert [v["name"] for v in walk(cloud, "/v1/vpcs", t, limit=2)][-1] == "x4"
    cloud.rejected("GET", "/v1/vpcs", 400, "limit", t, params={"limit": 1001})
    cloud.rejected("GET", "/v1/vpcs", 400, "limit", t, params={"limit": 0})
    cloud.rejected("GET", "/v1/vpcs", 422, "cursor", t, params={"cursor": "bm90IGEgY3Vyc29y"})


def test_unknown_query_parameter_is_refused(cloud: Cloud, net: dict[str, Any]) -> None:
    # A misspelt filter must not look like a filtered list.
    cloud.rejected(
        "GET",
        "/v1/instances",
        400,
        "unknown query parameter(s) sbnet",
        net["t"],
        params={"sbnet": "web"},
    )
    cloud.rejected(
        "GET", "/v1/vpcs/prod", 400, "unknown query parameter(s) x", net["t"], params={"x": "1"}
    )


# -- filters and labels ------------------------------------------------------------------


def test_filters(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    cloud.call("POST", "/v1/vpcs", t, json={"name": "dev", "cidrs": ["10.9.0.0/16"]})
    cloud.call("POST", "/v1/subnets", t, json={"name": "d1", "vpc": "dev", "cidr": "10.9.1.0/24"})
    for name, sub, zone in (("a", "web", "az1"), ("b", "web", "az2"), ("c", "d1", "az1")):
        cloud.call("POST", "/v1/instances", t, json={"name": name, "subnet": sub, "zone": zone})

    def names(**params: Any) -> list[str]:
        return [i["name"] for i in walk(cloud, "/v1/instances", t, **params)]

    assert names() == ["a", "b", "c"]
    assert names(vpc="prod") == ["a", "b"]
    assert names(vpc=net["vpc"]["id"]) == ["a", "b"]
    assert names(subnet="d1") == ["c"]
    assert names(zone="az1") == ["a", "c"]
    assert names(host="h2") == ["b"]
    assert names(zone="az1", vpc="dev") == ["c"]
    assert names(name="b") == ["b"]
    assert names(phase="scheduled") == ["a", "b", "c"]
    assert names(phase="running") == []
    assert [s["name"] for s in walk(cloud, "/v1/subnets", t, vpc="dev")] == ["d1"]
    assert [h["name"] for h in walk(cloud, "/v1/hosts", t, zone="az2")] == ["h2"]
    assert [z["name"] for z in walk(cloud, "/v1/zones", t, name="az1")] == ["az1"]
    cloud.rejected("GET", "/v1/instances", 404, "no vpc 'nope'", t, params={"vpc": "nope"})
    cloud.rejected("GET", "/v1/instances", 400, "phase", t, params={"phase": "sleeping"})


def test_labels_set_at_create_selected_and_validated(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    for name, labels in (
        ("a", {"app": "web", "tier": "front"}),
        ("b", {"app": "web", "tier": "back", "example.com/owner": "ops"}),
        ("c", {"app": "db"}),
    ):
        made = cloud.call(
            "POST",
            "/v1/instances",
            t,
            json={"name": name, "subnet": "web", "zone": "az1", "labels": labels},
        )
        assert made["labels"] == labels

    def selected(*terms: str) -> list[str]:
        return [i["name"] for i in walk(cloud, "/v1/instances", t, label=list(terms))]

    assert selected("app=web") == ["a", "b"]
    assert selected("app=web", "tier=back") == ["b"]  # terms are ANDed
    assert selected("example.com/owner=ops") == ["b"]
    assert selected("app=") == []
    # Labels survive a restart of the model (reloaded from the database).
    cloud.store._reload()
    assert cloud.call("GET", "/v1/instances/b", t)["labels"]["example.com/owner"] == "ops"
    body = {"name": "bad", "cidrs": ["10.5.0.0/16"]}
    for labels in (
        {"-app": "x"},  # a name starts alphanumeric
        {"a" * 64: "x"},  # a name has at most 63 characters
        {"Example.com/app": "x"},  # the prefix is a lower-case DNS subdomain
        {"app": "x" * 64},
        {"app": "a b"},
        {"a/b/c": "x"},
    ):
        cloud.rejected("POST", "/v1/vpcs", 400, "labels", t, json={**body, "labels": labels})
    many = {f"k{n}": "v" for n in range(65)}
    cloud.rejected("POST", "/v1/vpcs", 400, "labels", t, json={**body, "labels": many})
    cloud.rejected("GET", "/v1/vpcs", 400, "label", t, params={"label": "no-equals-sign"})
    ok = {"a" * 63: "", "k8s.io/x_y.z-1": "V_1.2-3", f"{'d' * 180}.example/n": "v"}
    assert cloud.call("POST", "/v1/vpcs", t, json={**body, "labels": ok})["labels"] == ok


# -- merge patch and If-Match --------------------------------------------------------------


def test_merge_patch_of_labels_and_vpc_blocks(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    merge = {**t, "Content-Type": "application/merge-patch+json"}
    v = cloud.call("PATCH", "/v1/vpcs/prod", merge, content=b'{"labels": {"a": "1", "b": "2"}}')
    assert v["labels"] == {"a": "1", "b": "2"}
    v = cloud.call("PATCH", "/v1/vpcs/prod", t, json={"labels": {"a": None, "c": "3"}})
    assert v["labels"] == {"b": "2", "c": "3"}
    before = v["revision"]
    v = cloud.call("PATCH", "/v1/vpcs/prod", t, json={})  # nothing changes: no write
    assert v["revision"] == before == cloud.revision()
    v = cloud.call(
        "PATCH", "/v1/vpcs/prod", t, json={"spec": {"cidrs": ["10.0.0.0/16", "10.1.0.0/16"]}}
    )
    assert v["spec"]["cidrs"] == ["10.0.0.0/16", "10.1.0.0/16"] and v["labels"]["b"] == "2"
    # Removing the block that holds subnet web is refused like DELETE .../cidrs.
    cloud.rejected(
        "PATCH", "/v1/vpcs/prod", 409, "web", t, json={"spec": {"cidrs": ["10.1.0.0/16"]}}
    )
    cloud.rejected(
        "PATCH",
        "/v1/vpcs/prod",
        422,
        "private range",
        t,
        json={"spec": {"cidrs": ["10.0.0.0/16", "8.8.0.0/16"]}},
    )
    v = cloud.call("PATCH", "/v1/vpcs/prod", t, json={"labels": None})
    assert v["labels"] == {}
    for path in ("/v1/subnets/web", "/v1/zones/az1", "/v1/hosts/h1"):
        hdr = t if path.startswith("/v1/subnets") else cloud.admin
        assert cloud.call("PATCH", path, hdr, json={"labels": {"x": "y"}})["labels"] == {"x": "y"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/vpcs/prod", {"name": "other"}, "name"),
        ("/v1/vpcs/prod", {"spec": {"vni": 9}}, "spec.vni"),
        ("/v1/subnets/web", {"spec": {"cidr": "10.0.2.0/24"}}, "spec"),
        ("/v1/instances/a", {"spec": {"command": ["sleep", "1"]}}, "spec"),
        ("/v1/instances/a", {"status": {"phase": "running"}}, "status"),
    ],
)
def test_patch_refuses_what_cannot_change(
    cloud: Cloud, net: dict[str, Any], path: str, body: dict[str, Any], field: str
) -> None:
    cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    cloud.rejected("PATCH", path, 400, f"{field} cannot be changed by PATCH", net["t"], json=body)


def test_if_match(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    rev = cloud.call("GET", "/v1/vpcs/prod", t)["revision"]
    stale = {**t, "If-Match": str(rev - 1)}
    cloud.rejected(
        "PATCH", "/v1/vpcs/prod", 412, f"at revision {rev}", stale, json={"labels": {"a": "1"}}
    )
    cloud.rejected(
        "DELETE", "/v1/subnets/web", 412, "changed since you read it", {**t, "If-Match": "1"}
    )
    v = cloud.call(
        "PATCH", "/v1/vpcs/prod", {**t, "If-Match": f'"{rev}"'}, json={"labels": {"a": "1"}}
    )
    assert v["revision"] > rev
    cloud.rejected(
        "PATCH",
        "/v1/vpcs/prod",
        412,
        "changed",
        {**t, "If-Match": str(rev)},
        json={"labels": {"a": "2"}},
    )
    sub = cloud.call("GET", "/v1/subnets/web", t)
    cloud.call("DELETE", "/v1/subnets/web", {**t, "If-Match": str(sub["revision"])})
    cloud.call("DELETE", "/v1/vpcs/prod", {**t, "If-Match": "*"})
    cloud.rejected(
        "PATCH", "/v1/zones/az1", 400, "If-Match", {**cloud.admin, "If-Match": "abc"}, json={}
    )


# -- Idempotency-Key -----------------------------------------------------------------------


def test_idempotent_retry(cloud: Cloud, net: dict[str, Any]) -> None:
    t = {**net["t"], "Idempotency-Key": "create-i1"}
    body = {"name": "i1", "subnet": "web", "zone": "az1"}
    first = cloud.client.post("/v1/instances", json=body, headers=t)
    assert first.status_code == 201
    rev = cloud.revision()
    # The same body in another key order is the same request.
    again = cloud.client.post("/v1/instances", json=dict(reversed(body.items())), headers=t)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert cloud.revision() == rev, "a retry wrote something"
    assert len(cloud.call("GET", "/v1/instances", net["t"])["items"]) == 1
    cloud.rejected(
        "POST", "/v1/instances", 422, "was used for another request", t, json={**body, "name": "i2"}
    )
    cloud.rejected(
        "POST",
        "/v1/vpcs",
        422,
        "was used for another request",
        t,
        json={"name": "x", "cidrs": ["10.7.0.0/16"]},
    )
    # Another project's key space is its own.
    other = {**cloud.project("other"), "Idempotency-Key": "create-i1"}
    assert (
        cloud.client.post(
            "/v1/vpcs", json={"name": "v", "cidrs": ["10.0.0.0/16"]}, headers=other
        ).status_code
        == 201
    )
    # Keys live 24 hours.
    cloud.clock.advance(24 * 3600 + 1)
    cloud.rejected("POST", "/v1/instances", 409, "already exists", t, json=body)
    assert (
        cloud.client.post("/v1/instances", json={**body, "name": "i2"}, headers=t).status_code
        == 201
    )


def test_failed_request_keeps_no_answer(cloud: Cloud, net: dict[str, Any]) -> None:
    t = {**net["t"], "Idempotency-Key": "k"}
    cloud.rejected(
        "POST", "/v1/vpcs", 422, "private range", t, json={"name": "x", "cidrs": ["8.8.0.0/16"]}
    )
    assert (
        cloud.client.post(
            "/v1/vpcs", json={"name": "x", "cidrs": ["10.8.0.0/16"]}, headers=t
        ).status_code
        == 201
    )


def test_idempotency_holds_across_replicas(
    cloud: Cloud, net: dict[str, Any], store_url: str
) -> None:
    """The answer is in the database, written with the write: a retry that lands on
    another replica finds it."""
    other = Store.connect(store_url, poll_interval=0.05)
    try:
        app = create_app(other, admin_token=ADMIN_TOKEN, clock=cloud.clock, max_long_poll=1)
        with TestClient(app) as b:
            t = {**net["t"], "Idempotency-Key": "cross"}
            body = {"name": "v2", "cidrs": ["10.2.0.0/16"]}
            first = cloud.client.post("/v1/vpcs", json=body, headers=t)
            assert first.status_code == 201
            again = b.post("/v1/vpcs", json=body, headers=t)
            assert (again.status_code, again.json()) == (201, first.json())
            assert b.post("/v1/vpcs", json={**body, "name": "v3"}, headers=t).status_code == 422
    finally:
        other.close()


def test_concurrent_retries_write_once(cloud: Cloud, net: dict[str, Any]) -> None:
    t = {**net["t"], "Idempotency-Key": "race"}
    body = {"name": "race", "cidrs": ["10.3.0.0/16"]}
    answers: list[Any] = []

    def post() -> None:
        r = cloud.client.post("/v1/vpcs", json=body, headers=t)
        answers.append((r.status_code, r.json()["id"]))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(set(answers)) == 1 and answers[0][0] == 201


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("TRACE", "/v1/vpcs", "GET, HEAD, POST"),
        ("PUT", "/v1/vpcs/prod", "DELETE, GET, HEAD, PATCH"),
        ("OPTIONS", "/v1/vpcs/prod/cidrs", "DELETE, POST"),
    ],
)
def test_method_not_allowed_names_the_methods(
    cloud: Cloud, method: str, path: str, allow: str
) -> None:
    r = cloud.client.request(method, path, headers=cloud.admin)
    assert r.status_code == 405 and r.headers["Allow"] == allow
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_openapi_declares_bearer_auth_and_no_default_422(cloud: Cloud) -> None:
    doc = cloud.client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearer": []}]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    get_vpc = doc["paths"]["/v1/vpcs/{ref}"]["get"]["responses"]
    assert set(get_vpc) == {"200", "400", "401", "404"}
    assert get_vpc["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Vpc")


def test_openapi_bounds_are_json_schema_keywords(cloud: Cloud) -> None:
    """pydantic writes a bound on a union member with a validator as "ge"/"le", which JSON
    Schema does not know: clients then send what the server refuses (schemathesis did, for
    an agent's volume_pool). Every bound must be minimum/maximum."""
    doc = cloud.client.get("/openapi.json").json()
    found: list[str] = []

    def walk(path: str, node: Any) -> None:
        if isinstance(node, dict):
            if "type" in node and {"ge", "le", "gt", "lt"} & set(node):
                found.append(path)
            for k, v in node.items():
                walk(f"{path}/{k}", v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(f"{path}/{i}", v)

    walk("", doc)
    assert found == []
    pool = doc["components"]["schemas"]["HostRegister"]["properties"]["volume_pool"]
    assert pool["anyOf"][0]["minimum"] == 0
