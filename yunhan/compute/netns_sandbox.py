"""The instance sandbox: a network namespace plus a persistent UTS namespace, and its process.

An instance is, for now, a pair of namespaces: its network namespace
(`Naming.instance_netns(id)`, a normal named netns under /run/netns) and a UTS namespace
whose hostname is the instance name, kept alive by a bind mount at
/run/yunhan/uts/<netns name> (that directory is a private mount, like /run/netns). An
optional long-lived command runs inside both, started detached in its own session; its
pid and start time are recorded under the agent's state dir so that a restarted agent
adopts it (the start time guards against pid reuse) instead of starting a second copy.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from yunhan import procstat
from yunhan.errors import DriverError
from yunhan.net import nsutil
from yunhan.nsexec import mnt_path, netns_path, nsenter_argv
from yunhan.polling import poll_until


def uts_path(netns: str) -> Path:
    return nsutil.UTS_DIR / netns


def ensure_uts(netns: str, hostname: str) -> None:
    """The UTS namespace of `netns` exists and carries `hostname`, and so does the
    instance's private mount namespace (where its volumes are mounted)."""
    path = uts_path(netns)
    try:
        mnt = mnt_path(netns)
        if not nsutil.is_mountpoint(mnt):
            nsutil.create_mnt(mnt)
        if nsutil.is_mountpoint(path):
            try:
                current: str | None = nsutil.get_hostname(path)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                current = None  # not a UTS namespace of its own: replace the file
                nsutil.remove_ns_file(path)
            if current is None:
                nsutil.create_uts(path, hostname)
            elif current != hostname:
                nsutil.set_hostname(path, hostname)
        else:
            nsutil.create_uts(path, hostname)
    except OSError as exc:
        raise DriverError(f"uts {netns}: {exc}", errno=exc.errno, netns=netns) from exc


def remove_uts(netns: str) -> None:
    try:
        # Its volumes' mounts go with the namespace once nothing runs in it (the agent's
        # volume manager unmounts them first, so their loop devices are released at once).
        nsutil.remove_ns_file(mnt_path(netns))
        nsutil.remove_ns_file(uts_path(netns))
    except OSError as exc:
        raise DriverError(f"uts {netns}: {exc}", errno=exc.errno, netns=netns) from exc


def list_uts(prefix: str) -> dict[str, str]:
    """netns name -> hostname of every persistent UTS namespace of ours."""
    out: dict[str, str] = {}
    if not nsutil.UTS_DIR.is_dir():
        return out
    mounted = nsutil.mount_targets()
    for p in nsutil.UTS_DIR.iterdir():
        if not p.name.startswith(prefix):
            continue
        if str(p) not in mounted or str(mnt_path(p.name)) not in mounted:
            # A stale file, or an instance made before instances had a mount namespace:
            # reported so that it gets made again.
            out[p.name] = ""
            continue
        try:
            out[p.name] = nsutil.get_hostname(p)
        except OSError:
            out[p.name] = ""
    return out


