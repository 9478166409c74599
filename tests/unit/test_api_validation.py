"""Every validation rule through the API: a clear 4xx error and an unmoved revision."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

VPCS = "/v1/vpcs"


if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "x", "cidrs": ["8.8.8.0/24"]}, 422, "not inside a private range"),
        ({"name": "x", "cidrs": ["10.0.0.0/30"]}, 422, "too small"),
        ({"name": "x", "cidrs": ["10.0.0.1/16"]}, 422, "did you mean 10.0.0.0/16"),
        ({"name": "x", "cidrs": ["10.0.0.0/16", "10.0.3.0/24"]}, 422, "overlaps block"),
        ({"name": "x", "cidrs": []}, 400, "cidrs"),
        ({"name": "x"}, 400, "cidrs"),
        ({"name": "Bad_Name", "cidrs": ["10.0.0.0/16"]}, 400, "name: 'Bad_Name' does not match"),
        ({"name": "prod", "cidrs": ["10.9.0.0/16"]}, 409, "already exists"),
    ],
)
def test_bad_vpc(
    cloud: Cloud, net: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    cloud.rejected("POST", VPCS, status, message, net["t"], json=body)


def test_bad_json_body(cloud: Cloud, net: dict[str, Any]) -> None:
    before = cloud.revision()
    r = cloud.client.post(
        VPCS, content=b"{not json", headers={**net["t"], "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert cloud.revision() == before


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"name": "s", "vpc": "prod", "cidr": "10.1.5.0/24"},
            422,
            "10.1.5.0/24 is not inside any block of VPC prod (10.0.0.0/16)",
        ),
        ({"name": "s", "vpc": "prod", "cidr": "10.0.2.0/30"}, 422, "too small"),
        ({"name": "s", "vpc": "prod", "cidr": "10.0.1.128/25"}, 409, "overlaps subnet web"),
        ({"name": "s", "vpc": "prod", "cidr": "10.0.2.1/24"}, 422, "host bits"),
        ({"name": "web", "vpc": "prod", "cidr": "10.0.2.0/24"}, 409, "already exists"),
        ({"name": "s", "vpc": "nope", "cidr": "10.0.2.0/24"}, 404, "no vpc 'nope'"),
    ],
)
def test_bad_subnet(
    cloud: Cloud, net: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    cloud.rejected("POST", "/v1/subnets", status, message, net["t"], json=body)


def test_vpc_blocks_add_and_remove(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    vpc = cloud.call("POST", "/v1/vpcs/prod/cidrs", t, json={"cidr": "10.1.0.0/16"})
    assert vpc["spec"]["cidrs"] == ["10.0.0.0/16", "10.1.0.0/16"]
    cloud.rejected(
        "POST", "/v1/vpcs/prod/cidrs", 422, "overlaps block", t, json={"cidr": "10.1.2.0/24"}
    )
    cloud.rejected(
        "POST", "/v1/vpcs/prod/cidrs", 409, "already a block", t, json={"cidr": "10.1.0.0/16"}
    )
    cloud.rejected(
        "POST", "/v1/vpcs/prod/cidrs", 422, "private range", t, json={"cidr": "11.0.0.0/16"}
    )
    cloud.call("POST", "/v1/subnets", t, json={"name": "db", "vpc": "prod", "cidr": "10.1.1.0/24"})
    cloud.rejected(
        "DELETE",
        "/v1/vpcs/prod/cidrs",
        409,
        "still holds subnet(s) db",
        t,
        params={"cidr": "10.1.0.0/16"},
    )
    cloud.call("DELETE", "/v1/subnets/db", t)
    vpc = cloud.call("DELETE", "/v1/vpcs/prod/cidrs", t, params={"cidr": "10.1.0.0/16"})
    assert vpc["spec"]["cidrs"] == ["10.0.0.0/16"]
    cloud.rejected(
        "DELETE", "/v1/vpcs/prod/cidrs", 422, "not a block", t, params={"cidr": "10.7.0.0/16"}
    )


def test_deletes_refused_while_in_use(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    cloud.call("POST", "/v1/instances", t, json={"name": "a", "subnet": "web", "zone": "az1"})
    cloud.rejected("DELETE", "/v1/vpcs/prod", 409, "still has subnet(s) web", t)
    cloud.rejected("DELETE", "/v1/subnets/web", 409, "still has instance(s) a", t)
    cloud.call("DELETE", "/v1/instances/a", t)
    cloud.call("DELETE", "/v1/subnets/web", t)
    gone = cloud.call("DELETE", "/v1/vpcs/prod", t)
    assert gone["name"] == "prod"
    cloud.rejected("GET", "/v1/vpcs/prod", 404, "no vpc 'prod'", t)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "i", "subnet": "web", "zone": "az1", "ip": "10.0.1.0"}, 422, "reserved"),
        ({"name": "i", "subnet": "web", "zone": "az1", "ip": "10.0.1.1"}, 422, "reserved"),
        ({"name": "i", "subnet": "web", "zone": "az1", "ip": "10.0.1.255"}, 422, "reserved"),
        (
            {"name": "i", "subnet": "web", "zone": "az1", "ip": "10.0.2.9"},
            422,
            "not inside subnet web",
        ),
        (
            {"name": "i", "subnet": "web", "zone": "az1", "ip": "10.0.1.x"},
            422,
            "not an IPv4 address",
        ),
        ({"name": "i", "subnet": "web", "zone": "az9"}, 404, "no zone 'az9' in this region"),
        ({"name": "i", "subnet": "nope", "zone": "az1"}, 404, "no subnet 'nope'"),
        ({"name": "I", "subnet": "web", "zone": "az1"}, 400, "name: 'I' does not match"),
        ({"subnet": "web", "zone": "az1"}, 400, "name"),
    ],
)
def test_bad_instance(
    cloud: Cloud, net: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    cloud.rejected("POST", "/v1/instances", status, message, net["t"], json=body)


def test_instance_in_zone_without_host(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.zone("az3", "198.18.3.0/24")
    cloud.rejected(
        "POST",
        "/v1/instances",
        409,
        "zone az3 has no host",
        net["t"],
        json={"name": "i", "subnet": "web", "zone": "az3"},
    )


def test_bad_zone_and_host(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.rejected(
        "POST", "/v1/zones", 422, "underlay CIDR", json={"name": "z", "underlay_cidr": "x"}
    )
    cloud.rejected(
        "POST",
        "/v1/zones",
        409,
        "already exists",
        json={"name": "az1", "underlay_cidr": "198.18.9.0/24"},
    )
    body = {"zone": "az1", "underlay_ip": "198.18.1.11", "mtu": 1500}
    cloud.rejected("PUT", "/v1/agent/hosts/h9", 409, "already registered by host h1", json=body)
    cloud.rejected(
        "PUT",
        "/v1/agent/hosts/h9",
        422,
        "not an IPv4 address",
        json={**body, "underlay_ip": "nope"},
    )
    cloud.rejected(
        "PUT",
        "/v1/agent/hosts/h9",
        422,
        "mtu",
        json={**body, "underlay_ip": "198.18.1.12", "mtu": 100},
    )
    cloud.rejected("PUT", "/v1/agent/hosts/h9", 404, "no zone 'az7'", json={**body, "zone": "az7"})
    cloud.rejected("PUT", "/v1/agent/hosts/H_9", 422, "host name", json=body)


def test_unknown_route_uses_error_shape(cloud: Cloud) -> None:
    cloud.rejected("GET", "/v1/nothing-here", 404, "Not Found")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/converged", {"timeout": "nan"}),
        ("/v1/converged", {"revision": -(10**30)}),
        ("/v1/converged", {"revision": -1}),
        ("/v1/agent/hosts/h1/desired", {"after": 0, "timeout": "nan"}),
        ("/v1/agent/hosts/h1/desired", {"after": -1}),
    ],
)
def test_bad_long_poll_parameters(
    cloud: Cloud, net: dict[str, Any], path: str, params: dict[str, Any]
) -> None:
    # A NaN timeout used to hold the request forever; an out-of-range revision was a 500.
    cloud.reconcile()
    cloud.rejected("GET", path, 400, "invalid request", params=params)


def test_status_report_with_out_of_range_revision(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.rejected(
        "POST",
        "/v1/agent/hosts/h1/status",
        400,
        "applied_revision",
        json={"applied_revision": 2**63},
    )


def test_internal_error_keeps_its_details_in_the_log(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    def boom() -> int:
        raise RuntimeError("(sqlite3.OperationalError) SELECT value FROM meta [parameters: x]")

    monkeypatch.setattr(cloud.store, "revision", boom)
    client = TestClient(cloud.client.app, raise_server_exceptions=False)
    r = client.get("/v1/revision", headers=cloud.admin)
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "internal" and "server log" in err["message"]
    assert "SELECT" not in r.text and "sqlite3" not in r.text
