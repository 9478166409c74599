"""Reading /proc/PID: maps, threads, state, tracer, blocked syscalls, and memory access.

Mapped files are opened through /proc/PID/map_files so that a target in another mount
namespace is handled the same way as one in ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from yunhan import procstat
from yunhan.errors import HotpatchError, NotFound


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def executable(self) -> bool:
        return "x" in self.perms

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end


def read_maps(pid: int) -> list[Mapping]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            lines = f.read().splitlines()
    except FileNotFoundError as exc:
        raise NotFound(f"process {pid} does not exist", pid=pid) from exc
    maps = []
    for line in lines:
        parts = line.split(None, 5)
        start, end = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5] if len(parts) > 5 else ""
        maps.append(Mapping(start, end, parts[1], int(parts[2], 16), int(parts[4]), path))
    return maps


def mapped_file(pid: int, m: Mapping) -> str:
    """A path through which we can open the file behind mapping `m`, whatever its namespace."""
    return f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"


def proc_state(pid: int) -> procstat.ProcStat:
    st = procstat.read(pid)
    if st is None:
        raise NotFound(f"process {pid} does not exist", pid=pid)
    return st


def task_state(pid: int, tid: int) -> str:
    """One thread's state letter (R, S, D, T, t, Z, X), or "X" if it is gone."""
    st = procstat.read(pid, tid)
    return "X" if st is None else st.state


def threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError as exc:
        raise NotFound(f"process {pid} does not exist", pid=pid) from exc


def tracer_of(pid: int, tid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):  # the thread exited meanwhile
        return 0
    return 0


def blocked_syscall(pid: int, tid: int) -> int | None:
    """The syscall number `tid` is blocked in, or None if it is running or not in one.

    Read without stopping the thread, so that choosing a thread to borrow does not
    interrupt (and possibly EINTR) threads we end up not using.
    """
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as f:
            first = f.read().split(None, 1)[0]
    except (OSError, IndexError):
        return None
    if first == "running":
        return None
    nr = int(first)
    return nr if nr >= 0 else None


class Memory:
    """Read/write another process's memory through /proc/PID/mem.

    Writes go through the kernel's FOLL_FORCE path, so read-only text can be patched
    (copy-on-write of the private file mapping) without an mprotect in the target.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFound(f"process {pid} does not exist", pid=pid) from exc
        except PermissionError as exc:
            raise HotpatchError(
                f"cannot open memory of process {pid}: {exc.strerror}", pid=pid, errno=exc.errno
            ) from exc

    def read(self, addr: int, size: int) -> bytes:
        try:
            data = os.pread(self._fd, size, addr)
        except OSError as exc:
            raise HotpatchError(
                f"cannot read {size} bytes at {addr:#x} in process {self.pid}: {exc.strerror}",
                pid=self.pid,
                errno=exc.errno,
            ) from exc
        if len(data) != size:
            raise HotpatchError(f"short read at {addr:#x} in process {self.pid}", pid=self.pid)
        return data

    def write(self, addr: int, data: bytes) -> None:
        try:
            n = os.pwrite(self._fd, data, addr)
        except OSError as exc:
            raise HotpatchError(
                f"cannot write {len(data)} bytes at {addr:#x} in process {self.pid}: "
                f"{exc.strerror}",
                pid=self.pid,
                errno=exc.errno,
            ) from exc
        if n != len(data):
            raise HotpatchError(f"short write at {addr:#x} in process {self.pid}", pid=self.pid)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
