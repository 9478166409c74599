"""Compaction (yunhan/volume/compact.py) of journals written with injected times: every
promised restore point reads the same before and after, the space shrinks."""

from __future__ import annotations

import random
from pathlib import Path

from yunhan.volume import compact as c
from yunhan.volume import journal as j
from yunhan.volume import tiers as t

BLK = j.BLOCK
SIZE = 16 * BLK
NS = t.NS
TIERS = t.parse("4s:1s,12s:2s,30s:6s")


def _journal(d: Path, seed: int, t0: float, t1: float, now_seg: float) -> list[int]:
    """Records every 0.25 s from t0 to t1 (seconds), a new segment every 5 s and one at
    now_seg; a checkpoint every 37 records. Returns the record times (ns)."""
    rnd = random.Random(seed)
    (d / j.BASE_FILE).write_bytes(rnd.randbytes(SIZE))
    times = []
    with j.Writer(d, SIZE) as w:
        ts = t0
        n = 0
        while ts < t1:
            tn = int(ts * NS) + rnd.randrange(1000)
            kind = rnd.random()
            if kind < 0.75:
                k = rnd.choice((1, 1, 2, 3))
                w.write(rnd.randrange(16 - k + 1) * BLK, rnd.randbytes(k * BLK), tn)
            elif kind < 0.85:
                w.zero(rnd.randrange(15) * BLK, 2 * BLK, tn)
            else:
                w.flush(tn)
            times.append(w.t_ns)
            n += 1
            if n % 37 == 0:
                w.sync()
                j.write_checkpoint(d, j.index_at(d, SIZE))
            nxt = ts + 0.25
            if int(nxt / 5) != int(ts / 5) or (ts < now_seg <= nxt):
                w.sync()
                w.rotate()
            ts = nxt
    return times


def _states(d: Path, points: list[int]) -> dict[int, bytes]:
    return {p: j.materialise(d, j.index_at(d, SIZE, p)) for p in points}


def _check_checkpoints(d: Path) -> None:
    layout = j.read_layout(d)
    for _, path in j.checkpoints(d):
        ck = j.read_checkpoint(path, SIZE)
        assert j.checkpoint_usable(d, layout, ck)
        full = j.index_at(d, SIZE, ck.t_ns)
        for b in range(16):  # positions may differ (a checkpoint may predate a fold): content
            assert j.read_blocks(d, full, b, 1) == j.read_blocks(d, ck, b, 1)


def test_compaction_keeps_every_promised_point_and_the_live_state(tmp_path: Path) -> None:
    now = 1045 * NS
    _journal(tmp_path, 1, 1000, 1045, 1040)
    pts = t.points(TIERS, j.journal_start(tmp_path, now), now)
    instants = [now - k * NS // 3 for k in range(13)]  # the first tier: any instant
    before = _states(tmp_path, pts + instants + [now])
    space0 = j.space_used(tmp_path)

    r = c.compact(tmp_path, SIZE, TIERS, now)
    assert r.skipped is None and r.segment == 32767 and r.folded > 0
    assert r.bytes_after < r.bytes_before
    layout = j.read_layout(tmp_path)
    assert layout.segments[0] == j.Segment(32767, compacted=True)
    assert layout.base_t_ns == pts[0]  # the journal now starts at the oldest promised point
    assert _states(tmp_path, pts + instants + [now]) == before
    assert j.space_used(tmp_path).journal_bytes < space0.journal_bytes
    s = j.scan_volume(tmp_path, SIZE, verify_data=True)
    assert s.stop == "end" and s.records[0].seq > 1
    _check_checkpoints(tmp_path)
    # the timeline shows what is kept: every point of its coarser ranges reads as before
    tl = t.timeline(tmp_path, TIERS, now)
    assert tl[0].from_ns == pts[0] and [r.every_s for r in tl] == [6, 2, 1]
    for rg in tl[:-1]:
        for p in range(rg.from_ns, rg.to_ns + 1, rg.every_s * NS):
            assert p in before

    # later, more has aged: compacting the compacted segment again keeps the new promise
    again = c.compact(tmp_path, SIZE, TIERS, now)
    assert again.skipped == "nothing to drop"
    later = now + 7 * NS
    pts2 = t.points(TIERS, j.journal_start(tmp_path, later), later)
    with j.Writer(tmp_path, SIZE) as w:  # nothing new; seal the last segment
        w.rotate()
    r2 = c.compact(tmp_path, SIZE, TIERS, later)
    assert r2.replaced[0] == 32767 and r2.segment == 32766
    assert _states(tmp_path, [p for p in pts2 if p in before] + [now]) == {
        p: before[p] for p in [p for p in pts2 if p in before] + [now]
    }
    _check_checkpoints(tmp_path)


def test_compaction_waits_for_holds_and_for_the_first_tier(tmp_path: Path) -> None:
    now = 1045 * NS
    _journal(tmp_path, 2, 1000, 1045, 1040)
    (tmp_path / c.HOLDS_DIR).mkdir()
    (tmp_path / c.HOLDS_DIR / "vol9").write_text("")
    assert c.compact(tmp_path, SIZE, TIERS, now).skipped == "held by vol9"
    (tmp_path / c.HOLDS_DIR / "vol9").unlink()
    # as of 1003 s nothing sealed is older than the first tier
    assert c.compact(tmp_path, SIZE, TIERS, 1003 * NS).skipped is not None
    # an empty last segment is never due; one that starts at 1046 s is once that is older
    # than the first tier's 4 s
    assert not c.rotation_due(tmp_path, TIERS, 2000 * NS)
    with j.Writer(tmp_path, SIZE) as w:
        w.flush(1046 * NS)
    assert not c.rotation_due(tmp_path, TIERS, 1050 * NS)
    assert c.rotation_due(tmp_path, TIERS, 1050 * NS + 1)


def test_a_plan_keeps_the_last_write_per_block_before_each_point() -> None:
    def rec(seq: int, ts: int, block: int, n: int = 1) -> j.Record:
        return j.Record(seq, ts, j.Kind.DATA, block * BLK, n * BLK, 0, seq * BLK * 8, seq * 48)

    recs = [rec(1, 10, 0), rec(2, 20, 0), rec(3, 30, 1), rec(4, 40, 0, 2), rec(5, 50, 1)]
    # points at 25 and 45: fold up to 25 (records 1, 2 -> only 2 is the last for block 0)
    p = c.plan(recs, [25, 45], 0, 0)
    assert [r.seq for r in p.fold] == [2] and (p.base_seq, p.base_t_ns) == (2, 25)
    assert [r.seq for r in p.keep] == [4, 5]  # 3's block is written again by 4 before 45
    # no fold: record 1 is overwritten before the first point
    p = c.plan(recs, [25, 45], 0, 0, fold=False)
    assert [r.seq for r in p.keep] == [2, 4, 5]
    # no point inside: everything into base
    p = c.plan(recs, [], 0, 0)
    assert p.keep == () and [r.seq for r in p.fold] == [4, 5] and p.base_seq == 5
