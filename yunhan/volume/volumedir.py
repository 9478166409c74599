"""The volumes of a zone pool on disk (contract "On-disk layout"): generations, clones,
restores, holds and the space they use.

    <pool>/<volume id>/
        meta.json        {"size": bytes, "generation": N, "since_ns": when g<N> began}
        g<N>/            a cdpd volume directory (base.img, journal.*, data.*, ck.*)
        g<N>/parent      only while g<N> is being filled from its parent:
                         {"dir": "<parent generation dir>", "seq": S, "size": bytes}
        g<N>/fill.map    cdpd's record of what the fill has copied (with `parent`)
        g<N>/holds/<v>.g<K>  generation g<K> of volume v reads from this one: it must not be
                         deleted, nor its segments compacted, while the hold exists

A clone or a restore is constant time: it writes a sparse base.img and a `parent` file; the
child's cdpd serves reads from the parent view at once and copies it in the background, then
removes `parent` (yunhan-cdpd's "parent view and background fill"). `cleanup()` is level
triggered: it releases the holds whose child no longer reads from them (its fill is done,
or the child is gone) and deletes the generations that are neither current nor held.

A generation with a `parent` is copied only while a cdpd serves it: the agent should keep
one running for it (attached or not) until its stats say fill 1.0, then run `cleanup()`.

Writers of one volume directory are the agent of the volume's host; the pool may be shared
by the hosts of a zone, which is why every change is a rename of something complete and a
hold whose child is not there (yet) is kept for a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from yunhan.errors import VolumeError
from yunhan.volume import compact, journal

META_FILE = "meta.json"
PARENT_FILE = compact.PARENT_FILE
FILL_MAP = "fill.map"
HOLDS_DIR = compact.HOLDS_DIR  # what compaction checks
# 4 KiB blocks whatever the size: instances get the disk through a loop device of 4 KiB
# sectors, which a filesystem of smaller blocks cannot be mounted from.
_MKFS_EXT4 = (
    "mkfs.ext4", "-F", "-q", "-b", "4096",
    "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
)  # fmt: skip
HOLD_GRACE_NS = 300 * 10**9  # a hold whose child directory is missing: maybe being made

Clock = Callable[[], int]
Mkfs = Callable[[Path, str], None]


@dataclass(frozen=True)
class Meta:
    size: int
    generation: int
    since_ns: int  # when the current generation began: no restore point before it


@dataclass(frozen=True)
class ParentRef:
    """What a generation's `parent` file says: read the parent generation `dir` as it was
    after its record `seq`, a volume of `size` bytes."""

    dir: Path
    seq: int
    size: int

    def encode(self) -> bytes:
        return json.dumps({"dir": str(self.dir), "seq": self.seq, "size": self.size}).encode()


@dataclass(frozen=True)
class Usage:
    """Allocated bytes on disk: base images, and journals (data, headers, checkpoints)."""

    base_bytes: int
    journal_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.base_bytes + self.journal_bytes


def mkfs_ext4(image: Path, fs: str) -> None:
    """Make a filesystem on an image file (no loop device needed); only ext4."""
    if fs != "ext4":
        raise VolumeError(f"filesystem {fs!r} is not supported: ext4", fs=fs)
    try:
        p = subprocess.run(
            [*_MKFS_EXT4, str(image)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except FileNotFoundError as exc:
        raise VolumeError("mkfs.ext4 not found: install e2fsprogs") from exc
    if p.returncode != 0:
        raise VolumeError(f"mkfs.ext4 {image} failed: {p.stderr.strip()}", rc=p.returncode)


def read_parent(generation_dir: Path) -> ParentRef | None:
    """The `parent` file of a generation, or None when it has none (filled, or never had)."""
    try:
        raw = json.loads((generation_dir / PARENT_FILE).read_bytes())
    except FileNotFoundError:
        return None
    return ParentRef(Path(raw["dir"]), int(raw["seq"]), int(raw["size"]))


def usage(directory: Path) -> Usage:
    """Allocated bytes of one generation directory (a sparse base counts what it holds)."""
    base = journal_bytes = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return Usage(0, 0)
    for e in entries:
        if not e.is_file(follow_symlinks=False):
            continue
        n = e.stat(follow_symlinks=False).st_blocks * 512
        if e.name == journal.BASE_FILE:
            base += n
        elif e.name.startswith(("data.", "journal.", "ck.")):
            journal_bytes += n
    return Usage(base, journal_bytes)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file, fsync, rename, fsync the dir."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    _fsync_dir(path.parent)


def _sparse_base(directory: Path, size: int) -> Path:
    base = directory / journal.BASE_FILE
    with open(base, "wb") as f:
        f.truncate(size)
        os.fsync(f.fileno())
    return base


def _gen_name(n: int) -> str:
    return f"g{n}"


def _iso(t_ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_ns / 1e9))


class VolumeDir:
    """One volume's directory in a pool. Nothing is read or written until a method asks."""

    def __init__(
        self,
        pool: str | os.PathLike[str],
        volume_id: str,
        *,
        clock: Clock = time.time_ns,
        mkfs: Mkfs = mkfs_ext4,
    ) -> None:
        if not volume_id or "/" in volume_id or volume_id.startswith("."):
            raise VolumeError(f"bad volume id {volume_id!r}", volume=volume_id)
        self.pool = Path(pool).absolute()
        self.volume_id = volume_id
        self.path = self.pool / volume_id
        self._clock = clock
        self._mkfs = mkfs

    # ----- reading ---------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.path / META_FILE).exists()

    def meta(self) -> Meta:
        try:
            raw = json.loads((self.path / META_FILE).read_bytes())
        except FileNotFoundError as exc:
            raise VolumeError(f"volume {self.volume_id} has no directory in {self.pool}") from exc
        return Meta(int(raw["size"]), int(raw["generation"]), int(raw.get("since_ns", 0)))

    def generation_dir(self, n: int) -> Path:
        return self.path / _gen_name(n)

    def current(self) -> Path:
        """The generation directory that cdpd serves now."""
        return self.generation_dir(self.meta().generation)

    def generations(self) -> list[int]:
        out = []
        for p in self.path.glob("g*"):
            if p.name[1:].isdigit() and p.is_dir():
                out.append(int(p.name[1:]))
        return sorted(out)

    def parent(self) -> ParentRef | None:
        """The current generation's parent while it is being filled, else None."""
        return read_parent(self.current())

    def holds(self, generation: int) -> list[str]:
        d = self.generation_dir(generation) / HOLDS_DIR
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def usage(self) -> Usage:
        """Allocated bytes of every generation of this volume."""
        total = Usage(0, 0)
        for n in self.generations():
            u = usage(self.generation_dir(n))
            total = Usage(total.base_bytes + u.base_bytes, total.journal_bytes + u.journal_bytes)
        return total

    # ----- making ----------------------------------------------------------------------

    def create(self, size: int, fs: str | None = "ext4") -> Path:
        """Make the volume: meta.json and g1 with a sparse base.img carrying a new
        filesystem (`fs` None: raw zeros). Returns g1. Refused if the volume exists."""
        self._check_size(size)
        if self.path.exists():
            raise VolumeError(f"volume {self.volume_id} already exists in {self.pool}")
        tmp = self._scratch()
        try:
            g1 = tmp / _gen_name(1)
            g1.mkdir(parents=True)
            base = _sparse_base(g1, size)
            if fs is not None:
                self._mkfs(base, fs)
            _write_atomic(tmp / META_FILE, self._meta_bytes(size, 1, self._clock()))
            os.rename(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.pool)
        return self.generation_dir(1)

    def clone_from(self, src: VolumeDir, at_ns: int) -> Path:
        """Make this volume a clone of `src` as it was at `at_ns`: g1 reads from src's
        current generation at the seq of that time until its cdpd has copied it. Returns
        g1. Constant time: nothing of the data is copied here."""
        if self.path.exists():
            raise VolumeError(f"volume {self.volume_id} already exists in {self.pool}")
        meta = src.meta()
        ref = src._point(meta, at_ns)
        tmp = self._scratch()
        try:
            g1 = tmp / _gen_name(1)
            g1.mkdir(parents=True)
            _sparse_base(g1, meta.size)
            src._hold(ref.dir, self.generation_dir(1))
            _write_atomic(g1 / PARENT_FILE, ref.encode())
            _write_atomic(tmp / META_FILE, self._meta_bytes(meta.size, 1, self._clock()))
            os.rename(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.pool)
        return self.generation_dir(1)

    def restore_to(self, at_ns: int) -> Path:
        """Restore in place: a new generation g<N+1> that reads g<N> as it was at `at_ns`,
        made current (meta.json) only once it is complete. The volume must not be served
        while this runs (it is detached). Returns the new generation directory."""
        meta = self.meta()
        ref = self._point(meta, at_ns)
        n = max([meta.generation, *self.generations()]) + 1
        final = self.generation_dir(n)
        tmp = self.path / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir()
            _sparse_base(tmp, meta.size)
            self._hold(ref.dir, final)
            _write_atomic(tmp / PARENT_FILE, ref.encode())
            os.rename(tmp, final)
            _fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _write_atomic(self.path / META_FILE, self._meta_bytes(meta.size, n, self._clock()))
        return final

    def grow(self, new_size: int) -> None:
        """Grow the detached volume to `new_size` bytes: its base.img is extended (the new
        part reads as zeros; resize2fs is the caller's). cdpd is then started with --size
        new_size."""
        self._check_size(new_size)
        meta = self.meta()
        if new_size <= meta.size:
            raise VolumeError(
                f"volume {self.volume_id} has {meta.size} bytes: a resize can only grow it",
                size=meta.size,
                new_size=new_size,
            )
        if self.parent() is not None:
            raise VolumeError(
                f"volume {self.volume_id} is still being copied from its source: "
                "resize it once that is done (fill 1.0)"
            )
        base = self.current() / journal.BASE_FILE
        with open(base, "r+b") as f:
            f.truncate(new_size)
            os.fsync(f.fileno())
        _write_atomic(
            self.path / META_FILE, self._meta_bytes(new_size, meta.generation, meta.since_ns)
        )

    def cleanup(self) -> list[Path]:
        """Release the holds on this volume's generations whose child no longer reads from
        them, then delete the generations that are not current and not held (also one that
        a restore left unfinished). Returns what it removed. Idempotent."""
        removed: list[Path] = []
        if not self.exists():
            return removed
        current = self.meta().generation
        for n in self.generations():
            gen = self.generation_dir(n)
            for name in self.holds(n):
                hold = gen / HOLDS_DIR / name
                if self._stale(hold, gen):
                    hold.unlink()
                    removed.append(hold)
        now = self._clock()
        for n in self.generations():
            gen = self.generation_dir(n)
            # newer than current: a restore that did not finish (after a grace period, in
            # case it is being made right now)
            unfinished = n > current and now - gen.stat().st_mtime_ns > HOLD_GRACE_NS
            if (n < current or unfinished) and not self.holds(n):
                self._drop(gen)
                removed.append(gen)
        for p in self.path.glob(".*.tmp"):  # an unfinished restore's scratch
            if now - p.stat().st_mtime_ns > HOLD_GRACE_NS:
                shutil.rmtree(p, ignore_errors=True)
        return removed

    def delete(self) -> None:
        """Remove the volume's directory (it must not be served); refused while a clone
        still reads from it."""
        if not self.path.exists():
            return
        self.cleanup()
        held = {n: self.holds(n) for n in self.generations() if self.holds(n)}
        if held:
            raise VolumeError(
                f"volume {self.volume_id} is still read by its clones {sorted(held.values())}: "
                "delete it once their copy is done",
                holds=held,
            )
        for n in self.generations():  # one still being copied gives its hold back
            self._drop(self.generation_dir(n))
        shutil.rmtree(self.path)

    # ----- helpers ---------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if size <= 0 or size % journal.BLOCK:
            raise VolumeError(
                f"a volume size must be a positive multiple of {journal.BLOCK} bytes", size=size
            )

    def _meta_bytes(self, size: int, generation: int, since_ns: int) -> bytes:
        return json.dumps({"size": size, "generation": generation, "since_ns": since_ns}).encode()

    def _scratch(self) -> Path:
        self.pool.mkdir(parents=True, exist_ok=True)
        tmp = self.pool / f".{self.volume_id}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        return tmp

    def _point(self, meta: Meta, at_ns: int) -> ParentRef:
        """The parent reference for this volume at `at_ns`; VolumeError when there is no
        restore point there."""
        gen = self.generation_dir(meta.generation)
        now = self._clock()
        if read_parent(gen) is not None:
            raise VolumeError(
                f"volume {self.volume_id} is still being copied from its own source: "
                "clone or restore it once that is done (fill 1.0)"
            )
        # after a compaction the first segment may be another than 0
        if (
            not (gen / journal.SEGMENTS_FILE).exists()
            and not (gen / journal.header_file(0)).exists()
        ):
            raise VolumeError(f"volume {self.volume_id} is not protected: it has no journal")
        if at_ns > now:
            raise VolumeError(
                f"{_iso(at_ns)} is in the future (now {_iso(now)})", at_ns=at_ns, now_ns=now
            )
        if at_ns < meta.since_ns:
            raise VolumeError(
                f"{_iso(at_ns)} is before the start of volume {self.volume_id}'s journal "
                f"({_iso(meta.since_ns)})",
                at_ns=at_ns,
                since_ns=meta.since_ns,
            )
        base_t = journal.read_layout(gen).base_t_ns
        if at_ns < base_t:
            raise VolumeError(
                f"{_iso(at_ns)} is before the start of volume {self.volume_id}'s journal "
                f"({_iso(base_t)}: older records were compacted into its base)",
                at_ns=at_ns,
                since_ns=base_t,
            )
        seq = journal.index_at(gen, meta.size, at_ns).seq
        return ParentRef(gen, seq, meta.size)

    def _hold(self, generation: Path, child: Path) -> None:
        holds = generation / HOLDS_DIR
        holds.mkdir(exist_ok=True)
        name = f"{child.parent.name}.{child.name}"
        _write_atomic(holds / name, json.dumps({"child": str(child)}).encode())

    def _drop(self, gen: Path) -> None:
        # A generation deleted while it still read from a parent gives its hold back.
        ref = read_parent(gen)
        if ref is not None:
            (ref.dir / HOLDS_DIR / f"{gen.parent.name}.{gen.name}").unlink(missing_ok=True)
        shutil.rmtree(gen)

    def _stale(self, hold: Path, generation: Path) -> bool:
        # A child is done with its parent once its `parent` file is gone (or names another).
        try:
            child = Path(json.loads(hold.read_bytes())["child"])
        except (ValueError, KeyError, FileNotFoundError):
            return True
        if not child.is_dir():
            return self._clock() - hold.stat().st_mtime_ns > HOLD_GRACE_NS
        ref = read_parent(child)
        return ref is None or ref.dir != generation


def cleanup_pool(pool: str | os.PathLike[str], *, clock: Clock = time.time_ns) -> list[Path]:
    """`cleanup()` of every volume of a pool: what the agent runs each pass."""
    removed: list[Path] = []
    p = Path(pool)
    if not p.is_dir():
        return removed
    for d in sorted(p.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / META_FILE).exists():
            removed += VolumeDir(p, d.name, clock=clock).cleanup()
        elif (  # a create or clone cut short
            d.name.startswith(".")
            and d.name.endswith(".tmp")
            and clock() - d.stat().st_mtime_ns > HOLD_GRACE_NS
        ):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
