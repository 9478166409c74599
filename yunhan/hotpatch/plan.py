"""The pure core of a switch: which bytes go where, and is it safe to write them now.

Nothing here touches a process: the loader gathers facts (addresses, bytes, thread
registers and stacks), these functions decide, and the loader writes what they return.
"""

from __future__ import annotations

import struct
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
    # This runs while the whole process is stopped: each return site is searched with
    # bytes.find (C speed) instead of decoding every stack word. The needle drops the
    # address's zero high bytes: stacks are full of zeros, and a needle ending in zero
    # defeats the search's skip table (ten times slower in practice).
    needles = {}
    for g in guards:
        for site in g.return_sites:
            full = struct.pack("<Q", site)
            needles[full.rstrip(b"\0") or full] = (full, site, g.name)
    reasons = []
    for t in threads:
        for g in guards:
            if any(lo <= t.pc < hi for lo, hi in g.ranges):
                reasons.append(f"thread {t.tid} is executing {g.name} (pc {t.pc:#x})")
        for needle, (full, site, name) in needles.items():
            i = t.stack.find(needle)
            # Only a whole, 8-byte aligned slot holds a return address.
            while i >= 0 and (i % 8 or t.stack[i : i + 8] != full):
                i = t.stack.find(needle, i + 1)
            if i >= 0:
                reasons.append(f"thread {t.tid} will return into {name} (at {site:#x})")
        if restorer is not None:
            reasons += _signal_frames(t, guards, restorer)
    return reasons


def _signal_frames(t: ThreadView, guards: list[Guard], restorer: int) -> list[str]:
    reasons = []
    full = struct.pack("<Q", restorer)
    i = t.stack.find(full)
    while i >= 0:
        at = i + SIGFRAME_RIP
        if i % 8 == 0 and at + 8 <= len(t.stack):
            pc = struct.unpack_from("<Q", t.stack, at)[0]
            for g in guards:
                if any(lo <= pc < hi for lo, hi in g.ranges):
                    reasons.append(
                        f"thread {t.tid} is in a signal handler that interrupted {g.name} "
                        f"(pc {pc:#x})"
                    )
        i = t.stack.find(full, i + 1)
    return reasons
