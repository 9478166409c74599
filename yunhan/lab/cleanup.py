"""Finding and removing everything a lab region owns, by prefix (STYLE §7, Mininet's clean.py).

A region owns: every network namespace named "<prefix>-…" (its core, internet and host
namespaces, and the agents' VPC and instance namespaces below "<host netns>-"); every
process running in one of those namespaces (instance commands); every process started for
the region (server, agents), which carry YUNHAN_REGION=<prefix> in their environment, and
any `yunhan agent --host-netns <prefix>-…` however it was started; the bind mounts under
/run/yunhan whose path names the prefix (instances' UTS namespaces); FRR's daemons and
directories /run/frr/<prefix>-… (an FRR instance is named after its namespace, `-N`); and
any root-namespace link named "<prefix>-…" (there should be none, but a crashed half-built
veth would be one).

Every function here is idempotent: removing what is already gone is success.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from yunhan import procstat
from yunhan.errors import DriverError
from yunhan.nsexec import NETNS_DIR
from yunhan.polling import poll_until

REGION_ENV = "YUNHAN_REGION"
RUN_DIR = Path("/run/yunhan")
_MNT_DETACH = 2
CDPD_FSNAME = "yunhan-cdpd:"  # yunhan.volume.cdpd.FSNAME_PREFIX (kept light: no import)
FRR_STATE_DIR = Path("/run/frr")  # yunhan.net.frr.FRR_STATE_DIR: <pathspace>/ of each instance
FRR_BIN = b"/usr/lib/frr/"  # yunhan.net.frr.FRR_BIN: where its daemons are


@dataclass
class Removed:
    """What a cleanup removed; printed by `yunhan down` / `yunhan sweep`."""

    namespaces: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.processes or self.mounts or self.links)

    def summary(self) -> str:
        return (
            f"{len(self.namespaces)} namespaces, {len(self.processes)} processes, "
            f"{len(self.mounts)} mounts, {len(self.links)} links"
        )


def run(argv: list[str], *, input: str | None = None, check: bool = True) -> str:
    """Run a command; a failure becomes DriverError with the command and its stderr."""
    try:
        p = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(f"{' '.join(argv)}: {exc}") from exc
    if check and p.returncode != 0:
        raise DriverError(
            f"{' '.join(argv)} failed: {p.stderr.strip() or p.stdout.strip()}",
            errno=None,
            returncode=p.returncode,
        )
    return p.stdout


def owned(name: str, prefix: str) -> bool:
    """True when `name` belongs to the region `prefix` ("<prefix>-…")."""
    return name.startswith(f"{prefix}-")


def owned_by(name: str, prefix: str, spare: Iterable[str] = ()) -> bool:
    """`owned(name, prefix)`, unless `name` belongs to a region in `spare`.

    Region prefixes may contain dashes: every name of a region "a-b" also starts with
    "a-". `spare` lists such other regions (the live ones), whose names are never ours.
    """
    return owned(name, prefix) and not any(n == name or owned(name, n) for n in spare)


def list_netns() -> list[str]:
    """Names of all named network namespaces (the files in /run/netns)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def root_links() -> list[str]:
    """Names of the links in the root namespace."""
    out = run(["ip", "-o", "link", "show"])
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def _proc_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _alive(pid: int) -> bool:
    st = procstat.read(pid)
    return st is not None and st.alive


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, to tell a pid from a reused one."""
    st = procstat.read(pid)
    return None if st is None else st.start_time


def same_process(pid: int, started: int | None) -> bool:
    """True if `pid` is alive and is still the process that started at `started`."""
    return _alive(pid) and (started is None or start_time(pid) == started)


def pids_in_netns(names: Iterable[str]) -> list[int]:
    """Processes whose network namespace is one of the named ones."""
    inodes = set()
    for name in names:
        try:
            st = os.stat(NETNS_DIR / name)
        except OSError:
            continue
        inodes.add((st.st_dev, st.st_ino))
    # A name bound to the root namespace (or ours) is no lab namespace: never kill through it.
    for own in ("/proc/self/ns/net", "/proc/1/ns/net"):
        with contextlib.suppress(OSError):
            st = os.stat(own)
            inodes.discard((st.st_dev, st.st_ino))
    if not inodes:
        return []
    found = []
    me = os.getpid()
    for pid in _proc_pids():
        if pid == me:
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes:
            found.append(pid)
    return found


def region_of(pid: int) -> str | None:
    """The region a lab process was started for (its YUNHAN_REGION), or None."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    key = REGION_ENV.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode(errors="replace")
    return None


