"""The CDP journal (yunhan/volume/journal.py): format, torn tails, index_at(T) against a model."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from yunhan.volume import journal as j

BLK = j.BLOCK
SIZE = 16 * BLK  # a 64 KiB volume: small enough to materialise at every step


def _volume(tmp_path: Path, seed: int = 1) -> tuple[Path, bytes]:
    base = random.Random(seed).randbytes(SIZE)
    (tmp_path / j.BASE_FILE).write_bytes(base)
    return tmp_path, base


def _model(base: bytes, ops: list[tuple[str, int, bytes | int]]) -> bytes:
    img = bytearray(base)
    for kind, off, arg in ops:
        if kind == "w":
            assert isinstance(arg, bytes)
            img[off : off + len(arg)] = arg
        elif kind == "z":
            assert isinstance(arg, int)
            img[off : off + arg] = bytes(arg)
    return bytes(img)


def _small_journal(d: Path) -> list[j.Record]:
    """Six records of every kind, data of one and two blocks."""
    with j.Writer(d, SIZE) as w:
        return [
            w.write(0, b"a" * BLK, 100),
            w.write(2 * BLK, b"b" * 2 * BLK, 200),
            w.flush(300),
            w.zero(BLK, 3 * BLK, 400)[0],
            w.write(BLK, b"c" * BLK, 500),
            w.flush(600),
        ]


def test_crc32c_matches_the_castagnoli_check_value() -> None:
    assert j.crc32c(b"123456789") == 0xE3069283
    assert j.crc32c(b"") == 0


def test_a_header_round_trips_and_any_flipped_bit_is_refused() -> None:
    for rec in [
        j.Record(7, 123, j.Kind.DATA, 8192, 4096, 0xDEADBEEF, (3 << 48) | 4096),
        j.Record(8, 124, j.Kind.ZERO, 0, j.MAX_ZERO),
        j.Record(9, 125, j.Kind.FLUSH),
    ]:
        raw = rec.encode()
        assert len(raw) == j.HEADER_SIZE
        assert j.decode(raw) == rec
        for bit in range(len(raw) * 8):
            bad = bytearray(raw)
            bad[bit // 8] ^= 1 << (bit % 8)
            assert j.decode(bytes(bad)) is None, bit


def test_the_writer_appends_what_a_scan_reads_back_and_reopening_continues(
    tmp_path: Path,
) -> None:
    d, _ = _volume(tmp_path)
    recs = _small_journal(d)
    s = j.scan_volume(d, SIZE, verify_data=True)
    assert s.records == tuple(recs)
    assert (s.stop, s.last_seq, s.end) == ("end", 6, 6 * j.HEADER_SIZE)
    with j.Writer(d, SIZE) as w:
        rec = w.write(3 * BLK, b"d" * BLK, 50)  # a time before the last: clamped
    assert (rec.seq, rec.t_ns) == (7, 601)
    assert j.scan_volume(d, SIZE, verify_data=True).last_seq == 7


def test_the_writer_refuses_records_that_would_not_check(tmp_path: Path) -> None:
    d, _ = _volume(tmp_path)
    with j.Writer(d, SIZE) as w:
        with pytest.raises(j.JournalError, match="aligned"):
            w.write(100, b"x" * BLK, 1)
        with pytest.raises(j.JournalError, match="past the volume"):
            w.write(SIZE, b"x" * BLK, 1)
        with pytest.raises(j.JournalError, match="at most"):
            w.write(0, bytes(j.MAX_DATA + BLK), 1)
        assert w.seq == 0


def test_a_header_log_cut_at_any_byte_keeps_exactly_the_whole_records(tmp_path: Path) -> None:
    d, base = _volume(tmp_path)
    recs = _small_journal(d)
    full = (d / j.header_file()).read_bytes()
    ops: list[tuple[str, int, bytes | int]] = [
        ("w", 0, b"a" * BLK),
        ("w", 2 * BLK, b"b" * 2 * BLK),
        ("f", 0, 0),
        ("z", BLK, 3 * BLK),
        ("w", BLK, b"c" * BLK),
        ("f", 0, 0),
    ]
    for cut in range(len(full) + 1):
        (d / j.header_file()).write_bytes(full[:cut])
        n = cut // j.HEADER_SIZE
        s = j.scan_volume(d, SIZE)
        assert s.records == tuple(recs[:n]), cut
        assert s.end == n * j.HEADER_SIZE
        assert (s.stop == "end") == (cut % j.HEADER_SIZE == 0), (cut, s.stop)
        assert j.materialise(d, j.index_at(d, SIZE)) == _model(base, ops[:n]), cut


def test_a_data_log_cut_at_any_byte_ends_the_journal_before_the_first_missing_data(
    tmp_path: Path,
) -> None:
    d, _ = _volume(tmp_path)
    recs = _small_journal(d)
    full = (d / j.data_file()).read_bytes()
    assert len(full) == 4 * BLK
    for cut in range(len(full), -1, -1):  # every byte, shrinking
        os.truncate(d / j.data_file(), cut)
        s = j.scan_volume(d, SIZE)
        # A record is kept while its data is whole; the first short one ends the journal.
        keep = 0
        for r in recs:
            if r.kind is j.Kind.DATA and j.split_dpos(r.dpos)[1] + r.length > cut:
                break
            keep += 1
        assert s.records == tuple(recs[:keep]), cut


def test_damage_anywhere_ends_the_journal_at_the_damaged_record(tmp_path: Path) -> None:
    d, _ = _volume(tmp_path)
    recs = _small_journal(d)
    headers = (d / j.header_file()).read_bytes()
    for pos in range(len(headers)):
        bad = bytearray(headers)
        bad[pos] ^= 0x40
        (d / j.header_file()).write_bytes(bytes(bad))
        assert j.scan_volume(d, SIZE).records == tuple(recs[: pos // j.HEADER_SIZE]), pos
    (d / j.header_file()).write_bytes(headers)
    data = bytearray((d / j.data_file()).read_bytes())
    data[2 * BLK + 5] ^= 1  # inside record 2's data (its second block)
    (d / j.data_file()).write_bytes(bytes(data))
    assert j.scan_volume(d, SIZE).records == tuple(recs)  # sizes alone cannot see it
    s = j.scan_volume(d, SIZE, verify_data=True)
    assert s.records == tuple(recs[:1])
    assert "crc" in s.stop


def test_reopening_a_torn_journal_cuts_the_tail_and_appends_after_the_valid_prefix(
    tmp_path: Path,
) -> None:
    d, base = _volume(tmp_path)
    _small_journal(d)
    hf = d / j.header_file()
    hf.write_bytes(hf.read_bytes()[: 4 * j.HEADER_SIZE + 17])  # a partial fifth header
    with j.Writer(d, SIZE) as w:
        rec = w.write(5 * BLK, b"e" * BLK, 700)
    assert rec.seq == 5
    assert hf.stat().st_size == 5 * j.HEADER_SIZE
    img = j.materialise(d, j.index_at(d, SIZE))
    ops: list[tuple[str, int, bytes | int]] = [
        ("w", 0, b"a" * BLK),
        ("w", 2 * BLK, b"b" * 2 * BLK),
        ("z", BLK, 3 * BLK),
        ("w", 5 * BLK, b"e" * BLK),
    ]
    assert img == _model(base, ops)


@pytest.mark.parametrize("seed", range(6))
def test_index_at_t_equals_a_model_of_the_writes_acknowledged_by_t(
    tmp_path: Path, seed: int
) -> None:
    """Differential: random writes, zeroes and flushes with times; for many T the volume
    materialised from index_at(T) is the model replaying exactly the records timed <= T.
    Checkpoints along the way must not change any answer (incremental equals full)."""
    rnd = random.Random(seed)
    d, base = _volume(tmp_path, seed)
    timeline: list[tuple[int, tuple[str, int, bytes | int]]] = []
    t = 1_000
    with j.Writer(d, SIZE) as w:
        for _ in range(60):
            t += rnd.choice([1, 5, 1000])
            b = rnd.randrange(16)
            n = rnd.randint(1, min(4, 16 - b))
            r = rnd.random()
            if r < 0.7:
                data = rnd.randbytes(n * BLK)
                rec = w.write(b * BLK, data, t)
                timeline.append((rec.t_ns, ("w", b * BLK, data)))
            elif r < 0.85:
                rec = w.zero(b * BLK, n * BLK, t)[-1]
                timeline.append((rec.t_ns, ("z", b * BLK, n * BLK)))
            else:
                rec = w.flush(t)
                timeline.append((rec.t_ns, ("f", 0, 0)))
            t = rec.t_ns
            if rnd.random() < 0.1:
                w.sync()
                j.write_checkpoint(d, j.index_at(d, SIZE))
    assert j.checkpoints(d)
    times = [tt for tt, _ in timeline]
    probes = [0, times[0] - 1, *times, *(tt + 1 for tt in times), *rnd.sample(times, 10)]
    for when in probes:
        expect = _model(base, [op for tt, op in timeline if tt <= when])
        ix = j.index_at(d, SIZE, when)
        assert j.materialise(d, ix) == expect, when
        assert ix.seq == sum(1 for tt in times if tt <= when)
    assert j.materialise(d, j.index_at(d, SIZE)) == _model(base, [op for _, op in timeline])
    # The same answers with no checkpoint at all.
    for _, p in j.checkpoints(d):
        p.unlink()
    for when in rnd.sample(times, 10):
        expect = _model(base, [op for tt, op in timeline if tt <= when])
        assert j.materialise(d, j.index_at(d, SIZE, when)) == expect


def test_damaged_stale_or_foreign_checkpoints_are_not_used(tmp_path: Path) -> None:
    d, base = _volume(tmp_path)
    _small_journal(d)
    good = j.write_checkpoint(d, j.index_at(d, SIZE, 400))  # after record 4
    assert j.read_checkpoint(good, SIZE).seq == 4
    with pytest.raises(j.JournalError, match="another volume size"):
        j.read_checkpoint(good, 2 * SIZE)
    raw = bytearray(good.read_bytes())
    raw[-1] ^= 1
    good.write_bytes(bytes(raw))
    with pytest.raises(j.JournalError, match="damaged"):
        j.read_checkpoint(good, SIZE)
    ops: list[tuple[str, int, bytes | int]] = [
        ("w", 0, b"a" * BLK),
        ("w", 2 * BLK, b"b" * 2 * BLK),
        ("z", BLK, 3 * BLK),
        ("w", BLK, b"c" * BLK),
    ]
    assert j.materialise(d, j.index_at(d, SIZE)) == _model(base, ops)  # a full scan instead
    # A checkpoint whose last record is no longer in the journal (cut after a crash, then
    # other records written with the same seq) is stale: index_at must not trust it.
    good.unlink()
    j.write_checkpoint(d, j.index_at(d, SIZE))  # seq 6
    hf = d / j.header_file()
    hf.write_bytes(hf.read_bytes()[: 3 * j.HEADER_SIZE])
    with j.Writer(d, SIZE) as w:
        w.write(7 * BLK, b"x" * BLK, 900)
        w.write(8 * BLK, b"y" * BLK, 901)
        w.flush(902)
    img = j.materialise(d, j.index_at(d, SIZE))
    assert img[7 * BLK : 9 * BLK] == b"x" * BLK + b"y" * BLK
    assert img[BLK : 2 * BLK] == base[BLK : 2 * BLK]  # record 4's zeroes are gone with it


def test_an_empty_volume_directory_reads_as_its_base(tmp_path: Path) -> None:
    d, base = _volume(tmp_path)
    s = j.scan_volume(d, SIZE)
    assert (s.records, s.end, s.stop) == ((), 0, "end")
    assert j.materialise(d, j.index_at(d, SIZE, 10)) == base
    with pytest.raises(j.JournalError):
        j.Index(SIZE + 1)
    assert os.listdir(d) == [j.BASE_FILE]


def test_a_checkpoint_mapping_data_no_longer_in_the_data_log_is_not_used(tmp_path: Path) -> None:
    d, _ = _volume(tmp_path)
    _small_journal(d)
    j.write_checkpoint(d, j.index_at(d, SIZE))
    df = d / j.data_file()
    df.write_bytes(df.read_bytes()[: 3 * BLK])  # record 5's data (the 4th block) is gone
    ix = j.index_at(d, SIZE)
    assert ix.seq == 4  # a scan from the start, ending before record 5
    assert j.materialise(d, ix)[BLK : 2 * BLK] == bytes(BLK)


def test_a_checkpoint_of_zero_records_only_is_used_with_an_empty_data_log(tmp_path: Path) -> None:
    d, base = _volume(tmp_path)
    with j.Writer(d, SIZE) as w:
        w.zero(0, SIZE, 10)
        w.flush(11)
    ck = j.write_checkpoint(d, j.index_at(d, SIZE))
    # Damage record 1: a scan from the start would now keep nothing, so zeros prove the
    # checkpoint (which checks only its own last record) was used.
    hf = d / j.header_file()
    raw = bytearray(hf.read_bytes())
    raw[9] ^= 1
    hf.write_bytes(bytes(raw))
    ix = j.index_at(d, SIZE)
    assert (ix.seq, ix.hpos) == (2, 2 * j.HEADER_SIZE)
    assert j.materialise(d, ix) == bytes(SIZE)
    ck.write_bytes(b"garbage")
    assert j.materialise(d, j.index_at(d, SIZE)) == base


def test_a_journal_in_several_segments_reads_as_one_and_checkpoints_point_into_them(
    tmp_path: Path,
) -> None:
    d, base = _volume(tmp_path)
    rng = random.Random(5)
    ops: list[tuple[str, int, bytes | int]] = []
    with j.Writer(d, SIZE) as w:
        for i in range(30):
            off = rng.randrange(16) * BLK
            data = rng.randbytes(BLK)
            w.write(off, data, 100 + i)
            ops.append(("w", off, data))
            if i % 10 == 9:
                w.sync()
                if i == 19:
                    j.write_checkpoint(d, j.index_at(d, SIZE))
                w.rotate()
    assert j.read_layout(d).numbers == (0, 1, 2, 3)
    s = j.scan_volume(d, SIZE, verify_data=True)
    assert [r.seq for r in s.records] == list(range(1, 31))
    assert {j.split_dpos(r.dpos)[0] for r in s.records} == {0, 1, 2}
    for i in range(31):
        assert j.materialise(d, j.index_at(d, SIZE, 99 + i)) == _model(base, ops[:i])
    ck = j.read_checkpoint(j.checkpoints(d)[-1][1], SIZE)
    assert j.split_dpos(ck.hpos) == (1, 10 * j.HEADER_SIZE)
    # reopening goes on in the last segment; a hole in seq across segments ends the journal
    with j.Writer(d, SIZE) as w:
        assert w.segment == 3
        w.write(0, b"z" * BLK, 200)
    (d / j.header_file(1)).write_bytes((d / j.header_file(1)).read_bytes()[: -j.HEADER_SIZE])
    s = j.scan_volume(d, SIZE)
    assert s.last_seq == 19 and "seq 21 where 20" in s.stop
    with pytest.raises(j.JournalError, match="not the last"):
        j.Writer(d, SIZE)


def test_a_compacted_segment_may_skip_seqs_a_live_one_may_not(tmp_path: Path) -> None:
    d, _ = _volume(tmp_path)
    recs = [
        j.Record(3, 10, j.Kind.ZERO, 0, BLK, 0, 0, 0),
        j.Record(7, 20, j.Kind.ZERO, BLK, BLK, 0, 0, j.HEADER_SIZE),
    ]
    (d / j.header_file(5)).write_bytes(b"".join(r.encode() for r in recs))
    (d / j.header_file(6)).write_bytes(j.Record(8, 30, j.Kind.FLUSH).encode())
    j.write_layout(d, j.Layout((j.Segment(5, compacted=True), j.Segment(6)), 2, 5))
    assert [r.seq for r in j.scan_volume(d, SIZE).records] == [3, 7, 8]
    assert j.index_at(d, SIZE, 20).blocks[:3].tolist() == [j.ZEROED, j.ZEROED, j.BASE]
    j.write_layout(d, j.Layout((j.Segment(5), j.Segment(6)), 2, 5))
    assert j.scan_volume(d, SIZE).stop == "seq 7 where 4 was expected"
