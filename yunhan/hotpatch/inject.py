"""Borrow one thread of a running process to make syscalls and call functions in it.

Only the borrowed thread stops; the others keep running, so a lock dlopen needs is never
held by a thread we stopped. The thread is chosen so that it holds no libc lock itself:
it is blocked in a restartable syscall, or executing outside libc and the dynamic linker.
Its registers and whole XSAVE state are saved first and restored at the end; a syscall it
was blocked in is restarted by the kernel as if it had only seen a stop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import struct
import time

from yunhan.errors import HotpatchError
from yunhan.hotpatch import plan, procfs, ptrace
from yunhan.hotpatch.ptrace import Regs

SYS_CLOSE = 3
SYS_MMAP = 9
SYS_MUNMAP = 11
SYS_FUTEX = 202
SYS_MEMFD_CREATE = 319
PROT_READ, PROT_EXEC = 1, 4
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
MFD_CLOEXEC, MFD_EXEC = 0x1, 0x10
RED_ZONE = 128
# -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK
RESTART_CODES = {-512, -513, -514, -516}
# Blocking syscalls glibc enters without holding an internal lock that dlopen could need,
# and that the kernel restarts after a ptrace stop. epoll_wait is absent on purpose: a
# stop makes it return EINTR, which we would rather not cause in a thread we only borrow.
_SAFE_BLOCKING = {
    0, 1, 7, 17, 19, 20, 23, 34, 35, 42, 43, 44, 45, 46, 47, 61, 128, 130, 202, 230, 247,
    270, 271, 288,
}  # fmt: skip
# epoll_wait, epoll_pwait, epoll_pwait2: lock-free in libc too, but a stop makes them return
# EINTR. Such a thread is borrowed only when nothing better exists; by then our probe has
# interrupted it anyway, and any stop-the-world would as well.
_EINTR_ONLY = {232, 281, 441}
EINTR = -4
# Among blocked threads, borrow an idle sleeper first: a thread blocked in accept or read
# is likely serving someone, and the dlopen we run in it would delay that request.
_SLEEPS = {34, 35, 61, 130, 202, 230, 247}
_LIBC_LIKE = ("libc.so", "ld-linux", "libpthread.so", "libdl.so")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _in_libc(maps: list[procfs.Mapping], pc: int) -> bool:
    for m in maps:
        if m.contains(pc):
            return os.path.basename(m.path).startswith(_LIBC_LIKE)
    return True  # unknown code (JIT, vdso...): do not borrow the thread there


class Hijack:
    """One borrowed thread; use as a context manager so it is always given back."""

    def __init__(
        self,
        pid: int,
        mem: procfs.Memory,
        *,
        timeout: float = 10.0,
        restorer: int | None = None,
    ) -> None:
        """Borrow a thread of `pid`. `restorer` is the address of libc's signal-return
        trampoline in the target, used to leave threads running a signal handler alone."""
        self.pid = pid
        self.restorer = restorer
        self.mem = mem
        self.timeout = timeout
        self.deferred: list[int] = []
        self.trap_addr: int | None = None  # an int3 byte that called functions return to
        self._running = False  # resumed by us and not seen stopping since
        maps = procfs.read_maps(pid)
        self._syscall_insn = self._find_syscall_insn(maps)
        self.tid, self.saved = self._borrow(maps)
        try:
            self.saved_xstate = ptrace.get_xstate(self.tid)
        except HotpatchError:
            self._give_back_plain()
            raise

    # -- choosing and stopping a thread ---------------------------------------------------

    def _borrow(self, maps: list[procfs.Mapping]) -> tuple[int, Regs]:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            tids = procfs.threads(self.pid)
            nrs = {t: procfs.blocked_syscall(self.pid, t) for t in tids}
            sleepers = [t for t in tids if nrs[t] in _SLEEPS]
            blocked = [t for t in tids if nrs[t] in _SAFE_BLOCKING and t not in sleepers]
            others = [t for t in tids if t not in sleepers and t not in blocked]
            for tid in sleepers + blocked + others:
                try:
                    regs = self._stop_one(tid, time.monotonic() + min(2.0, self.timeout))
                    if regs is not None and self._borrowable(maps, regs):
                        return tid, regs
                except BaseException:
                    self._abandon(tid)
                    raise
                if regs is not None:
                    self._release(tid)
            attempt += 1
            if time.monotonic() > deadline:
                raise HotpatchError(
                    f"no thread of process {self.pid} could be borrowed safely within "
                    f"{self.timeout:g}s (all were inside libc or the dynamic linker, "
                    "possibly holding their locks)",
                    pid=self.pid,
                )
            time.sleep(min(0.001 * 2**attempt, 0.05))
            maps = procfs.read_maps(self.pid)

    def _borrowable(self, maps: list[procfs.Mapping], regs: Regs) -> bool:
        nr, rax = _signed(regs.orig_rax), _signed(regs.rax)
        in_safe_syscall = (nr in _SAFE_BLOCKING and rax in RESTART_CODES) or (
            nr in _EINTR_ONLY and rax == EINTR
        )
        outside_libc = not _in_libc(maps, regs.rip)
        return (
            (in_safe_syscall or outside_libc)
            and not self._in_loader(maps, regs)
            and not self._in_signal_handler(maps, regs.rsp)
        )

    def _in_signal_handler(self, maps: list[procfs.Mapping], rsp: int) -> bool:
        """Is a signal frame live on this thread's stack?

        A handler may have interrupted libc while it held a lock (malloc's, say); dlopen
        run from there could deadlock on it. A frame is recognised by the restorer address
        with a plausible saved context after it (stack pointer above the frame, PC in
        code), so that a stale copy of the address in some buffer is not taken for one.
        """
        stack = next((m for m in maps if m.contains(rsp)), None)
        if self.restorer is None or stack is None:
            return False
        data = self.mem.read(rsp, min(stack.end - rsp, 1 << 16))
        needle = struct.pack("<Q", self.restorer)
        i = data.find(needle)
        while i >= 0:
            if (rsp + i) % 8 == 0 and i + plan.SIGFRAME_RIP + 8 <= len(data):
                saved_sp = struct.unpack_from("<Q", data, i + plan.SIGFRAME_RSP)[0]
                saved_pc = struct.unpack_from("<Q", data, i + plan.SIGFRAME_RIP)[0]
                if rsp + i < saved_sp <= stack.end and any(
                    m.executable and m.contains(saved_pc) for m in maps
                ):
                    return True
            i = data.find(needle, i + 1)
        return False

    def _abandon(self, tid: int) -> None:
        """Let `tid` go whatever state an error left it in (attached, interrupted...)."""
        try:
            ptrace.detach(tid)
            return
        except HotpatchError:
            pass
        with contextlib.suppress(HotpatchError):
            ptrace.interrupt(tid)
            st = ptrace.wait(tid, time.monotonic() + 0.5)
            if not st.exited:
                ptrace.detach(tid)

    def _stop_one(self, tid: int, deadline: float) -> Regs | None:
        try:
            ptrace.seize(tid)
        except ptrace.PtraceError as exc:
            if exc.errno == errno.ESRCH or procfs.task_state(self.pid, tid) in "ZX":
                return None
            raise
        try:
            ptrace.interrupt(tid)
        except ptrace.PtraceError as exc:
            if exc.errno != errno.ESRCH:
                raise
            ptrace.wait(tid, deadline)  # it exited after we attached: reap it
            return None
        while True:
            st = ptrace.wait(tid, deadline)
            if st.exited:
                return None
            if st.event == ptrace.PTRACE_EVENT_STOP:
                return ptrace.get_regs(tid)
            if st.is_signal_delivery:
                self.deferred.append(st.sig)
            ptrace.cont(tid, 0)

    @staticmethod
    def _in_loader(maps: list[procfs.Mapping], regs: Regs) -> bool:
        """Is the thread in the dynamic linker, or waiting for one of its locks?

        glibc's loader locks (dl_load_lock, dl_load_write_lock) live in ld.so's data, so
        a futex wait on an address there means the thread is inside dlopen, dlclose or
        dl_iterate_phdr; a nested dlopen in it could corrupt the loader's state. (Scanning
        the stack for ld.so addresses instead was tried: stale words left by start-up in
        uninitialised buffers made whole processes unborrowable.)
        """
        ld = [m for m in maps if "ld-linux" in m.path]
        if any(m.contains(regs.rip) for m in ld):
            return True
        return _signed(regs.orig_rax) == SYS_FUTEX and any(m.contains(regs.rdi) for m in ld)

    def _release(self, tid: int) -> None:
        try:
            ptrace.detach(tid)
        except ptrace.PtraceError as exc:
            if exc.errno != errno.ESRCH:
                raise
        for sig in self.deferred:
            ptrace.tgkill(self.pid, tid, sig)
        self.deferred.clear()

    def _find_syscall_insn(self, maps: list[procfs.Mapping]) -> int:
        libc = [m for m in maps if m.executable and os.path.basename(m.path).startswith("libc.so")]
        for m in libc or [m for m in maps if m.executable and m.path.startswith("/")]:
            chunk = 1 << 16
            for addr in range(m.start, m.end, chunk):
                data = self.mem.read(addr, min(chunk, m.end - addr))
                i = data.find(b"\x0f\x05")
                if i >= 0:
                    return addr + i
        raise HotpatchError(f"no syscall instruction found in process {self.pid}")

    # -- running code in the borrowed thread ----------------------------------------------

    def _run_until_trap(self, step: bool, expect_pc: int) -> Regs:
        deadline = time.monotonic() + self.timeout
        resume = ptrace.singlestep if step else ptrace.cont
        resume(self.tid, 0)
        self._running = True
        while True:
            try:
                st = ptrace.wait(self.tid, deadline)
            except HotpatchError as exc:
                raise HotpatchError(
                    f"code run in borrowed thread {self.tid} did not finish within "
                    f"{self.timeout:g}s (a patch constructor that blocks? a lock never "
                    "released?); the thread was given its own state back",
                    tid=self.tid,
                ) from exc
            if st.exited:
                raise HotpatchError(f"thread {self.tid} exited while borrowed", tid=self.tid)
            self._running = False
            if st.is_signal_delivery and st.sig == signal.SIGTRAP:
                regs = ptrace.get_regs(self.tid)
                if regs.rip == expect_pc:
                    return regs
                raise HotpatchError(
                    f"unexpected trap at {regs.rip:#x} in borrowed thread {self.tid}",
                    tid=self.tid,
                )
            if st.is_signal_delivery:
                self.deferred.append(st.sig)  # delivered once the thread is given back
            resume(self.tid, 0)
            self._running = True

    def _ensure_stopped(self) -> None:
        """After a call that timed out the thread still runs our code: stop it again."""
        if self._running:
            with contextlib.suppress(HotpatchError):
                ptrace.interrupt(self.tid)
                ptrace.wait(self.tid, time.monotonic() + 2.0)
            self._running = False

    def _base_regs(self) -> Regs:
        regs = self.saved.copy()
        # Not a syscall any more: keeps the kernel from "restarting" into our code.
        regs.orig_rax = (1 << 64) - 1
        regs.eflags &= ~0x400  # DF clear, as the ABI promises at a call
        return regs

    def syscall(self, nr: int, *args: int) -> int:
        """Run one syscall in the borrowed thread; returns its raw result (-errno on error)."""
        self._ensure_stopped()
        regs = self._base_regs()
        regs.rax = nr
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & ((1 << 64) - 1))
        regs.rip = self._syscall_insn
        ptrace.set_regs(self.tid, regs)
        out = self._run_until_trap(step=True, expect_pc=self._syscall_insn + 2)
        return _signed(out.rax)

    def call(self, func: int, *args: int) -> int:
        """Call `func(*args)` (integer/pointer args) in the borrowed thread; returns %rax.

        The frame starts below the interrupted code's red zone, 16-byte aligned before the
        return address is pushed (so %rsp+8 is aligned at entry, as the ABI requires);
        the return address is `trap_addr`, an int3 we own.
        """
        if self.trap_addr is None:
            raise HotpatchError("internal: no trap address for a call")
        self._ensure_stopped()
        regs = self._base_regs()
        sp = (self.saved.rsp - RED_ZONE - 64) & ~0xF
        sp -= 8
        self.mem.write(sp, self.trap_addr.to_bytes(8, "little"))
        regs.rsp = sp
        regs.rip = func
        regs.rax = 0  # no vector registers used by this call
        for name, value in zip(("rdi", "rsi", "rdx", "rcx", "r8", "r9"), args, strict=False):
            setattr(regs, name, value & ((1 << 64) - 1))
        ptrace.set_regs(self.tid, regs)
        out = self._run_until_trap(step=False, expect_pc=self.trap_addr + 1)
        return int(out.rax)

    def _give_back_plain(self) -> None:
        try:
            ptrace.set_regs(self.tid, self.saved)
        finally:
            self._release(self.tid)

    def close(self) -> None:
        """Restore registers and XSAVE state exactly, then let the thread go.

        If a call timed out (a dlopen that never returns), the thread is stopped first and
        given its own state back: detached while still in our call, it would later return
        to our int3 with no tracer and die of SIGTRAP, taking the process with it.
        """
        self._ensure_stopped()
        try:
            ptrace.set_xstate(self.tid, self.saved_xstate)
        finally:
            self._give_back_plain()

    def __enter__(self) -> Hijack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_cstring(mem: procfs.Memory, addr: int, limit: int = 1024) -> str:
    out = b""
    while len(out) < limit:
        chunk = mem.read(addr + len(out), 64)
        nul = chunk.find(b"\0")
        if nul >= 0:
            return (out + chunk[:nul]).decode(errors="replace")
        out += chunk
    return out.decode(errors="replace")


def write_memfd(pid: int, fd: int, data: bytes) -> None:
    """Fill the target's memfd from outside, through /proc/PID/fd (any mount namespace)."""
    try:
        wfd = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HotpatchError(
            f"cannot open the patch memfd of process {pid}: {exc.strerror}", errno=exc.errno
        ) from exc
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view) :]
    finally:
        os.close(wfd)
