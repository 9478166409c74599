"""Helpers for hot patching tests: build C targets, drive a target over its pipes, and
prove a target was left untouched. Fixtures live in conftest.py."""

from __future__ import annotations

import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from yunhan.hotpatch import elf, procfs

CSRC = Path(__file__).parent / "csrc"
CFLAGS = ["-O2", "-g", "-fcf-protection=full", "-Wl,--build-id"]


def cc(*argv: str | Path) -> None:
    p = subprocess.run(["gcc", *map(str, argv)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


@dataclass(frozen=True)
class Built:
    dir: Path
    target: Path
    libdemo: Path
    service: Path
    regs: Path
    evloop: Path


class Proc:
    """A running test target: send a line, read a line, with deadlines, never sleeps."""

    def __init__(self, argv: list[str]) -> None:
        self.p = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.pid = self.p.pid
        self._buf = b""

    def readline(self, timeout: float = 10.0) -> str:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no output from {self.pid} in {timeout}s"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                assert chunk, f"process {self.pid} closed stdout (rc={self.p.poll()})"
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def ask(self, line: str) -> str:
        assert self.p.stdin is not None
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()
        return self.readline()

    def wait_blocked_in(self, nr: int, tid: int | None = None, timeout: float = 10.0) -> None:
        """Poll until thread `tid` (default: main) sits in syscall `nr`."""
        deadline = time.monotonic() + timeout
        while procfs.blocked_syscall(self.pid, tid or self.pid) != nr:
            assert time.monotonic() < deadline, f"{self.pid} never blocked in syscall {nr}"
            time.sleep(0.002)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=10)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()


def snapshot(pid: int, ranges: list[tuple[int, int]]) -> dict[str, object]:
    """What 'left exactly as it was' means: code bytes, mappings, no tracer, not stopped."""
    with procfs.Memory(pid) as mem:
        code = [mem.read(lo, hi - lo) for lo, hi in ranges]
    # Mappings, except anonymous data ones: dlopen run in a borrowed thread may give that
    # thread its own malloc arena, which stays. Code, files and the trampoline page count.
    maps = [
        line
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
        if len(line.split()) > 5 or "x" in line.split()[1]
    ]
    tids = procfs.threads(pid)
    return {
        "code": code,
        "maps": maps,
        "tracers": [procfs.tracer_of(pid, t) for t in tids],
        "stopped": [t for t in tids if procfs.task_state(pid, t) in "tT"],
    }


def function_range(binary: Path, symbol: str, base: int) -> tuple[int, int]:
    sym = elf.load(str(binary)).function(symbol)
    assert sym is not None
    return base + sym.value, base + sym.value + sym.size


def load_base(pid: int, path: Path) -> int:
    for m in procfs.read_maps(pid):
        if m.path == str(path) and m.offset == 0:
            return m.start
    raise AssertionError(f"{path} not mapped in {pid}")
