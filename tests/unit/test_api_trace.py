"""GET /v1/trace: the model trace over the documents the app's engine serves the agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def _inst(cloud: Cloud, net: dict[str, Any], name: str, zone: str, **kw: Any) -> Any:
    body = {"name": name, "subnet": kw.pop("subnet", "web"), "zone": zone, **kw}
    return cloud.call("POST", "/v1/instances", net["t"], json=body)


def _trace(cloud: Cloud, net: dict[str, Any], **q: Any) -> Any:
    q["from"] = q.pop("src")
    return cloud.call("GET", "/v1/trace", net["t"], params=q)


def test_trace_between_instances_on_two_hosts(cloud: Cloud, net: dict[str, Any]) -> None:
    a = _inst(cloud, net, "a", "az1")
    b = _inst(cloud, net, "b", "az2")
    t = _trace(cloud, net, src="a", to="b", proto="tcp", port=22)
    assert t["verdict"] == "delivered" and t["delivered_to"] == f"instance:{b['id']}"
    assert (t["src"], t["src_ip"], t["src_host"], t["dst"]) == (
        a["id"], a["status"]["ip"], "h1", b["status"]["ip"],
    )  # fmt: skip
    assert [(h["host"], h["place"]) for h in t["hops"]] == [
        ("h1", "instance"), ("h1", "vpc"), ("h2", "vpc"), ("h2", "instance"),
    ]  # fmt: skip
    assert t["hops"][1]["route"]["peer"] == "h2"
    assert t["names"][a["id"]] == "a" and t["names"][b["id"]] == "b"
    assert t["text"].splitlines()[-1].startswith("DELIVERED")
    # by id, and by address
    assert _trace(cloud, net, src=a["id"], to=b["status"]["ip"])["verdict"] == "delivered"


def test_trace_drops_are_explained(cloud: Cloud, net: dict[str, Any]) -> None:
    _inst(cloud, net, "a", "az1")
    t = _trace(cloud, net, src="a", to="10.0.1.99")
    assert (t["verdict"], t["reason"]) == ("dropped", "no-member")
    t = _trace(cloud, net, src="a", to="10.0.7.9")
    assert (t["verdict"], t["reason"]) == ("dropped", "no-member")
    t = _trace(cloud, net, src="a", to="198.19.0.2", proto="udp", port=53)
    assert t["verdict"] == "dropped" and t["reason"] in ("no-natgw", "no-route")


def test_trace_refuses_bad_requests(cloud: Cloud, net: dict[str, Any]) -> None:
    _inst(cloud, net, "a", "az1")
    t = net["t"]
    cloud.rejected("GET", "/v1/trace", 422, "a tcp trace needs a destination port", t,
                   params={"from": "a", "to": "10.0.1.3", "proto": "tcp"})  # fmt: skip
    cloud.rejected("GET", "/v1/trace", 422, "an icmp trace takes no port", t,
                   params={"from": "a", "to": "10.0.1.3", "port": 7})  # fmt: skip
    cloud.rejected("GET", "/v1/trace", 404, "no instance 'zz' in this project", t,
                   params={"from": "zz", "to": "10.0.1.3"})  # fmt: skip
    cloud.rejected("GET", "/v1/trace", 404, "no instance or EIP 'nope' in this project (TO is "
                   "an instance, an IP address or an EIP)", t,
                   params={"from": "a", "to": "nope"})  # fmt: skip
    r = cloud.client.get("/v1/trace", headers=t, params={"from": "a", "to": "x", "proto": "gre"})
    assert r.status_code == 400
    # another project's instance is not found, as for every other operation
    other = cloud.project("other")
    cloud.rejected("GET", "/v1/trace", 404, "no instance 'a' in this project", other,
                   params={"from": "a", "to": "10.0.1.3"})  # fmt: skip


def test_trace_follows_an_appliance_route_and_a_policy_drop(
    cloud: Cloud, net: dict[str, Any]
) -> None:
    t = net["t"]
    cloud.call("POST", "/v1/subnets", t, json={"name": "db", "vpc": "prod", "cidr": "10.0.2.0/24"})
    cloud.call("POST", "/v1/subnets", t, json={"name": "fw", "vpc": "prod", "cidr": "10.0.3.0/24"})
    _inst(cloud, net, "a", "az1")
    b = _inst(cloud, net, "b", "az2", subnet="db")
    fw = _inst(cloud, net, "fw1", "az2", subnet="fw")
    rt = cloud.call("POST", "/v1/route-tables", t, json={"name": "app", "vpc": "prod"})
    cloud.call("POST", "/v1/route-tables/app/associations", t, json={"subnet": "web"})
    cloud.call("POST", "/v1/route-tables/app/routes", t,
               json={"dst": "10.0.2.0/24", "next_hop": "instance:fw1"})  # fmt: skip
    cloud.call("POST", "/v1/route-tables/app/policy-routes", t,
               json={"priority": 10, "proto": "tcp", "port": "22", "action": "drop"})  # fmt: skip
    tr = _trace(cloud, net, src="a", to="b", proto="tcp", port=80)
    assert tr["verdict"] == "delivered" and tr["delivered_to"] == f"instance:{b['id']}"
    assert [h["ref"] for h in tr["hops"] if h["place"] == "instance"] == [
        tr["src"], fw["id"], b["id"],
    ]  # fmt: skip
    first = tr["hops"][1]
    assert first["table"] == rt["id"] and first["route"]["type"] == "custom"
    assert tr["names"][rt["id"]] == "app"
    tr = _trace(cloud, net, src="a", to="b", proto="tcp", port=22)
    assert (tr["verdict"], tr["reason"]) == ("dropped", "policy-drop")
    assert tr["hops"][1]["policy"]["priority"] == 10
