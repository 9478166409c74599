"""`yunhan flowlog …` against the real API app: enable/disable/list/show, query and top on
records posted as an agent would, tables for people, JSON for scripts, one-line errors."""

from __future__ import annotations

import time
from typing import Any

import pytest
from cli_fixtures import Region, region

from yunhan.cli.flowlogs import duration, when
from yunhan.errors import ValidationError

__all__ = ["region"]  # the fixture, re-exported for pytest


@pytest.fixture
def prod(region: Region) -> Region:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    region.ok("instance", "create", "a", "--subnet", "web", "--zone", "az1")
    region.ok("instance", "create", "b", "--subnet", "web", "--zone", "az1")
    return region


def _inst(r: Region, name: str) -> dict[str, Any]:
    inst: dict[str, Any] = r.api("GET", f"/v1/instances/{name}")
    return inst


def _rec(inst: dict[str, Any], start: float, **kw: Any) -> dict[str, Any]:
    rec = {
        "instance": inst["id"],
        "interface": "p-a1",
        "flow_direction": "ingress",
        "srcaddr": "10.0.1.200",
        "dstaddr": inst["status"]["ip"],
        "srcport": 40000,
        "dstport": 22,
        "protocol": 6,
        "packets": 4,
        "bytes": 400,
        "start": start,
        "end": start + 1,
        "action": "ACCEPT",
    }
    rec.update(kw)
    return rec


def test_enable_list_show_disable(prod: Region) -> None:
    r = prod
    made = r.cli("flowlog", "enable", "--subnet", "web", "--json").json()
    assert made["name"] == "web-subnet-all" and made["target"] == "web"
    assert made["scope"] == "subnet" and made["traffic_type"] == "ALL" and made["vpc"] == "prod"
    r.ok("flowlog", "enable", "--instance", "a", "--traffic-type", "REJECT", "--name", "a-rej")
    r.ok("flowlog", "enable", "--vpc", "prod")
    out = r.ok("flowlog", "list").stdout.splitlines()
    assert out[0].split() == ["NAME", "ID", "SCOPE", "TARGET", "TRAFFIC_TYPE", "VPC"]
    assert [line.split()[0] for line in out[1:]] == ["a-rej", "prod-vpc-all", "web-subnet-all"]
    shown = r.ok("flowlog", "show", "a-rej").stdout
    assert "REJECT" in shown and "instance" in shown
    assert len(r.cli("flowlog", "list", "-o", "json").json()) == 3
    # By target: every flow log of that target (here one), not those of its subnets.
    assert "disabled flow log prod-vpc-all" in r.ok("flowlog", "disable", "--vpc", "prod").stdout
    r.ok("flowlog", "enable", "--instance", "a")
    gone = r.cli("flowlog", "disable", "--instance", "a", "--json").json()
    assert sorted(g["name"] for g in gone) == ["a-instance-all", "a-rej"]
    assert "disabled flow log web-subnet-all" in r.ok("flowlog", "disable", "web-subnet-all").stdout
    assert r.ok("flowlog", "list").stdout.strip() == "no flow_logs"


def test_errors_are_one_line(prod: Region, monkeypatch: pytest.MonkeyPatch) -> None:
    # argparse wraps its usage line to the terminal: without one (pytest-xdist's workers,
    # CI) that is 80 columns; give the width of a usual terminal.
    monkeypatch.setenv("COLUMNS", "120")
    r = prod
    bad = r.cli("flowlog", "enable")
    assert bad.code != 0 and "exactly one of --vpc, --subnet and --instance" in bad.stderr
    bad = r.cli("flowlog", "enable", "--vpc", "prod", "--subnet", "web")
    assert bad.code != 0 and "exactly one" in bad.stderr
    bad = r.cli("flowlog", "enable", "--subnet", "nope")
    assert bad.code != 0 and "no subnet 'nope'" in bad.stderr
    r.ok("flowlog", "enable", "--subnet", "web")
    bad = r.cli("flowlog", "enable", "--subnet", "web")
    assert bad.code != 0 and "already logs ALL traffic" in bad.stderr
    bad = r.cli("flowlog", "disable", "--instance", "a")
    assert bad.code != 0 and "no flow log logs instance a" in bad.stderr
    bad = r.cli("flowlog", "disable")
    assert bad.code != 0 and "give a flow log's name" in bad.stderr
    bad = r.cli("flowlog", "query", "--since", "yesterday")
    assert bad.code != 0 and "is not a time" in bad.stderr
    bad = r.cli("flowlog", "top")
    assert bad.code != 0 and "--vpc" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 3


