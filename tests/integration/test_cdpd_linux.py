"""yunhan-cdpd for real: FUSE, O_DIRECT, loop devices, SIGKILL (root).

Two ways in, chosen per test:
* Through a loop device (direct-io, 4 KiB sectors: what instances will use) opened
  O_DIRECT | O_DSYNC by several writer threads: the loop device submits its I/O to the FUSE
  file asynchronously, so cdpd sees concurrent WRITEs and FLUSHes and its group commit is
  exercised; a record is acknowledged when its pwrite returned (write, then flush, done).
* Directly on the FUSE file with O_DIRECT | O_DSYNC, one writer: each record is one WRITE
  with nothing cached in between, so the times taken around each pwrite bound exactly when
  cdpd acknowledged it. (Synchronous O_DIRECT writes on one FUSE inode are serialised by the
  kernel's inode lock, which is why the concurrent test goes through loop.)
A filesystem on the loop device is checked separately (mkfs, mount, fsck) below.

Every process, mount, loop device and file carries the run's prefix and is removed on
teardown, also when a test fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from yunhan.errors import VolumeError
from yunhan.polling import poll_until
from yunhan.volume import cdpd as cd
from yunhan.volume import journal as j

pytestmark = pytest.mark.root

BLK = j.BLOCK
SIZE = 16 << 20

# A writer of numbered records: THREADS threads, thread k writes its record i to block
# k * STRIDE + i (O_DIRECT | O_DSYNC) and prints "k i" once pwrite returned; the first
# error ends the thread ("err k i errno").
WRITER = r"""
import mmap, os, sys, threading
path, threads, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
out = sys.stdout.fileno()
def record(k, i):
    return ((b"rec %02d %08d;" % (k, i)) * 400)[:4096]
