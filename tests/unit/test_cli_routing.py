"""`yunhan route-table|route|policy-route|natgw|eip` against the real API app: the forms of
the issue as written, tables for people, JSON for scripts, one-line errors."""

from __future__ import annotations

import pytest
from cli_fixtures import Region, region

__all__ = ["region"]  # the fixture, re-exported for pytest


@pytest.fixture
def prod(region: Region) -> Region:
    region.http.app.state.yunhan.public_pools = ["198.18.100.0/28"]  # type: ignore[attr-defined]
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    region.ok("subnet", "create", "app", "--vpc", "prod", "--cidr", "10.0.2.0/24")
    region.ok("instance", "create", "fw", "--subnet", "app", "--zone", "az1")
    region.ok("instance", "create", "web-1", "--subnet", "web", "--zone", "az2")
    return region


def test_route_table_lifecycle(prod: Region) -> None:
    r = prod
    out = r.ok("route-table", "list").stdout.splitlines()
    assert out[0].split() == ["NAME", "ID", "VPC", "DEFAULT"]
    assert out[1].split()[0] == "prod-default" and out[1].split()[-1] == "yes"
    made = r.cli("route-table", "create", "edge", "--vpc", "prod", "--json").json()
    assert made["name"] == "edge" and made["vpc"] == "prod" and made["default"] is False
    sub = r.cli("route-table", "associate", "edge", "--subnet", "web", "--json").json()
    assert sub["name"] == "web" and sub["route_table"] == "edge"
    route = r.cli(
        "route", "add", "edge", "--dst", "10.0.2.128/25", "--next-hop", "instance:fw",
        "--priority", "10", "--json",
    ).json()  # fmt: skip
    assert route["next_hop"] == "instance:fw" and route["priority"] == 10
    assert route["table"] == "edge" and route["id"].startswith("rt-")
    r.ok("route", "add", "edge", "--dst", "10.0.2.128/25", "--next-hop", "blackhole")
    pol = r.cli(
        "policy-route", "add", "edge", "--priority", "10", "--src", "10.0.1.0/24",
        "--proto", "tcp", "--port", "22", "--action", "drop", "--json",
    ).json()  # fmt: skip
    assert pol["port"] == "22" and pol["action"] == "drop" and pol["proto"] == "tcp"
    shown = r.ok("route-table", "show", "edge").stdout
    assert "subnets" in shown and "web" in shown
    lines = shown.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("TYPE"))
    assert lines[head].split() == ["TYPE", "DST", "PRIORITY", "NEXT_HOP", "STATE", "SUBNET", "HOST"]
    rows = [line.split() for line in lines[head + 1 :] if line and not line.startswith("PRIORITY")]
    rows = rows[: rows.index([]) if [] in rows else len(rows)]
    assert ["custom", "10.0.2.128/25", "10", "instance:fw", "active"] in [x[:5] for x in rows]
    assert ["custom", "10.0.2.128/25", "100", "blackhole", "standby"] in [x[:5] for x in rows]
    assert ["direct", "10.0.0.0/16", "-", "local", "active"] in [x[:5] for x in rows]
    assert any(x[0] == "host" and x[3] == "instance:web-1" for x in rows)
    pol_head = next(i for i, line in enumerate(lines) if line.startswith("PRIORITY"))
    assert lines[pol_head + 1].split()[:7] == ["10", "10.0.1.0/24", "any", "tcp", "22", "drop", "-"]
    as_json = r.cli("route-table", "show", "edge", "-o", "json").json()
    assert {x["type"] for x in as_json["routes"]} == {"custom", "direct", "host"}
    assert as_json["policies"][0]["id"] == pol["id"]
    assert "routes:" in r.ok("route-table", "show", "edge", "-o", "yaml").stdout
    assert r.ok("route", "delete", route["id"]).stdout == f"deleted route ({route['id']})\n"
    assert r.ok("policy-route", "delete", pol["id"]).stdout.startswith("deleted policy route")
    err = r.cli("route-table", "delete", "edge")
    assert err.code == 1 and "still associated with subnet(s) web" in err.stderr
    r.ok("route-table", "associate", "prod-default", "--subnet", "web")
    assert r.ok("route-table", "delete", "edge").stdout.startswith("deleted route table edge")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("route", "add", "prod-default", "--dst", "10.9.0.0/16", "--next-hop", "blackhole"),
         "cannot be edited"),
        (("route", "add", "edge", "--dst", "10.0.0.0/16", "--next-hop", "blackhole"),
         "is a block of VPC prod"),
        (("route", "add", "edge", "--dst", "10.9.0.0/16", "--next-hop", "hybrid:dc"),
         "hybrid routes are not written by hand"),
        (("route", "add", "edge", "--dst", "10.0.1.0/28", "--next-hop", "instance:web-1"),
         "would loop"),
        (("policy-route", "add", "edge", "--priority", "5", "--proto", "icmp", "--port", "22",
          "--action", "drop"), "a port matches only tcp or udp"),
        (("policy-route", "add", "edge", "--priority", "5", "--proto", "tcp", "--port", "9-1",
          "--action", "drop"), "runs backwards"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(prod: Region, args: tuple[str, ...], message: str) -> None:
    prod.ok("route-table", "create", "edge", "--vpc", "prod")
    prod.ok("route-table", "associate", "edge", "--subnet", "web")
    res = prod.cli(*args)
    assert res.code == 1 and res.stderr.startswith("error: ") and message in res.stderr
    assert res.stderr.count("\n") == 1


def test_natgw_and_eips(prod: Region) -> None:
    r = prod
    gw = r.cli("natgw", "create", "gw", "--vpc", "prod", "--subnet", "web", "--json").json()
    assert gw["public_ip"] == "198.18.100.1" and gw["subnets"] == ["web"]
    assert gw["phase"] == "pending"  # the controller places it (none runs here)
    listed = r.ok("natgw", "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "ID", "VPC", "PUBLIC_IP", "HOST", "PHASE", "SUBNETS"]
    fwd = r.cli(
        "natgw", "forward", "add", "gw", "--proto", "tcp", "--port", "8080", "--to", "web-1:80",
        "--json",
    ).json()  # fmt: skip
    assert fwd["forwards"] == ["tcp/8080->web-1:80"]
    dup = r.cli("natgw", "forward", "add", "gw", "--proto", "tcp", "--port", "8080", "--to",
                "web-1:81")  # fmt: skip
    assert dup.code == 1 and "already forwarded to web-1:80" in dup.stderr
    assert "tcp/8080->web-1:80" in r.ok("natgw", "show", "gw").stdout
    eip = r.cli("eip", "allocate", "--json").json()
    assert eip["address"] == "198.18.100.2" and eip["instance"] is None
    bound = r.cli("eip", "bind", eip["address"], "web-1", "--json").json()
    assert bound["instance"] == "web-1" and bound["natgw"] == "gw"
    again = r.cli("eip", "bind", eip["name"], "fw")
    assert again.code == 1 and "already bound to instance web-1" in again.stderr
    rows = r.ok("eip", "list").stdout.splitlines()
    assert rows[0].split() == ["NAME", "ADDRESS", "INSTANCE", "NATGW"]
    assert rows[1].split()[1:] == ["198.18.100.2", "web-1", "gw"]
    busy = r.cli("natgw", "delete", "gw")
    assert busy.code == 1 and "unbind them first" in busy.stderr
    assert r.cli("eip", "unbind", eip["id"], "--json").json()["instance"] is None
    assert r.ok("eip", "release", eip["id"]).stdout.startswith("deleted EIP")
    gone = r.cli("natgw", "forward", "delete", "gw", "--proto", "tcp", "--port", "8080", "--json")
    assert gone.json()["forwards"] == []
    assert r.ok("natgw", "delete", "gw").stdout.startswith("deleted NAT gateway gw")


def test_help_lists_the_new_groups(region: Region) -> None:
    out = region.ok("--help").stdout
    for group in ("route-table", "route", "policy-route", "natgw", "eip"):
        assert f"\n  {group} " in out
    assert "forward" in region.ok("natgw", "--help").stdout