def agent_netns_of(pid: int) -> str | None:
    """The --host-netns of a `yunhan agent` process (lab agents program one namespace)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"agent" not in argv or b"--host-netns" not in argv:
        return None
    i = argv.index(b"--host-netns")
    return argv[i + 1].decode(errors="replace") if i + 1 < len(argv) else None


def marked_pids(match: Callable[[str], bool]) -> dict[int, str]:
    """Lab processes (server, agents) whose YUNHAN_REGION satisfies `match`: pid -> region."""
    me = os.getpid()
    found = {}
    for pid in _proc_pids():
        if pid == me:
            continue
        region = region_of(pid)
        if region is not None and match(region):
            found[pid] = region
    return found


def agent_pids(prefix: str, spare: Iterable[str] = ()) -> list[int]:
    """`yunhan agent` processes programming a namespace of `prefix`, however they were
    started (an agent restarted by hand carries no YUNHAN_REGION but names its netns)."""
    me = os.getpid()
    found = []
    for pid in _proc_pids():
        netns = agent_netns_of(pid) if pid != me else None
        if netns is not None and owned_by(netns, prefix, spare):
            found.append(pid)
    return found


def frr_pids(prefix: str, spare: Iterable[str] = ()) -> list[int]:
    """FRR daemons of the region's FRR instances, found by their pathspace (`-N <netns>`),
    also those whose namespace was deleted under them (then no name leads to them)."""
    me = os.getpid()
    found = []
    for pid in _proc_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if pid == me or not argv[0].startswith(FRR_BIN) or b"-N" not in argv:
            continue
        i = argv.index(b"-N")
        space = argv[i + 1].decode(errors="replace") if i + 1 < len(argv) else ""
        if owned_by(space, prefix, spare):
            found.append(pid)
    return found


def kill(pids: Iterable[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once every pid is gone."""
    pids = [p for p in set(pids) if p != os.getpid() and _alive(p)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

        def gone() -> bool:
            _reap(pids)
            return not any(_alive(p) for p in pids)

        # Polling /proc: there is no portable wait for a process that is not our child.
        if poll_until(gone, wait, interval=0.05):
            break
    left = [p for p in pids if _alive(p)]
    if left:
        raise DriverError(f"processes {left} survived SIGKILL", pids=left)
    return pids


def _reap(pids: list[int]) -> None:
    # Our own children (the server and agents of a foreground region) turn into zombies
    # when killed; reap those (and only those) so that they stop counting as alive.
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(_unescape(fields[4]))
    return points


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return path.encode().decode("unicode_escape") if "\\" in path else path


def _names_prefix(path: Path, prefix: str, spare: Iterable[str] = ()) -> bool:
    def names(p: str, pre: str) -> bool:
        return p == pre or owned(p, pre) or p.startswith(f"{pre}.")

    parts = path.relative_to(RUN_DIR).parts
    return any(names(p, prefix) and not any(names(p, s) for s in spare) for p in parts)


def unmount_run_dir(prefix: str, spare: Iterable[str] = ()) -> list[str]:
    """Detach the bind mounts under /run/yunhan that name the prefix, and remove the files."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    done = []
    for point in sorted(set(_mount_points()), key=len, reverse=True):
        path = Path(point)
        if RUN_DIR not in path.parents or not _names_prefix(path, prefix, spare):
            continue
        if libc.umount2(str(path).encode(), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise DriverError(f"umount {path}: {os.strerror(err)}", errno=err)
        done.append(point)
    if RUN_DIR.is_dir():
        for path in sorted(RUN_DIR.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if not _names_prefix(path, prefix, spare):
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise DriverError(f"cannot remove {path}: {exc}", errno=exc.errno) from exc
    return done


def unmount_storage(prefix: str, spare: Iterable[str] = ()) -> list[str]:
    """Detach the FUSE mounts of the region's volume storage processes (source
    "yunhan-cdpd:<agent prefix><volume id>"), also those a killed cdpd left dead."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    done = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(" "), right.split(" ")
        source = tail[1] if len(tail) > 1 else ""
        if len(fields) < 5 or not source.startswith(CDPD_FSNAME):
            continue
        name = source[len(CDPD_FSNAME) :]
        if not owned_by(name, prefix, spare):
            continue
        point = _unescape(fields[4])
        if libc.umount2(point.encode(), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise DriverError(f"umount {point}: {os.strerror(err)}", errno=err)
        done.append(point)
    return done


def remove_frr_dirs(prefix: str, spare: Iterable[str] = ()) -> list[str]:
    """Remove FRR's directories (vty sockets) of the region's FRR instances: each is named
    after the namespace it runs in (its pathspace), under /run/frr. Their daemons must be
    gone (they run in the region's namespaces)."""
    try:
        dirs = [d for d in FRR_STATE_DIR.iterdir() if owned_by(d.name, prefix, spare)]
    except FileNotFoundError:
        return []
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    return [str(d) for d in dirs]


def delete_netns(names: list[str]) -> None:
    """Delete named namespaces; already gone is fine."""
    if not names:
        return
    # -force keeps the batch going past a namespace that vanished meanwhile.
    run(
        ["ip", "-force", "-batch", "-"],
        input="".join(f"netns del {n}\n" for n in names),
        check=False,
    )
    left = [n for n in names if (NETNS_DIR / n).exists()]
    if left:
        raise DriverError(f"namespaces {left} could not be deleted", namespaces=left)


def remove_prefix(prefix: str, spare: Iterable[str] = ()) -> Removed:
    """Remove every namespace, process, mount and root link owned by `prefix`.

    Nothing of the regions named in `spare` (other regions whose prefix extends this one,
    "<prefix>-…") is touched.

    Order matters: lab processes first (an agent still running would recreate what we
    delete), then whatever runs inside our namespaces (a live process keeps its namespace
    alive after `ip netns del`), then mounts, then the namespaces (which takes their links).
    """
    removed = Removed()
    spare = [s for s in spare if s != prefix]
    removed.processes += kill(
        [*marked_pids(lambda r: r == prefix), *agent_pids(prefix, spare), *frr_pids(prefix, spare)]
    )
    namespaces = [n for n in list_netns() if owned_by(n, prefix, spare)]
    removed.processes += kill(pids_in_netns(namespaces))
    # Instances' mount namespaces go with the run dir (their volumes' mounts and loop
    # devices with them), then the storage processes' own mounts (cdpd were killed above:
    # they carry the region's mark).
    removed.mounts = unmount_run_dir(prefix, spare)
    removed.mounts += unmount_storage(prefix, spare)
    delete_netns(namespaces)
    removed.namespaces = namespaces
    remove_frr_dirs(prefix, spare)  # (RUN_DIR/frr/<netns>, their config, went with the run dir)
    links = [link for link in root_links() if owned_by(link, prefix, spare)]
    for link in links:
        run(["ip", "link", "del", link], check=False)
    removed.links = links
    return removed