def run(k):
    buf = mmap.mmap(-1, 4096)
    for i in range(stride):
        buf[:] = record(k, i)
        try:
            os.pwritev(fd, [buf], (k * stride + i) * 4096)
        except OSError as e:
            os.write(out, b"err %d %d %d\n" % (k, i, e.errno))
            return
        os.write(out, b"%d %d\n" % (k, i))
ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
"""


def _record(k: int, i: int) -> bytes:
    return ((b"rec %02d %08d;" % (k, i)) * 400)[:BLK]


@pytest.fixture
def volume(tmp_path: Path, uniq: Callable[[str], str]) -> Iterator[Callable[..., cd.Cdpd]]:
    """make(mode) -> a started cdpd on a fresh volume directory, named with the run's
    prefix; every one made is stopped and its mount removed on teardown."""
    made: list[cd.Cdpd] = []

    def make(mode: cd.Mode = "journal", durability: cd.Durability = "strict") -> cd.Cdpd:
        name = uniq("cdpd")
        d = cd.create_volume(tmp_path / name / "vol", SIZE)
        c = cd.Cdpd(
            d, tmp_path / name / "mnt", size=SIZE, name=name, mode=mode, durability=durability
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


@contextmanager
def _loop(path: Path) -> Iterator[str]:
    dev = subprocess.run(
        ["losetup", "--show", "-f", "--direct-io=on", "--sector-size", "4096", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
        gone = poll_until(
            lambda: (
                dev + ":"
                not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
            ),
            10,
        )
        assert gone, f"{dev} is still attached"


def _stats(c: cd.Cdpd) -> dict[str, int]:
    line = next(x for x in reversed(c.log_tail(5).splitlines()) if "stopped:" in x)
    return {k: int(v) for k, v in (w.split("=") for w in line.split("stopped:")[1].split())}


def _aligned(data: bytes) -> mmap.mmap:
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    return buf


def test_concurrent_writes_share_fdatasyncs(volume: Callable[..., cd.Cdpd]) -> None:
    c = volume()
    with _loop(c.volume_file) as dev:
        subprocess.run([sys.executable, "-c", WRITER, dev, "4", "128"], check=True, timeout=60)
    st = c.stats()  # the control socket
    assert (st.name, st.mode, st.durability, st.size) == (c.name, "journal", "strict", SIZE)
    assert st.writes == 4 * 128
    assert st.seq == st.writes + st.flushes  # a record each, flush markers included
    assert st.durable_seq == st.seq and not st.failed
    assert st.syncs < st.seq  # group commit: some fdatasyncs covered several records
    assert st.data_bytes >= 4 * 128 * BLK and st.header_bytes >= st.seq * j.HEADER_SIZE
    assert c.checkpoint() == st.seq
    assert poll_until(lambda: j.checkpoints(c.directory), 5)
    assert c.stop() == 0
    assert _stats(c)["seq"] == st.seq  # the same counters in the log at the stop


@pytest.mark.parametrize(
    ("durability", "how"), [("strict", "SIGKILL"), ("flush", "SIGKILL"), ("strict", "SIGTERM")]
)
def test_a_kill_or_stop_mid_stream_loses_no_acknowledged_write(
    volume: Callable[..., cd.Cdpd], durability: cd.Durability, how: str
) -> None:
    """Both durabilities survive SIGKILL (strict also survives power loss, which cannot be
    tested here): a write is answered only once its header is in the kernel. A SIGTERM under
    the same load (a stop while the loop device is still attached) keeps them too."""
    c = volume(durability=durability)
    threads, stride = 4, 1024
    acks: list[str] = []
    with _loop(c.volume_file) as dev:
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, dev, str(threads), str(stride)],
            stdout=subprocess.PIPE,
        )
        watchdog = threading.Timer(30, writer.kill)
        watchdog.start()
        try:
            # Kill cdpd mid-stream: once a few hundred records are acknowledged. The rest of
            # the acknowledgements are read from the same buffered stream, to its end (the
            # writer ends once every thread's write failed).
            assert writer.stdout is not None
            lines = iter(writer.stdout)
            for line in lines:
                acks.append(line.decode())
                if len(acks) >= 400:
                    break
            if how == "SIGKILL":
                c.kill()
            else:
                assert c.stop() == 0, c.log_tail()
            acks += [line.decode() for line in lines]
            writer.wait()
        finally:
            watchdog.cancel()
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    done: dict[int, int] = {}
    errors = []
    for line in acks:
        parts = line.split()
        if parts[0] == "err":
            errors.append(parts)
        else:
            k, i = int(parts[0]), int(parts[1])
            done[k] = max(done.get(k, -1), i)
    assert len(errors) == threads, acks[-8:]  # every thread saw its write fail after the kill
    assert sum(i + 1 for i in done.values()) >= 400

    c.stop()  # unmount what the dead process left
    c.start()  # recovers the journal
    data = c.volume_file.read_bytes()
    for k in range(threads):
        last = done.get(k, -1)
        for i in range(last + 1):
            got = data[(k * stride + i) * BLK :][:BLK]
            assert got == _record(k, i), f"acknowledged record {k}/{i} is missing"
        # The write in flight at the kill may or may not be there; nothing after it.
        nxt = data[(k * stride + last + 1) * BLK :][:BLK]
        assert nxt in (_record(k, last + 1), bytes(BLK))
        assert (
            data[(k * stride + last + 2) * BLK :][: (stride - last - 2) * BLK].count(0)
            == (stride - last - 2) * BLK
        )
    # The Python reader sees the same journal the C writer recovered: every record checks
    # (data crc32c included) and the volume it materialises is the one cdpd serves.
    s = j.scan_volume(c.directory, SIZE, verify_data=True)
    assert s.stop == "end"
    assert j.materialise(c.directory, j.index_at(c.directory, SIZE)) == data
    assert c.stop() == 0
    assert "stopped:" in c.log_tail()


def test_the_volume_at_t_holds_exactly_the_writes_acknowledged_before_t(
    volume: Callable[..., cd.Cdpd],
) -> None:
    """Random writes and discards through cdpd, each timed before it is sent and after it
    is acknowledged; for many T the volume materialised by journal.py at T must be the
    model of the writes acknowledged by T, plus at most the one in flight at T."""
    c = volume()
    rnd = random.Random(12)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(c.volume_file, os.O_RDWR | os.O_DIRECT | os.O_DSYNC)
    log: list[tuple[int, int, int, bytes | None, int]] = []  # sent, acked, off, data, length
    try:
        for _ in range(300):
            b, n = rnd.randrange(32), rnd.randint(1, 4)
            sent = time.time_ns()
            if rnd.random() < 0.1:  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                rc = libc.fallocate(fd, 3, ctypes.c_long(b * BLK), ctypes.c_long(n * BLK))
                assert rc == 0, os.strerror(ctypes.get_errno())
                log.append((sent, time.time_ns(), b * BLK, None, n * BLK))
            else:
                data = rnd.randbytes(n * BLK)
                assert os.pwritev(fd, [_aligned(data)], b * BLK) == len(data)
                log.append((sent, time.time_ns(), b * BLK, data, len(data)))
    finally:
        os.close(fd)
    assert c.stop() == 0
    base = bytes(SIZE)

    def model(entries: list[tuple[int, int, int, bytes | None, int]]) -> bytes:
        img = bytearray(base[: 40 * BLK])
        for _, _, off, data, length in entries:
            img[off : off + length] = data if data is not None else bytes(length)
        return bytes(img)

    probes = [log[0][0] - 1, *(rnd.choice(log)[1] for _ in range(25))]
    probes += [(e[0] + e[1]) // 2 for e in rnd.sample(log, 15)]  # inside a write's flight
    probes.append(log[-1][1] + 1)
    for when in probes:
        acked = [e for e in log if e[1] <= when]
        flying = [e for e in log if e[0] <= when < e[1]]
        assert len(flying) <= 1
        got = j.read_blocks(c.directory, j.index_at(c.directory, SIZE, when), 0, 40)
        assert got in (model(acked), model(acked + flying)), when


@pytest.mark.parametrize("mode", ["journal", "plain"])
def test_a_loop_device_carries_ext4_on_cdpd(
    volume: Callable[..., cd.Cdpd], tmp_path: Path, mode: cd.Mode
) -> None:
    """What later slices build on: a direct-io loop device with 4 KiB sectors on the volume
    file takes mkfs (discards become zero records), a mount, fsynced files, and fsck -f."""
    c = volume(mode=mode)
    fs = tmp_path / "fs"
    fs.mkdir()
    with _loop(c.volume_file) as loop:
        subprocess.run(["mkfs.ext4", "-q", "-F", loop], check=True)
        subprocess.run(["mount", loop, fs], check=True)
        try:
            payload = random.Random(5).randbytes(3 << 20)
            with open(fs / "f", "wb") as f:
                f.write(payload)
                os.fsync(f.fileno())
        finally:
            subprocess.run(["umount", fs], check=True)
        subprocess.run(["fsck.ext4", "-fn", loop], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "ro", loop, fs], check=True)
        try:
            assert (fs / "f").read_bytes() == payload
        finally:
            subprocess.run(["umount", fs], check=True)
    if mode == "journal":
        served = c.volume_file.read_bytes()
        assert c.stop() == 0
        assert j.materialise(c.directory, j.index_at(c.directory, SIZE)) == served
        assert any(r.kind is j.Kind.ZERO for r in j.scan_volume(c.directory, SIZE).records)


def test_a_second_cdpd_on_a_served_volume_is_refused_and_leaves_nothing(
    volume: Callable[..., cd.Cdpd], tmp_path: Path, uniq: Callable[[str], str]
) -> None:
    c = volume()
    other = cd.Cdpd(c.directory, tmp_path / "other", size=SIZE, name=uniq("cdpd"))
    with pytest.raises(VolumeError, match="another yunhan-cdpd serves this volume"):
        other.start()
    assert not other.alive()
    assert cd.mount_source(other.mount) is None
    # Nor can anything start on a mount point that is in use.
    same = cd.Cdpd(c.directory, c.mount, size=SIZE, name=uniq("cdpd"))
    with pytest.raises(VolumeError, match="already a mount point"):
        same.start()
    assert c.volume_file.stat().st_size == SIZE  # the first one still serves


def _damaged_journals(d: Path) -> Iterator[str]:
    """Damage the journal in `d` in many ways, one at a time, yielding a label each time
    (the files are restored before the next)."""
    hf, df = d / j.header_file(), d / j.data_file()
    headers, data = hf.read_bytes(), df.read_bytes()
    n = len(headers) // j.HEADER_SIZE
    cuts = sorted(
        {0, 1, 47, len(headers), *(k * j.HEADER_SIZE + o for k in range(n) for o in (0, 29))}
    )
    for cut in cuts:
        hf.write_bytes(headers[:cut])
        yield f"header log cut at {cut}"
    hf.write_bytes(headers)
    for cut in range(0, len(data) + 1, 3 * BLK + 1):
        df.write_bytes(data[:cut])
        yield f"data log cut at {cut}"
    df.write_bytes(data)
    for k in range(0, n, 2):
        bad = bytearray(headers)
        bad[k * j.HEADER_SIZE + 9] ^= 0x10  # in seq
        hf.write_bytes(bytes(bad))
        yield f"header {k} damaged"
    hf.write_bytes(headers)
    for pos in range(100, len(data), 5 * BLK):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        df.write_bytes(bytes(bad))
        yield f"data byte {pos} damaged"
    df.write_bytes(data)


def test_cdpd_and_journal_py_agree_on_where_a_damaged_journal_ends(
    tmp_path: Path, uniq: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Differential, C against Python: a journal written by journal.Writer, damaged in many
    ways (cuts, flipped header and data bytes); cdpd's recovery must keep exactly the records
    journal.py keeps (data crc32c checked by both; cdpd's table and SSE4.2 paths alternate)
    and serve the volume journal.py materialises."""
    rnd = random.Random(3)
    name = uniq("cdpd")
    d = cd.create_volume(tmp_path / name / "vol", SIZE)
    with open(d / j.BASE_FILE, "r+b") as f:
        f.write(rnd.randbytes(48 * BLK))
    with j.Writer(d, SIZE) as w:
        for t in range(1, 25):
            b, n = rnd.randrange(40), rnd.randint(1, 4)
            if t % 7 == 0:
                w.zero(b * BLK, n * BLK, t)
            elif t % 5 == 0:
                w.flush(t)
            else:
                w.write(b * BLK, rnd.randbytes(n * BLK), t)
    pristine = {p.name: p.read_bytes() for p in d.iterdir()}
    c = cd.Cdpd(d, tmp_path / name / "mnt", size=SIZE, name=name)
    try:
        for i, label in enumerate(_damaged_journals(d)):
            expect_scan = j.scan_volume(d, SIZE, verify_data=True)
            expect = j.read_blocks(d, j.index_at(d, SIZE, verify_data=True), 0, 48)
            monkeypatch.setenv("YUNHAN_CDPD_SOFT_CRC", str(i % 2))
            c.start()
            with open(c.volume_file, "rb") as f:
                served = f.read(48 * BLK)
            assert c.stop() == 0, c.log_tail()
            assert served == expect, label
            assert (d / j.header_file()).stat().st_size == expect_scan.end, label
            # cdpd cut the header log at the end of what it kept and left a checkpoint at its
            # clean stop: the next case starts from the pristine header log, no checkpoint.
            (d / j.header_file()).write_bytes(pristine[j.header_file()])
            for _, ck in j.checkpoints(d):
                ck.unlink()
    finally:
        c.stop()


