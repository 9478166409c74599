"""Build, start and stop yunhan-cdpd, the storage process of one volume (native/cdpd/cdpd.c).

    with Cdpd(volume_dir, mount_dir, size=64 << 20, name="yh4a3d-vol-1") as d:
        os.open(d.volume_file, os.O_RDWR | os.O_DIRECT)   # what losetup will do

A running cdpd owns a FUSE mount at `mount_dir` (fsname `yunhan-cdpd:<name>`, so that a
sweep can find orphans by the region prefix in the name) serving one file, `vol`. `stop()`
always leaves nothing behind: SIGTERM (cdpd syncs its journal and unmounts), SIGKILL after a
deadline, and a lazy unmount of a mount that a dead cdpd left ("transport endpoint is not
connected"). The binary comes from $YUNHAN_CDPD, else from native/cdpd, built with make when
it is missing or older than its source (scripts/install.sh builds it too).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import signal
import socket
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from yunhan.errors import VolumeError
from yunhan.polling import poll_until
from yunhan.volume.journal import BASE_FILE, BLOCK

SOURCE_DIR = Path(__file__).resolve().parents[2] / "native" / "cdpd"
BINARY_ENV = "YUNHAN_CDPD"
BINARY_NAME = "yunhan-cdpd"
FSNAME_PREFIX = "yunhan-cdpd:"
LOG_FILE = "cdpd.log"

Mode = Literal["journal", "plain"]
Durability = Literal["strict", "flush"]

_MNT_DETACH = 2


def build(source_dir: Path = SOURCE_DIR) -> Path:
    """Compile yunhan-cdpd in `source_dir` (make; gcc, pkg-config, libfuse3-dev, zlib1g-dev)."""
    try:
        p = subprocess.run(
            ["make", "-s", "-C", str(source_dir), BINARY_NAME],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except FileNotFoundError as exc:
        raise VolumeError("make not found: run scripts/install.sh (gcc, make)") from exc
    if p.returncode != 0:
        raise VolumeError(
            f"building {BINARY_NAME} failed (scripts/install.sh installs gcc, pkg-config, "
            f"libfuse3-dev, zlib1g-dev):\n{p.stderr.strip()}",
            rc=p.returncode,
        )
    return source_dir / BINARY_NAME


def find_binary(source_dir: Path = SOURCE_DIR) -> Path:
    """$YUNHAN_CDPD if set, else native/cdpd's build, (re)built when older than cdpd.c."""
    env = os.environ.get(BINARY_ENV)
    if env:
        if not os.access(env, os.X_OK):
            raise VolumeError(f"${BINARY_ENV}={env} is not an executable file")
        return Path(env)
    binary, source = source_dir / BINARY_NAME, source_dir / "cdpd.c"
    if binary.exists() and (
        not source.exists() or binary.stat().st_mtime >= source.stat().st_mtime
    ):
        return binary
    return build(source_dir)


