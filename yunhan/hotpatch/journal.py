"""The on-disk record of what was done to a process, written before each switch.

One JSON file per process, named by pid and start time (so a reused pid never inherits
another process's record), rewritten atomically (temp file, fsync, rename). A patch is
recorded with every byte it will write and every byte it will replace *before* any is
written, so that `rollback` can finish or undo a switch even if the tool died midway.

Patch states: switching -> applied -> rolling-back -> rolled-back; failed (refused or
undone before the switch completed). The stack of a process is its patches in state
switching/applied/rolling-back, oldest first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yunhan.errors import Conflict, HotpatchError
from yunhan.hotpatch.plan import Guard

LIVE_STATES = ("switching", "applied", "rolling-back")
HISTORY = 32


def default_dir() -> Path:
    """$YUNHAN_HOME/hotpatch if YUNHAN_HOME is set, else /var/lib/yunhan/hotpatch."""
    home = os.environ.get("YUNHAN_HOME")
    return Path(home) / "hotpatch" if home else Path("/var/lib/yunhan/hotpatch")


@dataclass
class Site:
    """One overwritten function entry."""

    symbol: str
    func_addr: int
    write_addr: int
    original: str  # hex: the bytes we replace (ELF bytes, or the jump of the patch below)
    new: str  # hex: the jump we write
    checksum: str  # sha256 of `original`, to detect a corrupted record
    new_func: int
    # Activeness guards: code ranges and return sites of the old and the new function.
    old_ranges: list[tuple[int, int]]
    old_sites: list[int]
    new_ranges: list[tuple[int, int]]
    new_sites: list[int]

    def rollback_guard(self) -> Guard:
        """Rolling back replaces the new function by the old: neither may be active."""
        return Guard(
            self.symbol,
            tuple((lo, hi) for lo, hi in self.old_ranges + self.new_ranges),
            frozenset(self.old_sites) | frozenset(self.new_sites),
        )

    def overlaps(self, other: Site) -> bool:
        a = (self.write_addr, self.write_addr + len(self.new) // 2)
        b = (other.write_addr, other.write_addr + len(other.new) // 2)
        return a[0] < b[1] and b[0] < a[1]


@dataclass
class PatchRecord:
    patch_id: str
    digest: str
    source: str
    target: str
    build_id: str
    state: str
    handle: int = 0
    base: int = 0
    page: int = 0
    memfd: int = -1
    sites: list[Site] = field(default_factory=list)
    applied_at: float = 0.0
    pause_ms: float = 0.0  # of the apply: its longest stop; every stop is in pauses_ms
    attempts: int = 0
    pauses_ms: list[float] = field(default_factory=list)


def checksum(hexbytes: str) -> str:
    return hashlib.sha256(bytes.fromhex(hexbytes)).hexdigest()


@dataclass
class Journal:
    path: Path
    pid: int
    start_time: int
    patches: list[PatchRecord]

    @property
    def stack(self) -> list[PatchRecord]:
        return [p for p in self.patches if p.state in LIVE_STATES]

    def find(self, patch_id: str) -> PatchRecord | None:
        for p in reversed(self.stack):
            if p.patch_id == patch_id:
                return p
        return None

    def top_site_at(self, write_addr: int) -> Site | None:
        for p in reversed(self.stack):
            for s in p.sites:
                if s.write_addr == write_addr:
                    return s
        return None

    def apply_guards(self, sites: list[Site]) -> list[Guard]:
        """What must be inactive to write `sites`: each old function, and the code running
        in its place now (the new function of the patch below, when stacking)."""
        guards = []
        for s in sites:
            ranges = list(s.old_ranges)
            rets = set(s.old_sites)
            below = self.top_site_at(s.write_addr)
            if below is not None:
                ranges += below.new_ranges
                rets |= set(below.new_sites)
            spans = tuple((lo, hi) for lo, hi in ranges)
            guards.append(Guard(s.symbol, spans, frozenset(rets)))
        return guards

    def check_new(self, patch_id: str, sites: list[Site]) -> None:
        """Conflict if `patch_id` is already applied or a site overlaps another's bytes.

        The same entry (same write address) is stacking and allowed; a jump that would
        overwrite part of another patch's jump at a different address is not.
        """
        if self.find(patch_id) is not None:
            raise Conflict(f"patch {patch_id} is already applied to process {self.pid}")
        for p in self.stack:
            for s in p.sites:
                for n in sites:
                    if n.write_addr != s.write_addr and n.overlaps(s):
                        raise Conflict(
                            f"patch {patch_id} ({n.symbol}) overlaps the jump of patch "
                            f"{p.patch_id} ({s.symbol}) at {s.write_addr:#x}",
                            patch=p.patch_id,
                        )

    def check_top(self, record: PatchRecord) -> None:
        """Conflict unless no later patch is stacked on one of `record`'s functions."""
        stack = self.stack
        later = stack[stack.index(record) + 1 :]
        for p in later:
            for s in p.sites:
                if any(s.overlaps(r) for r in record.sites):
                    raise Conflict(
                        f"patch {p.patch_id} is stacked on {s.symbol} above "
                        f"{record.patch_id}: roll it back first",
                        patch=p.patch_id,
                    )

    def save(self) -> None:
        """Write atomically and durably. History (rolled-back, failed) is trimmed to the
        newest HISTORY records so the file stays small however often a process is patched."""
        done = [p for p in self.patches if p.state not in LIVE_STATES]
        if len(done) > HISTORY:
            drop = {id(p) for p in done[: len(done) - HISTORY]}
            self.patches = [p for p in self.patches if id(p) not in drop]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "pid": self.pid,
            "start_time": self.start_time,
            "patches": [asdict(p) for p in self.patches],
        }
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)  # no indent: the C encoder, several times faster
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _site(d: dict[str, Any]) -> Site:
    d = dict(d)
    for key in ("old_ranges", "new_ranges"):
        d[key] = [tuple(r) for r in d[key]]
    s = Site(**d)
    if checksum(s.original) != s.checksum:
        raise HotpatchError(f"journal record for {s.symbol} is corrupt (checksum mismatch)")
    return s


def journal_path(root: Path, pid: int, start_time: int) -> Path:
    return root / f"{pid}-{start_time}.json"


def load(root: Path, pid: int, start_time: int) -> Journal:
    path = journal_path(root, pid, start_time)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Journal(path, pid, start_time, [])
    except (OSError, ValueError) as exc:
        raise HotpatchError(f"cannot read journal {path}: {exc}") from exc
    patches = []
    for p in data["patches"]:
        p = dict(p)
        p["sites"] = [_site(s) for s in p["sites"]]
        patches.append(PatchRecord(**p))
    return Journal(path, pid, start_time, patches)


def all_journals(root: Path) -> Iterator[tuple[int, int, Path]]:
    """(pid, start_time, path) of every journal under `root`."""
    if not root.is_dir():
        return
    for path in sorted(root.glob("*-*.json")):
        pid, _, start = path.stem.partition("-")
        if pid.isdigit() and start.isdigit():
            yield int(pid), int(start), path


@contextlib.contextmanager
def locked(root: Path, pid: int) -> Iterator[None]:
    """Serialise apply/rollback on one process across tool invocations."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f"{pid}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def now() -> float:
    return time.time()
