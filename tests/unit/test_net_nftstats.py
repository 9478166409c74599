"""The traffic counter tables (docs/cutover.md): names that carry their key, one rule set
per kind of counting point, and deltas across resets."""

from __future__ import annotations

import pytest

from yunhan.net import nftstats
from yunhan.net.nftstats import Deltas, Key


def test_a_counter_name_carries_its_key() -> None:
    k = Key("line", "192.168.101.0/24", "in")
    assert nftstats.counter_name(k) == "line_in_192_168_101_0_24"
    assert nftstats.parse_name("line_in_192_168_101_0_24") == k
    for bad in ("line_up_1_2_3_0_24", "x_in_1_2_3", "host_in_1_2_3_0_40", "other"):
        assert nftstats.parse_name(bad) is None


@pytest.mark.parametrize(
    ("kind", "points", "rules"),
    [
        ("vpc", ("sent", "delivered"), 4),
        ("replica", ("replica",), 2),
        ("switch", ("line", "local"), 6),
    ],
)
def test_each_kind_counts_its_points_once_per_packet(
    kind: nftstats.Kind, points: tuple[str, ...], rules: int
) -> None:
    text = nftstats.script(kind, ["192.168.101.0/24", "192.168.100.0/24", "192.168.100.0/24"])
    assert text.startswith("table ip yunhan_hstats\ndelete table ip yunhan_hstats\n")
    lines = [ln.strip() for ln in text.splitlines() if " counter name " in ln]
    assert len(lines) == rules  # one map lookup per point, guard and direction
    # sorted by address, the duplicate dropped
    p = points[0]
    m = f'{{ 192.168.100.0/24 : "{p}_in_192_168_100_0_24", 192.168.101.0/24 : "{p}_in_'
    assert any(m in ln and "ip daddr map" in ln for ln in lines)
    names = {ln.split()[1] for ln in text.splitlines() if ln.strip().endswith("{ }")}
    assert len(names) == 2 * 2 * len(points)
    assert {nftstats.parse_name(n).point for n in names} == set(points)  # type: ignore[union-attr]
    assert "priority 100" in text  # after the filters: a dropped packet is not carried
    if kind == "vpc":
        assert any(ln.startswith('oifname "p-*" counter name ip daddr map') for ln in lines)
    if kind == "switch":
        assert any(ln.startswith('iifname != "line0" oifname != "line0" counter name ip saddr')
                   for ln in lines)  # fmt: skip


def test_overlapping_prefixes_get_rules_of_their_own() -> None:
    text = nftstats.script("replica", ["192.168.100.0/23", "192.168.100.0/24"])
    lines = [ln.strip() for ln in text.splitlines() if " counter name " in ln]
    assert lines == [
        "ip daddr 192.168.100.0/23 counter name replica_in_192_168_100_0_23",
        "ip daddr 192.168.100.0/24 counter name replica_in_192_168_100_0_24",
        "ip saddr 192.168.100.0/23 counter name replica_out_192_168_100_0_23",
        "ip saddr 192.168.100.0/24 counter name replica_out_192_168_100_0_24",
    ]
    assert nftstats.script("replica", ["10.0.0.0/24"], per_prefix_rules=True).count(" map ") == 0


def test_no_prefix_removes_the_table() -> None:
    assert nftstats.script("vpc", []) == ("table ip yunhan_hstats\ndelete table ip yunhan_hstats\n")


def test_parse_counters_keeps_ours() -> None:
    listing = {
        "nftables": [
            {"metainfo": {}},
            {"counter": {"table": "yunhan_hstats", "name": "host_out_10_0_0_0_24",
                         "packets": 3, "bytes": 300}},
            {"counter": {"table": "other", "name": "host_out_10_0_0_0_24", "packets": 9}},
            {"counter": {"table": "yunhan_hstats", "name": "mine", "packets": 9}},
        ]
    }  # fmt: skip
    assert nftstats.parse_counters(listing) == {Key("host", "10.0.0.0/24", "out"): (3, 300)}


def test_deltas_across_baselines_moves_and_resets() -> None:
    a, b = Key("host", "10.0.0.0/24", "in"), Key("host", "10.0.0.0/24", "out")
    d = Deltas()
    assert d.step({a: (5, 500)}) == {}  # first sight: a baseline
    assert d.step({a: (7, 700), b: (1, 10)}, count_new=True) == {a: (2, 200), b: (1, 10)}
    assert d.step({a: (7, 700), b: (1, 10)}) == {}  # nothing moved: nothing said
    assert d.step({a: (2, 200), b: (3, 30)}) == {a: (2, 200), b: (2, 20)}  # a was reset