def test_sigkill_under_ext4_keeps_every_fsynced_record(
    volume: Callable[..., cd.Cdpd], tmp_path: Path
) -> None:
    """The issue's writer: numbered records appended to a file of ext4 on a loop device on
    cdpd, each fsynced, then logged. SIGKILL cdpd; the filesystem sees EIO (the kernel aborts
    the FUSE connection). Recovery as the agent will do it without the descriptor handover
    (spec 12 §10): lazy unmount, detach, unmount the dead FUSE mount, restart cdpd, new loop,
    mount (ext4 replays its journal); every acknowledged record is there, in order."""
    c = volume()
    fs = tmp_path / "fs"
    fs.mkdir()
    writer_src = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1\n"
        "    try:\n"
        "        os.write(fd, b'%010d\\n' % n)\n"
        "        os.fsync(fd)\n"
        "    except OSError:\n"
        "        break\n"
        "    os.write(1, b'%d\\n' % n)\n"
    )
    acked = 0
    with _loop(c.volume_file) as dev:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", dev], check=True)
        subprocess.run(["mount", dev, fs], check=True)
        try:
            w = subprocess.Popen(
                [sys.executable, "-c", writer_src, str(fs / "records")], stdout=subprocess.PIPE
            )
            watchdog = threading.Timer(30, w.kill)
            watchdog.start()
            try:
                assert w.stdout is not None
                lines = iter(w.stdout)
                for line in lines:
                    acked = int(line)
                    if acked >= 200:
                        break
                c.kill()
                acked = max([acked, *(int(line) for line in lines)])
                w.wait()
            finally:
                watchdog.cancel()
                if w.poll() is None:
                    w.kill()
                    w.wait()
        finally:
            subprocess.run(["umount", "-l", fs], check=False)
    c.stop()
    c.start()
    with _loop(c.volume_file) as dev:
        subprocess.run(["mount", dev, fs], check=True)
        try:
            records = [int(x) for x in (fs / "records").read_bytes().split()]
        finally:
            subprocess.run(["umount", fs], check=True)
        subprocess.run(["fsck.ext4", "-fn", dev], check=True, capture_output=True)
    assert acked >= 200
    assert records[:acked] == list(range(1, acked + 1))
    assert len(records) <= acked + 1  # at most the record in flight at the kill


