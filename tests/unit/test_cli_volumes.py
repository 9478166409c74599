"""`yunhan volume …` against the real API app: the issue's forms as written, tables for
people, JSON and YAML for scripts, one-line errors, relative times, and `--wait` until the
host applied the change and the volume's phase settled (agents played by the fixture)."""

from __future__ import annotations

import time

import pytest
from cli_fixtures import Region, region

from yunhan.model.volumes import GIB, NS, parse_time_ns

__all__ = ["region"]  # the fixture, re-exported for pytest


@pytest.fixture
def vr(region: Region) -> Region:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    region.ok("instance", "create", "a", "--subnet", "web", "--zone", "az1")
    region.ok("instance", "create", "b", "--subnet", "web", "--zone", "az2")
    region.ok("instance", "create", "c", "--subnet", "web", "--zone", "az1")
    return region


def test_create_wait_returns_it_available_on_a_host_of_its_zone(vr: Region) -> None:
    v = vr.cli("volume", "create", "db", "--size", "10G", "--zone", "az1", "--wait",
               "-o", "json").json()  # fmt: skip
    assert v["kind"] == "volume" and v["spec"]["size"] == 10 * GIB
    assert (v["status"]["phase"], v["status"]["host"]) == ("available", "az1-h1")
    assert v["spec"]["tiers"] is None


def test_create_protect_takes_the_default_tiers_or_those_given(vr: Region) -> None:
    v = vr.cli("volume", "create", "db", "--size", "1G", "--zone", "az1", "--protect",
               "--json").json()  # fmt: skip
    assert [t["every_s"] for t in v["spec"]["tiers"]] == [1, 3600, 86400]
    v = vr.cli("volume", "create", "db2", "--size", "1G", "--zone", "az1", "--protect",
               "--tiers", "10m:1s,1h:1m", "--json").json()  # fmt: skip
    assert v["spec"]["tiers"] == [{"keep_s": 600, "every_s": 1}, {"keep_s": 3600, "every_s": 60}]


def test_list_and_show_are_tables_for_people(vr: Region) -> None:
    vr.ok("volume", "create", "db", "--size", "10G", "--zone", "az1", "--protect", "--wait")
    out = vr.ok("volume", "list").stdout.splitlines()
    assert out[0].split() == ["NAME", "ID", "ZONE", "SIZE", "PHASE", "HOST", "INSTANCE", "PATH",
                              "TIERS", "USED"]  # fmt: skip
    row = out[1].split()
    assert (row[0], row[2], row[3], row[4], row[5]) == ("db", "az1", "10G", "available", "az1-h1")
    assert "12h:1s,1d:1h,3d:1d" in out[1]
    shown = vr.ok("volume", "show", "db").stdout
    assert "tiers" in shown and "12h:1s,1d:1h,3d:1d" in shown
    assert "home" in shown
    y = vr.ok("volume", "show", "db", "-o", "yaml").stdout
    assert "kind: volume" in y
    assert vr.ok("volume", "list", "--zone", "az2").stdout.strip() == "no volumes"


def test_attach_detach_wait_settle_and_list_by_instance(vr: Region) -> None:
    vr.ok("volume", "create", "db", "--size", "1G", "--zone", "az1", "--wait")
    v = vr.cli("volume", "attach", "db", "a", "--path", "/srv", "--wait", "--json").json()
    assert (v["status"]["phase"], v["status"]["mounted"]) == ("attached", True)
    assert v["spec"]["attachment"]["path"] == "/srv"
    rows = vr.cli("volume", "list", "--instance", "a", "--json").json()
    assert [r["name"] for r in rows] == ["db"]
    text = vr.ok("volume", "list").stdout
    assert " a " in text and "/srv" in text
    v = vr.cli("volume", "detach", "db", "--wait", "--json").json()
    assert v["status"]["phase"] == "available" and v["spec"]["attachment"] is None
    # and to another instance of the zone: the same volume
    v2 = vr.cli("volume", "attach", "db", "c", "--wait", "--json").json()
    assert v2["id"] == v["id"] and v2["spec"]["attachment"]["path"] == "/data"


