"""Per-worker cgroups (v1: memory, cpu, pids), named `<base>/yunhan/fn/<worker id>`.

Each controller's base is the runtime's *own* cgroup in that hierarchy (from
/proc/self/cgroup under the controller's mount from /proc/self/mountinfo), not the
hierarchy's root: whatever limit or accounting the host gave the agent (here a
`process_api/<id>` memory group) still covers its functions, and nothing escapes it.

The runtime creates and removes the groups; a worker joins them itself right after fork,
before it imports anything of the user's. Deleting treats ENOENT as done (STYLE §4).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from yunhan.errors import DriverError
from yunhan.polling import poll_until

CONTROLLERS = ("memory", "cpu", "pids")
GROUP = Path("yunhan/fn")


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_shares: int
    pids_max: int


def _mounts(mountinfo: str) -> dict[str, Path]:
    """controller -> mount point of its v1 hierarchy."""
    out: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(rfields) < 3 or rfields[0] != "cgroup":
            continue
        for opt in rfields[2].split(","):
            out.setdefault(opt, Path(fields[4]))
    return out


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """controller -> this process's cgroup path in its v1 hierarchy."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


@dataclass(frozen=True)
class CgroupLayout:
    """controller -> the directory under which worker groups are made."""

    bases: Mapping[str, Path]

    @staticmethod
    def parse(mountinfo: str, proc_cgroup: str) -> CgroupLayout:
        mounts, own = _mounts(mountinfo), _own_paths(proc_cgroup)
        missing = [c for c in CONTROLLERS if c not in mounts or c not in own]
        if missing:
            raise DriverError(
                f"cgroup v1 controllers not mounted: {', '.join(missing)} "
                "(the function runtime needs memory, cpu and pids)"
            )
        return CgroupLayout({c: mounts[c] / own[c].lstrip("/") / GROUP for c in CONTROLLERS})

    @staticmethod
    def discover() -> CgroupLayout:
        with open("/proc/self/mountinfo") as m, open("/proc/self/cgroup") as c:
            return CgroupLayout.parse(m.read(), c.read())

    def group(self, name: str) -> WorkerCgroup:
        return WorkerCgroup(name, {c: base / name for c, base in self.bases.items()})

    def groups(self, prefix: str) -> list[WorkerCgroup]:
        """Every worker group of runtime `prefix` (named `<prefix>-<n>`), in any
        controller. Exact: the groups of prefix "a-1" are not those of prefix "a"."""
        names: set[str] = set()
        for base in self.bases.values():
            with contextlib.suppress(FileNotFoundError):
                names.update(p.name for p in base.iterdir() if p.is_dir())
        own = re.compile(re.escape(prefix) + r"-\d+")
        return [self.group(n) for n in sorted(names) if own.fullmatch(n)]


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise DriverError(f"cgroup write {path}: {exc}", errno=exc.errno) from exc


@dataclass(frozen=True)
class WorkerCgroup:
    name: str
    paths: Mapping[str, Path]  # controller -> directory

    def create(self, limits: Limits) -> None:
        """Make the group in every controller and set its limits (idempotent)."""
        for path in self.paths.values():
            # Another runtime may remove the shared parents as we make ours: try again.
            for _ in range(5):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.mkdir(exist_ok=True)
                    break
                except FileNotFoundError:
                    continue
        mem = self.paths["memory"]
        _write(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
        # With swap accounting, memory+swap gets the same cap: no swapping past the limit.
        if (mem / "memory.memsw.limit_in_bytes").exists():
            _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        _write(self.paths["cpu"] / "cpu.shares", str(limits.cpu_shares))
        _write(self.paths["pids"] / "pids.max", str(limits.pids_max))

    def procs_files(self) -> list[str]:
        """The cgroup.procs files a worker writes its pid to (it joins itself)."""
        return [str(p / "cgroup.procs") for p in self.paths.values()]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for p in self.paths.values():
            with contextlib.suppress(FileNotFoundError):
                out.update(int(x) for x in (p / "cgroup.procs").read_text().split())
        return out

    def kill(self) -> None:
        """SIGKILL every process in the group, again until none is left: a worker's own
        children (pids.max bounds them) may fork while we kill."""

        def sweep() -> bool:
            left = self.pids()
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not left

        poll_until(sweep, 5.0, interval=0.005, max_interval=0.05)

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this group (the
        `oom_kill` line of memory.oom_control, counted per group since it was made)."""
        try:
            text = (self.paths["memory"] / "memory.oom_control").read_text()
        except FileNotFoundError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def max_usage_bytes(self) -> int:
        """The most memory the group has held (memory.max_usage_in_bytes)."""
        try:
            return int((self.paths["memory"] / "memory.max_usage_in_bytes").read_text())
        except FileNotFoundError:
            return 0

    def remove(self) -> None:
        """Kill what is left and remove the group from every controller, and its shared
        parents when they are left empty."""
        self.kill()
        for path in self.paths.values():
            # A task that has just been killed leaves the group a moment later (EBUSY).
            poll_until(lambda p=path: _rmdir(p), 5.0, interval=0.005)  # type: ignore[misc]
            _remove_empty_parents(path.parent, levels=len(GROUP.parts))


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise DriverError(f"cgroup rmdir {path}: {exc}", errno=exc.errno) from exc
    return True


def _remove_empty_parents(path: Path, levels: int) -> None:
    for p in [path, *list(path.parents)[: levels - 1]]:
        try:
            p.rmdir()
        except OSError:
            return  # in use by another runtime (ENOTEMPTY/EBUSY), or gone


def remove_all(groups: Iterable[WorkerCgroup]) -> None:
    for g in groups:
        g.remove()
