"""VIPs through the API (docs/vips.md): allocation in the subnet's address space, allowed
instances, moves and the documents every host gets, claims fenced by epochs, flap
damping, host failure, and every bad input refused with a clear error that changes
nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from yunhan.controller import Controller
from yunhan.net.desired import HostDesired, Route
from yunhan.net.docentries import Delta, assemble
from yunhan.net.naming import port_ifname

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def _doc(cloud: Cloud, host: str) -> HostDesired:
    r = cloud.client.get(
        f"/v1/agent/hosts/{host}/desired", params={"after": 0, "timeout": 0}, headers=cloud.admin
    )
    return assemble(Delta.from_json(r.json()).entries, host)


def _route(cloud: Cloud, host: str, dst: str) -> Route | None:
    found = [r for v in _doc(cloud, host).vpcs for r in v.routes if r.dst == dst]
    assert len(found) <= 1
    return found[0] if found else None


def _claim(cloud: Cloud, host: str, ip: str, vpc: str, inst: str, epoch: int) -> dict[str, Any]:
    body = {"claims": [{"vip_ip": ip, "vpc": vpc, "instance": inst, "epoch_seen": epoch}]}
    res = cloud.call("POST", f"/v1/agent/hosts/{host}/vip-claims", json=body)["results"]
    assert len(res) == 1
    return dict(res[0])


@pytest.fixture
def vn(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    """prod/web with a (az1, h1), b (az2, h2), c (az1, h1); VIP v allowing a and b."""
    t = net["t"]
    insts = {}
    for name, zone in (("a", "az1"), ("b", "az2"), ("c", "az1")):
        insts[name] = cloud.call(
            "POST", "/v1/instances", t, json={"name": name, "subnet": "web", "zone": zone}
        )
    v = cloud.call(
        "POST", "/v1/vips", t, json={"name": "v", "subnet": "web", "allowed": ["a", "b"]}
    )
    return {**net, **insts, "v": v}


def test_create_takes_the_next_free_address_and_shares_the_subnet_with_instances(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t, v = vn["t"], vn["v"]
    assert v["id"].startswith("vip-") and v["kind"] == "vip"
    assert v["spec"] == {
        "subnet": vn["web"]["id"],
        "vpc": vn["vpc"]["id"],
        "ip": "10.0.1.5",  # a, b and c hold .2 to .4
        "allowed": [vn["a"]["id"], vn["b"]["id"]],
    }
    st = v["status"]
    assert (st["holder"], st["holder_zone"], st["holder_host"], st["epoch"]) == (None,) * 3 + (0,)
    assert st["history"] == [] and st["delivered_to"] is None
    # the next instance skips the VIP's address, and neither may take the other's
    d = cloud.call("POST", "/v1/instances", t, json={"name": "d", "subnet": "web", "zone": "az1"})
    assert d["status"]["ip"] == "10.0.1.6"
    e = {"name": "e", "subnet": "web", "zone": "az1", "ip": "10.0.1.5"}
    cloud.rejected("POST", "/v1/instances", 409, "10.0.1.5 is already used by VIP v", t, json=e)
    cloud.rejected("POST", "/v1/vips", 409, "10.0.1.2 is already used by instance a", t,
                   json={"name": "w", "subnet": "web", "ip": "10.0.1.2"})  # fmt: skip
    w = cloud.call("POST", "/v1/vips", t, json={"name": "w", "subnet": "web", "ip": "10.0.1.99"})
    assert w["spec"]["ip"] == "10.0.1.99" and w["spec"]["allowed"] == []
    assert cloud.call("GET", "/v1/subnets/web", t)["status"]["available"] == 253 - 6
    assert [x["name"] for x in cloud.call("GET", "/v1/vips?vpc=prod", t)["items"]] == ["v", "w"]
    assert cloud.call("GET", "/v1/vips/v", t)["id"] == v["id"]
    cloud.call("DELETE", "/v1/vips/w", t)
    assert cloud.call("GET", "/v1/subnets/web", t)["status"]["available"] == 253 - 5


def test_bad_input_is_refused_and_changes_nothing(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    body = {"name": "w", "subnet": "web"}
    cloud.rejected("POST", "/v1/vips", 422, "10.0.2.5 is not inside subnet web", t,
                   json={**body, "ip": "10.0.2.5"})  # fmt: skip
    cloud.rejected("POST", "/v1/vips", 422, "is reserved", t, json={**body, "ip": "10.0.1.1"})
    cloud.rejected("POST", "/v1/vips", 409, "a VIP named v already exists", t,
                   json={"name": "v", "subnet": "web"})  # fmt: skip
    cloud.rejected("POST", "/v1/vips", 404, "no instance 'nope'", t,
                   json={**body, "allowed": ["nope"]})  # fmt: skip
    cloud.call("POST", "/v1/vpcs", t, json={"name": "other", "cidrs": ["10.9.0.0/16"]})
    cloud.call(
        "POST", "/v1/subnets", t, json={"name": "far", "vpc": "other", "cidr": "10.9.1.0/24"}
    )
    cloud.call("POST", "/v1/instances", t, json={"name": "x", "subnet": "far", "zone": "az1"})
    cloud.rejected("POST", "/v1/vips", 422, "instance x is not in the VPC of VIP w", t,
                   json={**body, "allowed": ["a", "x"]})  # fmt: skip
    cloud.rejected("POST", "/v1/vips/v/allow", 422, "instance x is not in the VPC of VIP v", t,
                   json={"instance": "x"})  # fmt: skip
    cloud.rejected("POST", "/v1/vips/v/move", 409, "instance c is not allowed to hold VIP v", t,
                   json={"instance": "c"})  # fmt: skip
    cloud.rejected("POST", "/v1/vips/v/disallow", 404, "instance c is not allowed to hold", t,
                   json={"instance": "c"})  # fmt: skip
    cloud.rejected("POST", "/v1/vips/nope/move", 404, "no vip 'nope'", t, json={"instance": "a"})
    cloud.rejected("POST", "/v1/vips/v/move", 400, "", t, json={})
    cloud.rejected("DELETE", "/v1/subnets/web", 409, "", t)
    cloud.call("DELETE", "/v1/instances/a", t)
    cloud.call("DELETE", "/v1/instances/b", t)
    cloud.call("DELETE", "/v1/instances/c", t)
    cloud.rejected("DELETE", "/v1/subnets/web", 409, "still has VIP(s) v", t)
    # another project sees nothing of it
    other = cloud.project("other")
    cloud.rejected("GET", "/v1/vips/v", 404, "no vip 'v'", other)
    cloud.rejected("POST", "/v1/vips", 404, "no subnet 'web'", other, json=body)
    assert cloud.call("GET", "/v1/vips", other)["items"] == []


def test_move_re_points_every_host(cloud: Cloud, vn: dict[str, Any]) -> None:
    t, vpc = vn["t"], vn["vpc"]["id"]
    assert _route(cloud, "h1", "10.0.1.5/32") is None  # held by nobody: no route
    rev = cloud.revision()
    v = cloud.call("POST", "/v1/vips/v/move", t, json={"instance": "b"})
    st = v["status"]
    assert (st["holder"], st["holder_host"], st["epoch"]) == (vn["b"]["id"], "h2", 1)
    assert st["holder_zone"] == vn["b"]["spec"]["zone"] and st["delivered_to"] == vn["b"]["id"]
    assert [(h["from"], h["to"], h["cause"], h["epoch"]) for h in st["history"]] == [
        (None, vn["b"]["id"], "move", 1)
    ]
    assert cloud.revision() == rev + 1
    assert _route(cloud, "h1", "10.0.1.5/32") == Route(dst="10.0.1.5/32", kind="remote", peer="h2")
    assert _route(cloud, "h2", "10.0.1.5/32") == Route(
        dst="10.0.1.5/32", kind="local", port=port_ifname(vn["b"]["id"])
    )
    # a move to the holder changes nothing, not even the epoch
    cloud.call("POST", "/v1/vips/v/move", t, json={"instance": "b"})
    assert cloud.revision() == rev + 1
    v = cloud.call("POST", "/v1/vips/v/move", t, json={"instance": vn["a"]["id"]})
    assert (v["status"]["holder_host"], v["status"]["epoch"]) == ("h1", 2)
    assert _route(cloud, "h1", "10.0.1.5/32").kind == "local"  # type: ignore[union-attr]
    assert _route(cloud, "h2", "10.0.1.5/32").peer == "h1"  # type: ignore[union-attr]
    # the VIP's port passes its address as a source on the holder only
    ports = {p.instance_id: p for vv in _doc(cloud, "h1").vpcs for p in vv.ports}
    assert ports[vn["a"]["id"]].allowed_ips == ("10.0.1.5",)
    assert ports[vn["c"]["id"]].allowed_ips == ()
    # a claim knows the epoch now
    assert _claim(cloud, "h2", "10.0.1.5", vpc, vn["b"]["id"], 1)["result"] == "stale"


def test_disallowing_or_deleting_the_holder_leaves_the_vip_unheld(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    cloud.call("POST", "/v1/vips/v/move", t, json={"instance": "a"})
    v = cloud.call("POST", "/v1/vips/v/disallow", t, json={"instance": "a"})
    assert v["spec"]["allowed"] == [vn["b"]["id"]]
    st = v["status"]
    assert (st["holder"], st["delivered_to"], st["epoch"]) == (None, None, 2)
    assert st["history"][-1]["cause"] == "disallowed"
    assert _route(cloud, "h1", "10.0.1.5/32") is None
    # allow is idempotent; the holder's deletion also leaves the VIP unheld
    cloud.call("POST", "/v1/vips/v/allow", t, json={"instance": "c"})
    rev = cloud.revision()
    cloud.call("POST", "/v1/vips/v/allow", t, json={"instance": "c"})
    assert cloud.revision() == rev
    cloud.call("POST", "/v1/vips/v/move", t, json={"instance": "c"})
    cloud.call("DELETE", "/v1/instances/c", t)
    v = cloud.call("GET", "/v1/vips/v", t)
    assert v["spec"]["allowed"] == [vn["b"]["id"]]
    assert (v["status"]["holder"], v["status"]["epoch"]) == (None, 4)
    assert v["status"]["history"][-1]["cause"] == "instance deleted"


def test_claims_win_with_a_current_epoch_and_lose_when_stale(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t, vpc = vn["t"], vn["vpc"]["id"]
    a, b, c = vn["a"]["id"], vn["b"]["id"], vn["c"]["id"]
    won = _claim(cloud, "h1", "10.0.1.5", vpc, a, 0)
    assert (won["result"], won["holder"], won["epoch"], won["vip"]) == ("won", a, 1, vn["v"]["id"])
    rev = cloud.revision()
    assert _claim(cloud, "h1", "10.0.1.5", vpc, a, 1)["result"] == "held"  # keepalived repeats
    assert cloud.revision() == rev
    assert _claim(cloud, "h2", "10.0.1.5", vpc, b, 0)["result"] == "stale"  # saw epoch 0
    assert _claim(cloud, "h1", "10.0.1.5", vpc, b, 1)["result"] == "not_here"  # b runs on h2
    assert _claim(cloud, "h1", "10.0.1.5", vpc, c, 1)["result"] == "not_allowed"
    assert _claim(cloud, "h1", "10.0.1.77", vpc, a, 1)["result"] == "unknown"
    assert cloud.revision() == rev  # none of them wrote anything
    assert _route(cloud, "h2", "10.0.1.5/32").peer == "h1"  # type: ignore[union-attr]
    won = _claim(cloud, "h2", "10.0.1.5", vpc, b, 1)
    assert (won["result"], won["holder"], won["epoch"]) == ("won", b, 2)
    assert _route(cloud, "h1", "10.0.1.5/32").peer == "h2"  # type: ignore[union-attr]
    v = cloud.call("GET", "/v1/vips/v", t)["status"]
    assert [(h["to"], h["cause"]) for h in v["history"]] == [(a, "claim"), (b, "claim")]
    events = cloud.call("GET", "/v1/events?for=v", t)["items"]
    assert [e["reason"] for e in events] == ["VipClaimRefused"]
    assert f"instance {c} on host h1 announced VIP v" in events[0]["message"]
    text = cloud.client.get("/metrics", headers=cloud.admin).text
    assert 'yunhan_vip_claims_total{result="not_allowed"} 1' in text
    assert 'yunhan_vip_claims_total{result="won"} 2' in text
    # only the host's own token, or the admin's
    r = cloud.client.post("/v1/agent/hosts/h1/vip-claims", headers=t, json={"claims": []})
    assert r.status_code == 403


def _without_vips(d: HostDesired) -> HostDesired:
    return d.model_copy(update={"vpcs": tuple(v.model_copy(update={"vips": ()}) for v in d.vpcs)})


def test_a_flapping_vip_is_damped_then_settles_on_its_latest_holder(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t, vpc = vn["t"], vn["vpc"]["id"]
    a, b = vn["a"]["id"], vn["b"]["id"]
    who = [(a, "h1"), (b, "h2")]
    for n in range(3):  # three changes in 3 s: the default damping allows 3 per 30 s
        inst, host = who[n % 2]
        assert _claim(cloud, host, "10.0.1.5", vpc, inst, n)["result"] == "won"
        cloud.clock.advance(1)
    assert _route(cloud, "h1", "10.0.1.5/32").kind == "local"  # type: ignore[union-attr]
    docs = {h: _doc(cloud, h) for h in ("h1", "h2")}
    rev = cloud.revision()
    assert _claim(cloud, "h2", "10.0.1.5", vpc, b, 3)["result"] == "won"  # the 4th: damped
    assert _claim(cloud, "h1", "10.0.1.5", vpc, a, 4)["result"] == "won"
    assert _claim(cloud, "h2", "10.0.1.5", vpc, b, 5)["result"] == "won"
    st = cloud.call("GET", "/v1/vips/v", t)["status"]
    assert (st["holder"], st["epoch"], st["delivered_to"]) == (b, 6, a)
    assert st["damped_since"] is not None
    assert cloud.revision() == rev + 3  # recorded: fencing goes on
    # but no host was re-pointed: the documents differ in the VIP's epoch only (the agents
    # claim with it)
    now = {h: _doc(cloud, h) for h in ("h1", "h2")}
    assert {h: [v.vips[0].epoch for v in d.vpcs] for h, d in now.items()} == {"h1": [6], "h2": [6]}
    assert {h: _without_vips(d) for h, d in now.items()} == {
        h: _without_vips(d) for h, d in docs.items()
    }
    events = cloud.call("GET", "/v1/events?for=v", t)["items"]
    assert [e["reason"] for e in events] == ["VipFlapping"]
    cloud.clock.advance(29)
    cloud.reconcile()
    assert cloud.call("GET", "/v1/vips/v", t)["status"]["delivered_to"] == a  # not quiet yet
    cloud.clock.advance(1)
    cloud.reconcile()
    st = cloud.call("GET", "/v1/vips/v", t)["status"]
    assert (st["holder"], st["delivered_to"], st["damped_since"]) == (b, b, None)
    assert _route(cloud, "h1", "10.0.1.5/32").peer == "h2"  # type: ignore[union-attr]
    reasons = {e["reason"] for e in cloud.call("GET", "/v1/events?for=v", t)["items"]}
    assert reasons == {"VipFlapping", "VipSettled"}
    rev = cloud.revision()
    cloud.reconcile()
    assert cloud.revision() == rev  # settled: the leader's pass writes nothing more


def test_a_move_ends_damping_at_once(cloud: Cloud, vn: dict[str, Any]) -> None:
    t, vpc = vn["t"], vn["vpc"]["id"]
    a, b = vn["a"]["id"], vn["b"]["id"]
    for n in range(4):
        inst, host = [(a, "h1"), (b, "h2")][n % 2]
        _claim(cloud, host, "10.0.1.5", vpc, inst, n)
    st = cloud.call("GET", "/v1/vips/v", t)["status"]
    assert st["damped_since"] is not None and st["delivered_to"] == a
    st = cloud.call("POST", "/v1/vips/v/move", t, json={"instance": "b"})["status"]
    assert (st["holder"], st["delivered_to"], st["damped_since"]) == (b, b, None)
    assert _route(cloud, "h1", "10.0.1.5/32").peer == "h2"  # type: ignore[union-attr]


def test_a_lost_host_keeps_its_vips(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    fleet = cloud.client.app.state.yunhan.fleet  # type: ignore[attr-defined]
    ctl = Controller(cloud.store, clock=cloud.clock, leases=lambda: fleet.leases)
    cloud.call("POST", "/v1/vips/v/move", t, json={"instance": "a"})
    cloud.heartbeat("h1", 0)
    cloud.heartbeat("h2", 0)
    ctl.reconcile_once()
    for _ in range(4):  # h1 goes quiet; h2 keeps beating
        cloud.clock.advance(5)
        cloud.heartbeat("h2", 0)
        ctl.reconcile_once()
    assert cloud.call("GET", "/v1/hosts/h1")["status"]["condition"] == "lost"
    st = cloud.call("GET", "/v1/vips/v", t)["status"]
    assert (st["holder"], st["holder_host"], st["epoch"]) == (vn["a"]["id"], "h1", 1)
    assert _route(cloud, "h2", "10.0.1.5/32").peer == "h1"  # type: ignore[union-attr]
    # until an allowed instance elsewhere claims it
    won = _claim(cloud, "h2", "10.0.1.5", vn["vpc"]["id"], vn["b"]["id"], 1)
    assert (won["result"], won["epoch"]) == ("won", 2)
    assert _route(cloud, "h2", "10.0.1.5/32").kind == "local"  # type: ignore[union-attr]
