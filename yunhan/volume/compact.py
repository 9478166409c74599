"""Compaction of a volume's journal into the restore points its tiers promise.

Sealed segments (every one but the last, which cdpd appends to) whose records are all older
than the first tier's window hold far more than the tiers promise there: the coarser
tiers only promise their points P (yunhan.volume.tiers.points), and the live volume needs
the state at the end of the sealed range. `plan` (pure) picks, for each block, the last
write before each kept point and before the end; `compact` writes those records, with
their original seq, time and range, into one new compacted segment, so that index_at(P)
for every promised P reads exactly what it read before. Records older than every kept
point are folded into base.img (not while a child holds this generation: holds/, nor
while this generation still fills from its parent: `parent`), so the journal's start
(`segments`' base_seq/base_t_ns) moves up to the oldest promised point.

The switch, and why no read sees wrong data:
1. the compacted segment is written and synced (new files, not yet listed);
2. folded blocks are written into base.img and synced: cdpd reads base.img only for
   blocks the journal never wrote, and folded blocks are blocks the journal wrote, so
   nothing it serves changes; points older than the oldest promised one may now read
   the folded data from base, and they are no longer promised;
3. the segment list is switched: offline by replacing `segments`; with cdpd running by
   its control command "remap", which reads the `remap` file (the map from old data
   positions to new ones, or to base) and, with writes and reads held off, moves every
   index entry, replaces `segments` and closes the old data logs;
4. checkpoints that point into removed segments are rewritten through the map (offline)
   or dropped (cdpd writes a fresh one); a stale one is refused at load anyway;
5. the old segment files are removed.
A crash before 3 leaves the old journal in charge (the new files are unlisted leftovers,
overwritten by the next run); after 3 the new one.

The `remap` file, little endian: magic "YHRM", u32 number of removed segments, u32 the new
segment (0xFFFFFFFF: none, all folded), u32 0, u64 base_seq, u64 base_t_ns, u64 number of
pairs, u64 / u64 the header position after the last compacted record, old / new; then the
removed segment numbers (u32 each, the first ones listed, padded to 8 bytes); then the
pairs (i64 old data position of a block, i64 its new position or -1 for base.img), sorted.

On schedule (the agent): `rotation_due` says when to ask cdpd to "rotate" (the segment
appended to holds records older than the first tier's window), then `compact`.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import os
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from yunhan.volume import cdpd as cd
from yunhan.volume import journal as j
from yunhan.volume import tiers as tr

HOLDS_DIR = "holds"
PARENT_FILE = "parent"  # cdpd's parent view: the generation still fills from its parent
REMAP_FILE = "remap"
_REMAP_HEAD = struct.Struct("<4sIIIQQQQQ")  # magic, nremoved, new seg, pad, base seq/t, pairs,
# hlast old, hlast new
_REMAP_MAGIC = b"YHRM"
NO_SEGMENT = 0xFFFFFFFF


@dataclass(frozen=True)
class Plan:
    """What to do with the records of a sealed range: `fold` into base.img (in seq order),
    `keep` in the compacted segment (in seq order); the journal then starts at base_seq /
    base_t_ns."""

    fold: tuple[j.Record, ...]
    keep: tuple[j.Record, ...]
    base_seq: int
    base_t_ns: int


def _blocks(rec: j.Record) -> range:
    if rec.kind is j.Kind.FLUSH:
        return range(0)
    return range(rec.off // j.BLOCK, (rec.off + rec.length) // j.BLOCK)


def _last_writes(records: Sequence[j.Record], interval: Sequence[int]) -> list[bool]:
    # Which records are, for at least one of their blocks, the last write in their interval.
    seen: dict[int, int] = {}
    out = [False] * len(records)
    for i in range(len(records) - 1, -1, -1):
        iv = interval[i]
        for b in _blocks(records[i]):
            if seen.get(b) != iv:
                out[i] = True
                seen[b] = iv
    return out


def plan(
    records: Sequence[j.Record],
    points: Sequence[int],
    base_seq: int,
    base_t_ns: int,
    *,
    fold: bool = True,
) -> Plan:
    """Compact `records` (a sealed range from the journal's start, in seq order) keeping the
    state at each of `points` and at the last record: index_at(P) over the result equals
    index_at(P) over `records` for every P in `points` and every P at or after the last
    record. The last record is always kept (the next segment's seq follows it). With `fold`,
    the records up to the oldest point (or all, when no point falls inside the range) go to
    base.img and the journal's start moves there. Pure."""
    if not records:
        return Plan((), (), base_seq, base_t_ns)
    end = records[-1].t_ns
    inside = sorted(p for p in set(points) if p < end)
    f_t = (inside[0] if inside else end) if fold else -1
    folded = [r for r in records if r.t_ns <= f_t]
    rest = records[len(folded) :]
    if folded:
        base_seq, base_t_ns = folded[-1].seq, f_t
        fmask = _last_writes(folded, [0] * len(folded))
        folded = [r for r, k in zip(folded, fmask, strict=True) if k and r.kind is not j.Kind.FLUSH]
    bounds = [p for p in inside if p > f_t] + [end]
    interval = [bisect.bisect_left(bounds, r.t_ns) for r in rest]
    kmask = _last_writes(rest, interval)
    keep = [r for r, k in zip(rest, kmask, strict=True) if k and r.kind is not j.Kind.FLUSH]
    if rest and (not keep or keep[-1] is not rest[-1]):
        keep.append(rest[-1])
    return Plan(tuple(folded), tuple(keep), base_seq, base_t_ns)


@dataclass(frozen=True)
class Result:
    """What a compaction did: the segments it replaced, the one it wrote (None: everything
    went into base.img), how many records it kept and folded, the bytes before and after
    (journal only), or why it did nothing (`skipped`)."""

    replaced: tuple[int, ...] = ()
    segment: int | None = None
    kept: int = 0
    folded: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped: str | None = None


def rotation_due(directory: str | os.PathLike[str], tiers: tr.Tiers, now_ns: int) -> bool:
    """Whether the segment appended to starts with a record older than the first tier's
    window: sealed now, it can be compacted as soon as its last record ages out too."""
    d = Path(directory)
    last = j.read_layout(d).segments[-1].number
    first = j.decode(j.read_headers(d, last)[: j.HEADER_SIZE])
    return first is not None and first.t_ns < now_ns - tiers[0][0] * tr.NS


def holds(directory: str | os.PathLike[str]) -> list[str]:
    """The children holding this generation (the contract's holds/<child>; yunhan.volume.
    volumedir names them <child volume>.g<K>): every entry counts, also one being written."""
    try:
        return sorted(p.name for p in (Path(directory) / HOLDS_DIR).iterdir())
    except FileNotFoundError:
        return []


def _sealed_prefix(
    d: Path, layout: j.Layout, volume_size: int, cutoff_ns: int
) -> tuple[int, list[j.Record]]:
    # The longest run of sealed segments from the first whose records are all older than
    # cutoff_ns: (how many, their records).
    scan = j.scan_volume(d, volume_size)
    by_seg: dict[int, list[j.Record]] = {}
    for rec in scan.records:
        by_seg.setdefault(j.split_dpos(rec.hpos)[0], []).append(rec)
    count, out = 0, []
    for seg in layout.segments[:-1]:
        recs = by_seg.get(seg.number, [])
        if recs and recs[-1].t_ns >= cutoff_ns:
            break
        count += 1
        out.extend(recs)
    return count, out


def _new_number(layout: j.Layout) -> int:
    n = min([s.number for s in layout.segments if s.compacted] + [j.MAX_SEGMENT]) - 1
    if n in layout.numbers or n <= max(s.number for s in layout.segments if not s.compacted):
        raise j.JournalError("no compacted segment number left")
    return n


def _segment_bytes(d: Path, numbers: Sequence[int]) -> int:
    total = 0
    for n in numbers:
        for name in (j.header_file(n), j.data_file(n)):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(d / name).st_size
    return total


def _write_segment(
    d: Path, number: int, keep: Sequence[j.Record]
) -> tuple[dict[int, int], dict[int, int]]:
    # Copy the kept records into journal.<number>/data.<number>, synced. Returns the map of
    # old data positions to new (per block) and of old header positions (after each record)
    # to new.
    dmap: dict[int, int] = {}
    hmap: dict[int, int] = {}
    hbuf = bytearray()
    with (
        open(d / j.data_file(number), "wb") as df,
        open(d / j.header_file(number), "wb") as hf,
    ):
        dpos = 0
        for rec in keep:
            new_dpos = 0
            if rec.kind is j.Kind.DATA:
                new_dpos = j.join_pos(number, dpos)
                df.write(j._read_data(d, rec.dpos, rec.length))
                for k in range(0, rec.length, j.BLOCK):
                    dmap[rec.dpos + k] = new_dpos + k
                dpos += rec.length
            hpos = j.join_pos(number, len(hbuf))
            new = j.Record(
                rec.seq, rec.t_ns, rec.kind, rec.off, rec.length, rec.dcrc, new_dpos, hpos
            )
            hbuf += new.encode()
            hmap[rec.hpos + j.HEADER_SIZE] = hpos + j.HEADER_SIZE
        hf.write(hbuf)
        for f in (df, hf):
            f.flush()
            os.fdatasync(f.fileno())
    return dmap, hmap


def _fold(d: Path, fold: Sequence[j.Record]) -> dict[int, int]:
    # Write the folded records into base.img (synced); returns their data positions -> BASE.
    dmap: dict[int, int] = {}
    if not fold:
        return dmap
    fd = os.open(d / j.BASE_FILE, os.O_WRONLY)
    try:
        for rec in fold:
            if rec.kind is j.Kind.DATA:
                os.pwrite(fd, j._read_data(d, rec.dpos, rec.length), rec.off)
                for k in range(0, rec.length, j.BLOCK):
                    dmap[rec.dpos + k] = j.BASE
            else:
                for k in range(0, rec.length, j.MAX_DATA):
                    os.pwrite(fd, bytes(min(j.MAX_DATA, rec.length - k)), rec.off + k)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return dmap


def _remap_checkpoints(
    d: Path, volume_size: int, removed: set[int], dmap: dict[int, int], hmap: dict[int, int]
) -> None:
    # A checkpoint after a kept record, or after the range, stays valid through the maps;
    # one that maps a block to a dropped record, or sits after a folded one, is removed.
    for _seq, path in j.checkpoints(d):
        try:
            ck = j.read_checkpoint(path, volume_size)
        except j.JournalError:
            continue
        if j.split_dpos(ck.hpos)[0] in removed and ck.hpos not in hmap:
            path.unlink()
            continue
        ck.hpos = hmap.get(ck.hpos, ck.hpos)
        blocks = ck.blocks
        try:
            ck.blocks = array(
                "q", (dmap[b] if b >= 0 and j.split_dpos(b)[0] in removed else b for b in blocks)
            )
        except KeyError:  # a block of a record compacted away: not at a kept point
            path.unlink()
            continue
        j.write_checkpoint(d, ck)


def write_remap(
    path: Path,
    removed: Sequence[int],
    segment: int | None,
    layout: j.Layout,
    dmap: dict[int, int],
    hlast: tuple[int, int],
) -> None:
    """The file cdpd's "remap" reads (see the module docstring)."""
    pairs = sorted(dmap.items())
    head = _REMAP_HEAD.pack(
        _REMAP_MAGIC,
        len(removed),
        NO_SEGMENT if segment is None else segment,
        0,
        layout.base_seq,
        layout.base_t_ns,
        len(pairs),
        hlast[0],
        hlast[1],
    )
    body = array("I", removed).tobytes()
    body += bytes(-len(body) % 8)
    body += array("q", [x for pair in pairs for x in pair]).tobytes()
    with open(path, "wb") as f:
        f.write(head + body)
        f.flush()
        os.fdatasync(f.fileno())


def compact(
    directory: str | os.PathLike[str],
    volume_size: int,
    tiers: tr.Tiers,
    now_ns: int,
    *,
    live: str | None = None,
) -> Result:
    """Compact the sealed segments of `directory` whose records are older than the first
    tier's window at `now_ns`, keeping every point `tiers` promise (module docstring).
    `live`: the name of the cdpd serving the directory (the switch goes through its
    "remap"); None: nothing may serve it (base.img is locked meanwhile, as cdpd locks it;
    a served volume is a JournalError)."""
    d = Path(directory)
    if held := holds(d):
        return Result(skipped=f"held by {', '.join(held)}")
    if (d / PARENT_FILE).exists():
        # Folded records would go into a base.img that the fill is still writing, and a
        # block moved to base would read the parent view until copied (cdpd refuses the
        # remap too). A fill takes seconds: the next pass compacts.
        return Result(skipped="still filling from its parent")
    if live is not None:
        return _compact(d, volume_size, tiers, now_ns, live)
    fd = os.open(d / j.BASE_FILE, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise j.JournalError(f"{d} is served by a cdpd: compact it through its remap") from exc
        return _compact(d, volume_size, tiers, now_ns, None)
    finally:
        os.close(fd)


def _compact(d: Path, volume_size: int, tiers: tr.Tiers, now_ns: int, live: str | None) -> Result:
    layout = j.read_layout(d)
    cutoff = now_ns - tiers[0][0] * tr.NS
    count, records = _sealed_prefix(d, layout, volume_size, cutoff)
    if count == 0 or not records:
        return Result(skipped="no sealed segment older than the first tier")
    removed = layout.numbers[:count]
    # the promise starts where the journal does (as the timeline shows it), not before
    pts = tr.points(tiers, j.journal_start(d, now_ns), now_ns)
    p = plan(records, pts, layout.base_seq, layout.base_t_ns)
    if not p.fold and len(p.keep) == len(records) and count == 1 and layout.segments[0].compacted:
        return Result(skipped="nothing to drop")
    before = _segment_bytes(d, removed)
    number = _new_number(layout) if p.keep else None
    dmap, hmap = _write_segment(d, number, p.keep) if number is not None else ({}, {})
    fold_map = _fold(d, p.fold)
    fold_map.update(dmap)
    new_layout = j.Layout(
        ((j.Segment(number, compacted=True),) if number is not None else ())
        + layout.segments[count:],
        p.base_seq,
        p.base_t_ns,
    )
    end_hpos = records[-1].hpos + j.HEADER_SIZE
    if live is None:
        j.write_layout(d, new_layout)
        _remap_checkpoints(d, volume_size, set(removed), fold_map, hmap)
    else:
        write_remap(
            d / REMAP_FILE,
            removed,
            number,
            new_layout,
            fold_map,
            (end_hpos, hmap.get(end_hpos, end_hpos)),
        )
        cd.control(live, "remap")
        for _, path in j.checkpoints(d):
            try:
                ck = j.read_checkpoint(path, volume_size)
            except j.JournalError:
                continue
            if not j.checkpoint_usable(d, j.read_layout(d), ck):
                path.unlink()
        cd.control(live, "checkpoint")
        (d / REMAP_FILE).unlink()
    for n in removed:
        for name in (j.header_file(n), j.data_file(n)):
            (d / name).unlink(missing_ok=True)
    j._sync_dir(d)
    return Result(
        replaced=tuple(removed),
        segment=number,
        kept=len(p.keep),
        folded=len(p.fold),
        bytes_before=before,
        bytes_after=_segment_bytes(d, [number] if number is not None else []),
    )