def test_query_and_top(prod: Region) -> None:
    r = prod
    a, b = _inst(r, "a"), _inst(r, "b")
    now = time.time()
    records = [
        _rec(a, now - 3600, bytes=9999),  # an hour ago
        _rec(a, now - 120),
        _rec(a, now - 60, action="REJECT", dstport=23, srcport=40001, packets=1, bytes=60),
        _rec(b, now - 30, protocol=1, srcport=None, dstport=None, bytes=800, packets=8),
    ]
    r.api("POST", "/v1/agent/hosts/az1-h1/flows", json={"records": records, "skipped": {}})
    out = r.ok("flowlog", "query", "--vpc", "prod", "--since", "10m").stdout.splitlines()
    assert out[0].split() == ["TIME", "INSTANCE", "INTERFACE", "DIRECTION", "SRC", "DST",
                              "PROTOCOL", "PACKETS", "BYTES", "ACTION"]  # fmt: skip
    assert len(out) == 4
    first, rejected, icmp = (line.split() for line in out[1:])  # oldest first
    assert first[1:] == ["a", "p-a1", "ingress", "10.0.1.200:40000", f"{a['status']['ip']}:22",
                         "tcp", "4", "400", "ACCEPT"]  # fmt: skip
    assert rejected[-1] == "REJECT" and rejected[5].endswith(":23")
    assert icmp[1] == "b" and icmp[4:7] == ["10.0.1.200", b["status"]["ip"], "icmp"]
    rows = r.cli("flowlog", "query", "--instance", "a", "--action", "REJECT", "-o", "json").json()
    assert [(x["instance"], x["dstport"], x["action"]) for x in rows] == [("a", 23, "REJECT")]
    rows = r.cli("flowlog", "query", "--since", str(now - 7200), "--until", "90s",
                 "-o", "json").json()  # fmt: skip
    assert [round(now - x["start"]) for x in rows] == [3600, 120]
    limited = r.ok("flowlog", "query", "--limit", "1").stdout
    assert "more matched" in limited
    top = r.cli("flowlog", "top", "--vpc", "prod", "--window", "10m", "-o", "json").json()
    assert [(x["talker"], x["bytes"], x["flows"]) for x in top] == [
        (f"10.0.1.200 -> {b['status']['ip']}", 800, 1),
        (f"10.0.1.200 -> {a['status']['ip']}", 460, 2),
    ]
    table = r.ok("flowlog", "top", "--vpc", "prod", "--window", "2h", "--by", "instance").stdout
    lines = table.splitlines()
    assert lines[0].split() == ["TALKER", "BYTES", "PACKETS", "FLOWS"]
    assert lines[1].split() == ["a", "10459", "9", "3"]
    port = r.cli("flowlog", "top", "--vpc", "prod", "--by", "port", "--json").json()
    assert port[0]["talker"] == "icmp" and port[1]["talker"] == "tcp/22"


def test_time_and_duration_parsing() -> None:
    assert duration("90s") == 90 and duration("5m") == 300 and duration("2h") == 7200
    assert duration("1d") == 86400 and duration("45") == 45
    with pytest.raises(ValidationError):
        duration("soon")
    with pytest.raises(ValidationError):
        duration("-5")
    assert when("10m", now=lambda: 1000.0) == 400.0
    assert when("1800000000") == 1_800_000_000.0
    assert when("2027-01-15T08:00:00Z") == 1_800_000_000.0
    assert when("2027-01-15T08:00:00") == 1_800_000_000.0  # UTC unless said
    assert when("2027-01-15T09:00:00+01:00") == 1_800_000_000.0
    with pytest.raises(ValidationError):
        when("next tuesday")


def test_server_retention_flags() -> None:
    from yunhan.cli.daemons import _retention
    from yunhan.store.flows import DEFAULT_MAX_ROWS, Retention

    assert _retention("7d", 10) == Retention(max_age=7 * 86400.0, max_rows=10)
    with pytest.raises(ValidationError):
        _retention("24h", 0)
    # The flag's default is the store's (spelt out in the CLI, which must not import it).
    from yunhan.cli.daemons import COMMANDS

    server = next(c for c in COMMANDS if c.name == "server")
    rows = next(p for p in server.params if getattr(p, "dest", "") == "flow_log_max_records")
    assert rows.default == DEFAULT_MAX_ROWS
