"""Tokens and tenant isolation."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def test_every_request_needs_a_valid_token(cloud: Cloud) -> None:
    cloud.rejected("GET", "/v1/vpcs", 401, "missing", headers={"X": "y"})
    cloud.rejected("GET", "/v1/vpcs", 401, "not valid", headers={"Authorization": "Bearer yh_nope"})
    cloud.rejected("GET", "/v1/revision", 401, "Bearer", headers={"Authorization": "Basic abc"})
    cloud.rejected(
        "POST",
        "/v1/vpcs",
        401,
        "missing",
        headers={"X": "y"},
        json={"name": "a", "cidrs": ["10.0.0.0/16"]},
    )


def test_whoami(cloud: Cloud) -> None:
    me = cloud.call("GET", "/v1/whoami")
    assert me["admin"] is True and me["project"]["name"] == "admin"
    t = cloud.project("alpha")
    me = cloud.call("GET", "/v1/whoami", t)
    assert me["admin"] is False and me["project"]["name"] == "alpha"
    assert me["project"]["id"].startswith("proj-")


def test_admin_only_endpoints(cloud: Cloud) -> None:
    t = cloud.project("alpha")
    cloud.rejected("POST", "/v1/projects", 403, "admin token", t, json={"name": "beta"})
    cloud.rejected("GET", "/v1/projects", 403, "admin token", t)
    cloud.rejected(
        "POST",
        "/v1/zones",
        403,
        "admin token",
        t,
        json={"name": "z", "underlay_cidr": "198.18.0.0/24"},
    )
    cloud.rejected(
        "PUT",
        "/v1/agent/hosts/h1",
        403,
        "admin token",
        t,
        json={"zone": "z", "underlay_ip": "198.18.0.1"},
    )
    cloud.rejected("GET", "/v1/agent/hosts/h1/desired", 403, "admin token", t)
    cloud.rejected(
        "POST", "/v1/agent/hosts/h1/status", 403, "admin token", t, json={"applied_revision": 1}
    )
    cloud.rejected("POST", "/v1/projects/alpha/tokens", 403, "admin token", t)


def test_projects_and_extra_tokens(cloud: Cloud) -> None:
    cloud.project("alpha")
    names = [p["name"] for p in cloud.call("GET", "/v1/projects")["items"]]
    assert names == ["admin", "alpha"]
    cloud.rejected("POST", "/v1/projects", 409, "already exists", json={"name": "alpha"})
    token = cloud.call("POST", "/v1/projects/alpha/tokens")["token"]
    assert token.startswith("yh_")
    me = cloud.call("GET", "/v1/whoami", {"Authorization": f"Bearer {token}"})
    assert me["project"]["name"] == "alpha"
    cloud.rejected("POST", "/v1/projects/nope/tokens", 404, "no project 'nope'")


def _stored_tokens(cloud: Cloud) -> list[tuple[str, ...]]:
    with cloud.store.engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql("SELECT * FROM tokens")]


def test_tokens_stored_only_as_hashes(cloud: Cloud) -> None:
    token = cloud.project("alpha")["Authorization"].split()[1]
    rows = _stored_tokens(cloud)
    assert len(rows) == 1
    assert hashlib.sha256(token.encode()).hexdigest() in rows[0]
    assert not any(token in str(v) for row in rows for v in row)


def test_a_project_sees_only_its_own(cloud: Cloud, net: dict[str, Any]) -> None:
    other = cloud.project("other")
    vpc_id = net["vpc"]["id"]
    # Same names are fine in another project, and identical CIDRs too.
    mine = cloud.call("POST", "/v1/vpcs", other, json={"name": "prod", "cidrs": ["10.0.0.0/16"]})
    assert mine["id"] != vpc_id
    assert [v["id"] for v in cloud.call("GET", "/v1/vpcs", other)["items"]] == [mine["id"]]
    # Another project's id answers 404, for every verb.
    cloud.rejected("GET", f"/v1/vpcs/{vpc_id}", 404, "no vpc", other)
    cloud.rejected("DELETE", f"/v1/vpcs/{vpc_id}", 404, "no vpc", other)
    cloud.rejected(
        "POST", f"/v1/vpcs/{vpc_id}/cidrs", 404, "no vpc", other, json={"cidr": "10.5.0.0/16"}
    )
    cloud.rejected("GET", f"/v1/subnets/{net['web']['id']}", 404, "no subnet", other)
    cloud.rejected(
        "POST",
        "/v1/subnets",
        404,
        "no vpc",
        other,
        json={"name": "s", "vpc": vpc_id, "cidr": "10.0.9.0/24"},
    )
    cloud.rejected(
        "POST",
        "/v1/instances",
        404,
        "no subnet",
        other,
        json={"name": "i", "subnet": net["web"]["id"], "zone": "az1"},
    )
    inst = cloud.call(
        "POST", "/v1/instances", net["t"], json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    cloud.rejected("GET", f"/v1/instances/{inst['id']}", 404, "no instance", other)
    cloud.rejected("DELETE", f"/v1/instances/{inst['id']}", 404, "no instance", other)
    assert cloud.call("GET", "/v1/instances", other)["items"] == []
    assert cloud.call("GET", "/v1/subnets", other)["items"] == []
    # The owner still sees everything, by id and by name.
    assert cloud.call("GET", f"/v1/vpcs/{vpc_id}", net["t"])["name"] == "prod"
    assert cloud.call("GET", "/v1/instances/a", net["t"])["id"] == inst["id"]


def test_zones_and_hosts_readable_by_tenants(cloud: Cloud, net: dict[str, Any]) -> None:
    assert [z["name"] for z in cloud.call("GET", "/v1/zones", net["t"])["items"]] == ["az1", "az2"]
    assert cloud.call("GET", "/v1/zones/az1", net["t"])["spec"]["underlay_cidr"] == "198.18.1.0/24"
    assert [h["name"] for h in cloud.call("GET", "/v1/hosts", net["t"])["items"]] == ["h1", "h2"]


def test_admin_token_is_not_persisted(cloud: Cloud) -> None:
    admin = cloud.admin["Authorization"].split()[1]
    digest = hashlib.sha256(admin.encode()).hexdigest()
    assert not any(v in (admin, digest) for row in _stored_tokens(cloud) for v in row)


def test_no_stored_token_for_the_admin_project(cloud: Cloud) -> None:
    # A stored admin token would outlive the rotation of the admin token (a restart with
    # another one), which is the only way the admin token is revoked.
    cloud.rejected("POST", "/v1/projects/admin/tokens", 422, "restart the server", cloud.admin)
    admin_id = cloud.call("GET", "/v1/whoami")["project"]["id"]
    cloud.rejected("POST", f"/v1/projects/{admin_id}/tokens", 422, "restart the server")
    assert _stored_tokens(cloud) == []


def test_host_errors_are_not_shown_to_tenants(cloud: Cloud, net: dict[str, Any]) -> None:
    # An agent's error names what it failed on: other projects' addresses and instances.
    secret = "add route 10.0.1.5/32 in yh-vpc-2 (inst-0badc0de): File exists"
    cloud.call("POST", "/v1/agent/hosts/h1/status", json={"applied_revision": 1, "error": secret})
    assert cloud.call("GET", "/v1/hosts/h1")["status"]["error"] == secret  # the admin's
    for got in (
        cloud.call("GET", "/v1/hosts/h1", net["t"]),
        cloud.call("GET", "/v1/hosts", net["t"])["items"][0],
    ):
        assert got["name"] == "h1"
        assert got["status"]["error"] and "10.0.1.5" not in got["status"]["error"]
        assert "inst-" not in str(got)
