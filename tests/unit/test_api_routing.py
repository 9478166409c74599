"""Route tables, routes and policy routes through the API (docs/routing.md): the default
table made with its VPC, per-VPC indexes, associations, the full route listing, and every
bad input refused with a clear error that changes nothing."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


@pytest.fixture
def rt(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    """prod (10.0.0.0/16) with subnets web (10.0.1.0/24) and app (10.0.2.0/24), instances
    fw (in app) and w1 (in web), a custom table `edge` with web associated."""
    t = net["t"]
    app = cloud.call(
        "POST", "/v1/subnets", t, json={"name": "app", "vpc": "prod", "cidr": "10.0.2.0/24"}
    )
    fw = cloud.call("POST", "/v1/instances", t, json={"name": "fw", "subnet": "app", "zone": "az1"})
    w1 = cloud.call("POST", "/v1/instances", t, json={"name": "w1", "subnet": "web", "zone": "az2"})
    edge = cloud.call("POST", "/v1/route-tables", t, json={"name": "edge", "vpc": "prod"})
    cloud.call("POST", "/v1/route-tables/edge/associations", t, json={"subnet": "web"})
    return {**net, "app": app, "fw": fw, "w1": w1, "edge": edge}


def _route(cloud: Cloud, t: dict[str, str], table: str, **body: Any) -> dict[str, Any]:
    return cloud.call("POST", f"/v1/route-tables/{table}/routes", t, json=body)


def test_vpc_gets_default_table_and_indexes(cloud: Cloud, net: dict[str, Any]) -> None:
    t, vpc, web = net["t"], net["vpc"], net["web"]
    tables = cloud.call("GET", "/v1/route-tables", t)["items"]
    assert [x["name"] for x in tables] == ["prod-default"]
    default = tables[0]
    assert default["spec"] == {"vpc": vpc["id"], "default": True}
    assert default["status"] == {"index": 1}
    assert default["id"].startswith("rtb-")
    # made in the VPC's own transaction: same revision
    assert default["revision"] == vpc["revision"]
    assert vpc["status"]["next_index"] == 2
    assert web["status"]["index"] == 2 and web["spec"]["route_table"] == default["id"]
    assert cloud.call("GET", "/v1/vpcs/prod", t)["status"]["next_index"] == 3
    # the default name is suffixed when taken
    cloud.call("POST", "/v1/route-tables", t, json={"name": "x-default", "vpc": "prod"})
    cloud.call("POST", "/v1/vpcs", t, json={"name": "x", "cidrs": ["10.9.0.0/16"]})
    names = [x["name"] for x in cloud.call("GET", "/v1/route-tables?vpc=x", t)["items"]]
    assert names == ["x-default-2"]


def test_delete_vpc_deletes_default_table(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    cloud.call("POST", "/v1/route-tables", t, json={"name": "edge", "vpc": "prod"})
    cloud.call("DELETE", "/v1/subnets/web", t)
    cloud.rejected("DELETE", "/v1/vpcs/prod", 409, "still has route table(s) edge", t)
    cloud.call("DELETE", "/v1/route-tables/edge", t)
    cloud.call("DELETE", "/v1/vpcs/prod", t)
    assert cloud.call("GET", "/v1/route-tables", t)["items"] == []


def test_default_table_cannot_be_edited_or_deleted(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    cloud.rejected(
        "POST",
        "/v1/route-tables/prod-default/routes",
        409,
        "is the default table of VPC prod",
        t,
        json={"dst": "10.8.0.0/16", "next_hop": "blackhole"},
    )
    cloud.rejected(
        "POST",
        "/v1/route-tables/prod-default/policy-routes",
        409,
        "cannot be edited",
        t,
        json={"priority": 10, "action": "drop"},
    )
    cloud.rejected(
        "DELETE", "/v1/route-tables/prod-default", 409, "deleted with its VPC, never alone", t
    )


def test_route_listing_types_and_states(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    a = _route(cloud, t, "edge", dst="10.0.2.128/25", next_hop="instance:fw", priority=10)
    b = _route(cloud, t, "edge", dst="10.0.2.128/25", next_hop="vip:10.0.2.2", priority=20)
    c = _route(cloud, t, "edge", dst="192.168.0.0/16", next_hop="blackhole")
    assert a["name"] == a["id"] and a["id"].startswith("rt-")
    assert a["spec"]["next_hop"] == {"type": "instance", "id": rt["fw"]["id"], "ip": None}
    assert c["spec"]["priority"] == 100
    listing = cloud.call("GET", "/v1/route-tables/edge/routes", t)
    assert listing["subnets"] == ["web"] and listing["default"] is False
    rows = [
        (r["type"], r["dst"], r["next_hop"], r["priority"], r["state"]) for r in listing["routes"]
    ]
    assert rows == [
        ("host", "10.0.1.2/32", "instance:w1", None, "active"),
        ("host", "10.0.2.2/32", "instance:fw", None, "active"),
        ("custom", "10.0.2.128/25", "instance:fw", 10, "active"),
        ("custom", "10.0.2.128/25", "vip:10.0.2.2", 20, "standby"),
        ("direct", "10.0.0.0/16", None, None, "active"),
        ("custom", "192.168.0.0/16", "blackhole", 100, "active"),
    ]
    # the winner's next hop goes: the other takes over, with no API call but the delete
    cloud.call("DELETE", "/v1/instances/fw", t)
    states = {
        (r["dst"], r["priority"]): r["state"]
        for r in cloud.call("GET", "/v1/route-tables/edge/routes", t)["routes"]
    }
    assert states[("10.0.2.128/25", 10)] == "unreachable"
    assert states[("10.0.2.128/25", 20)] == "unreachable"  # the VIP was fw's address
    cloud.call("DELETE", f"/v1/routes/{b['id']}", t)
    cloud.call("DELETE", f"/v1/routes/{a['id']}", t)
    left = cloud.call("GET", "/v1/route-tables/edge/routes", t)["routes"]
    assert [r["type"] for r in left] == ["host", "direct", "custom"]


def test_next_hop_of_lost_host_is_unreachable(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    _route(cloud, t, "edge", dst="10.0.2.128/25", next_hop="instance:fw", priority=10)
    _route(cloud, t, "edge", dst="10.0.2.128/25", next_hop="blackhole", priority=20)
    with cloud.store.transaction() as tx:  # what the controller writes when h1 is lost
        h1 = tx.by_name("host", cloud.call("GET", "/v1/whoami")["project"]["id"], "h1")
        assert h1 is not None
        tx.update(h1, status={**h1.status, "condition": "lost"})
    routes = cloud.call("GET", "/v1/route-tables/edge/routes", t)["routes"]
    states = {(r["dst"], r["priority"]): r["state"] for r in routes}
    assert states[("10.0.2.128/25", 10)] == "unreachable"
    assert states[("10.0.2.128/25", 20)] == "active"
    assert ("10.0.2.2/32", "unreachable") in {(r["dst"], r["state"]) for r in routes}


def test_association_moves_a_subnet(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    sub = cloud.call(
        "POST", "/v1/route-tables/prod-default/associations", t, json={"subnet": "web"}
    )
    assert sub["spec"]["route_table"] == cloud.call("GET", "/v1/route-tables/prod-default", t)["id"]
    cloud.call("DELETE", "/v1/route-tables/edge", t)  # no subnet left on it
    assert [x["name"] for x in cloud.call("GET", "/v1/route-tables", t)["items"]] == [
        "prod-default"
    ]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"dst": "10.0.0.0/16", "next_hop": "blackhole"}, 422, "is a block of VPC prod"),
        ({"dst": "10.0.3.1/24", "next_hop": "blackhole"}, 422, "host bits set"),
        ({"dst": "nope", "next_hop": "blackhole"}, 422, "not an IPv4 CIDR"),
        ({"dst": "10.8.0.0/16", "next_hop": "router"}, 422, "not one of instance:NAME"),
        (
            {"dst": "10.8.0.0/16", "next_hop": "hybrid:dc1"},
            422,
            "hybrid routes are not written by hand",
        ),
        ({"dst": "10.8.0.0/16", "next_hop": "vip:10.7.0.5"}, 422, "is not inside VPC prod"),
        ({"dst": "10.8.0.0/16", "next_hop": "vip:10.0.0.300"}, 422, "not an IPv4 address"),
        ({"dst": "10.8.0.0/16", "next_hop": "instance:ghost"}, 404, "no instance 'ghost'"),
        ({"dst": "10.8.0.0/16", "next_hop": "instance:other"}, 422, "is in VPC dev, not in"),
        ({"dst": "10.0.1.0/28", "next_hop": "instance:w1"}, 422, "would loop"),
        ({"dst": "10.0.1.0/28", "next_hop": "vip:10.0.1.2"}, 422, "would loop"),
        ({"dst": "10.8.0.0/16", "next_hop": "blackhole", "priority": 0}, 400, "priority"),
        ({"dst": "10.8.0.0/16", "next_hop": "blackhole", "priority": 65536}, 400, "priority"),
        ({"dst": "10.8.0.0/16", "next_hop": "blackhole", "priority": 5}, 409, "already has a"),
    ],
)
def test_bad_routes_change_nothing(
    cloud: Cloud, rt: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    t = rt["t"]
    cloud.call("POST", "/v1/vpcs", t, json={"name": "dev", "cidrs": ["10.50.0.0/16"]})
    cloud.call("POST", "/v1/subnets", t, json={"name": "d", "vpc": "dev", "cidr": "10.50.1.0/24"})
    cloud.call("POST", "/v1/instances", t, json={"name": "other", "subnet": "d", "zone": "az1"})
    _route(cloud, t, "edge", dst="10.8.0.0/16", next_hop="blackhole", priority=5)
    cloud.rejected("POST", "/v1/route-tables/edge/routes", status, message, t, json=body)


def test_loop_outside_blocks_is_allowed(cloud: Cloud, rt: dict[str, Any]) -> None:
    # outside the VPC's blocks the appliance forwards elsewhere: no loop by the rule
    _route(cloud, rt["t"], "edge", dst="0.0.0.0/0", next_hop="instance:w1")


def test_association_that_would_loop_is_refused(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    _route(cloud, t, "edge", dst="10.0.1.0/28", next_hop="instance:fw")  # fw in app: fine
    cloud.rejected(
        "POST",
        "/v1/route-tables/edge/associations",
        409,
        "associating subnet app with route table edge would loop",
        t,
        json={"subnet": "app"},
    )


def test_association_across_vpcs_is_refused(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    cloud.call("POST", "/v1/vpcs", t, json={"name": "dev", "cidrs": ["10.50.0.0/16"]})
    cloud.call("POST", "/v1/subnets", t, json={"name": "d", "vpc": "dev", "cidr": "10.50.1.0/24"})
    cloud.rejected(
        "POST",
        "/v1/route-tables/edge/associations",
        422,
        "subnet d is not in VPC prod",
        t,
        json={"subnet": "d"},
    )


def test_delete_associated_table_is_refused(cloud: Cloud, rt: dict[str, Any]) -> None:
    cloud.rejected(
        "DELETE", "/v1/route-tables/edge", 409, "still associated with subnet(s) web", rt["t"]
    )


def test_delete_table_takes_its_routes(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    cloud.call("POST", "/v1/route-tables", t, json={"name": "spare", "vpc": "prod"})
    r = _route(cloud, t, "spare", dst="10.8.0.0/16", next_hop="blackhole")
    p = cloud.call(
        "POST", "/v1/route-tables/spare/policy-routes", t, json={"priority": 1, "action": "drop"}
    )
    cloud.call("DELETE", "/v1/route-tables/spare", t)
    cloud.rejected("DELETE", f"/v1/routes/{r['id']}", 404, "no route", t)
    cloud.rejected("DELETE", f"/v1/policy-routes/{p['id']}", 404, "no policy_route", t)


def test_policy_routes(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    drop = cloud.call(
        "POST",
        "/v1/route-tables/edge/policy-routes",
        t,
        json={"priority": 10, "src": "10.0.1.0/24", "dst": "10.0.2.0/24", "proto": "tcp",
              "port": "22", "action": "drop"},
    )  # fmt: skip
    assert drop["spec"]["port"] == [22, 22] and drop["status"]["index"] > 0
    assert drop["id"].startswith("pr-") and drop["name"] == drop["id"]
    via = cloud.call(
        "POST",
        "/v1/route-tables/edge/policy-routes",
        t,
        json={"priority": 20, "proto": "tcp", "port": "80-81", "action": "reroute",
              "next_hop": "instance:fw"},
    )  # fmt: skip
    assert via["spec"]["next_hop"] == {"type": "instance", "id": rt["fw"]["id"], "ip": None}
    assert via["status"]["index"] == drop["status"]["index"] + 1
    listing = cloud.call("GET", "/v1/route-tables/edge/routes", t)
    assert [
        (p["priority"], p["action"], p["next_hop"], p["state"]) for p in listing["policies"]
    ] == [
        (10, "drop", None, "active"),
        (20, "reroute", "instance:fw", "active"),
    ]
    cloud.call("DELETE", f"/v1/policy-routes/{drop['id']}", t)
    assert len(cloud.call("GET", "/v1/route-tables/edge/routes", t)["policies"]) == 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"priority": 11, "proto": "icmp", "port": "22", "action": "drop"},
            422,
            "a port matches only tcp or udp",
        ),
        ({"priority": 11, "port": "22", "action": "drop"}, 422, "not protocol any"),
        (
            {"priority": 11, "proto": "tcp", "port": "90-80", "action": "drop"},
            422,
            "runs backwards",
        ),
        ({"priority": 11, "proto": "tcp", "port": "0", "action": "drop"}, 422, "out of range"),
        ({"priority": 11, "proto": "tcp", "port": "x", "action": "drop"}, 400, "port"),
        ({"priority": 11, "action": "reroute"}, 422, "reroute needs a next hop"),
        ({"priority": 11, "action": "drop", "next_hop": "blackhole"}, 422, "takes no next hop"),
        ({"priority": 11, "action": "allow", "src": "10.0.1.1/24"}, 422, "host bits"),
        ({"priority": 10, "action": "allow"}, 409, "priority 10 of route table edge is taken"),
        ({"priority": 10000, "action": "allow"}, 400, "priority"),
        ({"priority": 11, "action": "reroute", "next_hop": "instance:w1"}, 422, "would loop"),
        ({"priority": 11, "action": "reroute", "next_hop": "hybrid:x"}, 422, "hybrid"),
        ({"priority": 11, "action": "teleport"}, 400, "action"),
    ],
)
def test_bad_policy_routes_change_nothing(
    cloud: Cloud, rt: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    t = rt["t"]
    cloud.call(
        "POST", "/v1/route-tables/edge/policy-routes", t, json={"priority": 10, "action": "allow"}
    )
    cloud.rejected("POST", "/v1/route-tables/edge/policy-routes", status, message, t, json=body)


def test_a_thousand_routes_in_one_table(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    t0 = time.perf_counter()
    first = [
        _route(cloud, t, "edge", dst=f"172.{16 + n // 256}.{n % 256}.0/24", next_hop="blackhole")
        for n in range(100)
    ]
    t_first = time.perf_counter() - t0
    for n in range(100, 1000):
        _route(cloud, t, "edge", dst=f"172.{16 + n // 256}.{n % 256}.0/24", next_hop="blackhole")
    t1 = time.perf_counter()
    for n in range(1000, 1100):
        _route(cloud, t, "edge", dst=f"172.{16 + n // 256}.{n % 256}.0/24", next_hop="blackhole")
    t_last = time.perf_counter() - t1
    # Each add costs the same with 1,000 routes in the table as with none (not quadratic).
    assert t_last < 3 * t_first + 1.0, (t_first, t_last)
    listing = cloud.call("GET", "/v1/route-tables/edge/routes", t)
    assert sum(r["type"] == "custom" for r in listing["routes"]) == 1100
    cloud.rejected(
        "POST",
        "/v1/route-tables/edge/routes",
        409,
        "already has a route to 172.16.0.0/24 with priority 100",
        t,
        json={"dst": "172.16.0.0/24", "next_hop": "blackhole"},
    )
    assert first[0]["spec"]["dst"] == "172.16.0.0/24"


def test_patch_labels_and_if_match(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    edge = cloud.call("PATCH", "/v1/route-tables/edge", t, json={"labels": {"tier": "edge"}})
    assert edge["labels"] == {"tier": "edge"}
    cloud.rejected(
        "PATCH",
        "/v1/route-tables/edge",
        412,
        "changed since you read it",
        {**t, "If-Match": str(edge["revision"] - 1)},
        json={"labels": {"tier": "x"}},
    )


def test_idempotent_route_add(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = {**rt["t"], "Idempotency-Key": "k1"}
    body = {"dst": "10.8.0.0/16", "next_hop": "blackhole"}
    a = cloud.call("POST", "/v1/route-tables/edge/routes", t, json=body)
    before = cloud.revision()
    b = cloud.call("POST", "/v1/route-tables/edge/routes", t, json=body)
    assert a == b and cloud.revision() == before


def test_other_projects_tables_do_not_exist(cloud: Cloud, rt: dict[str, Any]) -> None:
    other = cloud.project("other")
    cloud.rejected("GET", "/v1/route-tables/edge", 404, "no route_table 'edge'", other)
    cloud.rejected(
        "POST",
        "/v1/route-tables/edge/routes",
        404,
        "no route_table",
        other,
        json={"dst": "10.8.0.0/16", "next_hop": "blackhole"},
    )


def test_a_block_cannot_take_a_routes_prefix(cloud: Cloud, rt: dict[str, Any]) -> None:
    t = rt["t"]
    _route(cloud, t, "edge", dst="10.1.0.0/16", next_hop="instance:fw")
    cloud.rejected(
        "POST", "/v1/vpcs/prod/cidrs", 409, "cannot equal a route's destination", t,
        json={"cidr": "10.1.0.0/16"},
    )  # fmt: skip
    cloud.rejected(
        "PATCH", "/v1/vpcs/prod", 409, "has a custom route to 10.1.0.0/16", t,
        json={"spec": {"cidrs": ["10.0.0.0/16", "10.1.0.0/16"]}},
    )  # fmt: skip
    cloud.call("POST", "/v1/vpcs/prod/cidrs", t, json={"cidr": "10.2.0.0/16"})
