"""The pure core of the hot patch switch: jump encoding and the activeness check."""

from __future__ import annotations

import struct

import capstone
import pytest
from hypothesis import given
from hypothesis import strategies as st

from yunhan.errors import HotpatchError
from yunhan.hotpatch.elf import ENDBR64, return_sites
from yunhan.hotpatch.plan import (
    ABS_LEN,
    REL32_LEN,
    SIGFRAME_RIP,
    Guard,
    ThreadView,
    find_active,
    plan_jump,
    trampoline_slot,
)

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def _decode_one(code: bytes, at: int) -> capstone.CsInsn:
    (insn,) = list(_md.disasm(code, at))
    return insn


BODY = bytes.fromhex("8d443f01") + b"\xc3" + b"\x90" * 20  # lea; ret; padding


def test_rel32_when_in_reach() -> None:
    j = plan_jump("f", 0x1000, len(BODY), BODY, 0x7000_0000, None)
    insn = _decode_one(j.code, j.write_addr)
    assert (j.write_addr, len(j.code), j.via_trampoline) == (0x1000, REL32_LEN, False)
    assert insn.mnemonic == "jmp" and int(insn.op_str, 16) == 0x7000_0000


def test_endbr64_is_kept_and_jump_follows_it() -> None:
    code = ENDBR64 + BODY
    j = plan_jump("f", 0x1000, len(code), code, 0x2000, None)
    assert j.write_addr == 0x1004


def test_trampoline_slot_when_new_code_is_far() -> None:
    far = 0x7F00_0000_0000
    j = plan_jump("f", 0x5555_0000_1000, len(BODY), BODY, far, 0x5555_0000_0000)
    assert j.via_trampoline and len(j.code) == REL32_LEN
    slot = trampoline_slot(far)
    insn = _decode_one(slot[:6], 0x5555_0000_0000)
    assert insn.mnemonic == "jmp" and insn.op_str == "qword ptr [rip]"
    assert struct.unpack("<Q", slot[6:14])[0] == far


def test_absolute_form_without_trampoline_clobbers_no_register() -> None:
    far = 0x7F00_0000_0000
    j = plan_jump("f", 0x1000, len(BODY), BODY, far, None)
    assert len(j.code) == ABS_LEN and not j.via_trampoline
    insn = _decode_one(j.code[:6], j.write_addr)
    assert insn.op_str == "qword ptr [rip]"  # not movabs rax; jmp rax: %al survives
    assert j.code[6:] == struct.pack("<Q", far)


def test_too_short_function_is_refused() -> None:
    code = bytes.fromhex("31c0c3")  # xor eax,eax; ret
    with pytest.raises(HotpatchError, match=r"too short.*3 bytes.*needs 5"):
        plan_jump("tiny", 0x1000, 3, code, 0x2000, None)
    with pytest.raises(HotpatchError, match="needs 14"):
        plan_jump("f", 0x1000, 10, BODY[:10], 0x7F00_0000_0000, None)


CALLER = bytes.fromhex("4883ec08e8000000004883c408c3")  # sub; call; add; ret


def test_return_sites_are_the_addresses_after_calls() -> None:
    assert return_sites(CALLER, 0x4000) == {0x4009}


GUARD = Guard("f", ((0x4000, 0x400E), (0x9000, 0x9010)), frozenset({0x4009}))


def _stack(*words: int) -> bytes:
    return b"".join(struct.pack("<Q", w) for w in words)


@pytest.mark.parametrize(
    ("pc", "stack", "active"),
    [
        (0x1234, _stack(1, 2, 3), False),
        (0x4003, _stack(), True),  # executing the function
        (0x9004, _stack(), True),  # executing its .cold part
        (0x1234, _stack(7, 0x4009, 8), True),  # will return into it
        (0x1234, _stack(0x4000), False),  # a function pointer is not a return address
        (0x1234, _stack(0x4005), False),  # neither is a stale non-return value inside it
    ],
)
def test_activeness(pc: int, stack: bytes, active: bool) -> None:
    reasons = find_active([ThreadView(11, pc, stack + b"\x01\x02")], [GUARD])
    assert bool(reasons) is active


def test_pc_saved_in_a_signal_frame_counts_as_active() -> None:
    restorer = 0x7F00_0000_3C050
    frame = bytearray(_stack(restorer) + b"\0" * 200)
    frame[SIGFRAME_RIP : SIGFRAME_RIP + 8] = struct.pack("<Q", 0x4002)
    view = ThreadView(12, 0x7F00_0001_0000, _stack(0, 0) + bytes(frame))
    (reason,) = find_active([view], [GUARD], restorer)
    assert "signal handler that interrupted f" in reason
    assert find_active([view], [GUARD], None) == []


def _naive_returns(stack: bytes, sites: frozenset[int]) -> set[int]:
    words = {struct.unpack_from("<Q", stack, i)[0] for i in range(0, len(stack) - 7, 8)}
    return words & sites


# Addresses made of the bytes stacks are full of (0x00, 0xff, 0x7f), which the fast search
# does not look for, next to ordinary ones.
_ADDRESSES = st.one_of(
    st.integers(0, 2**64 - 1),
    st.lists(st.sampled_from([0x00, 0xFF, 0x7F, 0x40, 0x55]), min_size=8, max_size=8).map(
        lambda b: int.from_bytes(bytes(b), "little")
    ),
)


@given(
    sites=st.frozensets(_ADDRESSES, min_size=1, max_size=4),
    noise=st.lists(st.sampled_from([0, 0xFF, 0x7F, 0x40, 0x55, 0x12]), max_size=64),
    planted=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 3)), max_size=4),
)
def test_return_sites_are_found_exactly_where_a_word_by_word_scan_finds_them(
    sites: frozenset[int], noise: list[int], planted: list[tuple[int, int]]
) -> None:
    # Differential: the byte-search shortcut against decoding every aligned stack word.
    stack = bytearray(noise) + bytearray(88)
    ordered = sorted(sites)
    for at, which in planted:  # aligned or not: only aligned slots count
        stack[at : at + 8] = struct.pack("<Q", ordered[which % len(ordered)])
    guards = [Guard(f"g{s:x}", ((1, 2),), frozenset({s})) for s in ordered]
    reasons = find_active([ThreadView(3, 0, bytes(stack))], guards)
    found = {s for s in ordered if any(f"(at {s:#x})" in r for r in reasons)}
    assert found == _naive_returns(bytes(stack), sites)
