"""Stop every thread of a process, look at them, resume them: the switch's critical section.

Threads are attached with PTRACE_SEIZE + PTRACE_O_TRACECLONE and stopped with
PTRACE_INTERRUPT. A thread created while we are stopping the others is either attached
automatically (its parent was already ours) or shows up once every known thread has
stopped: the kernel's thread count then exceeds ours and /proc/PID/task is listed again;
the loop ends when the count matches or a listing finds no one new.
Resuming is PTRACE_DETACH, which also re-injects a signal that arrived during the stop.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import threading
import time
from collections import deque

from yunhan.errors import HotpatchError
from yunhan.hotpatch import procfs, ptrace
from yunhan.hotpatch.plan import ThreadView

_STACK_READ_LIMIT = 8 << 20


# Polls of a thread that has not stopped yet, with nothing else to do, before the wait
# sleeps between polls: stops normally arrive within microseconds.
_SPINS = 200


class World:
    """One stop of a whole process. Always call `resume()` (use it as a context manager)."""

    def __init__(self, pid: int, mem: procfs.Memory, maps: list[procfs.Mapping]) -> None:
        self.pid = pid
        self.mem = mem
        self._set_maps(maps)
        self.stopped: dict[int, int] = {}  # tid -> signal to deliver on resume
        self._known: set[int] = set()
        self._views: dict[int, ThreadView] = {}
        self.stopped_at = 0.0
        self._rt = False
        self._saved_sched: tuple[int, os.sched_param] = (os.SCHED_OTHER, os.sched_param(0))

    def _set_maps(self, maps: list[procfs.Mapping]) -> None:
        self._maps = sorted(maps, key=lambda m: m.start)
        self._starts = [m.start for m in self._maps]

    def _seize(self, tids: list[int], me: int, ours: deque[int]) -> list[int]:
        """Attach without stopping; returns the tids that still need an interrupt.

        A clone already attached to us automatically stops by itself: it goes to `ours`.
        """
        seized = []
        for tid in tids:
            self._known.add(tid)
            try:
                ptrace.seize(tid, ptrace.PTRACE_O_TRACECLONE)
            except ptrace.PtraceError as exc:
                if exc.errno == errno.ESRCH:
                    continue
                if exc.errno == errno.EPERM and procfs.tracer_of(self.pid, tid) == me:
                    ours.append(tid)
                    continue
                if exc.errno == errno.EPERM and procfs.task_state(self.pid, tid) in "ZX":
                    continue  # exiting: attaching is refused, and it runs no code any more
                raise
            seized.append(tid)
        return seized

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread, including threads created while we do it.

        All threads are attached first (that does not stop them), then interrupted in one
        quick loop so they stop in parallel; the pause starts at the first interrupt. Each
        thread's registers and stack are read as soon as it has stopped, while the others
        are still on their way (see `views()`).
        """
        deadline = time.monotonic() + timeout
        me = threading.get_native_id()  # TracerPid names the tracing thread
        queue: deque[int] = deque()  # interrupted (or auto-attached), not yet reported
        to_stop = self._seize(procfs.threads(self.pid), me, queue)
        self.stopped_at = time.perf_counter()
        while True:
            for tid in to_stop:
                try:
                    ptrace.interrupt(tid)
                except ptrace.PtraceError as exc:
                    if exc.errno != errno.ESRCH:
                        raise
                    # Exited after we attached: still ours to reap (wait reports the exit),
                    # or its zombie would keep the whole process from being reaped.
                queue.append(tid)
            self._collect(queue, deadline)
            if self._none_unknown():
                break
            fresh = [t for t in procfs.threads(self.pid) if t not in self._known]
            if not fresh:
                break
            to_stop = self._seize(fresh, me, queue)
        self._realtime(True)

    def _collect(self, queue: deque[int], deadline: float) -> None:
        """Take every report of `queue`, in interrupt order; read the stopped threads while
        waiting for the next one, poll only when there is nothing to read."""
        unread: deque[int] = deque()
        spins = 0
        while queue:
            st = ptrace.poll(queue[0])
            if st is None:
                if unread:
                    self._look(unread.popleft())
                    continue
                if time.monotonic() > deadline:
                    raise HotpatchError(
                        f"thread {queue[0]} did not stop in time (uninterruptible sleep?)",
                        tid=queue[0],
                    )
                spins += 1
                if spins > _SPINS:
                    time.sleep(0.0005)
                continue
            spins = 0
            tid = queue.popleft()
            if st.exited:
                self.stopped.pop(tid, None)
                self._views.pop(tid, None)
                continue
            if st.event == ptrace.PTRACE_EVENT_CLONE:
                child = ptrace.get_event_msg(tid)
                if child not in self._known:
                    self._known.add(child)
                    queue.append(child)
            self.stopped[tid] = st.sig if st.is_signal_delivery else 0
            unread.append(tid)
        for tid in unread:
            self._look(tid)

    def _none_unknown(self) -> bool:
        # With every known thread stopped (none is halfway through a clone), the thread
        # group has exactly the threads we hold when the kernel's count says so: the link
        # count of /proc/PID/task is 2 + the number of threads (exited ones count until
        # reaped). One stat instead of listing the directory; any mismatch (a zombie
        # thread we could not attach, a new thread) falls back to the listing.
        try:
            return os.stat(f"/proc/{self.pid}/task").st_nlink - 2 == len(self.stopped)
        except OSError:
            return False

    def _realtime(self, on: bool) -> None:
        # While every thread is stopped nothing of the target can run anyway. At SCHED_FIFO
        # the threads we detach first cannot preempt the loop that resumes the others, which
        # shortens the pause's tail several times on a small machine. Not while waiting for
        # threads to stop: a real-time poller keeps them off its CPU. Measured at 64 threads
        # on 2 vCPUs, FIFO from the first interrupt with 20 us naps while waiting made the
        # pause's p50 ~30% longer than this, and 5 us naps starved the threads (40 ms).
        # Best effort (needs CAP_SYS_NICE).
        if on == self._rt:
            return
        try:
            if on:
                self._saved_sched = (os.sched_getscheduler(0), os.sched_getparam(0))
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            else:
                policy, param = self._saved_sched
                os.sched_setscheduler(0, policy, param)
        except OSError:
            return
        self._rt = on

    def views(self) -> list[ThreadView]:
        """Registers and live stack of every stopped thread, for the activeness check.

        Most were read during `stop()`, each once its thread had stopped: a stopped thread's
        registers and its frames do not change until it is resumed.
        """
        for tid in self.stopped:
            if tid not in self._views:
                self._look(tid)
        return [self._views[tid] for tid in self.stopped]

    def _look(self, tid: int) -> None:
        regs = ptrace.get_regs(tid)
        self._views[tid] = ThreadView(tid, regs.rip, self._stack(regs.rsp))

    def _stack(self, rsp: int) -> bytes:
        m = self._mapping(rsp)
        if m is None:
            self._set_maps(procfs.read_maps(self.pid))  # a stack made after we looked
            m = self._mapping(rsp)
        if m is None:
            raise HotpatchError(f"stack pointer {rsp:#x} is in no mapping", pid=self.pid)
        return self.mem.read(rsp, min(m.end - rsp, _STACK_READ_LIMIT))

    def _mapping(self, addr: int) -> procfs.Mapping | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and self._maps[i].contains(addr):
            return self._maps[i]
        return None

    def resume(self) -> float:
        """Let every thread go; returns how long the process was stopped (seconds)."""
        errors = []
        for tid, sig in self.stopped.items():
            try:
                ptrace.detach(tid, sig)
            except ptrace.PtraceError as exc:
                if exc.errno != errno.ESRCH:
                    errors.append(exc)
        # Threads attached but never reported (an error cut stop() short) are still ours:
        # stop and detach the live ones, reap the ones that exited (a traced zombie thread
        # must be reaped by its tracer, or the process itself can never be reaped).
        for tid in self._known - set(self.stopped):
            with contextlib.suppress(HotpatchError):
                ptrace.interrupt(tid)
            try:
                st = ptrace.wait(tid, time.monotonic() + 0.5)
            except HotpatchError:
                continue
            if not st.exited:
                with contextlib.suppress(HotpatchError):
                    ptrace.detach(tid, st.sig if st.is_signal_delivery else 0)
        paused = time.perf_counter() - self.stopped_at if self.stopped_at else 0.0
        self._realtime(False)
        self.stopped.clear()
        self._known.clear()
        self._views.clear()
        if errors:
            raise errors[0]
        return paused

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._known:
            self.resume()