def exec_argv(netns: str, uts: str | Path, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` inside the instance's network, UTS and (when it has
    one) mount namespaces."""
    mnt = mnt_path(netns)
    return nsenter_argv(argv, net=netns, uts=uts, mnt=mnt if mnt.exists() else None)


def exec(
    netns: str, uts: str | Path, argv: Sequence[str], *, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion inside the sandbox; returns the completed process."""
    return subprocess.run(
        exec_argv(netns, uts, argv), capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass(frozen=True)
class ProcRecord:
    pid: int
    start: int  # /proc/<pid>/stat field 22, in clock ticks since boot
    argv: tuple[str, ...]


def _start_time(pid: int) -> int | None:
    st = procstat.read(pid)
    if st is None:
        return None
    if st.state == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child that exited: reap it
        return None
    return st.start_time


def _record_path(state_dir: Path, netns: str) -> Path:
    return state_dir / "proc" / f"{netns}.json"


def running(state_dir: Path, prefix: str) -> dict[str, ProcRecord]:
    """netns -> its live recorded process; a record whose process is gone is dropped."""
    out: dict[str, ProcRecord] = {}
    d = state_dir / "proc"
    if not d.is_dir():
        return out
    for f in d.glob(f"{prefix}*.json"):
        try:
            raw = json.loads(f.read_text())
            rec = ProcRecord(int(raw["pid"]), int(raw["start"]), tuple(raw["argv"]))
        except (OSError, ValueError, KeyError):
            continue
        if _start_time(rec.pid) == rec.start:
            out[f.name.removesuffix(".json")] = rec
    return out


def in_sandbox(netns: str, rec: ProcRecord) -> bool:
    """Is the recorded process still inside the namespace now named `netns`?

    A namespace deleted by hand and re-created under the same name is a new namespace;
    the old process lives on in the old one (it keeps it alive) and must be replaced.
    """
    try:
        mine = os.stat(f"/proc/{rec.pid}/ns/net").st_ino
        return mine == os.stat(netns_path(netns)).st_ino
    except OSError:
        return False


def _unrecorded(netns: str, argv: Sequence[str]) -> int | None:
    """A process already running `argv` in `netns` that no record names: an agent killed
    between starting it and writing its record left it. None when there is none."""
    try:
        target = os.stat(netns_path(netns)).st_ino
    except OSError:
        return None
    want = b"\0".join(a.encode() for a in argv) + b"\0"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino != target:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read() == want:
                    return int(entry)
        except OSError:
            continue
    return None


def start(state_dir: Path, netns: str, argv: Sequence[str]) -> ProcRecord:
    """Start `argv` detached inside the sandbox (own session) and record it; a process
    that already runs `argv` there, unrecorded, is adopted instead of started twice."""
    log = state_dir / "proc" / f"{netns}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    orphan = _unrecorded(netns, argv)
    if orphan is not None and (st := _start_time(orphan)) is not None:
        rec = ProcRecord(orphan, st, tuple(argv))
        _write_record(state_dir, netns, rec)
        return rec
    try:
        with open(log, "ab") as out:
            # nsenter execs the command itself: the pid we record is the command's own.
            p = subprocess.Popen(
                exec_argv(netns, uts_path(netns), argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        raise DriverError(f"start in {netns}: {exc}", errno=exc.errno, netns=netns) from exc
    st = _start_time(p.pid)
    rec = ProcRecord(p.pid, st or 0, tuple(argv))
    _write_record(state_dir, netns, rec)
    return rec


def _write_record(state_dir: Path, netns: str, rec: ProcRecord) -> None:
    path = _record_path(state_dir, netns)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": rec.pid, "start": rec.start, "argv": list(rec.argv)}))
    tmp.replace(path)  # a reader (or a restarted agent) never sees half a record


def stop(state_dir: Path, netns: str, *, grace: float = 3.0) -> None:
    """Stop the recorded process group of `netns` (TERM, then KILL after `grace` seconds)."""
    rec = running(state_dir, netns).get(netns)
    if rec is not None:
        try:
            os.killpg(rec.pid, signal.SIGTERM)
            if not poll_until(lambda: _start_time(rec.pid) != rec.start, grace, interval=0.02):
                os.killpg(rec.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _record_path(state_dir, netns).unlink(missing_ok=True)
    (state_dir / "proc" / f"{netns}.log").unlink(missing_ok=True)


class NetnsSandbox:
    """This module's functions over one agent's state dir: the `net.driver.Sandbox` the
    linux driver realises instances' `Uts` and `Process` objects through."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def list_uts(self, prefix: str) -> dict[str, str]:
        return list_uts(prefix)

    def ensure_uts(self, netns: str, hostname: str) -> None:
        ensure_uts(netns, hostname)

    def remove_uts(self, netns: str) -> None:
        remove_uts(netns)

    def running(self, prefix: str) -> dict[str, tuple[str, ...]]:
        return {
            ns: rec.argv if in_sandbox(ns, rec) else ("<stale netns>", *rec.argv)
            for ns, rec in running(self.state_dir, prefix).items()
        }

    def start(self, netns: str, argv: Sequence[str]) -> None:
        start(self.state_dir, netns, argv)

    def stop(self, netns: str) -> None:
        stop(self.state_dir, netns)
