"""Instance migration through the API (docs/instances.md): the instance moves to a host of
another zone keeping its address, MAC, labels, groups and VIP permissions; every host's
document follows; every bad request is refused with a clear error that changes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from yunhan.net.desired import HostDesired
from yunhan.net.docentries import Delta, assemble

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


def _doc(cloud: Cloud, host: str) -> HostDesired:
    r = cloud.client.get(
        f"/v1/agent/hosts/{host}/desired", params={"after": 0, "timeout": 0}, headers=cloud.admin
    )
    return assemble(Delta.from_json(r.json()).entries, host)


def _peer_of(cloud: Cloud, host: str, dst: str) -> str | None:
    found = [r for v in _doc(cloud, host).vpcs for r in v.routes if r.dst == dst]
    return found[0].peer if found else None


@pytest.fixture
def mn(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    """prod/web with a (az1, h1, labelled, holding VIP v) and b (az2, h2); hosts h1, h2 and
    h3 (az2) heartbeating."""
    t = net["t"]
    cloud.host("h3", "az2", "198.18.2.12")
    for h in ("h1", "h2", "h3"):
        cloud.heartbeat(h, 0)
    body = {"name": "a", "subnet": "web", "zone": "az1", "labels": {"tier": "db"}}
    a = cloud.call("POST", "/v1/instances", t, json=body)
    b = cloud.call("POST", "/v1/instances", t, json={"name": "b", "subnet": "web", "zone": "az2"})
    cloud.call("POST", "/v1/vips", t, json={"name": "v", "subnet": "web", "allowed": ["a", "b"]})
    cloud.call("POST", "/v1/vips/v/move", t, json={"instance": "a"})
    return {**net, "a": a, "b": b}


def test_migrating_across_zones_keeps_address_mac_labels_and_moves_the_data_plane(
    cloud: Cloud, mn: dict[str, Any]
) -> None:
    t, a = mn["t"], mn["a"]
    assert a["status"]["host"] == "h1"
    assert _peer_of(cloud, "h2", "10.0.1.2/32") == "h1"
    vip_before = cloud.call("GET", "/v1/vips/v", t)["status"]
    moved = cloud.call("POST", "/v1/instances/a/migrate", t, json={"zone": "az2", "host": "h3"})
    assert moved["id"] == a["id"] and moved["name"] == "a"
    assert moved["labels"] == {"tier": "db"}
    assert moved["spec"]["security_groups"] == a["spec"]["security_groups"]
    az2 = cloud.call("GET", "/v1/zones/az2")["id"]
    assert moved["spec"]["zone"] == az2
    st = moved["status"]
    assert (st["ip"], st["mac"], st["host"], st["phase"]) == (
        a["status"]["ip"], a["status"]["mac"], "h3", "scheduled",
    )  # fmt: skip
    assert st["netns"] is None and "migrating from host h1" in st["message"]
    [m] = st["migrations"]
    assert (m["from_host"], m["to_host"]) == ("h1", "h3")
    assert (m["from_zone"], m["to_zone"]) == ("az1", "az2")
    # h1 no longer runs it, h3 does; the others reach it at h3
    assert a["id"] not in {i.id for i in _doc(cloud, "h1").instances}
    assert [i.name for i in _doc(cloud, "h3").instances if i.id == a["id"]] == ["a"]
    assert _peer_of(cloud, "h2", "10.0.1.2/32") == "h3"
    # the VIP it holds went with it, under the same epoch (no claim is made stale by it)
    v = cloud.call("GET", "/v1/vips/v", t)["status"]
    assert (v["holder"], v["holder_zone"], v["holder_host"]) == (a["id"], az2, "h3")
    assert v["epoch"] == vip_before["epoch"] and v["history"] == vip_before["history"]
    assert _peer_of(cloud, "h2", f"{cloud.call('GET', '/v1/vips/v', t)['spec']['ip']}/32") == "h3"
    # the permissions stay: b may still take it; a's claim from its new host holds
    assert cloud.call("GET", "/v1/vips/v", t)["spec"]["allowed"] == [a["id"], mn["b"]["id"]]
    events = cloud.call("GET", "/v1/events?for=a", t)["items"]
    assert [e["reason"] for e in events] == ["InstanceMigrated"]
    assert "from host h1 (az1) to host h3 (az2)" in events[0]["message"]
    # only the new host's report counts now
    cloud.heartbeat("h1", 0, {a["id"]: {"phase": "failed", "message": "gone"}})
    cloud.heartbeat("h3", 0, {a["id"]: {"phase": "running", "netns": "x-i", "uts": "x-u"}})
    st = cloud.call("GET", "/v1/instances/a", t)["status"]
    assert (st["phase"], st["netns"]) == ("running", "x-i")


def test_without_a_host_the_scheduler_chooses_another_host_and_moves_stack(
    cloud: Cloud, mn: dict[str, Any]
) -> None:
    t = mn["t"]
    moved = cloud.call("POST", "/v1/instances/b/migrate", t, json={"zone": "az2"})
    assert moved["status"]["host"] == "h3"  # the only other host of az2
    back = cloud.call("POST", "/v1/instances/b/migrate", t, json={"zone": "az1"})
    assert back["status"]["host"] == "h1"
    assert [(m["from_host"], m["to_host"]) for m in back["status"]["migrations"]] == [
        ("h2", "h3"),
        ("h3", "h1"),
    ]


def test_bad_migrations_are_refused_and_change_nothing(cloud: Cloud, mn: dict[str, Any]) -> None:
    t = mn["t"]
    path = "/v1/instances/a/migrate"
    cloud.rejected("POST", path, 404, "no zone 'az9'", t, json={"zone": "az9"})
    cloud.rejected("POST", "/v1/instances/zz/migrate", 404, "zz", t, json={"zone": "az2"})
    cloud.rejected("POST", path, 409, "host h2 is not in zone az1", t,
                   json={"zone": "az1", "host": "h2"})  # fmt: skip
    cloud.rejected("POST", path, 409, "already runs on host h1", t,
                   json={"zone": "az1", "host": "h1"})  # fmt: skip
    cloud.rejected("POST", path, 409, "zone az1 has no host other than h1", t, json={"zone": "az1"})
    cloud.rejected("POST", path, 404, "h9", t, json={"zone": "az2", "host": "h9"})
    cloud.rejected("POST", path, 400, "zone: Field required", t, json={})
    cloud.clock.advance(60)  # h3 stops heartbeating
    cloud.heartbeat("h2", 0)
    cloud.rejected("POST", path, 409, "host h3 is not heartbeating", t,
                   json={"zone": "az2", "host": "h3"})  # fmt: skip
    # an If-Match naming an older revision of it
    cloud.rejected("POST", path, 412, "", {**t, "If-Match": '"1"'}, json={"zone": "az2"})
    # another project cannot move it (it does not see it)
    other = cloud.project("other")
    cloud.rejected("POST", path, 404, "a", other, json={"zone": "az2"})


def test_a_stopped_instance_runs_nowhere_keeps_its_address_and_starts_in_its_zone(
    cloud: Cloud, mn: dict[str, Any]
) -> None:
    t, a = mn["t"], mn["a"]
    stopped = cloud.call("POST", "/v1/instances/a/stop", t)
    st = stopped["status"]
    assert (st["host"], st["phase"], st["ip"], st["mac"]) == (
        None,
        "stopped",
        a["status"]["ip"],
        a["status"]["mac"],
    )
    assert _peer_of(cloud, "h2", "10.0.1.2/32") is None  # no host routes to it any more
    vip = cloud.call("GET", "/v1/vips/v", t)
    assert vip["status"]["holder"] is None and a["id"] in vip["spec"]["allowed"]
    cloud.controller.reconcile_once()  # not "pending": the controller leaves it stopped
    assert cloud.call("GET", "/v1/instances/a", t)["status"]["host"] is None
    rev = cloud.revision()
    assert cloud.call("POST", "/v1/instances/a/stop", t)["revision"] == stopped["revision"]
    assert cloud.revision() == rev  # stopping a stopped one writes nothing
    started = cloud.call("POST", "/v1/instances/a/start", t)
    assert started["status"]["host"] == "h1" and started["status"]["phase"] == "scheduled"
    assert started["status"]["ip"] == a["status"]["ip"]
    assert _peer_of(cloud, "h2", "10.0.1.2/32") == "h1"
    cloud.rejected("POST", "/v1/instances/a/start", 409, "is not stopped", t)
    reasons = [e["reason"] for e in cloud.call("GET", "/v1/events", t)["items"]]
    assert "InstanceStopped" in reasons and "InstanceStarted" in reasons
