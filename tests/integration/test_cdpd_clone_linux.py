"""Clone and restore in constant time, for real: yunhan-cdpd serving a child volume from its
parent's view while it copies it in the background (root, FUSE).

The oracle is the parent's journal read by Python: the clone of a volume at time T must read
exactly `journal.materialise(index_at(T))`, as soon as its cdpd serves it, while the copy
runs, and after it, also after a SIGKILL and a restart in the middle of the copy. Writes of
the child during the copy win over it. Every cdpd and mount carries the run's prefix and
"yhclone", and is stopped and unmounted on teardown, also when a test fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from yunhan.errors import VolumeError
from yunhan.polling import poll_until
from yunhan.volume import cdpd as cd
from yunhan.volume import compact
from yunhan.volume import journal as j
from yunhan.volume import tiers as tr
from yunhan.volume.volumedir import FILL_MAP, PARENT_FILE, ParentRef, VolumeDir

pytestmark = pytest.mark.root

BLK = j.BLOCK
SIZE = 64 << 20
SLOW = 4 << 20  # bytes/s: the copy of a few MiB of parent data takes seconds

Start = Callable[..., cd.Cdpd]


@pytest.fixture
def start(tmp_path: Path, uniq: Callable[[str], str]) -> Iterator[Start]:
    """start(directory, mode=..., fill_rate=..., name=...) -> a started cdpd; the same name
    again restarts on the same mount. All stopped and unmounted on teardown."""
    made: list[cd.Cdpd] = []

    def make(
        directory: Path,
        *,
        mode: cd.Mode = "journal",
        fill_rate: int | None = None,
        name: str | None = None,
    ) -> cd.Cdpd:
        name = name or uniq("yhclone")
        c = cd.Cdpd(
            directory,
            tmp_path / "mnt" / name,
            size=SIZE,
            name=name,
            mode=mode,
            fill_rate=fill_rate,
            log=tmp_path / f"{name}.log",
        )
        made.append(c)
        return c.start()

    try:
        yield make
    finally:
        for c in made:
            c.stop()
        for c in made:
            assert not c.alive()
            assert cd.mount_source(c.mount) is None


def _write(c: cd.Cdpd, off: int, data: bytes) -> None:
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    fd = os.open(c.volume_file, os.O_WRONLY | os.O_DIRECT)
    try:
        assert os.pwritev(fd, [buf], off) == len(data)
    finally:
        os.close(fd)


def _read_all(c: cd.Cdpd) -> bytes:
    fd = os.open(c.volume_file, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 << 20)
    out = bytearray()
    try:
        for off in range(0, SIZE, 1 << 20):
            assert os.preadv(fd, [buf], off) == 1 << 20
            out += buf
    finally:
        os.close(fd)
    return bytes(out)


def _fill_done(c: cd.Cdpd, timeout: float = 30) -> None:
    done = poll_until(lambda: (s := c.stats()).fill == 1.0 and not s.parent, timeout)
    assert done, (c.stats(), c.log_tail())


def _source(pool: Path, start: Start, uniq: Callable[[str], str]) -> tuple[VolumeDir, cd.Cdpd]:
    """A protected volume with data in its base image (some of it left as holes) and a
    journal on top of it; its cdpd keeps running."""
    src = VolumeDir(pool, uniq("yhclone-src"))
    g1 = src.create(SIZE, fs=None)
    rnd = random.Random(7)
    with open(g1 / j.BASE_FILE, "r+b") as f:
        for off in range(0, SIZE, 8 << 20):  # 1 MiB of data every 8 MiB
            f.seek(off)
            f.write(rnd.randbytes(1 << 20))
    return src, start(g1)


def _scribble(c: cd.Cdpd, rnd: random.Random, n: int) -> None:
    for _ in range(n):
        off = rnd.randrange(SIZE // BLK - 16) * BLK
        _write(c, off, rnd.randbytes(BLK * rnd.randint(1, 16)))


def _expected(src: VolumeDir, at_ns: int) -> bytes:
    g = src.current()
    return j.materialise(g, j.index_at(g, SIZE, at_ns))


def _clone_point(src: VolumeDir, parent: cd.Cdpd) -> int:
    rnd = random.Random(11)
    _scribble(parent, rnd, 100)
    parent.checkpoint()  # the clone's view starts from it and replays what follows
    _scribble(parent, rnd, 50)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(parent.volume_file, os.O_WRONLY)
    try:  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: a ZERO record
        assert libc.fallocate(fd, 3, ctypes.c_long(3 << 20), ctypes.c_long(1 << 20)) == 0
    finally:
        os.close(fd)
    at = time.time_ns()
    _scribble(parent, rnd, 150)  # after the clone point: must not show in the clone
    return at


def test_a_clone_reads_the_source_as_it_was_at_once_and_after_the_copy(
    tmp_path: Path, start: Start, uniq: Callable[[str], str]
) -> None:
    src, parent = _source(tmp_path / "pool", start, uniq)
    at = _clone_point(src, parent)
    t0 = time.monotonic()
    clone = VolumeDir(tmp_path / "pool", uniq("yhclone-dst"))
    g1 = clone.clone_from(src, at)
    child = start(g1, fill_rate=SLOW)
    first = _read_all(child)
    ready_s = time.monotonic() - t0
    st = child.stats()
    assert st.parent and st.fill < 1.0, st  # served before the copy is done
    expected = _expected(src, at)
    assert first == expected
    assert ready_s < 5
    assert "checkpoint at 100 + 51 records" in child.log_tail()
    _fill_done(child)
    assert _read_all(child) == expected
    assert not (g1 / PARENT_FILE).exists() and not (g1 / FILL_MAP).exists()
    # the child's own base is now the parent's view, and holes stayed holes
    assert (g1 / j.BASE_FILE).read_bytes() == expected
    assert os.stat(g1 / j.BASE_FILE).st_blocks * 512 < SIZE // 2
    # the parent kept serving, and its hold goes once the copy is done
    assert parent.alive() and src.holds(1)
    src.cleanup()
    assert src.holds(1) == [] and src.current().is_dir()
    # a restart of the child after the copy reads the same, from its own base
    child.stop()
    assert _read_all(start(g1, name=child.name)) == expected


@pytest.mark.parametrize("mode", ["journal", "plain"])
def test_writes_of_the_clone_during_the_copy_win(
    tmp_path: Path, start: Start, uniq: Callable[[str], str], mode: cd.Mode
) -> None:
    src, parent = _source(tmp_path / "pool", start, uniq)
    at = _clone_point(src, parent)
    g1 = VolumeDir(tmp_path / "pool", uniq("yhclone-dst")).clone_from(src, at)
    child = start(g1, mode=mode, fill_rate=SLOW)
    expected = bytearray(_expected(src, at))
    # blocks with parent data, most of them ahead of the copy (which goes up from block 0)
    mine = {SIZE - (8 << 20) + k * BLK: random.Random(k).randbytes(BLK) for k in range(0, 256, 3)}
    mine[0] = b"z" * BLK
    for off, data in mine.items():
        _write(child, off, data)
        expected[off : off + BLK] = data
    assert child.stats().fill < 1.0
    assert _read_all(child) == expected
    _fill_done(child)
    assert _read_all(child) == expected
    base = (g1 / j.BASE_FILE).read_bytes()
    if mode == "plain":
        assert base == expected  # written in place, never copied over
    else:
        assert base == _expected(src, at)  # the journal's start is the parent's view


@pytest.mark.parametrize("mode", ["journal", "plain"])
def test_a_sigkill_during_the_copy_resumes_and_ends_identical(
    tmp_path: Path, start: Start, uniq: Callable[[str], str], mode: cd.Mode
) -> None:
    src, parent = _source(tmp_path / "pool", start, uniq)
    at = _clone_point(src, parent)
    g1 = VolumeDir(tmp_path / "pool", uniq("yhclone-dst")).clone_from(src, at)
    child = start(g1, mode=mode, fill_rate=SLOW)
    expected = bytearray(_expected(src, at))
    for k in range(8):  # acknowledged writes of the child must survive the kill
        off = SIZE - (1 << 20) - k * (1 << 20)
        data = random.Random(100 + k).randbytes(2 * BLK)
        _write(child, off, data)
        expected[off : off + len(data)] = data
    assert poll_until(lambda: 0.3 < child.stats().fill < 0.9, 20), child.stats()
    child.kill()
    child.stop()
    assert (g1 / PARENT_FILE).exists() and (g1 / FILL_MAP).exists()
    again = start(g1, mode=mode, name=child.name)
    assert "already held" in again.log_tail()
    assert again.stats().fill > 0.3  # resumed, not started over
    assert _read_all(again) == expected
    _fill_done(again)
    assert _read_all(again) == expected


def test_restore_in_place_makes_a_new_generation_and_drops_the_old(
    tmp_path: Path, start: Start, uniq: Callable[[str], str]
) -> None:
    src, parent = _source(tmp_path / "pool", start, uniq)
    at = _clone_point(src, parent)
    expected = _expected(src, at)
    assert parent.stop() == 0  # detached
    g2 = src.restore_to(at)
    assert g2 == src.current() and g2.name == "g2" and src.holds(1)
    child = start(g2, fill_rate=SLOW)
    assert child.stats().parent
    assert _read_all(child) == expected
    assert src.cleanup() == []  # g1 is still read by g2
    _fill_done(child)
    removed = src.cleanup()
    assert src.generation_dir(1) in removed and src.generations() == [2]
    _write(child, 0, b"after" * 800 + bytes(96))
    child.stop()
    again = start(g2, name=child.name)
    assert _read_all(again)[BLK:] == expected[BLK:]


# Threads writing numbered records through a loop device (so that cdpd sees them
# concurrently, as from a guest) onto the parent's data, while the copy runs.
WRITER = r"""
import mmap, os, sys, threading
path, threads, stride, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
def run(k):
    buf = mmap.mmap(-1, 4096)
    for i in range(n):
        buf[:] = ((b"clone %02d %06d;" % (k, i)) * 300)[:4096]
        os.pwritev(fd, [buf], (k * stride + i) * 4096)
ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
"""


@pytest.mark.parametrize("mode", ["journal", "plain"])
def test_concurrent_writes_through_a_loop_device_race_the_copy_and_win(
    tmp_path: Path, start: Start, uniq: Callable[[str], str], mode: cd.Mode
) -> None:
    src, parent = _source(tmp_path / "pool", start, uniq)
    at = _clone_point(src, parent)
    g1 = VolumeDir(tmp_path / "pool", uniq("yhclone-dst")).clone_from(src, at)
    child = start(g1, mode=mode, fill_rate=8 << 20)
    threads, stride, n = 4, (16 << 20) // BLK, 256  # onto the base data at 0, 16, 32, 48 MiB
    dev = subprocess.run(
        ["losetup", "--show", "-f", "--direct-io=on", "--sector-size", "4096", child.volume_file],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        assert child.stats().fill < 1.0  # the writes start while the copy runs
        subprocess.run(
            [sys.executable, "-c", WRITER, dev, str(threads), str(stride), str(n)],
            check=True,
            timeout=60,
        )
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        assert poll_until(
            lambda: (
                dev + ":"
                not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
            ),
            10,
        )
    expected = bytearray(_expected(src, at))
    for k in range(threads):
        for i in range(n):
            off = (k * stride + i) * BLK
            expected[off : off + BLK] = ((b"clone %02d %06d;" % (k, i)) * 300)[:BLK]
    _fill_done(child)
    assert _read_all(child) == expected
    child.stop()
    assert _read_all(start(g1, mode=mode, name=child.name)) == expected


# ----- parents whose journal has segments, or was compacted --------------------------------


def test_a_clone_reads_through_every_segment_of_its_parent(
    tmp_path: Path, start: Start, uniq: Callable[[str], str]
) -> None:
    """The parent rotates between writes (a checkpoint in its second segment): a clone at a
    time in its third segment starts from that checkpoint, one at a time in the second
    starts from the journal's start (the checkpoint is after it); both read exactly
    index_at(T), also while the parent goes on writing and rotating, and after the copy."""
    src, parent = _source(tmp_path / "pool", start, uniq)
    rnd = random.Random(13)
    _scribble(parent, rnd, 60)
    assert parent.rotate() == 1
    _scribble(parent, rnd, 30)
    early = time.time_ns()
    _scribble(parent, rnd, 30)
    assert parent.checkpoint() == 120
    assert parent.rotate() == 2
    _scribble(parent, rnd, 40)
    late = time.time_ns()
    _scribble(parent, rnd, 30)  # after the point, in the same segment
    parent.rotate()
    _scribble(parent, rnd, 30)
    pool = tmp_path / "pool"
    children = []
    for at, line in ((late, "checkpoint at 120 + 40 records"), (early, "checkpoint at 0 + 90")):
        g1 = VolumeDir(pool, uniq("yhclone-dst")).clone_from(src, at)
        child = start(g1, fill_rate=SLOW)
        expected = _expected(src, at)
        assert _read_all(child) == expected
        assert child.stats().parent
        assert line in child.log_tail()
        children.append((child, expected))
    parent.rotate()  # the parent goes on meanwhile
    _scribble(parent, rnd, 30)
    assert j.read_layout(src.current()).numbers == (0, 1, 2, 3, 4)
    for child, expected in children:
        _fill_done(child)
        assert _read_all(child) == expected


TIERS = tr.parse("4s:1s,12s:2s,30s:6s")


def test_a_clone_of_a_compacted_parent_reads_every_promised_point(
    tmp_path: Path, start: Start, uniq: Callable[[str], str]
) -> None:
    """The parent's sealed segments were compacted (older records folded into its base, the
    rest in compacted segment 32767 with gaps in its seqs): a clone at each promised point
    reads what index_at read there before the compaction, also from a seq that the
    compaction dropped (the view is then the state after the kept record before it). While
    the clone copies, the parent is held (its compaction is skipped) and the child itself
    is not compacted (compact.py skips it, cdpd refuses the remap)."""
    pool = tmp_path / "pool"
    t0 = time.time_ns() - 300 * tr.NS  # records with injected times, 5 minutes ago
    clock = [t0]
    src = VolumeDir(pool, uniq("yhclone-src"), clock=lambda: clock[0])
    g = src.create(SIZE, fs=None)
    clock[0] = time.time_ns()
    rnd = random.Random(21)
    t = t0
    with j.Writer(g, SIZE) as w:
        for i in range(400):  # 20 s of writes onto 64 blocks, a segment every 4 s
            t += 50_000_000
            w.write(rnd.randrange(64) * BLK, rnd.randbytes(BLK), t)
            if i % 80 == 79:
                w.rotate()
        w.sync()
    now = t + 5 * tr.NS
    pts = [p for p in tr.points(TIERS, j.journal_start(g, now), now) if p < t]
    assert len(pts) >= 3
    before = {p: j.index_at(g, SIZE, p) for p in pts}
    states = {p: j.materialise(g, ix) for p, ix in before.items()}
    r = compact.compact(g, SIZE, TIERS, now)
    assert r.skipped is None and r.folded > 0 and r.segment == j.MAX_SEGMENT - 1, r
    assert j.read_layout(g).segments[0] == j.Segment(j.MAX_SEGMENT - 1, compacted=True)
    kept = {rec.seq for rec in j.scan_volume(g, SIZE).records}
    parent = start(g)
    _scribble(parent, rnd, 20)  # real times, after every point
    parent.rotate()
    _scribble(parent, rnd, 20)

    at = pts[len(pts) // 2]
    g1 = VolumeDir(pool, uniq("yhclone-dst")).clone_from(src, at)
    child = start(g1, fill_rate=128 << 10)  # a few hundred KiB of parent data: seconds
    assert _read_all(child) == states[at]
    assert child.stats().parent
    held = compact.compact(g, SIZE, TIERS, time.time_ns() + 60 * tr.NS, live=parent.name)
    assert held.skipped and held.skipped.startswith("held by"), held
    assert compact.compact(g1, SIZE, TIERS, now, live=child.name).skipped == (
        "still filling from its parent"
    )
    with pytest.raises(VolumeError, match="still fills from its parent"):
        cd.control(child.name, "remap")
    _fill_done(child)
    assert _read_all(child) == states[at]

    # every promised point, from the seq it had before the compaction (some were dropped)
    gaps = 0
    for p in pts:
        d = cd.create_volume(tmp_path / uniq("yhclone-raw"), SIZE)
        (d / PARENT_FILE).write_bytes(ParentRef(g, before[p].seq, SIZE).encode())
        raw = start(d)
        assert _read_all(raw) == states[p], p
        gaps += before[p].seq not in kept
        raw.stop()
    assert gaps > 0  # the gap case was exercised
