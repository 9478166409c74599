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
        json={"applied_revision": cloud.revision(), "instances": instances or {},
              "volumes": volumes},
    )  # fmt: skip


def _vol(cloud: Cloud, t: dict[str, str], ref: str) -> dict[str, Any]:
    return dict(cloud.call("GET", f"/v1/volumes/{ref}", t))


def _good(phase: str = "available", **kw: Any) -> dict[str, Any]:
    return {"phase": phase, "message": None, "device": None, "mounted": False, "used_bytes": 0,
            "journal_bytes": 0, "base_bytes": 0, "timeline": [], "restored_serial": 0,
            "fill": 1.0, **kw}  # fmt: skip


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


def _create(cloud: Cloud, t: dict[str, str], name: str = "d1", size: int = 10 * GIB,
            zone: str = "az1", **kw: Any) -> dict[str, Any]:  # fmt: skip
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
