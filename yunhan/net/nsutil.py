"""Run a bit of code inside another namespace without forking.

`setns(2)` and `unshare(2)` act on the calling *thread* for network and UTS namespaces, so
the agent (which lives in the root namespace and stays there) runs each in-namespace step
on a short-lived thread that enters the namespace, does its work and exits. The namespace
never leaks into a pooled thread, and the main thread never moves. Python 3.11 has no
`os.setns`, so the calls go through libc with ctypes.

Things that must be done from inside a namespace: /proc/sys/net (per network namespace of
the *reading task*), libnftables (its netlink socket is opened in the caller's namespace),
reading or setting a hostname (per UTS namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as _errno
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from yunhan.nsexec import NETNS_DIR, netns_path
from yunhan.polling import poll_until

__all__ = ["NETNS_DIR", "netns_path"]

CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2

UTS_DIR = Path("/run/yunhan/uts")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
T = TypeVar("T")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(path: str | Path, nstype: int) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns_fd(fd, nstype, str(path))
    finally:
        os.close(fd)


def setns_fd(fd: int, nstype: int, what: str = "") -> None:
    """setns(2) on a namespace file already open (a function worker is handed one)."""
    _check(_libc.setns(fd, nstype), f"setns {what or fd}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(src: str, target: str, flags: int, fstype: str | None = None) -> None:
    _check(
        _libc.mount(
            src.encode(), target.encode(), fstype.encode() if fstype else None, flags, None
        ),
        f"mount {src} {target}",
    )


def umount(target: str) -> None:
    rc = _libc.umount2(target.encode(), MNT_DETACH)
    if rc != 0 and ctypes.get_errno() not in (_errno.EINVAL, _errno.ENOENT):
        _check(rc, f"umount {target}")


def mount_targets() -> set[str]:
    """Every mount point of the agent's mount namespace."""
    try:
        with open("/proc/self/mountinfo") as f:
            return {line.split()[4] for line in f}
    except OSError:
        return set()


def is_mountpoint(path: Path) -> bool:
    """True when `path` is the target of a mount (a namespace bind mount for our files)."""
    return str(path) in mount_targets()


def _refuse_own_ns(path: str | Path, kind: str) -> None:
    """A file of ours (/run/netns/<name>, a UTS file) that is bound to our own namespace
    (the root one, on a lab machine) must never be entered as if it were one of ours:
    whatever is done there (addresses, sysctls, a hostname) would be done to the machine.
    Raises EINVAL, as setns does for a file that is no namespace of that type."""
    try:
        target = os.stat(path)
        own = os.stat(f"/proc/self/ns/{kind}")
    except OSError:
        return  # setns reports a missing file
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise OSError(_errno.EINVAL, f"{path} is the agent's own {kind} namespace")


