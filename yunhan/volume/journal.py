"""The CDP journal of a volume: format, scan, index and checkpoints (spec 12 §5, §6, §9).

A protected volume is a directory:

    base.img        the image the journal starts from (raw; cdpd never writes it while
                    protected; compaction folds records older than every tier into it)
    segments        the segment list (absent: segment 0 alone, live), see below
    data.<k>        data log of segment k (5 digits): the bytes of each write, 4 KiB
                    aligned, written O_DIRECT
    journal.<k>     header log of segment k: one 48-byte header per record, in seq order
    ck.<seq>        checkpoints: the index as of a seq (cdpd writes them; so does
                    `write_checkpoint`)

Segments. The journal is the concatenation, in the order of `segments`, of its segments'
header logs. cdpd appends to the last one and starts a new one (k+1 after the highest
live number; compacted segments are numbered down from 32767: an index entry is a signed
64-bit position, so segment numbers have 15 bits) on its "rotate" command or
when the data log passes --segment-bytes; the segment before is durable before the first
record of the new one is written, so only the last segment can have a torn tail.
`segments` is text, replaced atomically (temporary name, fdatasync, rename, directory
fsync):

    YHSEG1 <base_seq> <base_t_ns>
    <k> live|compacted
    ...

base_seq/base_t_ns: the last record folded into base.img (0 0: none), so the journal's
first record has a seq above base_seq and a time not before base_t_ns. A compacted segment
(written by yunhan.volume.compact) holds a subset of the records of the segments it
replaced, with their original seq, time and range: its seqs increase strictly but may jump.
In a live segment each seq is the one before plus one (across segment boundaries too), as
before: compaction always keeps the last record of what it compacts, so the first record
of the live segment after it still follows it by one.

Header, little endian (the C writer `native/cdpd/cdpd.c` packs the same struct):

    magic  u32  0x59484A31 ("YHJ1")
    hcrc   u32  zlib crc32 of the 40 bytes after it (seq .. dpos)
    seq    u64  1, 2, 3 ... with no gap: the journal order
    t_ns   u64  CLOCK_REALTIME when the record was appended, strictly increasing in seq
    off    u64  byte offset on the volume (4 KiB aligned); 0 for a flush marker
    lenf   u32  length in bytes (low 30 bits) | FLUSH (bit 31) | ZERO (bit 30)
    dcrc   u32  crc32c (Castagnoli) of the data; 0 without data
    dpos   u64  data position: segment number << 48 | byte offset in data.<segment>

Header-log positions (`Record.hpos`, a checkpoint's hpos) are segment << 48 | byte offset
in journal.<segment> likewise; in segment 0 they are plain offsets, as before segments.

Three kinds of record: DATA (the write's bytes are at dpos, len <= 1 MiB), ZERO (a discard
or write-zeroes: the range reads as zeros, no data) and FLUSH (a marker that the guest asked
for a flush here; no range). The spec's table covered seq..dcrc with hcrc; dpos is covered
too here, since a torn dpos would point a valid-looking header at the wrong data.

Recovery and readers trust a record only when it checks: magic, hcrc, the next seq (a
higher one in a compacted segment), a time
not before the previous one, an aligned range inside the volume, data inside the data log
(and, when asked, its crc32c). The first record that does not check ends the journal: a
writer appends a header only after its data is written and acknowledges only after the
header is written, so anything after the first bad record was never acknowledged. A torn
tail is therefore never an error, only the end.

`index_at(T)` follows §6: the longest seq prefix whose times are <= T, i.e. every write
acknowledged before T (a write is timed before it is answered), none received after T.

This module is pure Python and reads files only.
"""

from __future__ import annotations

import contextlib
import enum
import os
import struct
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0x59484A31
HEADER = struct.Struct("<IIQQQIIQ")
HEADER_SIZE = HEADER.size  # 48
BLOCK = 4096
MAX_DATA = 1 << 20  # the largest DATA record (FUSE's max_write in cdpd)
FLAG_FLUSH = 1 << 31
FLAG_ZERO = 1 << 30
LENGTH_MASK = (1 << 30) - 1
MAX_ZERO = LENGTH_MASK & ~(BLOCK - 1)  # the largest ZERO record; writers split longer ranges
SEGMENT_SHIFT = 48
MAX_SEGMENT = 1 << 15  # positions are signed 64-bit index entries: 15 bits of segment

