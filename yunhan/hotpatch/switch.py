"""The switch: stop the world, check activeness, write, resume; retry with backoff.

It talks to the process only through two small interfaces, so that the retry and undo
logic is tested against a fake process (tests/unit/test_hotpatch_switch.py) as well as the
real one (World over ptrace, Memory over /proc/PID/mem; tests/integration/hotpatch).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from yunhan.errors import HotpatchError
from yunhan.hotpatch import plan


class Halt(Protocol):
    """One stop of every thread of a process (the real one is world.World)."""

    def stop(self, timeout: float = 5.0) -> None: ...
    def views(self) -> list[plan.ThreadView]: ...
    def resume(self) -> float: ...
    def __enter__(self) -> Halt: ...
    def __exit__(self, *exc: object) -> None: ...


class Mem(Protocol):
    """Read and write the target's memory (the real one is procfs.Memory)."""

    def read(self, addr: int, size: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...


@dataclass(frozen=True)
class Switched:
    """What a successful switch cost the target: one pause per stop, in order.

    Every attempt stops the whole process, including those that found a guarded function
    active and let it run again; the last stop is the one that wrote.
    """

    pauses: tuple[float, ...]  # seconds each stop lasted, first interrupt to last resume

    @property
    def attempts(self) -> int:
        return len(self.pauses)

    @property
    def longest(self) -> float:
        """The longest single stop: the most any request of the target waited at once."""
        return max(self.pauses, default=0.0)

    @property
    def total(self) -> float:
        """All the time the process spent stopped for this switch."""
        return sum(self.pauses)


@dataclass(frozen=True)
class Retry:
    """How long the switch waits for replaced functions to become inactive."""

    attempts: int = 30
    first_backoff: float = 0.002
    max_backoff: float = 0.2


def switch(
    halt: Callable[[], Halt],
    mem: Mem,
    guards: list[plan.Guard],
    writes: list[tuple[int, bytes, bytes]],
    retry: Retry,
    *,
    restorer: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Switched:
    """Write (addr, expected, new) triples while no guarded function is active.

    Returns the pause of every stop, the failed attempts' included. While stopped, the bytes
    at each address are first compared with `expected` (a concurrent writer is caught and
    nothing is written); a failure halfway puts back what was already written before any
    thread runs again. Between attempts the process runs for a growing backoff.
    """
    backoff = retry.first_backoff
    reasons: list[str] = []
    pauses: list[float] = []
    for attempt in range(1, retry.attempts + 1):
        with halt() as world:
            world.stop()
            reasons = plan.find_active(world.views(), guards, restorer)
            if not reasons:
                for addr, expected, _ in writes:
                    if mem.read(addr, len(expected)) != expected:
                        raise HotpatchError(
                            f"bytes at {addr:#x} changed under us; refusing to write", addr=addr
                        )
                done: list[tuple[int, bytes]] = []
                try:
                    for addr, expected, new in writes:
                        # Recorded first: a write that fails may have changed some bytes
                        # (a jump across a page boundary is written page by page).
                        done.append((addr, expected))
                        mem.write(addr, new)
                except BaseException:
                    for addr, expected in reversed(done):
                        # Best effort per site: one that cannot be restored must not keep
                        # the others from being restored.
                        with contextlib.suppress(HotpatchError):
                            mem.write(addr, expected)
                    raise
                pauses.append(world.resume())
                return Switched(tuple(pauses))
            # Resumed here rather than by __exit__, to keep this stop's pause.
            pauses.append(world.resume())
        if attempt < retry.attempts:
            sleep(backoff)
            backoff = min(backoff * 2, retry.max_backoff)
    raise HotpatchError(
        f"patched functions stayed active after {retry.attempts} attempts: "
        + "; ".join(sorted(set(reasons))[:5]),
        reasons=reasons,
        stopped_ms=round(sum(pauses) * 1000, 3),
    )