def test_cdpd_checkpoints_are_journal_py_checkpoints_and_restarts_replay_only_after_them(
    tmp_path: Path, uniq: Callable[[str], str]
) -> None:
    """cdpd checkpoints every 50 records: each one, read by journal.py, is the index
    journal.py computes at its time; a restart after SIGKILL starts from the newest and
    serves the same volume as a restart with no checkpoint at all (incremental equals full);
    a clean stop leaves a checkpoint at its last record, so the next start replays nothing."""
    rnd = random.Random(8)
    name = uniq("cdpd")
    d = cd.create_volume(tmp_path / name / "vol", SIZE)
    c = cd.Cdpd(d, tmp_path / name / "mnt", size=SIZE, name=name, checkpoint_every=50)
    try:
        c.start()
        fd = os.open(c.volume_file, os.O_WRONLY | os.O_DIRECT)
        try:
            for _ in range(230):
                b = rnd.randrange(64)
                os.pwritev(fd, [_aligned(rnd.randbytes(BLK))], b * BLK)
        finally:
            os.close(fd)
        assert poll_until(lambda: len(j.checkpoints(d)) >= 4, 10)
        c.kill()
        for seq, path in j.checkpoints(d):
            ck = j.read_checkpoint(path, SIZE)
            assert ck.seq == seq
            full = j.index_at(d, SIZE, ck.t_ns)
            assert (full.seq, full.hpos, full.blocks) == (ck.seq, ck.hpos, ck.blocks)
        newest = j.checkpoints(d)[-1][0]
        c.stop()
        c.start()
        assert f"checkpoint at {newest} + {230 - newest} records" in c.log_tail(2)
        served = c.volume_file.read_bytes()
        assert c.stop() == 0
        assert j.checkpoints(d)[-1][0] == 230  # the clean stop's
        for _, path in j.checkpoints(d):
            path.unlink()
        c.start()
        assert "checkpoint at 0 + 230 records" in c.log_tail(2)
        assert c.volume_file.read_bytes() == served
        assert c.stop() == 0
        c.start()
        assert "checkpoint at 230 + 0 records" in c.log_tail(2)
        assert c.volume_file.read_bytes() == served
    finally:
        c.stop()
    assert j.materialise(d, j.index_at(d, SIZE)) == served