# Index entries: a data position (>= 0), or one of these.
BASE = -1  # the block reads from base.img
ZEROED = -2  # the block reads as zeros (a ZERO record)

BASE_FILE = "base.img"
SEGMENTS_FILE = "segments"
_SEG_MAGIC = "YHSEG1"
_OFFSET_MASK = (1 << SEGMENT_SHIFT) - 1
_CK_MAGIC = b"YHCK"
_CK_HEAD = struct.Struct("<4sIQQQQ")  # magic, crc32 of the rest, seq, t_ns, hpos, nblocks


class JournalError(ValueError):
    """A file that is not what it claims (a checkpoint for another volume size, a record
    refused by the writer). Torn tails are not errors."""


class Kind(enum.Enum):
    DATA = "data"
    ZERO = "zero"
    FLUSH = "flush"


def data_file(segment: int = 0) -> str:
    return f"data.{segment:05d}"


def header_file(segment: int = 0) -> str:
    return f"journal.{segment:05d}"


def split_dpos(dpos: int) -> tuple[int, int]:
    """(segment, byte offset in that segment's data file); also for header positions."""
    return dpos >> SEGMENT_SHIFT, dpos & _OFFSET_MASK


def join_pos(segment: int, offset: int) -> int:
    return segment << SEGMENT_SHIFT | offset


@dataclass(frozen=True)
class Segment:
    number: int
    compacted: bool = False


@dataclass(frozen=True)
class Layout:
    """The `segments` file: the journal's segments in order, and what base.img holds."""

    segments: tuple[Segment, ...] = (Segment(0),)
    base_seq: int = 0
    base_t_ns: int = 0

    def encode(self) -> str:
        lines = [f"{_SEG_MAGIC} {self.base_seq} {self.base_t_ns}"]
        lines += [f"{s.number} {'compacted' if s.compacted else 'live'}" for s in self.segments]
        return "\n".join(lines) + "\n"

    @property
    def numbers(self) -> tuple[int, ...]:
        return tuple(s.number for s in self.segments)


def parse_layout(text: str) -> Layout:
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 3 or head[0] != _SEG_MAGIC or not text.endswith("\n"):
        raise JournalError("segments: not a segment list")
    segs = []
    for line in lines[1:-1]:
        num, _, kind = line.partition(" ")
        if not num.isdigit() or int(num) >= MAX_SEGMENT or kind not in ("live", "compacted"):
            raise JournalError(f"segments: bad line {line!r}")
        segs.append(Segment(int(num), kind == "compacted"))
    if not segs or len({s.number for s in segs}) != len(segs):
        raise JournalError("segments: empty, or a segment listed twice")
    return Layout(tuple(segs), int(head[1]), int(head[2]))


def read_layout(directory: str | os.PathLike[str]) -> Layout:
    """The volume's segment list; segment 0 alone when there is no `segments` file."""
    try:
        return parse_layout((Path(directory) / SEGMENTS_FILE).read_text())
    except FileNotFoundError:
        return Layout()


def _sync_dir(d: Path) -> None:
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_layout(directory: str | os.PathLike[str], layout: Layout) -> None:
    """Replace the segment list atomically and durably."""
    d = Path(directory)
    tmp = d / f".{SEGMENTS_FILE}.tmp"
    with open(tmp, "w") as f:
        f.write(layout.encode())
        f.flush()
        os.fdatasync(f.fileno())
    os.rename(tmp, d / SEGMENTS_FILE)
    _sync_dir(d)


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """crc32c (Castagnoli), as cdpd computes it with SSE4.2. Pure Python (a few MB/s): used
    only when a reader asks to verify data, cdpd's own recovery checks it in C."""
    c = crc ^ 0xFFFFFFFF
    table = _CRC32C
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


