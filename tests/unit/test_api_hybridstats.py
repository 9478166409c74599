"""Hybrid traffic statistics through the API (docs/cutover.md): agents post what their
counters moved, callers read it binned per prefix, point and direction, their own only;
and the host document tells every host which prefixes to count."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from test_api_hybrid import SITE, _controller, _doc, _gw

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]


@pytest.fixture
def hy(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    cloud.call("PUT", "/v1/idc-sites/dc1", json=SITE)
    t = net["t"]
    for name, cidr in (("idc-a", "10.0.100.0/24"), ("idc-b", "10.0.101.0/24")):
        cloud.call(
            "POST",
            "/v1/subnets",
            t,
            json={"name": name, "vpc": "prod", "cidr": cidr, "location": "idc:dc1"},
        )
    cloud.heartbeat("h1", 0)
    cloud.heartbeat("h2", 0)
    return net


def _sample(vpc: str, **kw: Any) -> dict[str, Any]:
    return {
        "vpc": vpc,
        "prefix": "10.0.101.0/24",
        "point": "host-sent",
        "source": "x",
        "direction": "in",
        "packets": 10,
        "bytes": 1280,
        "start": 0.0,
        "end": 1.0,
        **kw,
    }


def _post(cloud: Cloud, host: str, samples: list[dict[str, Any]]) -> Any:
    return cloud.call("POST", f"/v1/agent/hosts/{host}/traffic", json={"samples": samples})


def test_every_host_is_told_the_prefixes_to_count_wherever_they_are_served(
    cloud: Cloud, hy: dict[str, Any]
) -> None:
    _gw(cloud, hy["t"], replicas=2)
    _controller(cloud).reconcile_once()
    for host in ("h1", "h2"):
        (v,) = _doc(cloud, host).vpcs
        (g,) = v.hybrids
        assert g.prefixes == ("10.0.100.0/24", "10.0.101.0/24")
        assert [r.dst for r in g.routes] == ["10.0.100.0/24", "10.0.101.0/24"]
    cloud.call(
        "POST", "/v1/hybrid/switch", hy["t"], json={"prefix": "10.0.101.0/24", "to": "cloud"}
    )
    (v,) = _doc(cloud, "h1").vpcs
    (g,) = v.hybrids
    assert [r.dst for r in g.routes] == ["10.0.100.0/24"]  # served in the cloud now
    assert g.prefixes == ("10.0.100.0/24", "10.0.101.0/24")  # still counted


def test_samples_are_binned_per_prefix_point_and_direction(
    cloud: Cloud, hy: dict[str, Any]
) -> None:
    vpc = hy["vpc"]["id"]
    now = cloud.clock()
    ans = _post(
        cloud,
        "h1",
        [
            _sample(vpc, start=now - 30, end=now - 25),
            _sample(vpc, start=now - 25, end=now - 21, packets=5, bytes=640),
            _sample(vpc, start=now - 12, end=now - 11, packets=1, bytes=128),
            _sample(vpc, point="replica", source="hgw-1/1", direction="out", end=now - 5),
            _sample("vpc-gone", end=now - 5),
        ],
    )
    assert ans == {"stored": 4, "dropped": 1}
    _post(
        cloud,
        "h2",
        [
            _sample(
                vpc,
                point="replica",
                source="hgw-1/2",
                direction="out",
                packets=3,
                bytes=300,
                end=now - 4,
            )
        ],
    )
    got = cloud.call(
        "GET", "/v1/hybrid/stats", hy["t"], params={"since": now - 30, "until": now, "window": 10}
    )
    assert got["window"] == 10 and got["since"] == now - 30
    by = {(s["prefix"], s["point"], s["direction"]): s for s in got["series"]}
    assert set(by) == {("10.0.101.0/24", "host-sent", "in"), ("10.0.101.0/24", "replica", "out")}
    host = by[("10.0.101.0/24", "host-sent", "in")]
    assert host["packets"] == [15, 1, 0] and host["bytes"] == [1920, 128, 0]
    assert host["total_packets"] == 16 and host["sources"] == {"h1": {"packets": 16, "bytes": 2048}}
    rep = by[("10.0.101.0/24", "replica", "out")]
    assert rep["packets"] == [0, 0, 13]
    assert rep["sources"] == {
        "hgw-1/1": {"packets": 10, "bytes": 1280},
        "hgw-1/2": {"packets": 3, "bytes": 300},
    }
    # filters: a prefix, a VPC
    only = cloud.call(
        "GET",
        "/v1/hybrid/stats",
        hy["t"],
        params={"since": now - 30, "until": now, "prefix": "10.0.100.0/24"},
    )
    assert only["series"] == []
    assert cloud.call(
        "GET", "/v1/hybrid/stats", hy["t"], params={"since": now - 30, "until": now, "vpc": "prod"}
    )["series"]


def test_a_project_sees_its_own_traffic_only(cloud: Cloud, hy: dict[str, Any]) -> None:
    now = cloud.clock()
    _post(cloud, "h1", [_sample(hy["vpc"]["id"], end=now - 1)])
    other = cloud.project("other")
    mine = cloud.call("GET", "/v1/hybrid/stats", hy["t"], params={"since": now - 10})
    assert len(mine["series"]) == 1
    assert cloud.call("GET", "/v1/hybrid/stats", other, params={"since": now - 10})["series"] == []
    cloud.rejected("GET", "/v1/hybrid/stats", 404, "prod", other, params={"vpc": "prod"})
    # and a host token is for its own agent endpoints: not another host's posts
    r = cloud.client.post("/v1/agent/hosts/h1/traffic", headers=other, json={"samples": []})
    assert r.status_code == 403


def test_bad_queries_and_samples_are_refused(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    now = cloud.clock()
    cloud.rejected("GET", "/v1/hybrid/stats", 422, "prefix", t, params={"prefix": "10.0.0.0/33"})
    cloud.rejected(
        "GET", "/v1/hybrid/stats", 422, "before", t, params={"since": now, "until": now - 1}
    )
    cloud.rejected(
        "GET", "/v1/hybrid/stats", 422, "bins", t, params={"since": now - 86_400, "window": 1}
    )
    r = cloud.client.post(
        "/v1/agent/hosts/h1/traffic",
        headers=cloud.admin,
        json={"samples": [_sample(hy["vpc"]["id"], packets=-1)]},
    )
    assert r.status_code == 400
    r = cloud.client.post(
        "/v1/agent/hosts/h1/traffic",
        headers=cloud.admin,
        json={"samples": [_sample(hy["vpc"]["id"]), _sample(hy["vpc"]["id"], prefix="10.0.1/33")]},
    )
    assert r.status_code == 422 and "samples.1.prefix" in r.text  # and the good one not kept
    for bad in ({"packets": 2**70},):
        r = cloud.client.post(
            "/v1/agent/hosts/h1/traffic",
            headers=cloud.admin,
            json={"samples": [_sample(hy["vpc"]["id"], **bad)]},
        )
        assert r.status_code == 400, (bad, r.text)
    inf = json.dumps({"samples": [_sample(hy["vpc"]["id"])]}).replace(
        '"end": 1.0', '"end": Infinity'
    )
    r = cloud.client.post(
        "/v1/agent/hosts/h1/traffic",
        headers={**cloud.admin, "Content-Type": "application/json"},
        content=inf,
    )
    assert r.status_code == 400, r.text
    for q in ({"since": "nan"}, {"until": "inf"}, {"window": 1e-300}):
        r = cloud.client.get("/v1/hybrid/stats", headers=t, params=q)
        assert r.status_code in (400, 422), (q, r.text)
    assert cloud.call("GET", "/v1/hybrid/stats", t, params={"since": now - 10})["series"] == []


def test_samples_are_kept_bounded_by_age_and_rows(cloud: Cloud, hy: dict[str, Any]) -> None:
    from yunhan.store.traffic import Query, Retention, Sample, TrafficSamples

    rows = TrafficSamples(cloud.store.engine, cloud.clock, Retention(60, 3, every=0, batch=10))

    def one(end: float) -> Sample:
        return Sample(
            "p", "v", "10.0.101.0/24", "replica", "g/1", "in", 1, 100, end - 1, end, cloud.clock()
        )

    rows.add([one(cloud.clock()) for _ in range(2)])
    cloud.clock.advance(61)
    rows.add([one(cloud.clock()) for _ in range(5)])  # the two aged go first
    assert rows.pruned == 2
    rows.add([])  # then the oldest beyond three rows
    assert rows.pruned == 4
    left = rows.rows(Query(since=0, until=cloud.clock() + 1, window=10))
    assert len(left) == 3
