"""`yunhan trace` against the real API app (cli_fixtures.Region): what a user sees."""

from __future__ import annotations

from pathlib import Path

from cli_fixtures import Region, region

__all__ = ["region"]  # the fixture, re-exported for pytest


def _two(region: Region) -> None:
    region.ok("vpc", "create", "prod", "--cidr", "10.0.0.0/16", "--wait")
    region.ok("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24", "--wait")
    region.ok("instance", "create", "a", "--subnet", "web", "--zone", "az1", "--ip", "10.0.1.5")
    region.ok("instance", "create", "b", "--subnet", "web", "--zone", "az2", "--ip", "10.0.1.9",
              "--wait")  # fmt: skip


def test_trace_prints_hops_and_the_verdict(region: Region) -> None:
    _two(region)
    out = region.ok("trace", "a", "b", "--port", "22").stdout
    lines = out.splitlines()
    assert lines[0].startswith("trace tcp/22 from a (inst-") and lines[0].endswith("to 10.0.1.9")
    assert "az1-h1 instance a" in out and "az2-h1 instance b" in out
    assert "route direct 10.0.0.0/16" in out
    assert lines[-1].startswith("DELIVERED: delivered to inst-")
    dropped = region.ok("trace", "a", "10.0.1.77").stdout
    assert dropped.splitlines()[-1].startswith("DROPPED [no-member]: no member holds 10.0.1.77")


def test_trace_json_is_the_api_answer(region: Region) -> None:
    _two(region)
    t = region.cli("trace", "a", "b", "--proto", "udp", "--port", "53", "--json").json()
    assert (t["proto"], t["port"], t["verdict"]) == ("udp", 53, "delivered")
    assert [h["place"] for h in t["hops"]] == ["instance", "vpc", "vpc", "instance"]
    assert t["dst_instance"].startswith("inst-") and t["dst_host"] == "az2-h1"


def test_trace_errors(region: Region) -> None:
    _two(region)
    r = region.cli("trace", "a", "b", "--proto", "tcp")
    assert r.code == 1 and r.stderr == "error: a tcp trace needs a destination port (port=N)\n"
    r = region.cli("trace", "nope", "b")
    assert r.code == 1 and r.stderr == "error: no instance 'nope' in this project\n"


def test_live_is_refused_where_the_region_is_not_this_machines_lab(
    region: Region, tmp_path: Path
) -> None:
    _two(region)
    r = region.cli("trace", "a", "b", "--live", "--state-dir", str(tmp_path))
    assert r.code == 1 and r.stdout == ""
    assert "--live needs the namespaces of the region at" in r.stderr
    assert "the lab region recorded in" in r.stderr and "is none" in r.stderr
