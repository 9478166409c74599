"""yunhan.volume.volumedir without root: the pool layout, clones, restores, holds, cleanup.

Journals are written with journal.Writer at chosen times and the clock is injected, so
that "at T" is exact; cdpd's side of a clone (serving and copying) is in
tests/integration/test_cdpd_clone_linux.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from yunhan.errors import VolumeError
from yunhan.volume import compact
from yunhan.volume import journal as j
from yunhan.volume import tiers as tr
from yunhan.volume.volumedir import (
    FILL_MAP,
    HOLD_GRACE_NS,
    META_FILE,
    PARENT_FILE,
    ParentRef,
    VolumeDir,
    cleanup_pool,
    read_parent,
)

SIZE = 16 << 20
S = 10**9


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def _protected(pool: Path, clock: Clock, name: str = "vol1") -> VolumeDir:
    """A volume made at t=100 s with writes at 110, 120, 130 s (block k at time 100+10k)."""
    clock.now = 100 * S
    v = VolumeDir(pool, name, clock=clock)
    v.create(SIZE, fs=None)
    with j.Writer(v.current(), SIZE) as w:
        for k in (1, 2, 3):
            w.write(k * j.BLOCK, bytes([k]) * j.BLOCK, (100 + 10 * k) * S)
        w.sync()
    clock.now = 200 * S
    return v


def _fill_done(generation: Path) -> None:
    """What cdpd does when its copy is complete."""
    (generation / PARENT_FILE).unlink()
    (generation / FILL_MAP).unlink(missing_ok=True)


def test_create_makes_meta_and_a_sparse_ext4_base(tmp_path: Path) -> None:
    v = VolumeDir(tmp_path, "vol1", clock=Clock(5 * S))
    g1 = v.create(SIZE)
    assert g1 == v.current() == tmp_path / "vol1" / "g1"
    assert json.loads((tmp_path / "vol1" / META_FILE).read_text()) == {
        "size": SIZE,
        "generation": 1,
        "since_ns": 5 * S,
    }
    base = g1 / j.BASE_FILE
    assert base.stat().st_size == SIZE
    assert base.stat().st_blocks * 512 < SIZE // 4  # sparse, lazy init
    with open(base, "rb") as f:
        f.seek(1024 + 56)
        assert f.read(2) == b"\x53\xef"  # the ext4 superblock's magic
    with pytest.raises(VolumeError, match="already exists"):
        v.create(SIZE)
    with pytest.raises(VolumeError, match="multiple of 4096"):
        VolumeDir(tmp_path, "vol2").create(SIZE + 1)
    with pytest.raises(VolumeError, match="not supported"):
        VolumeDir(tmp_path, "vol3").create(SIZE, fs="xfs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol1"]  # nothing half made


def test_clone_points_at_the_source_generation_at_the_seq_of_that_time(tmp_path: Path) -> None:
    clock = Clock(0)
    src = _protected(tmp_path, clock)
    for at, seq in ((105, 0), (120, 2), (125, 2), (199, 3)):
        dst = VolumeDir(tmp_path, f"c{at}", clock=clock)
        g1 = dst.clone_from(src, at * S)
        assert read_parent(g1) == ParentRef(src.current(), seq, SIZE)
        assert seq == j.index_at(src.current(), SIZE, at * S).seq
        assert (g1 / j.BASE_FILE).stat().st_size == SIZE
        assert (g1 / j.BASE_FILE).stat().st_blocks == 0
        assert dst.meta().size == SIZE and dst.parent() is not None
        assert f"c{at}.g1" in src.holds(1)
        hold = json.loads((src.current() / "holds" / f"c{at}.g1").read_text())
        assert hold == {"child": str(g1)}


def test_clone_and_restore_refuse_times_without_a_restore_point(tmp_path: Path) -> None:
    clock = Clock(0)
    src = _protected(tmp_path, clock)
    dst = VolumeDir(tmp_path, "copy", clock=clock)
    with pytest.raises(VolumeError, match="in the future"):
        dst.clone_from(src, 201 * S)
    with pytest.raises(VolumeError, match="before the start"):
        dst.clone_from(src, 99 * S)
    with pytest.raises(VolumeError, match="before the start"):
        src.restore_to(50 * S)
    plain = VolumeDir(tmp_path, "plain", clock=clock)
    plain.create(SIZE, fs=None)
    with pytest.raises(VolumeError, match="not protected"):
        dst.clone_from(plain, clock.now)
    with pytest.raises(VolumeError, match="already exists"):
        src.clone_from(plain, clock.now)
    assert not dst.path.exists() and src.holds(1) == [] and src.generations() == [1]
    dst.clone_from(src, 150 * S)
    with pytest.raises(VolumeError, match="still being copied"):
        VolumeDir(tmp_path, "copy2", clock=clock).clone_from(dst, clock.now)


def test_restore_makes_a_new_generation_then_cleanup_drops_the_old(tmp_path: Path) -> None:
    clock = Clock(0)
    v = _protected(tmp_path, clock)
    g2 = v.restore_to(115 * S)
    assert v.meta().generation == 2 and v.current() == g2 and v.meta().since_ns == 200 * S
    assert read_parent(g2) == ParentRef(v.generation_dir(1), 1, SIZE)
    assert v.holds(1) == ["vol1.g2"]
    assert v.cleanup() == []  # g2 still reads g1
    with pytest.raises(VolumeError, match="still being copied"):
        v.restore_to(clock.now)
    _fill_done(g2)
    removed = v.cleanup()
    assert v.generation_dir(1) in removed
    assert v.generations() == [2]
    assert v.cleanup() == []  # idempotent


def test_cleanup_releases_a_clone_hold_once_its_copy_is_done(tmp_path: Path) -> None:
    clock = Clock(0)
    src = _protected(tmp_path, clock)
    dst = VolumeDir(tmp_path, "copy", clock=clock)
    g1 = dst.clone_from(src, 150 * S)
    assert cleanup_pool(tmp_path, clock=clock) == []
    with pytest.raises(VolumeError, match="still read by its clones"):
        src.delete()
    _fill_done(g1)
    assert cleanup_pool(tmp_path, clock=clock) == [src.current() / "holds" / "copy.g1"]
    assert src.generations() == [1]  # current: kept
    src.delete()
    assert not src.path.exists() and dst.exists()


def test_a_hold_whose_child_is_missing_is_kept_for_a_grace_period(tmp_path: Path) -> None:
    clock = Clock(0)
    src = _protected(tmp_path, clock)
    holds = src.current() / "holds"
    holds.mkdir()
    (holds / "ghost.g1").write_text(json.dumps({"child": str(tmp_path / "ghost" / "g1")}))
    clock.now = (holds / "ghost.g1").stat().st_mtime_ns + 1
    assert src.cleanup() == []
    clock.now += HOLD_GRACE_NS
    assert src.cleanup() == [holds / "ghost.g1"]
    scratch = tmp_path / ".vol9.123.tmp"  # a clone cut short by a crash
    (scratch / "g1").mkdir(parents=True)
    clock.now = scratch.stat().st_mtime_ns + 1
    assert cleanup_pool(tmp_path, clock=clock) == []
    clock.now += HOLD_GRACE_NS
    assert cleanup_pool(tmp_path, clock=clock) == [scratch] and not scratch.exists()


def test_deleting_a_generation_still_filling_gives_its_hold_back(tmp_path: Path) -> None:
    clock = Clock(0)
    v = _protected(tmp_path, clock)
    g2 = v.restore_to(115 * S)
    # a restore that never became current (meta.json still says g1): g2 goes after a while
    meta = v.path / META_FILE
    meta.write_text(json.dumps({"size": SIZE, "generation": 1, "since_ns": 100 * S}))
    clock.now = g2.stat().st_mtime_ns + HOLD_GRACE_NS + 1
    assert v.cleanup() == [g2]
    assert v.holds(1) == [] and v.generations() == [1]


def test_deleting_a_clone_still_being_copied_releases_its_source(tmp_path: Path) -> None:
    clock = Clock(0)
    src = _protected(tmp_path, clock)
    dst = VolumeDir(tmp_path, "copy", clock=clock)
    dst.clone_from(src, 150 * S)
    dst.delete()
    assert not dst.path.exists() and src.holds(1) == []


def test_grow_extends_the_base_and_refuses_to_shrink(tmp_path: Path) -> None:
    clock = Clock(0)
    v = _protected(tmp_path, clock)
    with pytest.raises(VolumeError, match="can only grow"):
        v.grow(SIZE)
    v.grow(2 * SIZE)
    assert v.meta().size == 2 * SIZE and v.meta().generation == 1
    assert (v.current() / j.BASE_FILE).stat().st_size == 2 * SIZE
    # the journal still reads, at the new size
    assert j.index_at(v.current(), 2 * SIZE).seq == 3
    v.restore_to(115 * S)
    with pytest.raises(VolumeError, match="still being copied"):
        v.grow(4 * SIZE)


def test_usage_counts_allocated_bytes_of_every_generation(tmp_path: Path) -> None:
    clock = Clock(0)
    v = _protected(tmp_path, clock)
    u = v.usage()
    assert u.base_bytes == 0  # sparse, nothing written to it
    assert u.journal_bytes >= 3 * j.BLOCK
    with open(v.current() / j.BASE_FILE, "r+b") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    assert v.usage().base_bytes >= 1 << 20
    assert v.usage().used_bytes == v.usage().base_bytes + v.usage().journal_bytes


def test_a_clone_of_a_compacted_source_points_past_its_folded_start(tmp_path: Path) -> None:
    """After compaction the source's journal starts at its folded point (segment 0 may be
    gone): a clone before it is refused, one at a kept point reads what it read before,
    and the clone's hold is what compaction sees (it then skips the source)."""
    clock = Clock(100 * S)
    src = VolumeDir(tmp_path, "src", clock=clock)
    g = src.create(SIZE, fs=None)
    with j.Writer(g, SIZE) as w:
        for i in range(60):  # 1 s apart from 101 s, a segment every 20
            w.write((i % 8) * j.BLOCK, bytes([i]) * j.BLOCK, (101 + i) * S)
            if i % 20 == 19:
                w.rotate()
    now = 170 * S
    tiers = tr.parse("4s:1s,12s:2s,30s:6s")
    pts = [p for p in tr.points(tiers, j.journal_start(g, now), now) if p < 160 * S]
    before = {p: j.materialise(g, j.index_at(g, SIZE, p)) for p in pts}
    r = compact.compact(g, SIZE, tiers, now)
    assert r.folded and 0 in r.replaced and not (g / j.header_file(0)).exists()
    clock.now = now
    base_t = j.read_layout(g).base_t_ns
    with pytest.raises(VolumeError, match="compacted into its base"):
        VolumeDir(tmp_path, "early", clock=clock).clone_from(src, base_t - 1)
    at = pts[-1]
    g1 = VolumeDir(tmp_path, "dst", clock=clock).clone_from(src, at)
    ref = read_parent(g1)
    assert ref is not None and ref.seq == j.index_at(g, SIZE, at).seq
    assert j.materialise(g, j.index_at(g, SIZE, at)) == before[at]
    assert compact.holds(g) == ["dst.g1"]
    assert compact.compact(g, SIZE, tiers, now + 60 * S).skipped == "held by dst.g1"
    # the child itself is not compacted while it fills (its base is still being copied)
    assert compact.compact(g1, SIZE, tiers, now).skipped == "still filling from its parent"
