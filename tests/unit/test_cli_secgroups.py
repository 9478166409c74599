"""`yunhan sg …`, `instance create --sg`, `instance set-sg` and `yunhan acl …` against the
real API app: the issue's forms as written, tables for people, JSON for scripts, one-line
errors."""

from __future__ import annotations

import pytest
from cli_fixtures import Region, region

__all__ = ["region"]  # the fixture, re-exported for pytest


@pytest.fixture
def prod(region: Region) -> Region:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    return region


def test_sg_lifecycle(prod: Region) -> None:
    r = prod
    out = r.ok("sg", "list").stdout.splitlines()
    assert out[0].split() == ["NAME", "ID", "VPC", "DEFAULT", "RULES"]
    assert out[1].split()[0] == "prod-default" and out[1].split()[-2:] == ["yes", "2"]
    r.ok("sg", "create", "web", "--vpc", "prod")
    g = r.cli("sg", "rule", "add", "web", "--direction", "ingress", "--proto", "tcp", "--port",
              "22", "--peer", "10.0.0.0/8", "--action", "allow", "--json").json()  # fmt: skip
    assert g["rules"][0]["port"] == "22" and g["rules"][0]["peer"] == "10.0.0.0/8"
    g = r.cli("sg", "rule", "add", "web", "--direction", "ingress", "--proto", "tcp", "--port",
              "80-90", "--peer", "sg:web", "--action", "deny", "--priority", "10",
              "--json").json()  # fmt: skip
    assert [x["priority"] for x in g["rules"]] == [10, 100]
    assert g["rules"][0]["peer"] == "sg:web" and g["rules"][0]["port"] == "80-90"
    shown = r.ok("sg", "show", "web").stdout
    assert "ID  " in shown and "sg:web" in shown and "deny" in shown
    inst = r.cli("instance", "create", "w1", "--subnet", "web", "--zone", "az1", "--sg", "web",
                 "--sg", "default", "--json").json()  # fmt: skip
    assert sorted(inst["security_groups"]) == ["prod-default", "web"]
    inst = r.cli("instance", "set-sg", "w1", "default", "--json").json()
    assert inst["security_groups"] == ["prod-default"]
    r.ok("sg", "rule", "delete", "web", g["rules"][0]["id"])
    assert len(r.cli("sg", "show", "web", "--json").json()["rules"]) == 1
    r.ok("sg", "delete", "web")


def test_sg_errors_are_one_line(prod: Region) -> None:
    r = prod
    r.ok("sg", "create", "web", "--vpc", "prod")
    bad = r.cli("sg", "rule", "add", "web", "--direction", "ingress", "--proto", "icmp",
                "--port", "22", "--peer", "0.0.0.0/0")  # fmt: skip
    assert bad.code != 0 and "not protocol icmp" in bad.stderr
    bad = r.cli("sg", "rule", "add", "web", "--direction", "ingress", "--proto", "tcp",
                "--port", "90-80", "--peer", "0.0.0.0/0")  # fmt: skip
    assert bad.code != 0 and "runs backwards" in bad.stderr
    r.ok("instance", "create", "w1", "--subnet", "web", "--zone", "az1", "--sg", "web")
    bad = r.cli("sg", "delete", "web")
    assert bad.code != 0 and "still used by instance(s) w1" in bad.stderr


def test_acl_lifecycle(prod: Region) -> None:
    r = prod
    r.ok("acl", "create", "edge", "--vpc", "prod")
    a = r.cli("acl", "rule", "add", "edge", "--number", "100", "--direction", "ingress",
              "--proto", "tcp", "--port", "22", "--cidr", "0.0.0.0/0", "--action", "deny",
              "--json").json()  # fmt: skip
    assert a["rules"] == [{"number": 100, "direction": "ingress", "proto": "tcp", "port": "22",
                           "cidr": "0.0.0.0/0", "action": "deny"}]  # fmt: skip
    sub = r.cli("acl", "associate", "edge", "--subnet", "web", "--json").json()
    assert sub["acl"] == "edge"
    assert "edge" in r.ok("acl", "list").stdout
    bad = r.cli("acl", "delete", "edge")
    assert bad.code != 0 and "still associated" in bad.stderr
    r.ok("acl", "rule", "delete", "edge", "--direction", "ingress", "100")
    assert r.cli("acl", "show", "edge", "--json").json()["rules"] == []