@dataclass(frozen=True)
class Record:
    """One header of the header log; `hpos` is where it sits in the header log."""

    seq: int
    t_ns: int
    kind: Kind
    off: int = 0
    length: int = 0
    dcrc: int = 0
    dpos: int = 0
    hpos: int = 0

    def encode(self) -> bytes:
        flags = {Kind.DATA: 0, Kind.ZERO: FLAG_ZERO, Kind.FLUSH: FLAG_FLUSH}[self.kind]
        body = struct.pack(
            "<QQQIIQ", self.seq, self.t_ns, self.off, self.length | flags, self.dcrc, self.dpos
        )
        return struct.pack("<II", MAGIC, zlib.crc32(body)) + body


def decode(buf: bytes | memoryview, hpos: int = 0) -> Record | None:
    """The record in these 48 bytes, or None when magic, crc or flags are wrong."""
    if len(buf) < HEADER_SIZE:
        return None
    magic, hcrc, seq, t_ns, off, lenf, dcrc, dpos = HEADER.unpack_from(buf)
    if magic != MAGIC or hcrc != zlib.crc32(bytes(buf[8:HEADER_SIZE])):
        return None
    flush, zero = bool(lenf & FLAG_FLUSH), bool(lenf & FLAG_ZERO)
    if flush and zero:
        return None
    kind = Kind.FLUSH if flush else Kind.ZERO if zero else Kind.DATA
    return Record(seq, t_ns, kind, off, lenf & LENGTH_MASK, dcrc, dpos, hpos)


@dataclass(frozen=True)
class Scan:
    """The valid prefix of a header log: its records, where it ends (the next header goes
    there) and why the scan stopped ("end" for a clean end of file)."""

    records: tuple[Record, ...]
    end: int
    last_seq: int
    last_t_ns: int
    stop: str


def _check(
    rec: Record | None,
    seq: int,
    prev_t: int,
    volume_size: int,
    data_sizes: Callable[[int], int],
    gaps: bool = False,
) -> str | None:
    if rec is None:
        return "bad header (magic, crc or flags)"
    if rec.seq != seq and not (gaps and rec.seq > seq):
        return f"seq {rec.seq} where {seq} was expected"
    if rec.t_ns < prev_t:
        return f"time goes back at seq {rec.seq}"
    if rec.kind is Kind.FLUSH:
        return None if rec.length == 0 and rec.off == 0 else f"flush marker {rec.seq} has a range"
    if rec.off % BLOCK or rec.length % BLOCK or rec.length == 0:
        return f"record {rec.seq} is not 4 KiB aligned"
    if rec.off + rec.length > volume_size:
        return f"record {rec.seq} ends past the volume"
    if rec.kind is Kind.DATA:
        segment, pos = split_dpos(rec.dpos)
        if rec.length > MAX_DATA or pos % BLOCK:
            return f"record {rec.seq} has a bad data length or position"
        if pos + rec.length > data_sizes(segment):
            return f"data of record {rec.seq} is not in the data log"
    return None


def scan(
    headers: bytes | memoryview,
    volume_size: int,
    data_sizes: Callable[[int], int],
    *,
    start: int = 0,
    first_seq: int = 1,
    prev_t_ns: int = 0,
    upto_t_ns: int | None = None,
    data_ok: Callable[[Record], bool] | None = None,
    segment: int = 0,
    gaps: bool = False,
) -> Scan:
    """The valid records of `headers` (a header log's bytes) from byte `start`.

    `data_sizes(segment)` gives a data file's size, so that a header whose data never
    reached the data log ends the scan; `data_ok`, when given, verifies a DATA record's
    bytes (its crc). `upto_t_ns` stops before the first record later than it. `segment`
    is the header log's number (it goes into hpos); `gaps` lets seqs jump (a compacted
    segment): `first_seq` is then the lowest acceptable. Pure."""
    out: list[Record] = []
    pos, seq, prev_t = start, first_seq, prev_t_ns
    stop = "end"
    view = memoryview(headers)
    while pos + HEADER_SIZE <= len(view):
        rec = decode(view[pos : pos + HEADER_SIZE], join_pos(segment, pos))
        why = _check(rec, seq, prev_t, volume_size, data_sizes, gaps)
        if why is None and rec is not None and rec.kind is Kind.DATA and data_ok is not None:
            why = None if data_ok(rec) else f"data crc of record {rec.seq} is wrong"
        if why is not None or rec is None:
            stop = why or "bad header"
            break
        if upto_t_ns is not None and rec.t_ns > upto_t_ns:
            stop = "after the time asked"
            break
        out.append(rec)
        pos, seq, prev_t = pos + HEADER_SIZE, rec.seq + 1, rec.t_ns
    else:
        if pos != len(view):
            stop = "partial header at the end"
    return Scan(tuple(out), join_pos(segment, pos), seq - 1, prev_t, stop)