def run_in(fn: Callable[[], T], *, net: str | None = None, uts: str | Path | None = None) -> T:
    """Call `fn` on a fresh thread that has first entered the given namespaces.

    `net` is a netns name under /run/netns (None: stay in the agent's own), `uts` a path
    to a persistent UTS namespace file. Exceptions propagate to the caller.
    """
    box: dict[str, object] = {}
    if net is not None:
        _refuse_own_ns(netns_path(net), "net")
    if uts is not None:
        _refuse_own_ns(uts, "uts")

    def body() -> None:
        try:
            if net is not None:
                setns(netns_path(net), CLONE_NEWNET)
            if uts is not None:
                setns(uts, CLONE_NEWUTS)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body, name=f"ns:{net or ''}:{uts or ''}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class NsWorker:
    """A thread that has entered network namespace `net` and runs what it is given.

    `run_in` costs a thread per call; an apply that writes fourteen sysctls and a filter
    into a new VPC namespace pays it fifteen times (the largest part of building one).
    The driver keeps one worker per namespace for the length of an apply and closes it
    after, and before removing the namespace (the thread holds it alive while it lives).
    """

    def __init__(self, net: str) -> None:
        _refuse_own_ns(netns_path(net), "net")
        self.net = net
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], dict[str, object]] | None]
        self._jobs = queue.SimpleQueue()
        started: dict[str, object] = {}
        ready = threading.Event()

        def serve() -> None:
            try:
                setns(netns_path(net), CLONE_NEWNET)
            except BaseException as exc:
                started["error"] = exc
                return
            finally:
                ready.set()
            while (job := self._jobs.get()) is not None:
                fn, box = job
                try:
                    box["value"] = fn()
                except BaseException as exc:  # handed to the caller's thread
                    box["error"] = exc
                done = box.pop("done")
                assert isinstance(done, threading.Event)
                done.set()

        self._thread = threading.Thread(target=serve, name=f"ns:{net}", daemon=True)
        self._thread.start()
        ready.wait()
        if "error" in started:
            self._thread.join()
            raise started["error"]  # type: ignore[misc]

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` inside the namespace; its exception is raised here."""
        done = threading.Event()
        box: dict[str, object] = {"done": done}
        self._jobs.put((fn, box))
        done.wait()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()


def ensure_private_dir(path: Path) -> None:
    """Make `path` a private mount of itself, as `ip netns` does for /run/netns.

    Namespace files are kept alive by bind mounts; on a private mount they neither
    propagate into other mount namespaces (which would pin them forever) nor receive
    mounts from elsewhere.
    """
    path.mkdir(parents=True, exist_ok=True)
    if not is_mountpoint(path):
        mount(str(path), str(path), MS_BIND | MS_REC)
    mount("none", str(path), MS_PRIVATE | MS_REC)


def create_netns(name: str) -> None:
    """Create a named network namespace, as `ip netns add` does, without forking.

    pyroute2's `netns.create` forks a child to unshare in (a fork of the threaded agent,
    and the largest single cost of building an instance); unsharing on a short thread
    and bind-mounting /proc/thread-self/ns/net does the same in the agent. Raises
    OSError(EEXIST) when the name exists.
    """
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    # iproute2's layout: /run/netns is a shared mount of itself, so that a namespace
    # mounted later is seen in mount namespaces that were cloned before.
    try:
        mount("", str(NETNS_DIR), MS_SHARED | MS_REC, "none")
    except OSError:  # EINVAL: not a mount point yet
        mount(str(NETNS_DIR), str(NETNS_DIR), MS_BIND | MS_REC)
        mount("", str(NETNS_DIR), MS_SHARED | MS_REC, "none")
    path = netns_path(name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def body() -> None:
        unshare(CLONE_NEWNET)
        mount("/proc/thread-self/ns/net", str(path), MS_BIND)

    try:
        run_in(body)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def create_uts(path: Path, hostname: str) -> None:
    """Create a persistent UTS namespace at `path` whose hostname is `hostname`."""
    ensure_private_dir(path.parent)
    if not path.exists():
        path.touch()

    def body() -> None:
        unshare(CLONE_NEWUTS)
        _set_hostname(hostname)
        # /proc/thread-self: the namespace belongs to this thread, not the whole process.
        mount("/proc/thread-self/ns/uts", str(path), MS_BIND)

    run_in(body)


def create_mnt(path: Path) -> None:
    """Create a persistent mount namespace at `path`: a copy of this one whose mounts from
    now on stay inside it (propagation slave: the host's later mounts still show there).

    unshare(CLONE_NEWNS) is refused to a thread of a threaded process (it would split the
    filesystem context the threads share), so unshare(1) does it in a child of its own and
    bind-mounts the namespace at `path` itself; `path`'s directory is a private mount so the
    pin does not propagate into the namespace it pins.
    """
    ensure_private_dir(path.parent)
    if not path.exists():
        path.touch()
    p = subprocess.run(
        ["unshare", f"--mount={path}", "--propagation", "slave", "true"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if p.returncode != 0:
        with contextlib.suppress(OSError):
            path.unlink()
        raise OSError(_errno.EIO, f"unshare --mount={path}: {p.stderr.strip()}")


def _set_hostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def set_hostname(path: Path, hostname: str) -> None:
    run_in(lambda: _set_hostname(hostname), uts=path)


def get_hostname(path: Path) -> str:
    return run_in(lambda: os.uname().nodename, uts=path)


def remove_ns_file(path: Path) -> None:
    """Unmount and remove a persistent namespace file; a missing one is already gone."""
    umount(str(path))
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_sysctls(
    net: str, paths: list[str], run: Callable[[Callable[[], object]], object] | None = None
) -> dict[str, str | None]:
    """Read /proc/sys files inside netns `net` (through `run`, an `NsWorker.call` of it,
    when given); a missing file reads as None."""

    def body() -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for p in paths:
            try:
                out[p] = Path("/proc/sys", p).read_text().strip()
            except OSError:
                out[p] = None
        return out

    if run is not None:
        return run(body)  # type: ignore[return-value]
    return run_in(body, net=net)


def write_sysctls(
    net: str, values: dict[str, str], run: Callable[[Callable[[], object]], object] | None = None
) -> None:
    def body() -> None:
        for p, v in values.items():
            Path("/proc/sys", p).write_text(v)

    if run is not None:
        run(body)
    else:
        run_in(body, net=net)


def pids_in(netns: str) -> list[int]:
    """Every process whose network namespace is `netns` (as `ip netns pids` finds them)."""
    try:
        target = os.stat(netns_path(netns)).st_ino
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                found.append(int(entry))
        except OSError:
            continue
    return found


def end_all(netns: str, *, grace: float = 2.0) -> int:
    """End every process left inside `netns` before it is deleted (TERM, then KILL after
    `grace` seconds); how many there were.

    Deleting an instance ends all of it, as deleting a machine would: not only its recorded
    command but whatever `instance exec` started there and left running (a daemon such as
    keepalived). Left alive, they would hold the deleted namespace and its memory forever,
    and a daemon would go on doing its job (announcing a VIP) from nowhere.
    """
    pids = pids_in(netns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if pids and not poll_until(lambda: not pids_in(netns), grace, interval=0.02):
        for pid in pids_in(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        poll_until(lambda: not pids_in(netns), grace, interval=0.02)
    return len(pids)
