"""ptrace(2) through ctypes: the only module that issues ptrace requests.

Every failure becomes a HotpatchError carrying errno and the thread id, so that callers
can tell "thread exited" (ESRCH) from "not allowed" (EPERM) without looking at OSError.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from dataclasses import dataclass

from yunhan.errors import HotpatchError

PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207

PTRACE_O_TRACECLONE = 0x8
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202
WALL = 0x40000000  # __WALL: wait for threads (non-leader tasks) too

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


_REG_NAMES = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
    "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
    "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip


class Regs(ctypes.Structure):
    """struct user_regs_struct (x86_64), in kernel order."""

    _fields_ = [(name, ctypes.c_ulonglong) for name in _REG_NAMES]

    def copy(self) -> Regs:
        return Regs.from_buffer_copy(self)


class PtraceError(HotpatchError):
    """A ptrace request failed; `errno` and `tid` say which way (ESRCH: thread gone or
    running, EPERM: not allowed or already traced)."""

    def __init__(self, message: str, *, errno: int, tid: int) -> None:
        super().__init__(message, errno=errno, tid=tid)
        self.errno = errno
        self.tid = tid


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _call(request: int, tid: int, addr: int | None, data: int | ctypes.c_void_p | None) -> int:
    ctypes.set_errno(0)
    res = _libc.ptrace(request, tid, addr, data)
    if res == -1:
        err = ctypes.get_errno()
        if err:
            what = {
                errno.EPERM: "operation not permitted (another tracer, or ptrace restricted)",
                errno.ESRCH: "no such thread, or it is not stopped",
            }.get(err, os.strerror(err))
            raise PtraceError(
                f"ptrace request {request:#x} on thread {tid} failed: {what}",
                errno=err,
                tid=tid,
            )
    return int(res)


def seize(tid: int, options: int = 0) -> None:
    _call(PTRACE_SEIZE, tid, None, options)


def interrupt(tid: int) -> None:
    _call(PTRACE_INTERRUPT, tid, None, None)


def cont(tid: int, sig: int = 0) -> None:
    _call(PTRACE_CONT, tid, None, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    _call(PTRACE_SINGLESTEP, tid, None, sig)


def detach(tid: int, sig: int = 0) -> None:
    _call(PTRACE_DETACH, tid, None, sig)


def get_event_msg(tid: int) -> int:
    msg = ctypes.c_ulong()
    _call(PTRACE_GETEVENTMSG, tid, None, ctypes.addressof(msg))
    return msg.value


def get_regs(tid: int) -> Regs:
    regs = Regs()
    _call(PTRACE_GETREGS, tid, None, ctypes.addressof(regs))
    return regs


def set_regs(tid: int, regs: Regs) -> None:
    _call(PTRACE_SETREGS, tid, None, ctypes.addressof(regs))


def get_xstate(tid: int) -> bytes:
    """The whole XSAVE area (x87, SSE, AVX, AVX-512 ...): everything a call may clobber."""
    buf = ctypes.create_string_buffer(16384)
    iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), len(buf))
    _call(PTRACE_GETREGSET, tid, NT_X86_XSTATE, ctypes.addressof(iov))
    return buf.raw[: iov.len]


def set_xstate(tid: int, state: bytes) -> None:
    buf = ctypes.create_string_buffer(state, len(state))
    iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), len(state))
    _call(PTRACE_SETREGSET, tid, NT_X86_XSTATE, ctypes.addressof(iov))


@dataclass(frozen=True)
class Stop:
    """One waitpid report about a traced thread."""

    tid: int
    exited: bool
    sig: int = 0
    event: int = 0

    @property
    def is_signal_delivery(self) -> bool:
        # A real signal about to be delivered (not a ptrace event or a group-stop).
        return not self.exited and self.event == 0


def poll(tid: int) -> Stop | None:
    """The next report about `tid` if there is one, without waiting."""
    try:
        got, status = os.waitpid(tid, WALL | os.WNOHANG)
    except ChildProcessError:
        return Stop(tid, exited=True)  # not (or no longer) our tracee: it is gone
    if got != tid:
        return None
    if os.WIFSTOPPED(status):
        return Stop(tid, exited=False, sig=os.WSTOPSIG(status), event=status >> 16)
    return Stop(tid, exited=True)


def wait(tid: int, deadline: float) -> Stop:
    """Wait for the next report about `tid`, polling so that a stuck thread cannot hang us."""
    spins = 0
    while True:
        st = poll(tid)
        if st is not None:
            return st
        if time.monotonic() > deadline:
            raise HotpatchError(
                f"thread {tid} did not stop in time (uninterruptible sleep?)", tid=tid
            )
        spins += 1
        # Stops normally arrive within microseconds: spin first, then back off.
        if spins > 200:
            time.sleep(0.0005)
        elif spins > 20:
            time.sleep(0)


def tgkill(pid: int, tid: int, sig: int) -> None:
    """Send `sig` to one thread: re-delivers a signal we held back while a thread was ours."""
    _libc.syscall(234, pid, tid, sig)  # SYS_tgkill
