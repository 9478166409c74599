"""Volumes through the API (docs/volumes.md): placement by zone and free space, attach and
detach, protection, restore and clone checked against the timeline the agent reports,
the agent's reports settling the phase, the host documents, and every bad input refused
with a clear error that changes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from yunhan.net.desired import HostDesired
from yunhan.net.docentries import Delta, assemble

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

GIB = 1 << 30
NS = 1_000_000_000


def _doc(cloud: Cloud, host: str) -> HostDesired:
    r = cloud.client.get(
        f"/v1/agent/hosts/{host}/desired", params={"after": 0, "timeout": 0}, headers=cloud.admin
    )
    return assemble(Delta.from_json(r.json()).entries, host)


def _entries(cloud: Cloud, host: str) -> dict[str, Any]:
    r = cloud.client.get(
        f"/v1/agent/hosts/{host}/desired", params={"after": 0, "timeout": 0}, headers=cloud.admin
    )
    return dict(Delta.from_json(r.json()).entries)


def _report(cloud: Cloud, host: str, volumes: dict[str, Any], instances: Any = None) -> None:
    cloud.call(
        "POST",
        f"/v1/agent/hosts/{host}/status",
        json={
            "applied_revision": cloud.revision(),
            "instances": instances or {},
            "volumes": volumes,
        },
    )


def _vol(cloud: Cloud, t: dict[str, str], ref: str) -> dict[str, Any]:
    return dict(cloud.call("GET", f"/v1/volumes/{ref}", t))


def _good(phase: str = "available", **kw: Any) -> dict[str, Any]:
    return {
        "phase": phase,
        "message": None,
        "device": None,
        "mounted": False,
        "used_bytes": 0,
        "journal_bytes": 0,
        "base_bytes": 0,
        "timeline": [],
        "restored_serial": 0,
        "fill": 1.0,
        **kw,
    }


@pytest.fixture
def vn(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    """net plus a second host of az1 (h3), all three heartbeating; instances a (az1),
    b (az2), c (az1)."""
    cloud.host("h3", "az1", "198.18.1.12")
    for h in ("h1", "h2", "h3"):
        cloud.heartbeat(h, 0)
    t = net["t"]
    insts = {}
    for name, zone in (("a", "az1"), ("b", "az2"), ("c", "az1")):
        insts[name] = cloud.call(
            "POST", "/v1/instances", t, json={"name": name, "subnet": "web", "zone": zone}
        )
    return {**net, **insts}


def _create(
    cloud: Cloud,
    t: dict[str, str],
    name: str = "d1",
    size: int = 10 * GIB,
    zone: str = "az1",
    **kw: Any,
) -> dict[str, Any]:
    body = {"name": name, "size": size, "zone": zone, **kw}
    return dict(cloud.call("POST", "/v1/volumes", t, json=body))


def test_create_places_the_volume_on_a_live_host_of_its_zone(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    v = _create(cloud, vn["t"])
    assert v["kind"] == "volume" and v["id"].startswith("vol-")
    zone = cloud.call("GET", "/v1/zones/az1")["id"]
    assert v["spec"] == {
        "size": 10 * GIB,
        "zone": zone,
        "tiers": None,
        "attachment": None,
        "restore": None,
        "source": None,
    }
    assert v["status"]["phase"] == "creating"
    assert v["status"]["home"] == v["status"]["host"]
    assert v["status"]["home"] in ("h1", "h3")


def test_create_picks_the_host_with_the_most_free_volume_space(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    a = _create(cloud, t, "d1", 40 * GIB)
    b = _create(cloud, t, "d2", 10 * GIB)
    assert a["status"]["home"] != b["status"]["home"]
    c = _create(cloud, t, "d3", 10 * GIB)
    assert c["status"]["home"] == b["status"]["home"]  # 80 free there, 60 on the other


def test_the_registered_volume_pool_is_what_placement_counts(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    cloud.call(
        "PUT",
        "/v1/agent/hosts/h3",
        json={"zone": "az1", "underlay_ip": "198.18.1.12", "volume_pool": 500 * GIB},
    )
    assert cloud.call("GET", "/v1/hosts/h3")["spec"]["volume_pool"] == 500 * GIB
    v = _create(cloud, vn["t"], size=200 * GIB)
    assert v["status"]["home"] == "h3"


def test_a_host_that_stopped_heartbeating_gets_no_volume(cloud: Cloud, vn: dict[str, Any]) -> None:
    cloud.clock.advance(3600)
    cloud.heartbeat("h1", 0)
    assert _create(cloud, vn["t"])["status"]["home"] == "h1"
    cloud.clock.advance(3600)
    cloud.rejected(
        "POST",
        "/v1/volumes",
        409,
        "zone az1 has no live host",
        vn["t"],
        json={"name": "d2", "size": GIB, "zone": "az1"},
    )


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (GIB - 1, "below the smallest volume, 1G"),
        (512 << 20, "below the smallest volume, 1G"),
        (0, "below the smallest volume"),
        (GIB + (1 << 20), "not a whole number of GiB"),
        (101 * GIB, "above the free volume space of any live host of zone az1"),
    ],
)
def test_bad_sizes_are_refused(cloud: Cloud, vn: dict[str, Any], size: int, message: str) -> None:
    cloud.rejected(
        "POST",
        "/v1/volumes",
        422,
        message,
        vn["t"],
        json={"name": "d1", "size": size, "zone": "az1"},
    )


def test_a_size_above_the_free_space_left_is_refused(cloud: Cloud, vn: dict[str, Any]) -> None:
    _create(cloud, vn["t"], "d1", 100 * GIB)
    _create(cloud, vn["t"], "d2", 100 * GIB)
    cloud.rejected(
        "POST",
        "/v1/volumes",
        422,
        "at most 0 free",
        vn["t"],
        json={"name": "d3", "size": GIB, "zone": "az1"},
    )


def test_create_refuses_a_taken_name_an_unknown_zone_and_bad_tiers(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    _create(cloud, t)
    cloud.rejected(
        "POST",
        "/v1/volumes",
        409,
        "a volume named d1 already exists",
        t,
        json={"name": "d1", "size": GIB, "zone": "az1"},
    )
    cloud.rejected(
        "POST",
        "/v1/volumes",
        404,
        "no zone 'az9'",
        t,
        json={"name": "d2", "size": GIB, "zone": "az9"},
    )
    cloud.rejected(
        "POST",
        "/v1/volumes",
        422,
        "keeps must strictly increase",
        t,
        json={"name": "d2", "size": GIB, "zone": "az1", "tiers": "1d:1s,12h:1h"},
    )


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ("12h:1s,24h:1s", "intervals must strictly increase"),
        ("12h:1s,12h:1h", "keeps must strictly increase"),
        ("12h:7s", "must divide the time kept"),
        ("12x:1s", "is not a duration"),
        ("12h", "is not KEEP:EVERY"),
        ("0h:1s", "is not a duration"),
        ("", "tiers are empty"),
        ([], "tiers are empty"),
        ([{"keep_s": 60, "every_s": 0}], "positive whole keep_s and every_s"),
    ],
)
def test_protect_refuses_malformed_tiers(
    cloud: Cloud, vn: dict[str, Any], tiers: Any, message: str
) -> None:
    _create(cloud, vn["t"])
    cloud.rejected("POST", "/v1/volumes/d1/protect", 422, message, vn["t"], json={"tiers": tiers})


def test_protect_defaults_to_the_issue_tiers_and_unprotect_drops_them(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    _create(cloud, t)
    v = cloud.call("POST", "/v1/volumes/d1/protect", t, json={})
    assert v["spec"]["tiers"] == [
        {"keep_s": 43200, "every_s": 1},
        {"keep_s": 86400, "every_s": 3600},
        {"keep_s": 259200, "every_s": 86400},
    ]
    v = cloud.call(
        "POST",
        "/v1/volumes/d1/protect",
        t,
        json={"tiers": [{"keep_s": 60, "every_s": 1}, {"keep_s": 600, "every_s": 60}]},
    )
    assert v["spec"]["tiers"] == [{"keep_s": 60, "every_s": 1}, {"keep_s": 600, "every_s": 60}]
    assert cloud.call("POST", "/v1/volumes/d1/unprotect", t)["spec"]["tiers"] is None


def test_list_filters_by_zone_and_instance_and_hides_other_projects(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    _create(cloud, t, "d1")
    _create(cloud, t, "d2", zone="az2")
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    names = lambda **q: [v["name"] for v in cloud.call("GET", "/v1/volumes", t, params=q)["items"]]  # noqa: E731
    assert names() == ["d1", "d2"]
    assert names(zone="az2") == ["d2"]
    assert names(instance="a") == ["d1"]
    assert names(instance="c") == []
    other = cloud.project("other")
    assert cloud.call("GET", "/v1/volumes", other)["items"] == []
    assert cloud.client.get("/v1/volumes/d1", headers=other).status_code == 404


def test_attach_moves_the_volume_to_the_instance_host_and_its_document(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    host_a = vn["a"]["status"]["host"]
    other = "h3" if host_a == "h1" else "h1"
    cloud.call(
        "PUT",
        f"/v1/agent/hosts/{other}",
        json={
            "zone": "az1",
            "underlay_ip": "198.18.1.12" if other == "h3" else "198.18.1.11",
            "volume_pool": 900 * GIB,
        },
    )
    v = _create(cloud, t)
    assert v["status"]["home"] == other
    assert any(x.id == v["id"] for x in _doc(cloud, other).volumes)
    v = cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a", "path": "/srv/db"})
    assert v["spec"]["attachment"] == {"instance": vn["a"]["id"], "path": "/srv/db"}
    assert (v["status"]["phase"], v["status"]["host"], v["status"]["home"]) == (
        "attaching",
        host_a,
        other,
    )
    assert [x.id for x in _doc(cloud, other).volumes] == []
    (vd,) = _doc(cloud, host_a).volumes
    assert vd.attach is not None and (vd.attach.instance, vd.attach.path) == (
        vn["a"]["id"],
        "/srv/db",
    )
    # detach: back to its home host
    v = cloud.call("POST", "/v1/volumes/d1/detach", t)
    assert (v["status"]["phase"], v["status"]["host"]) == ("detaching", other)
    assert v["spec"]["attachment"] is None
    assert [x.id for x in _doc(cloud, other).volumes] == [v["id"]]


def test_the_volume_entry_names_the_netns_the_instance_reported(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    v = _create(cloud, t)
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    host = vn["a"]["status"]["host"]
    cloud.heartbeat(host, 0, {vn["a"]["id"]: {"phase": "running", "netns": "yh-i-abc"}})
    entry = _entries(cloud, host)[f"volume/{v['id']}"]
    assert entry == {
        "id": v["id"],
        "name": "d1",
        "size": 10 * GIB,
        "zone": v["spec"]["zone"],
        "tiers": None,
        "attach": {"instance": vn["a"]["id"], "netns": "yh-i-abc", "path": "/data"},
        "restore": None,
        "source": None,
    }


def test_attach_across_zones_is_refused(cloud: Cloud, vn: dict[str, Any]) -> None:
    _create(cloud, vn["t"])
    cloud.rejected(
        "POST",
        "/v1/volumes/d1/attach",
        422,
        "volume d1 is in zone az1, instance b in az2",
        vn["t"],
        json={"instance": "b"},
    )


def test_attach_twice_is_refused(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    _create(cloud, t)
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    cloud.rejected(
        "POST",
        "/v1/volumes/d1/attach",
        409,
        "already attached to instance a; detach it first",
        t,
        json={"instance": "c"},
    )
    cloud.rejected(
        "POST",
        "/v1/volumes/d1/attach",
        409,
        "already attached",
        t,
        json={"instance": "a", "path": "/other"},
    )


def test_two_volumes_at_one_path_of_an_instance_are_refused(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    _create(cloud, t, "d1")
    _create(cloud, t, "d2")
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    cloud.rejected(
        "POST",
        "/v1/volumes/d2/attach",
        409,
        "instance a already has volume d1 at /data",
        t,
        json={"instance": "a"},
    )
    v = cloud.call("POST", "/v1/volumes/d2/attach", t, json={"instance": "a", "path": "/logs"})
    assert v["spec"]["attachment"]["path"] == "/logs"


@pytest.mark.parametrize("path", ["data", "/", "/a/../b", "/a/", ""])
def test_attach_refuses_a_bad_mount_path(cloud: Cloud, vn: dict[str, Any], path: str) -> None:
    _create(cloud, vn["t"])
    cloud.rejected(
        "POST",
        "/v1/volumes/d1/attach",
        422,
        "mount path",
        vn["t"],
        json={"instance": "a", "path": path},
    )


def test_detach_when_not_attached_is_refused(cloud: Cloud, vn: dict[str, Any]) -> None:
    _create(cloud, vn["t"])
    cloud.rejected("POST", "/v1/volumes/d1/detach", 409, "volume d1 is not attached", vn["t"])


def test_delete_of_an_attached_volume_is_refused_and_of_a_detached_one_frees_its_space(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    v = _create(cloud, t, "d1", 100 * GIB)
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    cloud.rejected("DELETE", "/v1/volumes/d1", 409, "attached to instance a; detach it first", t)
    cloud.call("POST", "/v1/volumes/d1/detach", t)
    going = cloud.call("DELETE", "/v1/volumes/d1", t)
    assert going["id"] == v["id"] and going["status"]["phase"] == "deleting"
    host = going["status"]["host"]
    # its host is told to remove the data; until it says so the volume stays, refusing all
    entry = _entries(cloud, host)[f"volume/{v['id']}"]
    assert entry["delete"] is True
    cloud.rejected("POST", "/v1/volumes/d1/attach", 409, "being deleted", t, json={"instance": "a"})
    assert cloud.call("DELETE", "/v1/volumes/d1", t)["status"]["phase"] == "deleting"
    _report(cloud, "h3" if host == "h1" else "h1", {v["id"]: _good("deleted")})
    assert _vol(cloud, t, "d1")["status"]["phase"] == "deleting"  # another host's word: none
    _report(cloud, host, {v["id"]: _good("deleted")})
    assert cloud.client.get("/v1/volumes/d1", headers=t).status_code == 404
    home = v["status"]["home"]
    assert all(f"volume/{v['id']}" not in _entries(cloud, h) for h in ("h1", "h3"))
    # its 100G are free again on its home host
    assert _create(cloud, t, "d2", 100 * GIB)["status"]["home"] in (home, "h1", "h3")
    assert _create(cloud, t, "d3", 100 * GIB)["status"]["phase"] == "creating"


def test_resize_grows_only_and_only_detached(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    _create(cloud, t)
    cloud.rejected(
        "PATCH", "/v1/volumes/d1", 422, "a volume only grows", t, json={"spec": {"size": 5 * GIB}}
    )
    cloud.rejected(
        "PATCH",
        "/v1/volumes/d1",
        422,
        "a resize must grow it",
        t,
        json={"spec": {"size": 10 * GIB}},
    )
    cloud.rejected(
        "PATCH", "/v1/volumes/d1", 422, "at most 90G free", t, json={"spec": {"size": 101 * GIB}}
    )
    cloud.rejected("PATCH", "/v1/volumes/d1", 400, "", t, json={"spec": {"zone": "az2"}})
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    cloud.rejected(
        "PATCH", "/v1/volumes/d1", 409, "detach it first", t, json={"spec": {"size": 20 * GIB}}
    )
    cloud.call("POST", "/v1/volumes/d1/detach", t)
    v = cloud.call("PATCH", "/v1/volumes/d1", t, json={"spec": {"size": 20 * GIB}})
    assert v["spec"]["size"] == 20 * GIB


def test_resize_honours_if_match(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    v = _create(cloud, t)
    cloud.rejected(
        "PATCH",
        "/v1/volumes/d1",
        412,
        "changed since you read it",
        {**t, "If-Match": str(v["revision"] + 5)},
        json={"spec": {"size": 20 * GIB}},
    )


def test_reports_settle_the_phase_from_the_serving_host_only(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    v = _create(cloud, t)
    home = v["status"]["home"]
    other = "h3" if home == "h1" else "h1"
    _report(cloud, other, {v["id"]: _good(used_bytes=5)})
    assert _vol(cloud, t, "d1")["status"]["phase"] == "creating"  # not its host
    _report(cloud, home, {v["id"]: _good(used_bytes=5, device="/dev/loop3")})
    st = _vol(cloud, t, "d1")["status"]
    assert (st["phase"], st["used_bytes"], st["device"]) == ("available", 5, "/dev/loop3")


def test_attach_settles_only_when_the_agent_says_attached(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    v = _create(cloud, t)
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    host = vn["a"]["status"]["host"]
    _report(cloud, host, {v["id"]: _good("available")})
    assert _vol(cloud, t, "d1")["status"]["phase"] == "attaching"
    _report(cloud, host, {v["id"]: _good("attached", mounted=True)})
    st = _vol(cloud, t, "d1")["status"]
    assert (st["phase"], st["mounted"]) == ("attached", True)
    # an error shows at once, and clears when a report agrees with the spec again
    _report(cloud, host, {v["id"]: _good("error", message="mount failed: EIO")})
    st = _vol(cloud, t, "d1")["status"]
    assert (st["phase"], st["error"]) == ("error", "mount failed: EIO")
    _report(cloud, host, {v["id"]: _good("attached", mounted=True)})
    assert _vol(cloud, t, "d1")["status"]["phase"] == "attached"


def test_an_unchanged_report_writes_nothing(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    v = _create(cloud, t)
    home = v["status"]["home"]
    _report(cloud, home, {v["id"]: _good(used_bytes=5)})
    before = cloud.revision()
    _report(cloud, home, {v["id"]: _good(used_bytes=5)})
    _report(cloud, home, {v["id"]: _good(used_bytes=6)})  # volatile, within REFRESH_S
    assert cloud.revision() == before
    cloud.clock.advance(10)
    cloud.heartbeat("h1", 0)
    cloud.heartbeat("h3", 0)
    before = cloud.revision()
    _report(cloud, home, {v["id"]: _good(used_bytes=6)})
    assert cloud.revision() == before + 1
    assert _vol(cloud, t, "d1")["status"]["used_bytes"] == 6


def test_a_report_of_an_unknown_volume_is_ignored(cloud: Cloud, vn: dict[str, Any]) -> None:
    before = cloud.revision()
    _report(cloud, "h1", {"vol-00000000": _good()})
    assert cloud.revision() == before


def test_a_malformed_volume_report_is_refused(cloud: Cloud, vn: dict[str, Any]) -> None:
    r = cloud.client.post(
        "/v1/agent/hosts/h1/status",
        headers=cloud.admin,
        json={"applied_revision": 0, "volumes": {"vol-1": {"phase": "lost"}}},
    )
    assert r.status_code == 400


def _protected(cloud: Cloud, t: dict[str, str], now_ns: int) -> dict[str, Any]:
    """d1, protected, whose agent reports 1 s points for the last hour and hourly ones
    for the day before."""
    v = _create(cloud, t, tiers="1h:1s,1d:1h")
    hour = 3600 * NS
    timeline = [
        {"from_ns": now_ns - 25 * hour, "to_ns": now_ns - hour, "every_s": 3600},
        {"from_ns": now_ns - hour, "to_ns": now_ns, "every_s": 1},
    ]
    _report(cloud, v["status"]["home"], {v["id"]: _good(timeline=timeline, journal_bytes=7)})
    return v


def test_timeline_shows_the_reported_ranges(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    now = int(cloud.clock()) * NS
    _protected(cloud, t, now)
    tl = cloud.call("GET", "/v1/volumes/d1/timeline", t)
    assert tl["tiers"] == [{"keep_s": 3600, "every_s": 1}, {"keep_s": 86400, "every_s": 3600}]
    assert [p["every_s"] for p in tl["points"]] == [3600, 1]
    assert tl["oldest"] == tl["points"][0]["from"] and tl["newest"] == tl["points"][1]["to"]
    assert tl["newest"] == "2027-01-15T08:00:00Z" and tl["journal_bytes"] == 7


def test_restore_in_place_asks_the_agent_and_settles_on_its_serial(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    now = int(cloud.clock()) * NS
    v = _protected(cloud, t, now)
    r = cloud.call("POST", "/v1/volumes/d1/restore", t, json={"to": int(cloud.clock()) - 90})
    assert r["spec"]["restore"] == {"to_ns": now - 90 * NS, "serial": 1}
    assert r["status"]["phase"] == "restoring"
    entry = _entries(cloud, v["status"]["home"])[f"volume/{v['id']}"]
    assert entry["restore"] == {"to_ns": now - 90 * NS, "serial": 1}
    timeline = _vol(cloud, t, "d1")["status"]["timeline"]
    _report(cloud, v["status"]["home"], {v["id"]: _good(restored_serial=0, timeline=timeline)})
    assert _vol(cloud, t, "d1")["status"]["phase"] == "restoring"
    _report(cloud, v["status"]["home"], {v["id"]: _good(restored_serial=1, timeline=timeline)})
    assert _vol(cloud, t, "d1")["status"]["phase"] == "available"
    # an ISO time, with nanoseconds, inside the 1 s range
    r = cloud.call("POST", "/v1/volumes/d1/restore", t, json={"to": "2027-01-15T07:59:00.5Z"})
    assert r["spec"]["restore"]["serial"] == 2
    assert r["spec"]["restore"]["to_ns"] == now - 60 * NS + NS // 2


def test_restore_refuses_attached_future_old_and_gap_times(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    now = int(cloud.clock())
    _protected(cloud, t, now * NS)
    post = lambda to, status, msg: cloud.rejected(  # noqa: E731
        "POST", "/v1/volumes/d1/restore", status, msg, t, json={"to": to}
    )
    post(now + 10, 422, "is in the future")
    post(now - 26 * 3600, 422, "before the oldest restore point")
    post(now - 2 * 3600 - 1, 422, "is not a restore point of volume d1")
    post("yesterday", 422, "is not ISO 8601")
    cloud.call("POST", "/v1/volumes/d1/restore", t, json={"to": now - 2 * 3600})  # on the hour
    cloud.rejected(
        "POST", "/v1/volumes/d1/attach", 409, "is being restored", t, json={"instance": "a"}
    )


def test_restore_of_an_attached_volume_is_refused(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    now = int(cloud.clock())
    _protected(cloud, t, now * NS)
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    cloud.rejected(
        "POST",
        "/v1/volumes/d1/restore",
        409,
        "is attached; detach it first",
        t,
        json={"to": now - 10},
    )


def test_restore_of_an_unprotected_volume_is_refused(cloud: Cloud, vn: dict[str, Any]) -> None:
    _create(cloud, vn["t"])
    cloud.rejected(
        "POST",
        "/v1/volumes/d1/restore",
        422,
        "volume d1 is not protected",
        vn["t"],
        json={"to": int(cloud.clock()) - 5},
    )


def test_a_protected_volume_without_a_report_has_no_restore_point_yet(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    _create(cloud, vn["t"], tiers="1h:1s")
    cloud.rejected(
        "POST",
        "/v1/volumes/d1/clone",
        422,
        "no restore points reported yet",
        vn["t"],
        json={"name": "d2", "at": int(cloud.clock()) - 5},
    )


def test_clone_lives_on_the_source_host_and_names_its_source(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    now = int(cloud.clock())
    src = _protected(cloud, t, now * NS)
    c = cloud.call(
        "POST",
        "/v1/volumes/d1/clone",
        t,
        json={"name": "d1-then", "at": now - 30, "labels": {"why": "audit"}},
    )
    assert c["spec"]["source"] == {"volume": src["id"], "at_ns": (now - 30) * NS}
    assert (c["spec"]["size"], c["spec"]["zone"]) == (src["spec"]["size"], src["spec"]["zone"])
    assert c["status"]["home"] == c["status"]["host"] == src["status"]["host"]
    assert c["labels"] == {"why": "audit"} and c["status"]["phase"] == "creating"
    entry = _entries(cloud, src["status"]["host"])[f"volume/{c['id']}"]
    assert entry["source"] == {"volume": src["id"], "at_ns": (now - 30) * NS}


def test_clone_refuses_a_taken_name_and_a_time_in_the_future(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    now = int(cloud.clock())
    _protected(cloud, t, now * NS)
    _create(cloud, t, "d2")
    cloud.rejected(
        "POST",
        "/v1/volumes/d1/clone",
        409,
        "a volume named d2 already exists",
        t,
        json={"name": "d2", "at": now - 5},
    )
    cloud.rejected(
        "POST",
        "/v1/volumes/d1/clone",
        422,
        "is in the future",
        t,
        json={"name": "d3", "at": now + 5},
    )


def test_instance_delete_detaches_its_volumes(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    v = _create(cloud, t)
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    cloud.call("DELETE", "/v1/instances/a", t)
    v = _vol(cloud, t, "d1")
    assert v["spec"]["attachment"] is None
    assert (v["status"]["phase"], v["status"]["host"]) == ("detaching", v["status"]["home"])
    events = cloud.call("GET", "/v1/events", t)
    assert any(e["reason"] == "VolumeDetached" for e in events["items"])


def test_instance_migrate_is_refused_while_a_volume_is_attached(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    _create(cloud, t)
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    cloud.rejected(
        "POST",
        "/v1/instances/a/migrate",
        409,
        "instance a has volume(s) d1 attached; detach them first",
        t,
        json={"zone": "az1"},
    )


def test_instance_stop_is_refused_while_a_volume_is_attached(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    _create(cloud, t)
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    cloud.rejected("POST", "/v1/instances/a/stop", 409, "instance a has volume(s) d1 attached", t)


def test_events_tell_the_volume_story(cloud: Cloud, vn: dict[str, Any]) -> None:
    t = vn["t"]
    _create(cloud, t)
    cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    cloud.call("POST", "/v1/volumes/d1/detach", t)
    cloud.call("POST", "/v1/volumes/d1/protect", t, json={})
    going = cloud.call("DELETE", "/v1/volumes/d1", t)
    _report(cloud, going["status"]["host"], {going["id"]: _good("deleted")})
    reasons = [e["reason"] for e in cloud.call("GET", "/v1/events", t)["items"]]
    for r in (
        "VolumeCreated",
        "VolumeAttached",
        "VolumeDetached",
        "VolumeProtected",
        "VolumeDeleting",
        "VolumeDeleted",
    ):
        assert r in reasons


def test_a_volume_change_is_converged_once_its_host_applied_it(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = vn["t"]
    v = _create(cloud, t)
    for h in ("h1", "h2", "h3"):
        cloud.heartbeat(h, cloud.revision())
    a = cloud.call("POST", "/v1/volumes/d1/attach", t, json={"instance": "a"})
    conv = cloud.call("GET", "/v1/converged", params={"revision": a["revision"]})
    want = {v["status"]["home"], vn["a"]["status"]["host"]}
    assert not conv["converged"] and set(conv["pending"]) == want
    for h in want:
        cloud.heartbeat(h, a["revision"])
    assert cloud.call("GET", "/v1/converged", params={"revision": a["revision"]})["converged"]


def test_create_with_an_idempotency_key_answers_the_same_twice(
    cloud: Cloud, vn: dict[str, Any]
) -> None:
    t = {**vn["t"], "Idempotency-Key": "k-1"}
    body = {"name": "d1", "size": GIB, "zone": "az1"}
    a = cloud.call("POST", "/v1/volumes", t, json=body)
    before = cloud.revision()
    b = cloud.call("POST", "/v1/volumes", t, json=body)
    assert (a["id"], a["revision"]) == (b["id"], b["revision"]) and cloud.revision() == before
