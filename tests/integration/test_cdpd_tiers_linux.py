"""Segments, compaction and the timeline with yunhan-cdpd running (root, FUSE).

The journal is cut into segments (cdpd rotates on its control socket or past
--segment-bytes); compaction (yunhan.volume.compact) rewrites sealed segments into the
restore points the tiers promise. Tiers are shortened ("4s:1s,12s:2s,30s:6s") and the
clock is injected: records written through journal.Writer carry the times the test gives
them, and compaction is asked "as of now_ns". Every process and mount carries the run's
prefix (yhtier) and is stopped on teardown, also when a test fails.
"""

from __future__ import annotations

import mmap
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from yunhan.polling import poll_until
from yunhan.volume import cdpd as cd
from yunhan.volume import compact
from yunhan.volume import journal as j
from yunhan.volume import tiers as tr

pytestmark = pytest.mark.root

BLK = j.BLOCK
SIZE = 4 << 20


def _aligned(data: bytes) -> mmap.mmap:
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    return buf


@pytest.fixture
def volume(tmp_path: Path, uniq: Callable[[str], str]) -> Iterator[Callable[..., cd.Cdpd]]:
    """make(**kw) -> a cdpd (not started) on a fresh volume directory named yhtier-...;
    every one made is stopped and its mount removed on teardown."""
    made: list[cd.Cdpd] = []

    def make(**kw: int) -> cd.Cdpd:
        name = uniq("yhtier")
        d = cd.create_volume(tmp_path / name / "vol", SIZE)
        c = cd.Cdpd(d, tmp_path / name / "mnt", size=SIZE, name=name, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()
        for c in made:
            assert not c.alive()
            assert cd.mount_source(c.mount) is None


def _write(c: cd.Cdpd, rnd: random.Random, count: int, blocks: int = 64) -> None:
    fd = os.open(c.volume_file, os.O_WRONLY | os.O_DIRECT)
    try:
        for _ in range(count):
            n = rnd.choice((1, 1, 1, 4))
            b = rnd.randrange(blocks - n + 1)
            os.pwritev(fd, [_aligned(rnd.randbytes(n * BLK))], b * BLK)
    finally:
        os.close(fd)


def test_cdpd_rotates_segments_and_recovers_them_in_order(
    volume: Callable[..., cd.Cdpd],
) -> None:
    """Past --segment-bytes and on "rotate" cdpd goes on in a new segment; journal.py reads
    the segments as one journal (index_at equals what cdpd serves; cdpd's checkpoints in
    any segment are journal.py's); a restart after SIGKILL, with or without checkpoints,
    serves the same volume."""
    rnd = random.Random(3)
    c = volume(segment_bytes=64 * BLK, checkpoint_every=40)
    d = c.directory
    c.start()
    _write(c, rnd, 100)
    assert c.rotate() == c.stats().segment
    _write(c, rnd, 100)
    served = c.volume_file.read_bytes()
    st = c.stats()
    assert st.segment >= 3 and st.seq == 200
    layout = j.read_layout(d)
    assert layout.numbers == tuple(range(st.segment + 1))
    assert (
        st.data_bytes
        >= sum(os.stat(d / j.data_file(n)).st_size for n in layout.numbers) - st.segment * BLK
    )  # allocated, every segment
    assert poll_until(lambda: len(j.checkpoints(d)) >= 4, 10)
    c.kill()
    assert j.materialise(d, j.index_at(d, SIZE)) == served
    assert {
        j.split_dpos(ck.hpos)[0] for ck in (j.read_checkpoint(p, SIZE) for _, p in j.checkpoints(d))
    } != {0}
    for _, path in j.checkpoints(d):
        ck = j.read_checkpoint(path, SIZE)
        full = j.index_at(d, SIZE, ck.t_ns)
        assert (full.seq, full.hpos, full.blocks) == (ck.seq, ck.hpos, ck.blocks)
    c.stop()
    c.start()
    assert "recovered seq 200" in c.log_tail(2)
    assert c.volume_file.read_bytes() == served
    c.kill()
    c.stop()
    for _, path in j.checkpoints(d):
        path.unlink()
    c.start()
    assert "recovered seq 200: checkpoint at 0 + 200 records" in c.log_tail(2)
    assert c.volume_file.read_bytes() == served
    _write(c, rnd, 5)  # and it goes on appending to the last segment
    assert c.stats().seq == 205
    assert c.stop() == 0
    assert j.scan_volume(d, SIZE, verify_data=True).last_seq == 205


def test_a_damaged_sealed_segment_stops_cdpd_instead_of_dropping_later_ones(
    volume: Callable[..., cd.Cdpd],
) -> None:
    c = volume(segment_bytes=0)
    d = c.directory
    c.start()
    _write(c, random.Random(4), 10)
    c.rotate()
    _write(c, random.Random(5), 10)
    assert c.stop() == 0
    raw = bytearray((d / j.header_file(0)).read_bytes())
    raw[5 * j.HEADER_SIZE + 20] ^= 1
    (d / j.header_file(0)).write_bytes(bytes(raw))
    for _, path in j.checkpoints(d):
        path.unlink()
    with pytest.raises(Exception, match="not the last"):
        c.start()
    assert j.scan_volume(d, SIZE).last_seq == 5  # journal.py ends it at the same record


TIERS = tr.parse("4s:1s,12s:2s,30s:6s")
NS = tr.NS


class _Writer:
    """One thread writing random blocks (1..4) through the FUSE file, O_DIRECT, each
    acknowledged write recorded in a model of the volume; rotating every `rotate_s`."""

    def __init__(self, c: cd.Cdpd, seed: int, blocks: int = 64) -> None:
        self.c, self.rnd, self.blocks = c, random.Random(seed), blocks
        self.model = bytearray(SIZE)
        self.count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def run_for(self, seconds: float, rotate_s: float | None = None) -> None:
        deadline = time.monotonic() + seconds
        next_rot = time.monotonic() + (rotate_s or seconds * 2)
        fd = os.open(self.c.volume_file, os.O_WRONLY | os.O_DIRECT)
        try:
            while time.monotonic() < deadline and not self._stop.is_set():
                n = self.rnd.choice((1, 1, 1, 4))
                b = self.rnd.randrange(self.blocks - n + 1)
                data = self.rnd.randbytes(n * BLK)
                os.pwritev(fd, [_aligned(data)], b * BLK)
                self.model[b * BLK : (b + n) * BLK] = data
                self.count += 1
                time.sleep(0.004)
                if rotate_s and time.monotonic() >= next_rot:
                    self.c.rotate()
                    next_rot += rotate_s
        finally:
            os.close(fd)

    def __enter__(self) -> _Writer:
        def go() -> None:
            try:
                self.run_for(3600)
            except BaseException as exc:  # reported by __exit__
                self.error = exc

        self._thread = threading.Thread(target=go)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        if self.error is not None:
            raise self.error


def _promised(d: Path, now_ns: int, sealed_end_ns: int) -> list[int]:
    """The coarser tiers' points inside the sealed segments. (`now_ns` is injected, ahead of
    the real clock: later points would see the records cdpd writes meanwhile.)"""
    return [p for p in tr.points(TIERS, j.journal_start(d, now_ns), now_ns) if p < sealed_end_ns]


def _states(d: Path, points: list[int]) -> dict[int, bytes]:
    return {p: j.materialise(d, j.index_at(d, SIZE, p)) for p in points}


def test_compaction_with_cdpd_stopped_keeps_the_promised_points_and_the_volume(
    volume: Callable[..., cd.Cdpd],
) -> None:
    c = volume(segment_bytes=0, checkpoint_every=50)
    d = c.directory
    c.start()
    w = _Writer(c, 11)
    w.run_for(4.5, rotate_s=1.0)
    c.rotate()
    last_sealed = j.scan_volume(d, SIZE).last_t_ns
    assert c.stop() == 0
    now = last_sealed + 5 * NS  # the injected clock: 5 s later, the sealed range has aged
    pts = _promised(d, now, last_sealed)
    assert len(pts) >= 2
    before = _states(d, pts)
    space = j.space_used(d)
    with pytest.raises(j.JournalError, match="served by a cdpd"):
        c.start()
        try:
            compact.compact(d, SIZE, TIERS, now)
        finally:
            c.stop()
    r = compact.compact(d, SIZE, TIERS, now)
    assert r.skipped is None and r.bytes_after < r.bytes_before and r.folded > 0
    assert j.space_used(d).journal_bytes < space.journal_bytes
    assert _states(d, pts) == before
    assert j.materialise(d, j.index_at(d, SIZE)) == bytes(w.model)
    c.start()
    assert c.volume_file.read_bytes() == bytes(w.model)
    w.run_for(0.3)  # and it goes on
    assert c.stop() == 0
    c.start()
    assert c.volume_file.read_bytes() == bytes(w.model)


def test_live_compaction_under_writes_then_sigkill_keeps_every_point_and_write(
    volume: Callable[..., cd.Cdpd],
) -> None:
    """cdpd serves writes while its sealed segments are compacted and remapped; every
    promised point reads as before, the mount serves the model of the acknowledged writes,
    the space shrinks, and a SIGKILL right after the switch recovers the same volume."""
    c = volume(segment_bytes=0, checkpoint_every=50)
    d = c.directory
    c.start()
    w = _Writer(c, 12)
    w.run_for(4.5, rotate_s=1.0)
    c.rotate()
    last_sealed = j.scan_volume(d, SIZE).last_t_ns
    now = last_sealed + 5 * NS
    pts = _promised(d, now, last_sealed)
    assert len(pts) >= 2
    before = _states(d, pts)
    with w:  # writing all along
        assert poll_until(lambda: w.count > 20, 10)
        r = compact.compact(d, SIZE, TIERS, now, live=c.name)
        n = w.count
        assert poll_until(lambda: w.count > n + 20, 10)  # still served after the switch
    assert r.skipped is None and r.bytes_after < r.bytes_before and r.folded > 0
    assert "remapped" in c.log_tail(50)
    assert not any((d / j.data_file(s)).exists() for s in r.replaced)
    assert c.volume_file.read_bytes() == bytes(w.model)
    assert _states(d, pts) == before
    c.kill()
    c.stop()
    c.start()
    assert c.volume_file.read_bytes() == bytes(w.model)
    assert j.materialise(d, j.index_at(d, SIZE)) == bytes(w.model)
    assert _states(d, pts) == before
    tl = tr.timeline(d, TIERS, now)
    assert tl[0].from_ns == pts[0]
