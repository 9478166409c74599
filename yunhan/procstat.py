"""/proc/PID/stat, read in one place: a process's state letter and start time.

The start time (field 22, clock ticks since boot) together with the pid names one process
for good: a pid reused by another process has another start time. Leaf module: it imports
nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    state: str  # R, S, D, T (stopped), t (traced), Z (zombie), X (dead), ...
    start_time: int
    flags: int = 0  # the kernel's PF_* flags of the task
    ppid: int = 0

    @property
    def exiting(self) -> bool:
        """In do_exit (PF_EXITING), a zombie, or dead: it lets go of what it holds soon."""
        return bool(self.flags & 0x4) or self.state in ("Z", "X")

    @property
    def alive(self) -> bool:
        """Running or sleeping: not a zombie (which holds no namespace and cannot be
        killed further) and not dead."""
        return self.state not in ("Z", "X")


def parse(text: str) -> ProcStat:
    """Parse the content of a stat file."""
    # comm (field 2) may hold spaces and parentheses: the fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(
        state=fields[0], start_time=int(fields[19]), flags=int(fields[6]), ppid=int(fields[1])
    )


def read(pid: int, tid: int | None = None) -> ProcStat | None:
    """The stat of process `pid` (of its thread `tid`, if given); None when it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path) as f:
            text = f.read()
    except OSError:  # ENOENT, or ESRCH for a task that exited while we read
        return None
    return parse(text)
