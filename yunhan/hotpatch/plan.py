"""The pure core of a switch: which bytes go where, and is it safe to write them now.

Nothing here touches a process: the loader gathers facts (addresses, bytes, thread
registers and stacks), these functions decide, and the loader writes what they return.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from yunhan.errors import HotpatchError
from yunhan.hotpatch.elf import ENDBR64

REL32_LEN = 5
ABS_LEN = 14  # jmp qword ptr [rip+0] ; .quad target
SLOT_LEN = 16  # one trampoline entry: the 14-byte absolute jump, padded with int3


def rel32_reaches(at: int, target: int) -> bool:
    """Can a 5-byte `jmp rel32` placed at `at` reach `target`?"""
    return -(2**31) <= target - (at + REL32_LEN) < 2**31


def jmp_rel32(at: int, target: int) -> bytes:
    return b"\xe9" + struct.pack("<i", target - (at + REL32_LEN))


def jmp_abs(target: int) -> bytes:
    """`jmp [rip+0]` + address: reaches anywhere and clobbers no register.

    The seed's `movabs rax, imm; jmp rax` would destroy %al, which carries the number of
    vector registers into a variadic function, so it is never used.
    """
    return b"\xff\x25\x00\x00\x00\x00" + struct.pack("<Q", target)


def trampoline_slot(target: int) -> bytes:
    return jmp_abs(target) + b"\xcc" * (SLOT_LEN - ABS_LEN)


@dataclass(frozen=True)
class Jump:
    """The bytes to write at one function entry."""

    write_addr: int
    code: bytes
    via_trampoline: bool


def plan_jump(
    symbol: str,
    start: int,
    size: int,
    entry: bytes,
    new_addr: int,
    slot_addr: int | None,
) -> Jump:
    """Choose the jump for a function at `start` (`size` bytes, first bytes `entry`).

    An `endbr64` at the entry is kept (indirect calls land on it under IBT) and the jump
    goes after it. Preference: rel32 straight to the new code, rel32 to a trampoline slot
    near the target, then the 14-byte absolute form. A function too short for any of them
    is refused: writing past its end would corrupt the next function.
    """
    write_addr = start + 4 if entry.startswith(ENDBR64) else start
    room = start + size - write_addr
    if room >= REL32_LEN and rel32_reaches(write_addr, new_addr):
        return Jump(write_addr, jmp_rel32(write_addr, new_addr), False)
    if room >= REL32_LEN and slot_addr is not None and rel32_reaches(write_addr, slot_addr):
        return Jump(write_addr, jmp_rel32(write_addr, slot_addr), True)
    if room >= ABS_LEN:
        return Jump(write_addr, jmp_abs(new_addr), False)
    need = REL32_LEN if room < REL32_LEN else ABS_LEN
    raise HotpatchError(
        f"function {symbol} is too short to patch: {room} bytes after its entry"
        f"{' endbr64' if write_addr != start else ''}, a jump needs {need}",
        symbol=symbol,
        size=size,
    )


@dataclass(frozen=True)
class Guard:
    """A function that must not be active: its code ranges and its call return sites."""

    name: str
    ranges: tuple[tuple[int, int], ...]
    return_sites: frozenset[int]


@dataclass(frozen=True)
class ThreadView:
    """What the activeness check needs from one stopped thread."""

    tid: int
    pc: int
    stack: bytes  # from %rsp up to the top of its stack mapping


# In an x86_64 rt_sigframe the handler's return address (the restorer) comes first; the
# interrupted %rip sits in uc_mcontext: 8 (pretcode) + 8 (uc_flags) + 8 (uc_link)
# + 24 (uc_stack) + 16 * 8 (r8..rsp) bytes further.
SIGFRAME_RIP = 176
SIGFRAME_RSP = 168


def find_active(
    threads: list[ThreadView], guards: list[Guard], restorer: int | None = None
) -> list[str]:
    """Reasons why the switch must wait; empty means safe.

    A function is active when a thread executes in it (PC inside any of its ranges,
    `.cold` parts included), will return into it (a return site on a thread's stack), or
    was interrupted inside it by a signal whose handler is running (the PC saved in the
    signal frame, found after `restorer`). When none is, nobody can be at or jump into the
    middle of the bytes we overwrite.
    """
    sites = {site: g.name for g in guards for site in g.return_sites}
    keys = {site: _Word(site) for site in sites}
    rt = None if restorer is None else _Word(restorer)
    reasons = []
    for t in threads:
        for g in guards:
            if any(lo <= t.pc < hi for lo, hi in g.ranges):
                reasons.append(f"thread {t.tid} is executing {g.name} (pc {t.pc:#x})")
        for site, word in keys.items():
            if next(word.slots(t.stack), None) is not None:
                reasons.append(f"thread {t.tid} will return into {sites[site]} (at {site:#x})")
        if rt is not None:
            reasons += _signal_frames(t, guards, rt)
    return reasons


# Bytes that fill stacks (zeros, -1, the top byte of library addresses): never searched for.
_COMMON = frozenset(b"\x00\xff\x7f")


class _Word:
    """One 64-bit value to find in 8-byte aligned stack slots, quickly.

    This runs while the whole process is stopped, over every thread's stack. A one-byte
    bytes.find is a memchr (SIMD); longer needles go through CPython's skip search, which
    crawls a byte at a time over zeros whenever a needle byte is 0 modulo 64 (its bloom
    filter), and stacks are mostly zeros: searching the restorer address whole took 1 ms
    of a 64-thread stop. So the search is for the value's lowest byte that stacks rarely
    hold, and each hit is checked whole and aligned.
    """

    def __init__(self, value: int) -> None:
        self.full = struct.pack("<Q", value)
        self.at = next((i for i, b in enumerate(self.full) if b not in _COMMON), 0)
        self.byte = self.full[self.at : self.at + 1]

    def slots(self, stack: bytes) -> Iterator[int]:
        """Offsets of the aligned slots of `stack` that hold the value."""
        i = stack.find(self.byte, self.at)
        while i >= 0:
            slot = i - self.at
            if slot % 8 == 0 and stack[slot : slot + 8] == self.full:
                yield slot
            i = stack.find(self.byte, i + 1)


def _signal_frames(t: ThreadView, guards: list[Guard], restorer: _Word) -> list[str]:
    reasons = []
    for i in restorer.slots(t.stack):
        at = i + SIGFRAME_RIP
        if at + 8 <= len(t.stack):
            pc = struct.unpack_from("<Q", t.stack, at)[0]
            for g in guards:
                if any(lo <= pc < hi for lo, hi in g.ranges):
                    reasons.append(
                        f"thread {t.tid} is in a signal handler that interrupted {g.name} "
                        f"(pc {pc:#x})"
                    )
    return reasons
