"""Instances: IPAM in the create transaction, MACs, placement, subnet accounting."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def _create(cloud: Cloud, net: dict[str, Any], name: str, **kw: Any) -> dict[str, Any]:
    body = {"name": name, "subnet": "web", "zone": "az1", **kw}
    return cloud.call("POST", "/v1/instances", net["t"], json=body)


def test_create_response_carries_ip_mac_host(cloud: Cloud, net: dict[str, Any]) -> None:
    a = _create(cloud, net, "a")
    assert a["id"].startswith("inst-") and a["kind"] == "instance"
    assert a["status"]["ip"] == "10.0.1.2"  # the third address: .0 and .1 are reserved
    assert a["status"]["mac"].startswith("fa:16:3e:")
    assert a["status"]["host"] == "h1"
    assert a["status"]["vpc"] == net["vpc"]["id"]
    assert a["status"]["phase"] == "scheduled"
    assert a["spec"]["zone"] == cloud.call("GET", "/v1/zones/az1")["id"]
    assert a["revision"] == cloud.revision()
    b = _create(cloud, net, "b", zone="az2")
    assert b["status"]["ip"] == "10.0.1.3" and b["status"]["host"] == "h2"
    assert a["status"]["mac"] != b["status"]["mac"]


def test_fixed_ip_and_reuse_after_delete(cloud: Cloud, net: dict[str, Any]) -> None:
    a = _create(cloud, net, "a", ip="10.0.1.200")
    assert a["status"]["ip"] == "10.0.1.200" and a["spec"]["ip"] == "10.0.1.200"
    cloud.rejected(
        "POST",
        "/v1/instances",
        409,
        "10.0.1.200 is already used by instance a",
        net["t"],
        json={"name": "b", "subnet": "web", "zone": "az1", "ip": "10.0.1.200"},
    )
    assert _create(cloud, net, "c")["status"]["ip"] == "10.0.1.2"
    cloud.call("DELETE", "/v1/instances/a", net["t"])
    assert _create(cloud, net, "d", ip="10.0.1.200")["status"]["ip"] == "10.0.1.200"


def test_exhaustion_and_available(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    small = cloud.call(
        "POST", "/v1/subnets", t, json={"name": "tiny", "vpc": "prod", "cidr": "10.0.9.0/29"}
    )
    assert small["status"] == {"gateway": "10.0.9.1", "available": 5, "index": 3}
    ips = [
        cloud.call(
            "POST", "/v1/instances", t, json={"name": f"i{n}", "subnet": "tiny", "zone": "az1"}
        )["status"]["ip"]
        for n in range(5)
    ]
    assert ips == ["10.0.9.2", "10.0.9.3", "10.0.9.4", "10.0.9.5", "10.0.9.6"]
    assert cloud.call("GET", "/v1/subnets/tiny", t)["status"]["available"] == 0
    cloud.rejected(
        "POST",
        "/v1/instances",
        409,
        "subnet tiny (10.0.9.0/29) has no free address",
        t,
        json={"name": "i5", "subnet": "tiny", "zone": "az1"},
    )
    cloud.call("DELETE", "/v1/instances/i2", t)
    assert cloud.call("GET", "/v1/subnets/tiny", t)["status"]["available"] == 1
    again = cloud.call(
        "POST", "/v1/instances", t, json={"name": "i5", "subnet": "tiny", "zone": "az1"}
    )
    assert again["status"]["ip"] == "10.0.9.4"


def test_duplicate_instance_name(cloud: Cloud, net: dict[str, Any]) -> None:
    _create(cloud, net, "a")
    cloud.rejected(
        "POST",
        "/v1/instances",
        409,
        "already exists",
        net["t"],
        json={"name": "a", "subnet": "web", "zone": "az1"},
    )


def test_least_loaded_healthy_host_first(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.host("h3", "az1", "198.18.1.13")
    cloud.heartbeat("h1", 0)
    cloud.heartbeat("h3", 0)
    hosts = [_create(cloud, net, f"i{n}")["status"]["host"] for n in range(4)]
    assert sorted(hosts) == ["h1", "h1", "h3", "h3"]
    # h3 goes silent: new instances go to the healthy h1 even though it is busier.
    cloud.clock.advance(10)
    cloud.heartbeat("h1", 0)
    cloud.clock.advance(10)
    assert _create(cloud, net, "late")["status"]["host"] == "h1"


def test_same_cidr_in_two_projects_allocates_independently(
    cloud: Cloud, net: dict[str, Any]
) -> None:
    other = cloud.project("other")
    cloud.call("POST", "/v1/vpcs", other, json={"name": "prod", "cidrs": ["10.0.0.0/16"]})
    cloud.call(
        "POST", "/v1/subnets", other, json={"name": "web", "vpc": "prod", "cidr": "10.0.1.0/24"}
    )
    a = _create(cloud, net, "a")
    b = cloud.call(
        "POST", "/v1/instances", other, json={"name": "a", "subnet": "web", "zone": "az1"}
    )
    assert a["status"]["ip"] == b["status"]["ip"] == "10.0.1.2"
    assert a["status"]["vpc"] != b["status"]["vpc"]


def test_delete_carries_the_revision_of_the_delete(cloud: Cloud, net: dict[str, Any]) -> None:
    # A client waits for a delete to converge by its revision: it must be the delete's own.
    a = _create(cloud, net, "a")
    gone = cloud.call("DELETE", "/v1/instances/a", net["t"])
    assert gone["id"] == a["id"]
    assert gone["revision"] == cloud.revision() > a["revision"]