class Index:
    """Where each 4 KiB block of the volume reads from as of `seq`: a data position, BASE
    or ZEROED. `hpos` is the header-log position after record `seq` (where a scan goes on).
    8 bytes per block: 2 MiB per GiB of volume."""

    def __init__(self, volume_size: int, *, blocks: array[int] | None = None, seq: int = 0) -> None:
        if volume_size <= 0 or volume_size % BLOCK:
            raise JournalError(f"volume size {volume_size} is not a positive multiple of 4 KiB")
        self.volume_size = volume_size
        nblocks = volume_size // BLOCK
        self.blocks: array[int] = blocks if blocks is not None else array("q", [BASE]) * nblocks
        if len(self.blocks) != nblocks:
            raise JournalError("index and volume size disagree")
        self.seq = seq
        self.t_ns = 0
        self.hpos = 0

    def apply(self, rec: Record) -> None:
        if rec.kind is not Kind.FLUSH:
            b0, n = rec.off // BLOCK, rec.length // BLOCK
            if rec.kind is Kind.DATA:
                self.blocks[b0 : b0 + n] = array("q", range(rec.dpos, rec.dpos + rec.length, BLOCK))
            else:
                self.blocks[b0 : b0 + n] = array("q", [ZEROED]) * n
        self.seq, self.t_ns, self.hpos = rec.seq, rec.t_ns, rec.hpos + HEADER_SIZE

    def copy(self) -> Index:
        out = Index(self.volume_size, blocks=array("q", self.blocks), seq=self.seq)
        out.t_ns, out.hpos = self.t_ns, self.hpos
        return out


# ----- the thin shell: files of a volume directory ----------------------------------------


def _data_size(directory: Path) -> Callable[[int], int]:
    # Each segment's size is taken once, at its first use: callers read the headers first,
    # and a writer writes a record's data before its header, so a size taken after the
    # headers covers every record among them (a stat per record was most of index_at's time).
    sizes: dict[int, int] = {}

    def size(segment: int) -> int:
        if segment not in sizes:
            try:
                sizes[segment] = os.stat(directory / data_file(segment)).st_size
            except FileNotFoundError:
                sizes[segment] = 0
        return sizes[segment]

    return size


def _read_data(directory: Path, dpos: int, length: int) -> bytes:
    # (one open per read: tools and tests; cdpd keeps a descriptor per segment)
    segment, pos = split_dpos(dpos)
    with open(directory / data_file(segment), "rb", buffering=0) as f:
        return os.pread(f.fileno(), length, pos)


def _data_checker(directory: Path) -> Callable[[Record], bool]:
    def ok(rec: Record) -> bool:
        data = _read_data(directory, rec.dpos, rec.length)
        return len(data) == rec.length and crc32c(data) == rec.dcrc

    return ok


def read_headers(directory: str | os.PathLike[str], segment: int = 0) -> bytes:
    try:
        return (Path(directory) / header_file(segment)).read_bytes()
    except FileNotFoundError:
        return b""


def _scan_segments(
    d: Path,
    layout: Layout,
    volume_size: int,
    *,
    start: Index | None = None,
    upto_t_ns: int | None = None,
    verify_data: bool = False,
    apply: Callable[[Record], None] | None = None,
) -> Scan:
    # The segments in order from `start` (a checkpoint's position) or the first: one scan
    # per header log, each going on from where the one before ended; the first that stops
    # early ends the journal. Records are handed to `apply` (or collected).
    sizes = _data_size(d)
    data_ok = _data_checker(d) if verify_data else None
    seq, prev_t = layout.base_seq, layout.base_t_ns
    first, offset = 0, 0
    if start is not None and (start.seq or start.hpos):
        seq, prev_t = start.seq, start.t_ns
        seg, offset = split_dpos(start.hpos)
        first = layout.numbers.index(seg)
    out: list[Record] = []
    end = join_pos(layout.segments[first].number, offset)
    stop = "end"
    for i, segment in enumerate(layout.segments[first:], first):
        headers = read_headers(d, segment.number)
        s = scan(
            headers,
            volume_size,
            sizes,
            start=offset if i == first else 0,
            first_seq=seq + 1,
            prev_t_ns=prev_t,
            upto_t_ns=upto_t_ns,
            data_ok=data_ok,
            segment=segment.number,
            gaps=segment.compacted,
        )
        if apply is not None:
            for rec in s.records:
                apply(rec)
        else:
            out.extend(s.records)
        seq, prev_t, end, stop = s.last_seq, s.last_t_ns, s.end, s.stop
        if stop != "end":
            break
    return Scan(tuple(out), end, seq, prev_t, stop)


