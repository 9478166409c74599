"""Retention tiers (yunhan/volume/tiers.py): parsing, the promise, the timeline of a journal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from yunhan.volume import journal as j
from yunhan.volume import tiers as t

NS = t.NS
SIZE = 16 * j.BLOCK


def test_the_default_tiers_parse_to_seconds_and_format_back() -> None:
    parsed = t.parse("12h:1s,24h:1h,3d:1d")
    assert parsed == ((43200, 1), (86400, 3600), (259200, 86400))
    assert t.format_tiers(parsed) == "12h:1s,1d:1h,3d:1d"  # the largest whole unit
    assert t.parse(t.format_tiers(parsed)) == parsed
    assert t.parse(" 4s:1s , 12s:2s,30s:6s") == ((4, 1), (12, 2), (30, 6))
    assert t.parse("90m:1m") == ((5400, 60),)
    assert t.parse(t.format_tiers(((5400, 60), (7200, 3600)))) == ((5400, 60), (7200, 3600))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "keep:every"),
        ("12h", "keep:every"),
        ("12x:1s", "unit s, m, h or d"),
        ("12h:1.5s", "unit s, m, h or d"),
        ("-1h:1s", "unit s, m, h or d"),
        ("0h:1s", "more than zero"),
        ("12h:0s", "more than zero"),
        ("10s:3s", "does not divide"),
        ("12h:1s,12h:1h", "not longer"),
        ("12h:1h,24h:1h", "not coarser"),
        ("24h:1h,12h:1s", "not longer"),
    ],
)
def test_malformed_tiers_are_refused_with_the_rule_they_break(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        t.parse(text)


TIERS = t.parse("4s:1s,12s:2s,30s:6s")


def test_ranges_of_a_journal_older_than_every_tier_show_each_tier_once() -> None:
    now = 1000 * NS + 500_000_000
    got = t.ranges(TIERS, 0, now, now)
    assert [r.as_dict() for r in got] == [
        # 30s:6s from now-30 s (970.5 -> 972) to before now-12 s (988.5 -> 984)
        {"from_ns": 972 * NS, "to_ns": 984 * NS, "every_s": 6},
        # 12s:2s from now-12 s (988.5 -> 990) to before now-4 s (996.5 -> 996)
        {"from_ns": 990 * NS, "to_ns": 996 * NS, "every_s": 2},
        {"from_ns": now - 4 * NS, "to_ns": now, "every_s": 1},
    ]
    # the promise: the coarser tiers' points, from where each tier's window starts
    pts = t.points(TIERS, 0, now)
    assert pts[0] == 972 * NS
    assert all(p % (2 * NS) == 0 or p % (6 * NS) == 0 for p in pts)
    for r in got[:-1]:
        assert set(range(r.from_ns, r.to_ns + 1, r.every_s * NS)) <= set(pts)


def test_a_young_journal_shows_only_what_it_covers() -> None:
    now = 1000 * NS
    assert [r.as_dict() for r in t.ranges(TIERS, 997 * NS, now, now)] == [
        {"from_ns": 997 * NS, "to_ns": now, "every_s": 1}
    ]
    got = t.ranges(TIERS, 991 * NS + 1, now, now)
    assert [(r.from_ns, r.to_ns, r.every_s) for r in got] == [
        (992 * NS, 994 * NS, 2),
        (996 * NS, now, 1),
    ]
    assert t.points(TIERS, 991 * NS + 1, now)[0] == 992 * NS


def test_the_timeline_of_a_volume_starts_at_its_journal(tmp_path: Path) -> None:
    (tmp_path / j.BASE_FILE).write_bytes(bytes(SIZE))
    os.utime(tmp_path / j.BASE_FILE, ns=(990 * NS, 990 * NS))
    with j.Writer(tmp_path, SIZE) as w:
        w.write(0, b"x" * j.BLOCK, 995 * NS)
        w.flush(996 * NS)
    now = 1000 * NS
    got = t.timeline(tmp_path, TIERS, now)
    assert got[0].from_ns == 990 * NS and got[-1].to_ns == now
    # base.img written later than the first record: the record bounds it
    os.utime(tmp_path / j.BASE_FILE, ns=(999 * NS, 999 * NS))
    assert t.timeline(tmp_path, TIERS, now)[0].from_ns == 996 * NS  # 995 s: -> 996 s (4s tier)
    j.write_layout(tmp_path, j.Layout(j.read_layout(tmp_path).segments, 1, 995 * NS))
    assert j.journal_start(tmp_path, now) == 995 * NS


def test_space_used_counts_base_every_segment_and_checkpoints(tmp_path: Path) -> None:
    (tmp_path / j.BASE_FILE).write_bytes(b"\1" * SIZE)
    with j.Writer(tmp_path, SIZE) as w:
        w.write(0, b"x" * j.BLOCK, 1)
        w.rotate()
        w.write(j.BLOCK, b"y" * j.BLOCK, 2)
        w.sync()
    j.write_checkpoint(tmp_path, j.index_at(tmp_path, SIZE))
    space = j.space_used(tmp_path)
    assert space.base_bytes >= SIZE
    assert space.journal_bytes >= 2 * j.BLOCK + 2 * j.HEADER_SIZE
    assert space.checkpoint_bytes > 0
