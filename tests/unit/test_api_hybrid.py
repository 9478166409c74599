"""Hybrid cloud through the API (docs/hybrid.md): IDC sites (the operator's), subnets located
in a site, hybrid gateways and their replicas (placed by the controller on a fake clock,
reported by agents), the routes view with origins, and the route switch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from yunhan.controller import Controller
from yunhan.net.docentries import Delta, assemble

if TYPE_CHECKING:
    from cp_fixtures import Cloud

pytest_plugins = ["cp_fixtures"]

SITE = {
    "cidrs": ["10.0.100.0/22"],
    "asn": 65001,
    "router_ip": "198.19.33.1",
    "line_cidr": "198.19.33.0/24",
    "line_vni": 0x700001,
    "line_vtep": "198.19.16.1",
}
SECRET = "md5-Sh0uld-never-leave"


def _controller(cloud: Cloud) -> Controller:
    fleet = cloud.client.app.state.yunhan.fleet  # type: ignore[attr-defined]
    return Controller(cloud.store, clock=cloud.clock, leases=lambda: fleet.leases)


def _beat(cloud: Cloud, *hosts: str) -> None:
    for h in hosts:
        cloud.heartbeat(h, 0)


@pytest.fixture
def hy(cloud: Cloud, net: dict[str, Any]) -> dict[str, Any]:
    """Site dc1 (10.0.100.0/22), subnet idc (10.0.100.0/24) of prod located there, a third
    host h3 (az1); h1, h2, h3 heartbeating."""
    site = cloud.call("PUT", "/v1/idc-sites/dc1", json=SITE)
    t = net["t"]
    idc = cloud.call(
        "POST",
        "/v1/subnets",
        t,
        json={"name": "idc", "vpc": "prod", "cidr": "10.0.100.0/24", "location": "idc:dc1"},
    )
    cloud.host("h3", "az1", "198.18.1.12")
    _beat(cloud, "h1", "h2", "h3")
    return {**net, "site": site, "idc": idc}


def _gw(cloud: Cloud, t: dict[str, str], **kw: Any) -> dict[str, Any]:
    body = {"name": "hgw", "vpc": "prod", "idc_peer": "198.19.33.1", "peer_asn": 65001, **kw}
    return cloud.call("POST", "/v1/hybrid-gws", t, json=body)


def _doc(cloud: Cloud, host: str) -> Any:
    r = cloud.client.get(f"/v1/agent/hosts/{host}/desired", headers=cloud.admin)
    assert r.status_code == 200, r.text
    d = Delta.from_json(r.json())
    return assemble(d.entries, host)


# -- IDC sites -----------------------------------------------------------------------------


def test_sites_are_the_operators(cloud: Cloud, net: dict[str, Any]) -> None:
    t = net["t"]
    cloud.rejected("PUT", "/v1/idc-sites/dc1", 403, "", t, json=SITE)
    r = cloud.client.put("/v1/idc-sites/dc1", headers=cloud.admin, json=SITE)
    assert r.status_code == 201
    site = r.json()
    assert site["id"].startswith("idc-") and site["name"] == "dc1"
    assert site["spec"] == SITE
    # every project reads them
    assert [s["name"] for s in cloud.call("GET", "/v1/idc-sites", t)["items"]] == ["dc1"]
    assert cloud.call("GET", "/v1/idc-sites/dc1", t)["id"] == site["id"]
    assert cloud.call("GET", "/v1/idc-sites?name=dc9", t)["items"] == []
    # updated in place (200), normalised
    wider = {**SITE, "cidrs": ["10.0.104.0/22", "10.0.100.0/22"]}
    r = cloud.client.put("/v1/idc-sites/dc1", headers=cloud.admin, json=wider)
    assert r.status_code == 200 and r.json()["spec"]["cidrs"] == ["10.0.100.0/22", "10.0.104.0/22"]
    rev = cloud.revision()
    cloud.call("PUT", "/v1/idc-sites/dc1", json=wider)
    assert cloud.revision() == rev  # the same again writes nothing
    cloud.rejected("DELETE", "/v1/idc-sites/dc1", 403, "", t)
    cloud.call("DELETE", "/v1/idc-sites/dc1")
    cloud.rejected("GET", "/v1/idc-sites/dc1", 404, "dc1", t)


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"router_ip": "198.19.34.1"}, 422, "is not a host address of the line"),
        ({"router_ip": "198.19.33.0"}, 422, "is not a host address of the line"),
        ({"cidrs": ["10.0.100.0/24", "10.0.100.0/25"]}, 422, "overlap"),
        ({"cidrs": []}, 400, "cidrs"),
        ({"cidrs": ["10.0.100.0/33"]}, 422, "10.0.100.0/33"),
        ({"asn": 0}, 422, "is not a usable AS number"),
        ({"asn": 23456}, 422, "is not a usable AS number"),
        ({"line_vni": 1 << 24}, 422, "line VNI"),
        ({"line_vtep": "nope"}, 422, "not an IPv4 address"),
    ],
)
def test_bad_sites_change_nothing(
    cloud: Cloud, net: dict[str, Any], change: dict[str, Any], status: int, message: str
) -> None:
    cloud.rejected("PUT", "/v1/idc-sites/dc1", status, message, json={**SITE, **change})


def test_two_sites_never_share_a_line(cloud: Cloud, net: dict[str, Any]) -> None:
    cloud.call("PUT", "/v1/idc-sites/dc1", json=SITE)
    cloud.rejected("PUT", "/v1/idc-sites/dc2", 409, "already uses line", json=SITE)
    same_vni = {**SITE, "line_cidr": "198.19.34.0/24", "router_ip": "198.19.34.1"}
    cloud.rejected("PUT", "/v1/idc-sites/dc2", 409, "already uses line", json=same_vni)
    other = {**SITE, "line_cidr": "198.19.34.0/24", "router_ip": "198.19.34.1", "line_vni": 2}
    assert cloud.client.put("/v1/idc-sites/dc2", headers=cloud.admin, json=other).status_code == 201


def test_a_site_in_use_is_kept(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    err = cloud.rejected("DELETE", "/v1/idc-sites/dc1", 409, "is in use: subnet(s) idc")
    assert err["details"]["subnets"] == ["idc"]
    # its ranges may not shrink from under the subnet either
    cloud.rejected(
        "PUT", "/v1/idc-sites/dc1", 409, "subnet idc (10.0.100.0/24) is located in site dc1",
        json={**SITE, "cidrs": ["10.0.102.0/23"]},
    )  # fmt: skip
    _gw(cloud, t)
    cloud.call("DELETE", "/v1/subnets/idc", t)
    cloud.rejected("DELETE", "/v1/idc-sites/dc1", 409, "hybrid gateway(s) hgw")
    cloud.call("DELETE", "/v1/hybrid-gws/hgw", t)
    cloud.call("DELETE", "/v1/idc-sites/dc1")


# -- subnets located in a site -------------------------------------------------------------


def test_a_located_subnet_shows_where_it_is_served(cloud: Cloud, hy: dict[str, Any]) -> None:
    spec = cloud.call("GET", "/v1/subnets/idc", hy["t"])["spec"]
    assert (spec["location"], spec["serve"], spec["cidr"]) == ("idc:dc1", "idc", "10.0.100.0/24")
    web = cloud.call("GET", "/v1/subnets/web", hy["t"])["spec"]
    assert web.get("location") is None and web.get("serve") is None
    # `cloud` is the same as nothing
    sub = cloud.call(
        "POST", "/v1/subnets", hy["t"],
        json={"name": "app", "vpc": "prod", "cidr": "10.0.2.0/24", "location": "cloud"},
    )  # fmt: skip
    assert sub["spec"].get("location") is None


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"cidr": "10.0.104.0/24", "location": "idc:ghost"}, 404,
         "IDC site ghost does not exist (sites: dc1)"),
        ({"cidr": "10.0.104.0/24", "location": "idc:dc1"}, 422,
         "10.0.104.0/24 is not inside the ranges of IDC site dc1 (10.0.100.0/22)"),
        ({"cidr": "10.0.100.128/25", "location": "idc:dc1"}, 409, "overlaps subnet idc"),
        ({"cidr": "10.0.1.0/25", "location": "idc:dc1"}, 409, "overlaps subnet web"),
        ({"cidr": "10.0.100.0/23"}, 409, "overlaps subnet idc"),  # a cloud one over it
        ({"cidr": "10.9.0.0/24", "location": "idc:dc1"}, 422, "is not inside any block"),
        ({"cidr": "10.0.101.0/24", "location": "mars"}, 422, "write `cloud` or `idc:SITE`"),
        ({"cidr": "10.0.101.0/24", "location": "idc:"}, 422, "write `cloud` or `idc:SITE`"),
    ],
)  # fmt: skip
def test_bad_located_subnets_change_nothing(
    cloud: Cloud, hy: dict[str, Any], body: dict[str, Any], status: int, message: str
) -> None:
    body = {"name": "idc2", "vpc": "prod", **body}
    cloud.rejected("POST", "/v1/subnets", status, message, hy["t"], json=body)


# -- hybrid gateways -----------------------------------------------------------------------


def test_create_a_gateway(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    gw = _gw(cloud, t, md5_secret=SECRET, replicas=3)
    assert gw["id"].startswith("hgw-")
    assert gw["spec"] == {
        "vpc": hy["vpc"]["id"],
        "site": hy["site"]["id"],
        "peer_ip": "198.19.33.1",
        "peer_asn": 65001,
        "asn": 64512,
        "replicas": 3,
        "bfd": True,
        "md5": True,
    }
    st = gw["status"]
    assert (st["site_name"], st["phase"], st["replicas"]) == ("dc1", "pending", [])
    line = {"cidr": SITE["line_cidr"], "vni": SITE["line_vni"], "vtep": SITE["line_vtep"]}
    assert st["line"] == {**line, "router_ip": "198.19.33.1"} and st["history"] == []
    assert isinstance(st["index"], int)
    listed = cloud.call("GET", "/v1/hybrid-gws?vpc=prod", t)["items"]
    assert [g["name"] for g in listed] == ["hgw"]


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"idc_peer": "198.19.34.1"}, 404, "no IDC site has its router at 198.19.34.1"),
        ({"name": "hgw2"}, 409, "already has hybrid gateway hgw to site dc1"),
        ({"vpc": "ghost", "name": "hgw2"}, 404, "ghost"),
        ({"replicas": 9, "name": "hgw2"}, 400, "replicas"),
        ({"replicas": 0, "name": "hgw2"}, 400, "replicas"),
        ({"peer_asn": 0, "name": "hgw2"}, 422, "is not a usable AS number"),
        ({"asn": 4_294_967_295, "name": "hgw2"}, 422, "is not a usable AS number"),
        ({"md5_secret": "", "name": "hgw2"}, 400, "md5_secret"),
    ],
)
def test_bad_gateways_change_nothing(
    cloud: Cloud, hy: dict[str, Any], change: dict[str, Any], status: int, message: str
) -> None:
    t = hy["t"]
    _gw(cloud, t)
    body = {"name": "hgw", "vpc": "prod", "idc_peer": "198.19.33.1", "peer_asn": 65001, **change}
    cloud.rejected("POST", "/v1/hybrid-gws", status, message, t, json=body)


def test_the_md5_secret_never_leaves_the_store(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    seen: list[str] = []

    def call(method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
        r = cloud.client.request(method, path, headers=headers or cloud.admin, **kw)
        assert r.status_code < 300, r.text
        seen.append(r.text)
        return r.json()

    call("POST", "/v1/hybrid-gws", t, json={"name": "hgw", "vpc": "prod",
         "idc_peer": "198.19.33.1", "peer_asn": 65001, "md5_secret": SECRET})  # fmt: skip
    ctl = _controller(cloud)
    ctl.reconcile_once()
    call("GET", "/v1/hybrid-gws/hgw", t)
    call("GET", "/v1/hybrid-gws", t)
    call("GET", "/v1/hybrid-gws?vpc=prod", t)
    call("GET", "/v1/hybrid-gws/hgw/routes", t)
    call("POST", "/v1/hybrid-gws/hgw/scale", t, json={"replicas": 1})
    call("GET", "/v1/events", t)
    call("GET", "/v1/audit")
    call("DELETE", "/v1/hybrid-gws/hgw", t)
    assert all(SECRET not in text for text in seen)
    assert '"md5":true' in seen[1].replace(" ", "")


def test_the_md5_secret_reaches_the_replicas_hosts(cloud: Cloud, hy: dict[str, Any]) -> None:
    _gw(cloud, hy["t"], md5_secret=SECRET, replicas=1)
    _controller(cloud).reconcile_once()
    (rep,) = cloud.call("GET", "/v1/hybrid-gws/hgw", hy["t"])["status"]["replicas"]
    (v,) = _doc(cloud, rep["host"]).vpcs
    assert v.hybrids[0].replica is not None and v.hybrids[0].replica.md5_secret == SECRET


def test_the_controller_runs_replicas_on_distinct_hosts_and_scales(
    cloud: Cloud, hy: dict[str, Any]
) -> None:
    t = hy["t"]
    _gw(cloud, t, replicas=2)
    ctl = _controller(cloud)
    ctl.reconcile_once()
    st = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]
    reps = [(r["index"], r["host"], r["line_ip"], r["state"]) for r in st["replicas"]]
    assert [r[0] for r in reps] == [1, 2] and st["phase"] == "active"
    hosts = [r[1] for r in reps]
    assert len(set(hosts)) == 2 and "h2" in hosts  # h2 is the only host of az2
    assert [r[2] for r in reps] == ["198.19.33.11/24", "198.19.33.12/24"]
    assert {r[3] for r in reps} == {"pending"}
    rev = cloud.revision()
    ctl.reconcile_once()
    assert cloud.revision() == rev  # settled: nothing written
    # every replica host carries the VPC and builds its replica
    for n, h in enumerate(hosts, 1):
        (v,) = _doc(cloud, h).vpcs
        (g,) = v.hybrids
        assert g.replica is not None and g.replica.index == n
    # scale out: the third host
    scaled = cloud.call("POST", "/v1/hybrid-gws/hgw/scale", t, json={"replicas": 3})
    assert scaled["spec"]["replicas"] == 3
    ctl.reconcile_once()
    st = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]
    placed = [(r["index"], r["host"]) for r in st["replicas"]]
    assert placed[:2] == [(1, hosts[0]), (2, hosts[1])]
    assert sorted(r["host"] for r in st["replicas"]) == ["h1", "h2", "h3"]
    # scale in: the highest index goes, the others stay where they are
    cloud.call("POST", "/v1/hybrid-gws/hgw/scale", t, json={"replicas": 2})
    ctl.reconcile_once()
    st = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]
    assert [(r["index"], r["host"]) for r in st["replicas"]] == placed[:2]
    cloud.rejected("POST", "/v1/hybrid-gws/hgw/scale", 400, "replicas", t, json={"replicas": 9})


def test_a_lost_host_moves_its_replica(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    _gw(cloud, t, replicas=2)
    ctl = _controller(cloud)
    ctl.reconcile_once()
    st = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]
    before = {r["index"]: r for r in st["replicas"]}
    gone = before[1]["host"]
    alive = [h for h in ("h1", "h2", "h3") if h != gone]
    for _ in range(4):
        cloud.clock.advance(5)
        _beat(cloud, *alive)
        ctl.reconcile_once()
    st = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]
    after = {r["index"]: r for r in st["replicas"]}
    assert after[1]["host"] not in (gone, before[2]["host"])
    assert after[1]["line_ip"] == before[1]["line_ip"] and after[2] == before[2]
    assert (st["history"][-1]["from"], st["history"][-1]["replica"]) == (gone, 1)
    events = cloud.call("GET", "/v1/events?for=hgw", t)["items"]
    assert [e["reason"] for e in events] == ["HybridReplicaMoved"]


def _report(cloud: Cloud, host: str, gw_id: str, index: int, **kw: Any) -> int:
    learned = [{"prefix": "192.168.100.0/24", "nexthop": "198.19.33.1", "as_path": "65001"}]
    rep = {"gateway": gw_id, "index": index, "state": "Established", "learned": learned, **kw}
    body = cloud.call("POST", f"/v1/agent/hosts/{host}/hybrid", json={"replicas": [rep]})
    return int(body["changed"])


def test_agents_report_their_replicas_and_hosts_follow(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    gw = _gw(cloud, t, replicas=2)
    ctl = _controller(cloud)
    ctl.reconcile_once()
    reps = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]["replicas"]
    (h_a, h_b) = (reps[0]["host"], reps[1]["host"])
    other = next(h for h in ("h1", "h2", "h3") if h not in (h_a, h_b))
    assert _doc(cloud, other).vpcs == ()  # no member, no replica there: it carries no VPC

    (v,) = _doc(cloud, h_a).vpcs
    assert v.hybrids[0].routes[0].nexthops == ()  # nobody reported a session up
    rev = cloud.revision()
    assert _report(cloud, h_a, gw["id"], 1, since=1.0, reason="") == 1
    assert cloud.revision() == rev + 1
    st = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]["replicas"][0]
    assert (st["state"], st["since"]) == ("Established", 1.0)
    # the same report again: nothing written
    assert _report(cloud, h_a, gw["id"], 1, since=1.0, reason="") == 0
    assert cloud.revision() == rev + 1
    # a host reports only its own replica; an unknown gateway is passed over
    assert _report(cloud, h_b, gw["id"], 1, state="Idle") == 0
    assert _report(cloud, h_a, "hgw-00000000", 1) == 0
    assert cloud.revision() == rev + 1
    # the replica's host sends to it; the other replica's host too (ECMP of one)
    (nh,) = _doc(cloud, h_a).vpcs[0].hybrids[0].routes[0].nexthops
    assert nh.kind == "local"
    (nh,) = _doc(cloud, h_b).vpcs[0].hybrids[0].routes[0].nexthops
    assert (nh.kind, nh.peer) == ("remote", h_a)
    # both up; a third replica, not up yet: its host spreads over the two others (ECMP)
    assert _report(cloud, h_b, gw["id"], 2, since=2.0) == 1
    cloud.call("POST", "/v1/hybrid-gws/hgw/scale", t, json={"replicas": 3})
    ctl.reconcile_once()
    (route,) = _doc(cloud, other).vpcs[0].hybrids[0].routes
    assert route.dst == "10.0.100.0/24"
    assert [(nh.kind, nh.peer) for nh in route.nexthops] == [("remote", h_a), ("remote", h_b)]
    # the session drops: the reason is kept for the user, and hosts stop sending to it
    why = "no answer from 198.19.33.1:179: a TCP MD5 secret that does not match"
    assert _report(cloud, h_a, gw["id"], 1, state="Active", reason=why) == 1
    st = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]["replicas"][0]
    assert (st["state"], st["reason"]) == ("Active", why)
    (nh,) = _doc(cloud, h_a).vpcs[0].hybrids[0].routes[0].nexthops
    assert (nh.kind, nh.peer) == ("remote", h_b)


def test_routes_view_shows_each_origin(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    gw = _gw(cloud, t, replicas=1)
    _controller(cloud).reconcile_once()
    (rep,) = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]["replicas"]
    learned = [
        {"prefix": "10.0.100.0/24", "nexthop": "198.19.33.1", "as_path": "65001"},
        {"prefix": "172.20.0.0/16", "nexthop": "198.19.33.1", "as_path": "65001 65010"},
    ]
    _report(cloud, rep["host"], gw["id"], 1, learned=learned, announced=["10.0.0.0/17"])
    items = cloud.call("GET", "/v1/hybrid-gws/hgw/routes", t)["items"]
    by_origin: dict[str, list[tuple[Any, ...]]] = {}
    for r in items:
        by_origin.setdefault(r["origin"], []).append(
            (r["prefix"], r["replica"], r["nexthop"], r["as_path"], r["installed"])
        )
    assert by_origin["declared"] == [("10.0.100.0/24", None, "replicas (ECMP)", "", True)]
    assert by_origin["learned"] == [
        ("10.0.100.0/24", 1, "198.19.33.1", "65001", True),
        ("172.20.0.0/16", 1, "198.19.33.1", "65001 65010", False),  # outside the VPC's plan
    ]
    announced = [p for p, *_ in by_origin["announced"]]
    assert "10.0.100.0/24" not in announced and "10.0.0.0/18" in announced
    assert "10.0.101.0/24" in announced  # the rest of the block, down to the hole
    assert {x[3] for x in by_origin["announced"]} == {"64512"}  # our AS


# -- the route switch ----------------------------------------------------------------------


def test_switch_dry_run_then_for_real_and_back(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    body = {"name": "srv", "subnet": "idc", "zone": "az1"}
    srv = cloud.call("POST", "/v1/instances", t, json=body)
    assert srv["status"]["ip"].startswith("10.0.100.")
    _gw(cloud, t, replicas=2)
    ctl = _controller(cloud)
    ctl.reconcile_once()
    reps = cloud.call("GET", "/v1/hybrid-gws/hgw", t)["status"]["replicas"]
    srv_host = cloud.call("GET", "/v1/instances/srv", t)["status"]["host"]
    assert srv_host is not None
    rev = cloud.revision()
    body = {"prefix": "10.0.100.0/24", "to": "cloud", "dry_run": True}
    dry = cloud.call("POST", "/v1/hybrid/switch", t, json=body)
    assert cloud.revision() == rev  # a dry run writes nothing
    assert dry["applied"] is False and dry["revision"] == rev
    ch = dry["changes"]
    assert (ch["subnet"], ch["prefix"]) == ("idc", "10.0.100.0/24")
    assert (ch["from"], ch["to"]) == ("idc", "cloud")
    assert ch["instances"] == ["srv"]
    assert ch["announce_add"] == ["10.0.0.0/16", "10.0.100.0/25", "10.0.100.128/25"]
    withdrawn = ch["announce_withdraw"]
    assert "10.0.100.0/24" not in withdrawn and "10.0.101.0/24" in withdrawn
    assert withdrawn[0] == "10.0.0.0/18" and withdrawn[-1] == "10.0.128.0/17"  # by address
    assert ch["hosts"] == sorted({r["host"] for r in reps} | {srv_host})
    assert [(r["gateway"], r["index"]) for r in ch["replicas"]] == [("hgw", 1), ("hgw", 2)]
    assert cloud.call("GET", "/v1/subnets/idc", t)["spec"]["serve"] == "idc"
    # for real: the subnet is served in the cloud; the answer's revision is the write's
    done = cloud.call("POST", "/v1/hybrid/switch", t, json={**body, "dry_run": False})
    assert done["applied"] is True and done["changes"] == ch
    assert done["revision"] == cloud.revision() == rev + 1
    assert cloud.call("GET", "/v1/subnets/idc", t)["spec"]["serve"] == "cloud"
    # the same again changes nothing
    again = cloud.call("POST", "/v1/hybrid/switch", t, json={**body, "dry_run": False})
    assert again["applied"] is False and cloud.revision() == rev + 1
    assert again["changes"]["hosts"] == [] and again["changes"]["announce_add"] == []
    # and back
    back = cloud.call("POST", "/v1/hybrid/switch", t, json={**body, "to": "idc", "dry_run": False})
    assert back["applied"] is True and back["changes"]["announce_withdraw"] == ch["announce_add"]
    assert cloud.call("GET", "/v1/subnets/idc", t)["spec"]["serve"] == "idc"


def test_switch_refusals(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    for body, status, message in [
        ({"prefix": "10.0.1.0/24", "to": "cloud"}, 404,
         "no subnet located in an IDC has the prefix 10.0.1.0/24"),
        ({"prefix": "10.0.100.0/25", "to": "cloud"}, 404, "has the prefix 10.0.100.0/25"),
        ({"prefix": "10.0.100.1/24", "to": "cloud"}, 422, "prefix"),
        ({"prefix": "10.0.100.0/24", "to": "moon"}, 400, "to"),
        # no gateway to the site yet: the IDC would never learn that the prefix moved
        ({"prefix": "10.0.100.0/24", "to": "cloud"}, 409, "has no hybrid gateway to site dc1"),
        ({"prefix": "10.0.100.0/24", "to": "cloud", "dry_run": True}, 409, "has no hybrid gateway"),
    ]:  # fmt: skip
        cloud.rejected("POST", "/v1/hybrid/switch", status, message, t, json=body)
    # another project does not see the subnet
    other = cloud.project("other")
    body = {"prefix": "10.0.100.0/24", "to": "idc"}
    cloud.rejected("POST", "/v1/hybrid/switch", 404, "has the prefix", other, json=body)


def test_a_vpc_with_a_hybrid_gateway_is_not_deleted(cloud: Cloud, hy: dict[str, Any]) -> None:
    t = hy["t"]
    _gw(cloud, t)
    cloud.call("DELETE", "/v1/subnets/idc", t)
    cloud.call("DELETE", "/v1/subnets/web", t)
    cloud.rejected("DELETE", "/v1/vpcs/prod", 409, "still has hybrid gateway(s) hgw", t)
    cloud.call("DELETE", "/v1/hybrid-gws/hgw", t)
    cloud.call("DELETE", "/v1/vpcs/prod", t)