def scan_volume(
    directory: str | os.PathLike[str],
    volume_size: int,
    *,
    upto_t_ns: int | None = None,
    verify_data: bool = False,
) -> Scan:
    """The valid records of a volume directory's journal, every segment in order (see
    `scan`); `end` is the header position after the last one. `verify_data` reads every
    record's data and checks its crc32c (slow in Python: tests and tools only)."""
    d = Path(directory)
    return _scan_segments(
        d, read_layout(d), volume_size, upto_t_ns=upto_t_ns, verify_data=verify_data
    )


def write_checkpoint(directory: str | os.PathLike[str], index: Index) -> Path:
    """Save `index` as ck.<seq> (written to a temporary name, synced, renamed, directory
    synced), so that `index_at` for a time after it replays only the headers after it."""
    d = Path(directory)
    body = struct.pack("<QQQQ", index.seq, index.t_ns, index.hpos, len(index.blocks))
    payload = index.blocks.tobytes()
    crc = zlib.crc32(payload, zlib.crc32(body))
    path = d / f"ck.{index.seq:020d}"
    tmp = d / f".ck.{index.seq:020d}.tmp"
    with open(tmp, "wb") as f:
        f.write(_CK_HEAD.pack(_CK_MAGIC, crc, index.seq, index.t_ns, index.hpos, len(index.blocks)))
        f.write(payload)
        f.flush()
        os.fdatasync(f.fileno())
    os.rename(tmp, path)
    _sync_dir(d)
    return path


def read_checkpoint(path: str | os.PathLike[str], volume_size: int) -> Index:
    """The index saved in `path`; JournalError when it is damaged or of another size."""
    raw = Path(path).read_bytes()
    if len(raw) < _CK_HEAD.size:
        raise JournalError(f"{path}: too short for a checkpoint")
    magic, crc, seq, t_ns, hpos, nblocks = _CK_HEAD.unpack_from(raw)
    payload = raw[_CK_HEAD.size :]
    if magic != _CK_MAGIC or crc != zlib.crc32(payload, zlib.crc32(raw[8 : _CK_HEAD.size])):
        raise JournalError(f"{path}: not a checkpoint, or damaged")
    if nblocks * BLOCK != volume_size or len(payload) != nblocks * 8:
        raise JournalError(f"{path}: a checkpoint of another volume size")
    blocks = array("q")
    blocks.frombytes(payload)
    index = Index(volume_size, blocks=blocks, seq=seq)
    index.t_ns, index.hpos = t_ns, hpos
    return index


