"""NAT gateways, port forwards and elastic IPs through the API, and the controller's side:
host conditions on lease transitions, gateway placement and failover (fake leases on a
fake clock), repairs of what older versions left."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from yunhan.controller import Controller
from yunhan.model import new_id

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

POOL = "198.19.0.0/29"  # six addresses: .1 to .6


@pytest.fixture
def nat(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    """A public pool, subnets web (10.0.1.0/24) and db (10.0.2.0/24) of prod, instances
    w1 (web, az1) and d1 (db), and gateway gw serving web."""
    st = cloud.client.app.state.yunhan  # type: ignore[attr-defined]
    st.public_pools = [POOL]
    t = net["t"]
    cloud.call("POST", "/v1/subnets", t, json={"name": "db", "vpc": "prod", "cidr": "10.0.2.0/24"})
    w1 = cloud.call("POST", "/v1/instances", t, json={"name": "w1", "subnet": "web", "zone": "az1"})
    d1 = cloud.call("POST", "/v1/instances", t, json={"name": "d1", "subnet": "db", "zone": "az2"})
    gw = cloud.call("POST", "/v1/natgws", t, json={"name": "gw", "vpc": "prod", "subnets": ["web"]})
    return {**net, "w1": w1, "d1": d1, "gw": gw, "state": st}


def _controller(cloud: Cloud) -> Controller:
    fleet = cloud.client.app.state.yunhan.fleet  # type: ignore[attr-defined]
    return Controller(cloud.store, clock=cloud.clock, leases=lambda: fleet.leases)


def test_create_natgw(cloud: Cloud, nat: dict[str, Any]) -> None:
    gw = nat["gw"]
    assert gw["id"].startswith("ngw-")
    assert gw["spec"] == {"vpc": nat["vpc"]["id"], "subnets": [nat["web"]["id"]], "forwards": []}
    st = gw["status"]
    assert st["public_ip"] == "198.19.0.1" and st["host"] is None and st["phase"] == "pending"
    assert st["index"] == 4 and st["history"] == [] and st["moved_at"] is None
    # the default route of web's table now points at it
    routes = cloud.call("GET", "/v1/route-tables/prod-default/routes", nat["t"])["routes"]
    default = [r for r in routes if r["type"] == "default"]
    assert [(r["dst"], r["next_hop"], r["subnet"]) for r in default] == [
        ("0.0.0.0/0", "natgw:gw", "web")
    ]
    assert default[0]["state"] == "unreachable"  # not placed yet


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"name": "gw2", "vpc": "prod", "subnets": ["web"]},
            409,
            "already served by NAT gateway gw",
        ),
        ({"name": "gw2", "vpc": "prod", "subnets": ["ghost"]}, 404, "no subnet 'ghost'"),
        ({"name": "gw2", "vpc": "prod", "subnets": ["other"]}, 422, "is not in VPC prod"),
        ({"name": "gw", "vpc": "prod", "subnets": ["db"]}, 409, "already exists"),
        ({"name": "gw2", "vpc": "prod", "subnets": []}, 400, "subnets"),
        ({"name": "Bad!", "vpc": "prod", "subnets": ["db"]}, 400, "name"),
    ],
)
def test_bad_natgws_change_nothing(
    cloud: Cloud, nat: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    t = nat["t"]
    cloud.call("POST", "/v1/vpcs", t, json={"name": "dev", "cidrs": ["10.50.0.0/16"]})
    cloud.call(
        "POST", "/v1/subnets", t, json={"name": "other", "vpc": "dev", "cidr": "10.50.1.0/24"}
    )
    cloud.rejected("POST", "/v1/natgws", status, message, t, json=body)


def test_no_public_pool(cloud: Cloud, nat: dict[str, Any]) -> None:
    nat["state"].public_pools = []
    t = nat["t"]
    cloud.rejected(
        "POST", "/v1/natgws", 409, "no public pool configured", t,
        json={"name": "gw2", "vpc": "prod", "subnets": ["db"]},
    )  # fmt: skip
    cloud.rejected("POST", "/v1/eips", 409, "no public pool configured", t, json={})


def test_addresses_never_given_twice(cloud: Cloud, nat: dict[str, Any]) -> None:
    t = nat["t"]
    other = cloud.project("other")
    addrs = [cloud.call("POST", "/v1/eips", t, json={})["status"]["address"] for _ in range(3)]
    addrs.append(cloud.call("POST", "/v1/eips", other, json={})["status"]["address"])
    gw2 = cloud.call(
        "POST", "/v1/natgws", t, json={"name": "gw2", "vpc": "prod", "subnets": ["db"]}
    )
    addrs.append(gw2["status"]["public_ip"])
    assert addrs == [f"198.19.0.{n}" for n in range(2, 7)]
    cloud.rejected(
        "POST", "/v1/eips", 409, "the public pool (198.19.0.0/29) is exhausted", t, json={}
    )
    released = cloud.call("DELETE", "/v1/eips/198.19.0.3", t)  # by address
    assert released["status"]["address"] == "198.19.0.3"
    assert (
        cloud.call("POST", "/v1/eips", t, json={"name": "again"})["status"]["address"]
        == "198.19.0.3"
    )


def test_forwards(cloud: Cloud, nat: dict[str, Any]) -> None:
    t = nat["t"]
    gw = cloud.call(
        "POST", "/v1/natgws/gw/forwards", t, json={"proto": "tcp", "port": 8080, "to": "w1:80"}
    )
    assert gw["spec"]["forwards"] == [
        {"proto": "tcp", "port": 8080, "instance": nat["w1"]["id"], "to_port": 80}
    ]
    cloud.call(
        "POST", "/v1/natgws/gw/forwards", t, json={"proto": "udp", "port": 8080, "to": "w1:53"}
    )
    gw = cloud.call("DELETE", "/v1/natgws/gw/forwards/tcp/8080", t)
    assert [(f["proto"], f["port"]) for f in gw["spec"]["forwards"]] == [("udp", 8080)]
    cloud.rejected("DELETE", "/v1/natgws/gw/forwards/tcp/8080", 404, "forwards no tcp port 8080", t)
    # deleting the instance takes its forwards
    cloud.call("DELETE", "/v1/instances/w1", t)
    assert cloud.call("GET", "/v1/natgws/gw", t)["spec"]["forwards"] == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"proto": "tcp", "port": 8080, "to": "w1:81"}, 409, "already forwarded to w1:80"),
        ({"proto": "tcp", "port": 8081, "to": "d1:80"}, 409, "does not serve subnet db"),
        ({"proto": "tcp", "port": 8081, "to": "o1:80"}, 422, "is not in the VPC of NAT gateway"),
        ({"proto": "tcp", "port": 8081, "to": "ghost:80"}, 404, "no instance 'ghost'"),
        ({"proto": "tcp", "port": 8081, "to": "w1"}, 422, "is not INSTANCE:PORT"),
        ({"proto": "tcp", "port": 8081, "to": "w1:0"}, 422, "is not INSTANCE:PORT"),
        ({"proto": "icmp", "port": 8081, "to": "w1:80"}, 400, "proto"),
        ({"proto": "tcp", "port": 70000, "to": "w1:80"}, 400, "port"),
    ],
)
def test_bad_forwards_change_nothing(
    cloud: Cloud, nat: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    t = nat["t"]
    cloud.call("POST", "/v1/vpcs", t, json={"name": "dev", "cidrs": ["10.50.0.0/16"]})
    cloud.call("POST", "/v1/subnets", t, json={"name": "o", "vpc": "dev", "cidr": "10.50.1.0/24"})
    cloud.call("POST", "/v1/instances", t, json={"name": "o1", "subnet": "o", "zone": "az1"})
    cloud.call(
        "POST", "/v1/natgws/gw/forwards", t, json={"proto": "tcp", "port": 8080, "to": "w1:80"}
    )
    cloud.rejected("POST", "/v1/natgws/gw/forwards", status, message, t, json=body)


def test_forward_quota(cloud: Cloud, nat: dict[str, Any]) -> None:
    t = nat["t"]
    for port in range(1, 101):
        cloud.call(
            "POST", "/v1/natgws/gw/forwards", t, json={"proto": "tcp", "port": port, "to": "w1:80"}
        )
    cloud.rejected(
        "POST", "/v1/natgws/gw/forwards", 409, "has 100 port forwards, its most", t,
        json={"proto": "udp", "port": 1, "to": "w1:80"},
    )  # fmt: skip


def test_eip_bind_unbind_release(cloud: Cloud, nat: dict[str, Any]) -> None:
    t = nat["t"]
    eip = cloud.call("POST", "/v1/eips", t, json={})
    assert eip["id"].startswith("eip-") and eip["name"] == eip["id"]
    assert eip["status"] == {"address": "198.19.0.2", "instance": None, "natgw": None}
    bound = cloud.call("POST", f"/v1/eips/{eip['id']}/bind", t, json={"instance": "w1"})
    assert bound["status"] == {
        "address": "198.19.0.2", "instance": nat["w1"]["id"], "natgw": nat["gw"]["id"],
    }  # fmt: skip
    cloud.rejected("POST", f"/v1/eips/{eip['id']}/bind", 409, "is already bound to instance w1", t,
                   json={"instance": "w1"})  # fmt: skip
    cloud.rejected("DELETE", f"/v1/eips/{eip['id']}", 409, "unbind it first", t)
    cloud.rejected("DELETE", "/v1/natgws/gw", 409, f"still has EIP(s) {eip['name']} bound", t)
    other = cloud.call("POST", "/v1/eips", t, json={"name": "second"})
    cloud.rejected("POST", "/v1/eips/second/bind", 409, "instance w1 already has EIP", t,
                   json={"instance": "w1"})  # fmt: skip
    cloud.rejected("POST", "/v1/eips/second/bind", 409, "no NAT gateway serves subnet db", t,
                   json={"instance": "d1"})  # fmt: skip
    cloud.rejected("POST", "/v1/eips/second/bind", 404, "no instance 'ghost'", t,
                   json={"instance": "ghost"})  # fmt: skip
    unbound = cloud.call("POST", f"/v1/eips/{eip['id']}/unbind", t)
    assert unbound["status"]["instance"] is None and unbound["status"]["natgw"] is None
    cloud.rejected("POST", f"/v1/eips/{eip['id']}/unbind", 409, "is not bound", t)
    cloud.call("DELETE", f"/v1/eips/{eip['id']}", t)
    cloud.call("DELETE", "/v1/eips/second", t)
    assert other["status"]["address"] == "198.19.0.3"
    gone = cloud.call("DELETE", "/v1/natgws/gw", t)
    assert gone["status"]["public_ip"] == "198.19.0.1"
    # its address is free again
    assert cloud.call("POST", "/v1/eips", t, json={})["status"]["address"] == "198.19.0.1"


def test_instance_delete_unbinds_its_eip(cloud: Cloud, nat: dict[str, Any]) -> None:
    t = nat["t"]
    cloud.call("POST", "/v1/eips", t, json={"name": "e"})
    cloud.call("POST", "/v1/eips/e/bind", t, json={"instance": "w1"})
    cloud.call("DELETE", "/v1/instances/w1", t)
    e = cloud.call("GET", "/v1/eips/e", t)
    assert e["status"] == {"address": "198.19.0.2", "instance": None, "natgw": None}


def test_eip_quota_per_gateway(cloud: Cloud, nat: dict[str, Any]) -> None:
    nat["state"].public_pools = ["198.19.0.0/24"]
    t = nat["t"]
    # 65 instances in web: 64 get an EIP, the 65th is refused
    for n in range(65):
        cloud.call(
            "POST", "/v1/instances", t, json={"name": f"i{n}", "subnet": "web", "zone": "az1"}
        )
        cloud.call("POST", "/v1/eips", t, json={"name": f"e{n}"})
    for n in range(64):
        cloud.call("POST", f"/v1/eips/e{n}/bind", t, json={"instance": f"i{n}"})
    cloud.rejected("POST", "/v1/eips/e64/bind", 409, "has 64 EIPs bound, its most", t,
                   json={"instance": "i64"})  # fmt: skip


def test_natgw_next_hop_and_subnet_delete(cloud: Cloud, nat: dict[str, Any]) -> None:
    t = nat["t"]
    cloud.call("POST", "/v1/route-tables", t, json={"name": "edge", "vpc": "prod"})
    r = cloud.call(
        "POST",
        "/v1/route-tables/edge/routes",
        t,
        json={"dst": "8.8.8.0/24", "next_hop": "natgw:gw"},
    )
    assert r["spec"]["next_hop"] == {"type": "natgw", "id": nat["gw"]["id"], "ip": None}
    cloud.rejected("DELETE", "/v1/natgws/gw", 409, f"is the next hop of route(s) {r['id']}", t)
    cloud.call("DELETE", f"/v1/routes/{r['id']}", t)
    cloud.call("DELETE", "/v1/instances/w1", t)
    cloud.call("DELETE", "/v1/subnets/web", t)
    assert cloud.call("GET", "/v1/natgws/gw", t)["spec"]["subnets"] == []
    cloud.rejected("DELETE", "/v1/vpcs/prod", 409, "still has subnet", t)
    cloud.call("DELETE", "/v1/instances/d1", t)
    cloud.call("DELETE", "/v1/subnets/db", t)
    cloud.rejected("DELETE", "/v1/vpcs/prod", 409, "still has NAT gateway(s) gw", t)


# -- the controller ---------------------------------------------------------------------


def _hosts(cloud: Cloud) -> dict[str, dict[str, Any]]:
    return {h["name"]: h["status"] for h in cloud.call("GET", "/v1/hosts")["items"]}


def test_conditions_written_once_per_transition(cloud: Cloud, net: dict[str, Any]) -> None:
    ctl = _controller(cloud)
    before = cloud.revision()
    ctl.reconcile_once()
    assert cloud.revision() == before  # never heard from: no verdict
    assert _hosts(cloud)["h1"]["condition"] is None
    cloud.heartbeat("h1", 0)
    cloud.heartbeat("h2", 0)
    ctl.reconcile_once()
    assert {n: s["condition"] for n, s in _hosts(cloud).items()} == {"h1": "ready", "h2": "ready"}
    rev = cloud.revision()
    assert rev == before + 1  # both in one write
    ctl.reconcile_once()
    assert cloud.revision() == rev  # nothing changed: nothing written
    for _ in range(4):  # h1 goes quiet; h2 keeps beating
        cloud.clock.advance(5)
        cloud.heartbeat("h2", 0)
        ctl.reconcile_once()
    assert _hosts(cloud)["h1"]["condition"] == "lost"
    assert cloud.revision() == rev + 1  # one write for the transition, not one per tick
    cloud.heartbeat("h1", 0)
    ctl.reconcile_once()
    assert _hosts(cloud)["h1"]["condition"] == "ready" and cloud.revision() == rev + 2


def test_no_host_is_lost_in_the_startup_grace(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.heartbeat("h1", 0)
    _controller(cloud).reconcile_once()
    assert _hosts(cloud)["h1"]["condition"] == "ready"
    cloud.clock.advance(600)  # the control plane was down for ten minutes
    fresh = _controller(cloud)
    rev = cloud.revision()
    fresh.reconcile_once()
    assert cloud.revision() == rev and _hosts(cloud)["h1"]["condition"] == "ready"
    cloud.clock.advance(16)  # its agent had time to say it is alive; it did not
    fresh.reconcile_once()
    assert _hosts(cloud)["h1"]["condition"] == "lost"


def test_natgw_placed_spread_and_moved(cloud: Cloud, nat: dict[str, Any]) -> None:
    t = nat["t"]
    ctl = _controller(cloud)
    cloud.heartbeat("h1", 0)  # h2 never heard from yet: not a candidate
    ctl.reconcile_once()
    cloud.heartbeat("h2", 0)
    gw2 = cloud.call(
        "POST", "/v1/natgws", t, json={"name": "gw2", "vpc": "prod", "subnets": ["db"]}
    )
    ctl.reconcile_once()  # the lightest healthy host: h2
    a = cloud.call("GET", "/v1/natgws/gw", t)["status"]
    b = cloud.call("GET", f"/v1/natgws/{gw2['id']}", t)["status"]
    assert (a["host"], a["phase"], b["host"], b["phase"]) == ("h1", "active", "h2", "active")
    assert a["history"][0]["reason"] == "placed" and a["moved_at"] is None
    routes = cloud.call("GET", "/v1/route-tables/prod-default/routes", t)["routes"]
    assert {r["state"] for r in routes if r["type"] == "default"} == {"active"}
    # h1 stops heartbeating: gw moves to h2 (the only healthy host)
    for _ in range(4):
        cloud.clock.advance(5)
        cloud.heartbeat("h2", 0)
        ctl.reconcile_once()
    a = cloud.call("GET", "/v1/natgws/gw", t)["status"]
    assert (a["host"], a["phase"]) == ("h2", "active") and a["moved_at"] is not None
    assert [(m["from"], m["to"]) for m in a["history"]] == [(None, "h1"), ("h1", "h2")]
    assert a["history"][-1]["reason"] == "host h1 lost"
    events = cloud.call("GET", "/v1/events?for=gw", t)["items"]
    assert [e["reason"] for e in events] == ["NatGatewayMoved"]
    assert "moved from host h1 (lost) to h2" in events[0]["message"]
    rev = cloud.revision()
    ctl.reconcile_once()
    assert cloud.revision() == rev  # settled
    # h2 goes too: nowhere to go, the gateways wait where they are
    for _ in range(4):
        cloud.clock.advance(5)
        ctl.reconcile_once()
    a = cloud.call("GET", "/v1/natgws/gw", t)["status"]
    assert (a["host"], a["phase"]) == ("h2", "unplaced")
    reasons = {e["reason"] for e in cloud.call("GET", "/v1/events?for=gw", t)["items"]}
    assert reasons == {"NatGatewayMoved", "NatGatewayUnplaced"}
    routes = cloud.call("GET", "/v1/route-tables/prod-default/routes", t)["routes"]
    assert {r["state"] for r in routes if r["type"] == "default"} == {"unreachable"}
    cloud.heartbeat("h1", 0)  # h1 is back: both move there
    ctl.reconcile_once()
    a = cloud.call("GET", "/v1/natgws/gw", t)["status"]
    assert (a["host"], a["phase"]) == ("h1", "active") and len(a["history"]) == 3


def test_natgw_history_keeps_the_last_20(cloud: Cloud, nat: dict[str, Any]) -> None:
    ctl = _controller(cloud)
    cloud.heartbeat("h1", 0)
    ctl.reconcile_once()
    alive, dead = "h2", "h1"
    for _ in range(25):  # flap: the gateway's host dies, the other is alive
        for _ in range(4):
            cloud.clock.advance(5)
            cloud.heartbeat(alive, 0)
            ctl.reconcile_once()
        alive, dead = dead, alive
    st = cloud.call("GET", "/v1/natgws/gw", nat["t"])["status"]
    assert len(st["history"]) == 20 and st["history"][-1]["reason"].startswith("host")


def test_repair_of_older_data(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    project = cloud.call("GET", "/v1/vpcs/prod", t)["project"]
    with cloud.store.transaction() as tx:  # what a version before route tables wrote
        v = tx.create("vpc", new_id("vpc"), project, "old", {"cidrs": ["10.7.0.0/16"]}, {"vni": 77})
        sn = tx.create("subnet", new_id("subnet"), project, "olds",
                       {"vpc": v.id, "cidr": "10.7.1.0/24"},
                       {"gateway": "10.7.1.1", "available": 253})  # fmt: skip
        tx.create("instance", new_id("instance"), project, "oldi",  # before security groups
                  {"subnet": sn.id, "zone": "z", "ip": None, "command": None},
                  {"ip": "10.7.1.2", "mac": "fa:16:3e:00:07:02", "vpc": v.id, "host": None,
                   "phase": "pending", "message": None, "netns": None, "uts": None})  # fmt: skip
    ctl = _controller(cloud)
    ctl.reconcile_once()
    tables = cloud.call("GET", "/v1/route-tables?vpc=old", t)["items"]
    assert [(x["name"], x["spec"]["default"], x["status"]["index"]) for x in tables] == [
        ("old-default", True, 1)
    ]
    s = cloud.call("GET", "/v1/subnets/olds", t)
    assert s["status"]["index"] == 2 and s["spec"]["route_table"] == tables[0]["id"]
    groups = cloud.call("GET", "/v1/security-groups?vpc=old", t)["items"]
    assert [(g["name"], g["spec"]["default"]) for g in groups] == [("old-default", True)]
    inst = cloud.call("GET", "/v1/instances/oldi", t)
    assert inst["spec"]["security_groups"] == [groups[0]["id"]]
    rev = cloud.revision()
    ctl.reconcile_once()
    _controller(cloud).reconcile_once()
    assert cloud.revision() == rev  # repaired once: nothing more to do