def create_volume(directory: str | os.PathLike[str], size: int) -> Path:
    """Make a volume directory with an empty (sparse) base image of `size` bytes; an
    existing one is kept if its base has that size. Returns the directory."""
    if size <= 0 or size % BLOCK:
        raise VolumeError(f"a volume size must be a positive multiple of {BLOCK} bytes", size=size)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    base = d / BASE_FILE
    if base.exists():
        if base.stat().st_size != size:
            raise VolumeError(
                f"{base} holds {base.stat().st_size} bytes, not {size}", path=str(base)
            )
        return d
    with open(base, "wb") as f:
        f.truncate(size)
        os.fsync(f.fileno())
    return d


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_source(mount: str | os.PathLike[str], mountinfo: str | None = None) -> str | None:
    """The source ("yunhan-cdpd:<name>" for ours) of what is mounted at `mount`, or None;
    read from /proc/self/mountinfo unless its text is given."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    target = os.path.abspath(mount)
    found = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and _unescape(fields[4]) == target:
            found = tail[1] if len(tail) > 1 else ""
    return found  # the last one is the one on top


def unmount(mount: str | os.PathLike[str], source: str | None = None) -> None:
    """Lazily unmount `mount` (also a dead FUSE mount), every layer mounted there, or only
    while the top one's source is `source`; nothing (of that source) mounted there is done."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    path = os.fsencode(os.path.abspath(mount))
    while (found := mount_source(mount)) is not None and source in (None, found):
        if libc.umount2(path, _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
                return
            raise VolumeError(
                f"cannot unmount {mount}: {os.strerror(err)}", errno=err, mount=str(mount)
            )


@dataclass(frozen=True)
class Stats:
    """What cdpd's control socket answers to `stats`: its counters since start, the journal
    position (`seq` appended, `durable_seq` fdatasynced, `checkpoint_seq` the newest
    checkpoint, `segment` the one appended to), whether the volume failed (an I/O error on
    the journal: every write is refused), the space its logs take on disk (every segment),
    and, for a clone or a restored generation, whether it still reads from its parent
    (`parent`) and the fraction of its blocks that its own base image holds (`fill`, 1.0
    once the background copy is done)."""

    name: str
    mode: str
    durability: str
    size: int
    seq: int
    durable_seq: int
    last_t_ns: int
    checkpoint_seq: int
    failed: bool
    writes: int
    reads: int
    bytes: int
    flushes: int
    zero: int
    syncs: int
    data_bytes: int
    header_bytes: int
    segment: int
    parent: bool
    fill: float


def control(name: str, command: str, timeout: float = 10.0) -> dict[str, object]:
    """Send one command ("stats", "checkpoint", "rotate") to the cdpd serving `name` and return its
    JSON answer (an abstract unix socket, @yunhan-cdpd:<name>)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect("\0" + FSNAME_PREFIX + name)
            s.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise VolumeError(
            f"cannot reach the control socket of cdpd {name}: {exc.strerror or exc}",
            errno=exc.errno,
        ) from exc
    answer = json.loads(data or b"{}")
    if not isinstance(answer, dict) or "error" in answer:
        raise VolumeError(f"cdpd {name} refused {command!r}: {answer}")
    return answer


class Cdpd:
    """One yunhan-cdpd process serving `directory` (see create_volume) at `mount`/vol."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        mount: str | os.PathLike[str],
        *,
        size: int,
        name: str,
        mode: Mode = "journal",
        durability: Durability = "strict",
        binary: Path | None = None,
        log: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        segment_bytes: int | None = None,
        fill_rate: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.mount = Path(mount)
        self.size = size
        self.name = name
        self.mode: Mode = mode
        self.durability: Durability = durability
        self.binary = binary
        self.log = Path(log) if log is not None else self.directory / LOG_FILE
        self.checkpoint_every = checkpoint_every  # records between checkpoints; None: cdpd's
        self.segment_bytes = segment_bytes  # data log size that starts a segment; None: cdpd's
        self.fill_rate = fill_rate  # bytes/s of the copy from a parent; None: unlimited
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def volume_file(self) -> Path:
        return self.mount / "vol"

    @property
    def fsname(self) -> str:
        return FSNAME_PREFIX + self.name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 10.0) -> Cdpd:
        """Start cdpd and return once it serves `volume_file`; on failure nothing is left
        running or mounted and VolumeError says why (with the end of cdpd's log)."""
        if self.alive():
            raise VolumeError(f"cdpd of {self.name} is already running", pid=self.pid)
        binary = self.binary or find_binary()
        self.mount.mkdir(parents=True, exist_ok=True)
        if mount_source(self.mount) is not None:
            raise VolumeError(
                f"{self.mount} is already a mount point ({mount_source(self.mount)}): "
                "stop what serves it, or unmount a dead one first",
                mount=str(self.mount),
            )
        argv = [
            str(binary),
            *("--dir", str(self.directory), "--mount", str(self.mount)),
            *("--size", str(self.size), "--name", self.name),
            *("--mode", self.mode, "--durability", self.durability),
        ]
        if self.checkpoint_every is not None:
            argv += ["--checkpoint-every", str(self.checkpoint_every)]
        if self.segment_bytes is not None:
            argv += ["--segment-bytes", str(self.segment_bytes)]
        if self.fill_rate is not None:
            argv += ["--fill-rate", str(self.fill_rate)]
        with open(self.log, "ab") as log:
            # A session of its own: a ^C or a signal to the caller's group does not reach it.
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        try:
            # polled every 20 ms at most: a clone's time to readable is counted in ms
            ready = poll_until(
                lambda: not self.alive() or self.mount_ok(), timeout, max_interval=0.02
            )
            if not self.alive():
                raise VolumeError(
                    f"cdpd of {self.name} exited with {self._returncode()} before serving:\n"
                    f"{self.log_tail()}",
                    rc=self._returncode(),
                )
            if not ready:
                raise VolumeError(
                    f"cdpd of {self.name} did not serve {self.volume_file} in {timeout} s:\n"
                    f"{self.log_tail()}"
                )
            if os.stat(self.volume_file).st_size != self.size:  # the first request: INIT
                raise VolumeError(f"{self.volume_file} does not have the size asked")
        except BaseException:
            self.stop()
            raise
        return self

    def stats(self) -> Stats:
        answer = control(self.name, "stats")
        return Stats(**{f.name: answer[f.name] for f in fields(Stats)})  # type: ignore[arg-type]

    def checkpoint(self) -> int:
        """Ask for a checkpoint now; returns its seq (written once that seq is durable)."""
        seq = control(self.name, "checkpoint")["checkpoint_seq"]
        assert isinstance(seq, int)
        return seq

    def rotate(self) -> int:
        """Seal the current segment (once everything in it is durable) and go on in a new
        one; returns the new segment's number. Compaction works on sealed segments."""
        segment = control(self.name, "rotate")["segment"]
        assert isinstance(segment, int)
        return segment

    def mount_ok(self) -> bool:
        return mount_source(self.mount) == self.fsname

    def _returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL, as a crash would: the journal stays as it is, the mount is left dead
        (in-flight and later I/O on it fail) until stop() unmounts it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop cdpd (SIGTERM: it syncs the journal and unmounts; SIGKILL after `timeout`)
        and unmount whatever it left. Returns its exit code (None if it never ran).
        Safe to call more than once and after kill()."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        unmount(self.mount, self.fsname)  # ours only: never what another process mounted there
        return proc.returncode if proc is not None else None

    def __enter__(self) -> Cdpd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