def test_under_concurrent_writers_the_volume_at_t_keeps_every_write_acknowledged_by_t(
    volume: Callable[..., cd.Cdpd],
) -> None:
    """Four threads overwrite their own 8 blocks through a loop device (O_DIRECT | O_DSYNC),
    each write tagged with its version and timed around pwrite. At many T, every block of the
    volume materialised at T holds the last version acknowledged by T, or the one version
    in flight at T (each thread has at most one); never an older or a later one."""
    c = volume()
    threads, per, writes = 4, 8, 120
    log: list[list[tuple[int, int, int, int]]] = [[] for _ in range(threads)]

    def tag(b: int, v: int) -> bytes:
        return ((b"blk %04d v %06d;" % (b, v)) * 300)[:BLK]

    def run(k: int, fd: int) -> None:
        rnd = random.Random(k)
        buf = mmap.mmap(-1, BLK)
        for v in range(writes):
            b = k * per + rnd.randrange(per)
            buf[:] = tag(b, v)
            sent = time.time_ns()
            os.pwritev(fd, [buf], b * BLK)
            log[k].append((b, v, sent, time.time_ns()))

    with _loop(c.volume_file) as dev:
        fd = os.open(dev, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
        try:
            ts = [threading.Thread(target=run, args=(k, fd)) for k in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        finally:
            os.close(fd)
    assert c.stop() == 0
    entries = [e for per_thread in log for e in per_thread]
    assert len(entries) == threads * writes
    rnd = random.Random(1)
    probes = [rnd.choice(entries)[3] for _ in range(15)]
    probes += [(e[2] + e[3]) // 2 for e in rnd.sample(entries, 15)]
    for when in probes:
        img = j.read_blocks(c.directory, j.index_at(c.directory, SIZE, when), 0, threads * per)
        for b in range(threads * per):
            mine = [e for e in entries if e[0] == b]
            acked = [v for _, v, _, a in mine if a <= when]
            allowed = {tag(b, max(acked)) if acked else bytes(BLK)}
            allowed |= {tag(b, v) for _, v, s, a in mine if s <= when < a}
            assert img[b * BLK : (b + 1) * BLK] in allowed, (when, b)
