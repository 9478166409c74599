"""`yunhan vip …` against the real API app: the issue's forms as written, tables for
people, JSON for scripts, one-line errors, and `--wait` until every host re-pointed."""

from __future__ import annotations

import pytest
from cli_fixtures import Region, region

__all__ = ["region"]  # the fixture, re-exported for pytest


@pytest.fixture
def ha(region: Region) -> Region:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.ok("subnet", "create", "db", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    region.ok("instance", "create", "db1", "--subnet", "db", "--zone", "az1")
    region.ok("instance", "create", "db2", "--subnet", "db", "--zone", "az2")
    region.ok("instance", "create", "app", "--subnet", "db", "--zone", "az1")
    return region


def test_vip_lifecycle(ha: Region) -> None:
    r = ha
    v = r.cli("vip", "create", "db-vip", "--subnet", "db", "--allow", "db1", "--allow", "db2",
              "--json").json()  # fmt: skip
    assert (v["ip"], v["allowed"], v["holder"], v["epoch"]) == ("10.0.1.5", ["db1", "db2"], None, 0)
    out = r.ok("vip", "list").stdout.splitlines()
    assert out[0].split() == ["NAME", "ID", "SUBNET", "IP", "HOLDER", "HOLDER_HOST", "EPOCH",
                              "ALLOWED"]  # fmt: skip
    assert out[1].split()[:4] == ["db-vip", v["id"], "db", "10.0.1.5"]
    moved = r.cli("vip", "move", "db-vip", "db2", "--wait", "--json").json()
    assert (moved["holder"], moved["holder_zone"], moved["epoch"]) == ("db2", "az2", 1)
    assert moved["holder_host"] is not None
    shown = r.cli("vip", "show", "db-vip", "-o", "json").json()
    assert [(h["from"], h["to"], h["cause"], h["epoch"]) for h in shown["history"]] == [
        (None, "db2", "move", 1)
    ]
    assert {"holder", "holder_zone", "holder_host", "epoch", "history"} <= set(shown)
    text = r.ok("vip", "show", "db-vip").stdout
    assert "- -> db2 (move, epoch 1)" in text
    r.ok("vip", "allow", "db-vip", "app")
    r.ok("vip", "move", "db-vip", "app")
    shown = r.cli("vip", "disallow", "db-vip", "app", "--json").json()
    assert (shown["holder"], shown["epoch"], shown["allowed"]) == (None, 3, ["db1", "db2"])
    assert "deleted VIP db-vip (10.0.1.5)" in r.ok("vip", "delete", "db-vip").stdout


def test_vip_errors_are_one_line(ha: Region) -> None:
    r = ha
    r.ok("vip", "create", "db-vip", "--subnet", "db", "--ip", "10.0.1.50", "--allow", "db1")
    bad = r.cli("vip", "move", "db-vip", "app")
    assert bad.code != 0 and "instance app is not allowed to hold VIP db-vip" in bad.stderr
    assert "yunhan vip allow db-vip app" in bad.stderr
    bad = r.cli("vip", "create", "other", "--subnet", "db", "--ip", "10.0.1.50")
    assert bad.code != 0 and "already used by VIP db-vip" in bad.stderr
    bad = r.cli("vip", "create", "other", "--subnet", "db", "--ip", "10.0.9.9")
    assert bad.code != 0 and "not inside subnet db" in bad.stderr


def test_server_flap_damping_flags() -> None:
    from yunhan.cli.daemons import _damping
    from yunhan.controller.vips import Damping
    from yunhan.errors import ValidationError

    assert _damping(3, "30s") == Damping(3, 30.0)
    assert _damping(5, "2m") == Damping(5, 120.0)
    with pytest.raises(ValidationError, match="changes >= 1"):
        _damping(0, "30s")


def test_instance_migrate_as_written_keeps_the_vip_and_its_address(ha: Region) -> None:
    r = ha
    r.ok("vip", "create", "db-vip", "--subnet", "db", "--allow", "db1", "--allow", "db2")
    r.ok("vip", "move", "db-vip", "db1")
    before = r.cli("instance", "show", "db1", "--json").json()
    after = r.cli("instance", "migrate", "db1", "--zone", "az2", "--json").json()
    assert (after["zone"], after["ip"], after["mac"]) == ("az2", before["ip"], before["mac"])
    assert after["host"] != before["host"]
    assert [m["to_zone"] for m in after["migrations"]] == ["az2"]
    v = r.cli("vip", "show", "db-vip", "--json").json()
    assert (v["holder"], v["holder_host"]) == ("db1", after["host"])
    bad = r.cli("instance", "migrate", "db1", "--zone", "az9")
    assert bad.code != 0 and "no zone 'az9'" in bad.stderr


def test_instance_show_prints_a_move_per_line(ha: Region) -> None:
    ha.ok("instance", "migrate", "db1", "--zone", "az2")
    out = ha.ok("instance", "show", "db1").stdout
    line = next(x for x in out.splitlines() if x.startswith("migrations"))
    assert "(az1) -> " in line and line.endswith("(az2)") and "{" not in line
