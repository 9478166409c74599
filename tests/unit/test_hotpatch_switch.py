"""The switch's retry, refusal and undo logic against a fake process.

The fake behaves: its threads move between attempts, writes while it runs are an error,
and its memory is real bytes. The same behaviours are checked against real processes in
tests/integration/hotpatch (always-active refusal, modified bytes, apply/rollback).
"""

from __future__ import annotations

import struct

import pytest

from yunhan.errors import HotpatchError
from yunhan.hotpatch.plan import Guard, ThreadView
from yunhan.hotpatch.switch import Retry, switch

F = Guard("f", ((0x1000, 0x1020),), frozenset({0x1009}))
ORIGINAL, JUMP = bytes.fromhex("554889e541"), bytes.fromhex("e9fbef0000")


class FakeProcess:
    """Memory at 0x1000.., and threads whose PC follows a script, one step per stop."""

    def __init__(
        self,
        scripts: list[list[int]],
        fail_write_at: int | None = None,
        short_write_at: int | None = None,
    ) -> None:
        self.memory = bytearray(0x100)
        self.memory[0:5] = ORIGINAL
        self.memory[0x40:0x45] = ORIGINAL
        self.scripts = scripts
        self.stops = 0
        self.running = True
        self.pauses = [0.001 * (i + 1) for i in range(len(max(scripts, key=len)) + 8)]
        self.fail_write_at = fail_write_at
        self.short_write_at = short_write_at

    # Halt
    def __call__(self) -> FakeProcess:
        return self

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = True

    def stop(self, timeout: float = 5.0) -> None:
        assert self.running, "stopped twice"
        self.running = False
        self.stops += 1

    def views(self) -> list[ThreadView]:
        assert not self.running
        step = self.stops - 1
        return [
            ThreadView(100 + i, s[min(step, len(s) - 1)], struct.pack("<Q", 0))
            for i, s in enumerate(self.scripts)
        ]

    def resume(self) -> float:
        # Each stop lasts a different, known time: the switch must report every one.
        self.running = True
        return self.pauses[self.stops - 1]

    # Mem
    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.memory[addr - 0x1000 : addr - 0x1000 + size])

    def write(self, addr: int, data: bytes) -> None:
        assert not self.running, "code written while threads run"
        if addr == self.fail_write_at:
            raise HotpatchError("write failed")
        if addr == self.short_write_at:  # a jump across a page whose second half failed
            self.short_write_at = None
            self.memory[addr - 0x1000 : addr - 0x1000 + 2] = data[:2]
            raise HotpatchError("short write")
        self.memory[addr - 0x1000 : addr - 0x1000 + len(data)] = data


WRITES = [(0x1000, ORIGINAL, JUMP), (0x1040, ORIGINAL, JUMP)]


def test_retries_while_active_then_writes_with_growing_backoff() -> None:
    inside, outside = 0x1004, 0x9000
    proc = FakeProcess([[inside, inside, outside], [outside]])
    slept: list[float] = []
    done = switch(
        proc, proc, [F], WRITES, Retry(attempts=5, first_backoff=0.001), sleep=slept.append
    )
    assert done.attempts == 3 and slept == [0.001, 0.002]
    assert proc.read(0x1000, 5) == JUMP and proc.read(0x1040, 5) == JUMP
    assert proc.running


def test_every_stop_counts_the_failed_attempts_too() -> None:
    # Two stops find the function active and let the process run again; the third
    # writes. All three stopped the process, so all three pauses are reported.
    inside, outside = 0x1004, 0x9000
    proc = FakeProcess([[outside], [inside, inside, outside]])
    done = switch(proc, proc, [F], WRITES, Retry(attempts=5), sleep=lambda _: None)
    assert done.pauses == (0.001, 0.002, 0.003) == tuple(proc.pauses[:3])
    assert done.longest == 0.003 and done.total == pytest.approx(0.006)
    assert proc.stops == done.attempts == 3


def test_refused_after_the_bound_leaves_memory_and_threads_alone() -> None:
    proc = FakeProcess([[0x1004]])
    with pytest.raises(HotpatchError, match=r"stayed active after 3 attempts.*executing f"):
        switch(proc, proc, [F], WRITES, Retry(attempts=3), sleep=lambda _: None)
    assert proc.read(0x1000, 5) == ORIGINAL and proc.running and proc.stops == 3


def test_a_refusal_says_how_long_the_process_was_stopped() -> None:
    proc = FakeProcess([[0x1004]])
    with pytest.raises(HotpatchError) as err:
        switch(proc, proc, [F], WRITES, Retry(attempts=3), sleep=lambda _: None)
    assert err.value.details["stopped_ms"] == pytest.approx(6.0)


def test_bytes_changed_under_us_are_not_overwritten() -> None:
    proc = FakeProcess([[0x9000]])
    proc.memory[0x40] = 0xCC  # someone else's breakpoint on the second site
    with pytest.raises(HotpatchError, match="changed under us"):
        switch(proc, proc, [F], WRITES, Retry(), sleep=lambda _: None)
    assert proc.read(0x1000, 5) == ORIGINAL and proc.running


def test_a_failure_halfway_is_undone_before_threads_run() -> None:
    proc = FakeProcess([[0x9000]], fail_write_at=0x1040)
    with pytest.raises(HotpatchError, match="write failed"):
        switch(proc, proc, [F], WRITES, Retry(), sleep=lambda _: None)
    assert proc.read(0x1000, 5) == ORIGINAL and proc.read(0x1040, 5) == ORIGINAL
    assert proc.running


def test_a_write_that_fails_partway_through_is_undone_too() -> None:
    proc = FakeProcess([[0x9000]], short_write_at=0x1040)
    with pytest.raises(HotpatchError, match="short write"):
        switch(proc, proc, [F], WRITES, Retry(), sleep=lambda _: None)
    assert proc.read(0x1000, 5) == ORIGINAL and proc.read(0x1040, 5) == ORIGINAL
    assert proc.running