def test_bad_input_is_one_line_and_changes_nothing(vr: Region) -> None:
    vr.ok("volume", "create", "db", "--size", "1G", "--zone", "az1", "--wait")
    rev = vr.api("GET", "/v1/revision")["revision"]
    for args, message in [
        (("volume", "create", "x", "--size", "512M", "--zone", "az1"), "below the smallest"),
        (("volume", "create", "x", "--size", "ten", "--zone", "az1"), "is not a size"),
        (("volume", "create", "x", "--size", "500G", "--zone", "az1"), "free volume space"),
        (("volume", "attach", "db", "b"), "volume db is in zone az1, instance b in az2"),
        (("volume", "detach", "db"), "volume db is not attached"),
        (("volume", "resize", "db", "--size", "1G"), "a resize must grow it"),
        (("volume", "protect", "db", "--tiers", "1h:7s"), "must divide the time kept"),
        (("volume", "restore", "db", "--to", "-90s"), "volume db is not protected"),
        (("volume", "restore", "db", "--to", "someday"), "is not ISO 8601"),
    ]:
        bad = vr.cli(*args)
        assert bad.code != 0, args
        assert message in bad.stderr, (args, bad.stderr)
        assert bad.stderr.count("\n") == 1, bad.stderr
    assert vr.api("GET", "/v1/revision")["revision"] == rev


def test_resize_grows_and_delete_removes(vr: Region) -> None:
    vr.ok("volume", "create", "db", "--size", "1G", "--zone", "az1", "--wait")
    v = vr.cli("volume", "resize", "db", "--size", "20G", "--wait", "--json").json()
    assert v["spec"]["size"] == 20 * GIB
    assert "deleted volume db" in vr.ok("volume", "delete", "db", "--wait").stdout
    assert vr.cli("volume", "show", "db").code != 0


def test_delete_of_an_attached_volume_is_refused(vr: Region) -> None:
    vr.ok("volume", "create", "db", "--size", "1G", "--zone", "az1")
    vr.ok("volume", "attach", "db", "a")
    bad = vr.cli("volume", "delete", "db")
    assert bad.code != 0 and "detach it first" in bad.stderr


def test_timeline_restore_and_clone_with_relative_times(vr: Region) -> None:
    vr.ok("volume", "create", "db", "--size", "1G", "--zone", "az1", "--protect", "--wait")
    tl = vr.cli("volume", "timeline", "db", "--json").json()
    assert tl["points"][0]["every_s"] == 1 and tl["oldest"] and tl["newest"]
    text = vr.ok("volume", "timeline", "db").stdout
    assert "tiers    12h:1s,1d:1h,3d:1d" in text and "any time" in text
    before = time.time_ns()
    v = vr.cli("volume", "restore", "db", "--to", "-90s", "--wait", "--json").json()
    to = v["spec"]["restore"]["to_ns"]
    assert before - 91 * NS <= to <= time.time_ns() - 90 * NS
    assert v["status"]["phase"] == "available" and v["status"]["restored_serial"] == 1
    c = vr.cli("volume", "clone", "db", "db-then", "--at", "-5m", "--wait", "--json").json()
    assert c["spec"]["source"]["volume"] == v["id"]
    assert c["status"]["phase"] == "available"
    bad = vr.cli("volume", "clone", "db", "db-later", "--at", "-2h")
    assert bad.code != 0 and "before the oldest restore point" in bad.stderr


def test_times_parse_as_iso_unix_or_relative() -> None:
    assert parse_time_ns("2026-01-02T03:04:05Z") == 1767323045 * NS
    assert parse_time_ns("2026-01-02T03:04:05.25Z") == 1767323045 * NS + NS // 4
    assert parse_time_ns("1767323045") == 1767323045 * NS
    assert parse_time_ns("-90s", now=1000.0) == 910 * NS
    assert parse_time_ns("-5m", now=1000.0) == 700 * NS


def test_the_agent_takes_its_volume_pool_and_dir() -> None:
    from pathlib import Path

    from yunhan.cli.command import build_parser
    from yunhan.cli.daemons import COMMANDS

    (agent,) = [c for c in COMMANDS if c.name == "agent"]
    base = ["--api", "http://x", "--token-file", "t", "--host", "h", "--zone", "z",
            "--underlay-ip", "198.18.0.1"]  # fmt: skip
    got = vars(build_parser(agent, "yunhan agent").parse_args(base))
    assert (got["volume_pool"], got["volume_dir"]) == (100 * GIB, Path("/var/lib/yunhan/volumes"))
    got = vars(
        build_parser(agent, "yunhan agent").parse_args(
            [*base, "--volume-pool", "2T", "--volume-dir", "/srv/pool"]
        )
    )
    assert (got["volume_pool"], got["volume_dir"]) == (2 << 40, Path("/srv/pool"))