def checkpoints(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(seq, path) of the checkpoint files, oldest first (by name: nothing is read)."""
    out = []
    for p in Path(directory).glob("ck.*"):
        suffix = p.name[3:]
        if suffix.isdigit():
            out.append((int(suffix), p))
    return sorted(out)


def checkpoint_usable(directory: str | os.PathLike[str], layout: Layout, ck: Index) -> bool:
    """Whether `ck` belongs to this journal: its last record is still where it says (same
    seq and time), in a segment of `layout`, and every block it maps is in a data log of
    `layout`. cdpd applies the same rule."""
    d = Path(directory)
    sizes: dict[int, int] = {}
    for b in set(ck.blocks):
        if b < 0:
            continue
        seg, pos = split_dpos(b)
        if seg not in layout.numbers:
            return False
        if seg not in sizes:
            sizes[seg] = _data_size(d)(seg)
        if pos + BLOCK > sizes[seg]:
            return False
    if ck.seq == 0 and ck.hpos == 0:
        return layout.base_seq == 0
    seg, pos = split_dpos(ck.hpos)
    if seg not in layout.numbers or pos < HEADER_SIZE:
        return False
    try:
        with open(d / header_file(seg), "rb", buffering=0) as f:
            raw = os.pread(f.fileno(), HEADER_SIZE, pos - HEADER_SIZE)
    except FileNotFoundError:
        return False
    last = decode(raw)
    return last is not None and last.seq == ck.seq and last.t_ns == ck.t_ns


def _start_index(directory: Path, layout: Layout, volume_size: int, t_ns: int | None) -> Index:
    # The newest usable checkpoint at or before t_ns; damaged or stale ones are skipped.
    for _, path in reversed(checkpoints(directory)):
        try:
            ck = read_checkpoint(path, volume_size)
        except JournalError:
            continue
        if t_ns is not None and ck.t_ns > t_ns:
            continue
        if checkpoint_usable(directory, layout, ck):
            return ck
    index = Index(volume_size, seq=layout.base_seq)
    index.t_ns = layout.base_t_ns
    index.hpos = join_pos(layout.segments[0].number, 0)
    return index


def index_at(
    directory: str | os.PathLike[str],
    volume_size: int,
    t_ns: int | None = None,
    *,
    verify_data: bool = False,
) -> Index:
    """The index of the volume as it was at time `t_ns` (None: now, every valid record):
    base plus the longest seq prefix of records timed <= t_ns. Starts from the newest
    usable checkpoint at or before t_ns and replays the headers after it, through every
    segment. `verify_data` also checks the data crc of the records replayed (as cdpd's
    recovery does; slow)."""
    d = Path(directory)
    layout = read_layout(d)
    index = _start_index(d, layout, volume_size, t_ns)
    _scan_segments(
        d,
        layout,
        volume_size,
        start=index,
        upto_t_ns=t_ns,
        verify_data=verify_data,
        apply=index.apply,
    )
    return index


def read_blocks(directory: str | os.PathLike[str], index: Index, first: int, count: int) -> bytes:
    """`count` blocks from block `first` of the volume as `index` sees it."""
    d = Path(directory)
    out = bytearray()
    base = d / BASE_FILE
    with open(base, "rb", buffering=0) as bf:
        for b in range(first, first + count):
            where = index.blocks[b]
            if where == BASE:
                chunk = os.pread(bf.fileno(), BLOCK, b * BLOCK)
                out += chunk + bytes(BLOCK - len(chunk))
            elif where == ZEROED:
                out += bytes(BLOCK)
            else:
                out += _read_data(d, where, BLOCK)
    return bytes(out)


def materialise(directory: str | os.PathLike[str], index: Index) -> bytes:
    """The whole volume as `index` sees it (small volumes: tests and tools)."""
    return read_blocks(directory, index, 0, len(index.blocks))


# ----- a writer in Python (tools and tests; cdpd is the writer of live volumes) -----------


class Writer:
    """Appends records to a volume directory's journal in the format cdpd writes: data
    first, then its header; `sync()` makes both durable. Opening recovers: the last
    segment's header log is cut at the end of the valid prefix (damage in an earlier
    segment is a JournalError: only the last can have a torn tail). Times are the
    caller's (clamped to increase)."""

    def __init__(self, directory: str | os.PathLike[str], volume_size: int) -> None:
        self.directory = Path(directory)
        self.volume_size = volume_size
        s = scan_volume(self.directory, volume_size, verify_data=True)
        layout = read_layout(self.directory)
        self.segment, hend = split_dpos(s.end)
        if self.segment != layout.segments[-1].number:
            raise JournalError(
                f"{self.directory}: segment {self.segment} ends early ({s.stop}) "
                "but is not the last"
            )
        self._h = os.open(self.directory / header_file(self.segment), os.O_RDWR | os.O_CREAT, 0o600)
        self._d = os.open(self.directory / data_file(self.segment), os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._h, hend)
        self.seq, self.t_ns, self._hend = s.last_seq, s.last_t_ns, hend
        dsize = os.fstat(self._d).st_size
        self._dend = -(-dsize // BLOCK) * BLOCK

    def rotate(self) -> int:
        """Seal the current segment (synced) and go on in a new one; returns its number."""
        self.sync()
        layout = read_layout(self.directory)
        number = max(s.number for s in layout.segments if not s.compacted) + 1
        if number in layout.numbers or number >= MAX_SEGMENT:
            raise JournalError(f"{self.directory}: no segment number left")
        os.close(self._h)
        os.close(self._d)
        self._h = os.open(self.directory / header_file(number), os.O_RDWR | os.O_CREAT, 0o600)
        self._d = os.open(self.directory / data_file(number), os.O_RDWR | os.O_CREAT, 0o600)
        write_layout(
            self.directory,
            Layout((*layout.segments, Segment(number)), layout.base_seq, layout.base_t_ns),
        )
        self.segment, self._hend, self._dend = number, 0, 0
        return number

    def close(self) -> None:
        os.close(self._h)
        os.close(self._d)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append(
        self, kind: Kind, t_ns: int, off: int = 0, data: bytes = b"", length: int = 0
    ) -> Record:
        t = max(t_ns, self.t_ns + 1)
        dpos = dcrc = 0
        if kind is Kind.DATA:
            dpos, dcrc = join_pos(self.segment, self._dend), crc32c(data)
            os.pwrite(self._d, data, self._dend)
            self._dend += len(data)
        hpos = join_pos(self.segment, self._hend)
        rec = Record(self.seq + 1, t, kind, off, length, dcrc, dpos, hpos)
        why = _check(
            rec,
            self.seq + 1,
            self.t_ns,
            self.volume_size,
            lambda seg: self._dend if seg == self.segment else _data_size(self.directory)(seg),
        )
        if why:
            raise JournalError(why)
        os.pwrite(self._h, rec.encode(), self._hend)
        self._hend += HEADER_SIZE
        self.seq, self.t_ns = rec.seq, t
        return rec

    def write(self, off: int, data: bytes, t_ns: int) -> Record:
        if len(data) > MAX_DATA:
            raise JournalError(f"a data record holds at most {MAX_DATA} bytes")
        return self._append(Kind.DATA, t_ns, off, data, len(data))

    def zero(self, off: int, length: int, t_ns: int) -> list[Record]:
        out = []
        while length > 0:
            n = min(length, MAX_ZERO)
            out.append(self._append(Kind.ZERO, t_ns, off, length=n))
            off, length = off + n, length - n
        return out

    def flush(self, t_ns: int) -> Record:
        rec = self._append(Kind.FLUSH, t_ns)
        self.sync()
        return rec

    def sync(self) -> None:
        os.fdatasync(self._d)
        os.fdatasync(self._h)


# ----- space and span, for the agent's report ---------------------------------------------


@dataclass(frozen=True)
class Space:
    """Bytes allocated on disk: base.img (sparse: only what was written), the journal (header
    and data logs of every file named like a segment, listed or left over) and checkpoints."""

    base_bytes: int
    journal_bytes: int
    checkpoint_bytes: int


def _allocated(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def space_used(directory: str | os.PathLike[str]) -> Space:
    d = Path(directory)
    journal = sum(
        _allocated(p)
        for p in d.iterdir()
        if p.name.partition(".")[0] in ("journal", "data") and p.name.partition(".")[2].isdigit()
    )
    cks = sum(_allocated(p) for _, p in checkpoints(d))
    return Space(_allocated(d / BASE_FILE), journal, cks)


def journal_start(directory: str | os.PathLike[str], now_ns: int) -> int:
    """The oldest time the journal can restore: what base.img holds when records were folded
    into it (`base_t_ns`), else the older of base.img's creation (its mtime) and the first
    record; `now_ns` for a volume without either."""
    d = Path(directory)
    layout = read_layout(d)
    if layout.base_seq:
        return layout.base_t_ns
    start = now_ns
    with contextlib.suppress(FileNotFoundError):
        start = min(start, os.stat(d / BASE_FILE).st_mtime_ns)
    first = decode(read_headers(d, layout.segments[0].number)[:HEADER_SIZE])
    if first is not None:
        start = min(start, first.t_ns)
    return start
