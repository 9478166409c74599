"""The volumes of this host: their storage processes, block devices and mounts (issue 12).

For each `volume/<id>` entry of the host document the agent makes the disk real:

* its directory in the zone's volume pool (`--volume-dir`; the lab gives each zone one,
  shared by the zone's hosts as a SAN would be) exists: a new ext4 disk, a clone of another
  volume at a second (`VolumeDir.clone_from`), or, on a restore, a new generation;
* a yunhan-cdpd serves it while it is attached, protected or still copying from a parent:
  in `journal` mode when protected (every write journaled before it is acknowledged),
  `plain` otherwise. cdpd runs in a session of its own and outlives the agent: a restarted
  agent adopts it by its pid file, and a crashed agent leaves the disks serving;
* attached: a loop device (4 KiB sectors, direct I/O) on cdpd's file, mounted at the
  attachment's path inside the instance's private mount namespace only. The loop device is
  released (`losetup -d`) as soon as it is mounted, so the kernel frees it when the mount
  goes, whoever ends it;
* detached: unmounted (which flushes) and, when nothing else needs it, cdpd stopped.

A storage process that dies (SIGKILL, a crash) is seen by the monitor within a second:
the dead mount inside the instance is dropped, cdpd restarts (recovering its journal: every
acknowledged write is there) and the disk is mounted again. The writer inside sees I/O
errors for the writes in flight, as after a power cut of the disk, and nothing it was told
was written is lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yunhan import procstat
from yunhan.errors import VolumeError
from yunhan.net.desired import VolumeAttach, VolumeDesired
from yunhan.nsexec import mnt_path
from yunhan.polling import poll_until
from yunhan.volume import cdpd as cdpd_mod
from yunhan.volume.volumedir import VolumeDir

log = logging.getLogger(__name__)

MONITOR_INTERVAL = 1.0
# How often a protected volume's journal is looked at for compaction (a rotation when its
# live segment's first record left the first tier, then the sealed segments compacted).
COMPACT_INTERVAL = 30.0
# How often the space, copy progress and timeline of the volumes are measured again.
MEASURE_INTERVAL = 5.0
PID_FILE = "cdpd.pid"
ATTACHED_FILE = "attached.json"
RESTORED_FILE = "restored.json"
GUARD = "yunhan-volume-guard"  # the source of the read-only tmpfs under a mounted disk


@dataclass
class Report:
    phase: str = "available"
    message: str | None = None
    device: str | None = None
    mounted: bool = False
    used_bytes: int = 0
    journal_bytes: int = 0
    base_bytes: int = 0
    timeline: list[dict[str, int]] = field(default_factory=list)
    restored_serial: int = 0
    fill: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _run(argv: Sequence[str], timeout: float = 60.0) -> str:
    p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if p.returncode != 0:
        raise VolumeError(f"{' '.join(argv[:3])}…: {(p.stderr or p.stdout).strip()}")
    return p.stdout


def _in_mnt(mnt: Path, argv: Sequence[str], timeout: float = 60.0) -> str:
    return _run(["nsenter", f"--mount={mnt}", "--", *argv], timeout)


def _mounted_in(mnt: Path, path: str) -> str | None:
    """The source mounted at `path` inside mount namespace `mnt` (None: nothing)."""
    out = _in_mnt(mnt, ["cat", "/proc/self/mountinfo"])
    return cdpd_mod.mount_source(path, out)


def _loop_of(file: Path) -> str | None:
    out = subprocess.run(
        ["losetup", "-j", str(file), "-O", "NAME", "-n"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.split()
    return out[0] if out else None


def _loop_attach(file: Path) -> str:
    return _run(
        ["losetup", "-f", "--show", "--direct-io=on", "--sector-size", "4096", str(file)]
    ).strip()


def _alive(pid: int, start: int) -> bool:
    st = procstat.read(pid)
    return st is not None and st.state != "Z" and st.start_time == start


class VolumeManager:
    """This host's volumes. `apply` follows each new document; the monitor thread repairs a
    dead storage process between documents. Both hold `_lock`: one change at a time."""

    def __init__(
        self,
        pool: Path,
        state_dir: Path,
        prefix: str,
        *,
        clock: Callable[[], float] = time.time,
        binary: Path | None = None,
        compact_interval: float = COMPACT_INTERVAL,
        netns_of: Callable[[str], str] | None = None,
    ) -> None:
        self.pool = pool
        self.run_dir = state_dir / "volumes"
        self.prefix = prefix
        self.clock = clock
        self.binary = binary
        self.compact_interval = compact_interval
        self.netns_of = netns_of or (lambda iid: f"{prefix}i-{iid}")
        self._compacted: dict[str, float] = {}  # volume id -> monotonic time of the last look
        self._measured = 0.0
        self._desired: dict[str, VolumeDesired] = {}
        self._reports: dict[str, Report] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._monitor, name="volumes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; every disk keeps serving (the storage outlives the agent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def teardown(self) -> None:
        """Unmount, release and stop everything this manager serves (the host is going)."""
        with self._lock:
            for vid in list(self._served_ids()):
                self._retire(vid)

    def _monitor(self) -> None:
        while not self._stop.wait(MONITOR_INTERVAL):
            try:
                with self._lock:
                    for vid, v in list(self._desired.items()):
                        rep = self._reports.get(vid)
                        if self._needs_repair(vid):
                            log.warning("storage of volume %s is down; restarting it", vid)
                        elif rep is None or rep.phase != "error":
                            continue
                        try:
                            self._converge(v)
                        except Exception as exc:
                            self._failed(v, exc)
                    for v in list(self._desired.values()):
                        self._maybe_compact(v)
                    if time.monotonic() - self._measured >= MEASURE_INTERVAL:
                        self._measured = time.monotonic()
                        for v in list(self._desired.values()):
                            rep = self._reports.get(v.id)
                            if rep is not None and rep.phase != "error":
                                self._measure(v, self._vdir(v.id), rep)
            except Exception:
                log.exception("volume monitor pass failed")

    # -- the document ----------------------------------------------------------------------

    def apply(self, volumes: Sequence[VolumeDesired]) -> list[str]:
        """Converge every volume of the document; those gone from it stop being served here
        (they moved to another host). A deleted one (`delete`) loses its data, then its
        report says "deleted" and the control plane forgets it. Returns the errors (each
        also in its volume's report)."""
        errors: list[str] = []
        with self._lock:
            live = [v for v in volumes if not v.delete]
            deleted = [v for v in volumes if v.delete]
            self._desired = {v.id: v for v in live}
            gone = self._served_ids() - {v.id for v in volumes}
            for vid in gone:
                try:
                    self._retire(vid)
                except Exception as exc:
                    errors.append(f"volume {vid}: {exc}")
            for vid in set(self._reports) - {v.id for v in volumes}:
                self._reports.pop(vid, None)
            for v in deleted:
                try:
                    self._retire(v.id)
                    self._vdir(v.id).delete()
                    self._reports[v.id] = Report(phase="deleted")
                except Exception as exc:
                    errors.append(f"volume {v.name}: {self._failed(v, exc)}")
            for v in live:
                try:
                    self._converge(v)
                except Exception as exc:
                    errors.append(f"volume {v.name}: {self._failed(v, exc)}")
        return errors

    def _failed(self, v: VolumeDesired, exc: Exception) -> str:
        log.warning("volume %s: %s", v.id, exc)
        rep = self._reports.setdefault(v.id, Report())
        rep.phase, rep.message = "error", str(exc)
        return str(exc)

    def report(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {vid: r.to_json() for vid, r in self._reports.items()}

    # -- one volume ------------------------------------------------------------------------

    def _vdir(self, vid: str) -> VolumeDir:
        return VolumeDir(self.pool, vid)

    def _run_dir(self, vid: str) -> Path:
        d = self.run_dir / vid
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _served_ids(self) -> set[str]:
        if not self.run_dir.is_dir():
            return set()
        return {p.name for p in self.run_dir.iterdir() if p.is_dir()}

    def _converge(self, v: VolumeDesired) -> None:
        vd = self._vdir(v.id)
        rep = self._reports.setdefault(v.id, Report())
        if v.source_volume is not None and not vd.exists():
            # A clone reads its source until its copy is done: the source's old
            # generations it holds stay, and are cleaned once released.
            self._vdir(v.source_volume).cleanup()
        if not vd.exists():
            if v.source_volume is not None and v.source_at_ns is not None:
                vd.clone_from(self._vdir(v.source_volume), v.source_at_ns)
            else:
                vd.create(v.size)
        restored = self._restored(v.id)
        if v.restore_to_ns is not None and v.restore_serial > restored:
            rep.phase = "restoring"
            self._unmount(v.id)
            self._stop_cdpd(v.id)
            vd.restore_to(v.restore_to_ns)
            self._set_restored(v.id, v.restore_serial)
            restored = v.restore_serial
        rep.restored_serial = restored
        if v.size > vd.meta().size:
            self._grow(v, vd)
        vd.cleanup()  # generations a restore replaced, holds of clones done copying
        mode = "journal" if v.tiers else "plain"
        filling = vd.parent() is not None
        want_served = v.attach is not None or v.tiers is not None or filling
        served = self._served(v.id)
        gen = str(vd.current())
        if served is not None and (
            served.get("mode") != mode or served.get("dir") != gen or served.get("size") != v.size
        ):
            self._unmount(v.id)
            self._stop_cdpd(v.id)
            served = None
        if served is None and mode == "plain" and not filling:
            from yunhan.volume import fold

            if fold.journal_files(Path(gen)):
                fold.fold_all(gen, v.size)  # unprotected: plain mode writes base.img in place
        if want_served and served is None:
            self._start_cdpd(v.id, gen, v.size, mode)
        if v.attach is not None:
            rep.device = self._mount(v.id, v.attach.instance, self._netns(v.attach), v.attach.path)
            rep.mounted, rep.phase = True, "attached"
        else:
            self._unmount(v.id)
            rep.device, rep.mounted, rep.phase = None, False, "available"
            if not want_served:
                self._stop_cdpd(v.id)
        rep.message = None
        self._measure(v, vd, rep)

    def _measure(self, v: VolumeDesired, vd: VolumeDir, rep: Report) -> None:
        from yunhan.volume import journal
        from yunhan.volume import tiers as tiers_mod

        gen = vd.current()
        space = journal.space_used(gen)
        rep.base_bytes = space.base_bytes
        rep.journal_bytes = space.journal_bytes + space.checkpoint_bytes
        rep.used_bytes = rep.base_bytes + rep.journal_bytes
        rep.fill = self._fill(v.id) if vd.parent() is not None else 1.0
        if v.tiers:
            now = int(self.clock() * 1e9)
            rep.timeline = [r.as_dict() for r in tiers_mod.timeline(gen, tuple(v.tiers), now)]
        else:
            rep.timeline = []

    def _maybe_compact(self, v: VolumeDesired) -> None:
        """On schedule: seal the live segment once it holds records older than the first
        tier, then fold and thin the sealed ones into the coarser tiers (volume.compact)."""
        if not v.tiers:
            return
        now = time.monotonic()
        if now - self._compacted.get(v.id, 0.0) < self.compact_interval:
            return
        self._compacted[v.id] = now
        served = self._served(v.id)
        if served is None or served.get("mode") != "journal":
            return
        from yunhan.volume import compact

        gen, tiers, now_ns = Path(served["dir"]), tuple(v.tiers), int(self.clock() * 1e9)
        try:
            if compact.rotation_due(gen, tiers, now_ns):
                cdpd_mod.control(self._name(v.id), "rotate")
            res = compact.compact(gen, v.size, tiers, now_ns, live=self._name(v.id))
        except Exception as exc:
            log.warning("compaction of volume %s failed: %s", v.id, exc)
            return
        if res.skipped is None:
            log.info(
                "volume %s compacted: %d records kept, %d folded, journal %d -> %d bytes",
                v.id, res.kept, res.folded, res.bytes_before, res.bytes_after,
            )  # fmt: skip
            rep = self._reports.get(v.id)
            if rep is not None:
                self._measure(v, self._vdir(v.id), rep)

    # -- restore bookkeeping (in the pool: it moves with the volume) ------------------------

    def _restored(self, vid: str) -> int:
        try:
            return int(json.loads((self.pool / vid / RESTORED_FILE).read_text())["serial"])
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    def _set_restored(self, vid: str, serial: int) -> None:
        path = self.pool / vid / RESTORED_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"serial": serial}))
        tmp.replace(path)

    # -- the storage process ---------------------------------------------------------------

    def _name(self, vid: str) -> str:
        return f"{self.prefix}{vid}"

    def _mount_dir(self, vid: str) -> Path:
        # No mkdir: `_served` asks about any volume, and a directory here means "served
        # here" (`_served_ids`); Cdpd.start makes it when a cdpd is started.
        return self.run_dir / vid / "mnt"

    def _served(self, vid: str) -> dict[str, Any] | None:
        """The record of this volume's running cdpd (None: none runs, or it died)."""
        path = self.run_dir / vid / PID_FILE
        try:
            rec: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(rec["pid"], rec["start"]):
            return None
        if cdpd_mod.mount_source(self._mount_dir(vid)) != cdpd_mod.FSNAME_PREFIX + self._name(vid):
            return None
        return rec

    def _needs_repair(self, vid: str) -> bool:
        path = self.run_dir / vid / PID_FILE
        return path.exists() and self._served(vid) is None

    def _start_cdpd(self, vid: str, gen: str, size: int, mode: str) -> None:
        mount = self._mount_dir(vid)
        self._stop_cdpd(vid)  # whatever a dead one left: its mount, its loop, its pid file
        d = cdpd_mod.Cdpd(
            gen,
            mount,
            size=size,
            name=self._name(vid),
            mode="journal" if mode == "journal" else "plain",
            binary=self.binary,
            log=self._run_dir(vid) / "cdpd.log",
        )
        # Another host may still be letting go of it (a move): cdpd refuses a directory
        # whose lock is held, so try for a while.
        deadline = time.monotonic() + 15.0
        while True:
            try:
                d.start()
                break
            except VolumeError as exc:
                if "lock" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        pid = d.pid
        assert pid is not None
        st = procstat.read(pid)
        rec = {
            "pid": pid,
            "start": st.start_time if st else 0,
            "mode": mode,
            "dir": gen,
            "size": size,
        }
        path = self._run_dir(vid) / PID_FILE
        tmp = path.with_name(PID_FILE + ".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(path)

    def _stop_cdpd(self, vid: str) -> None:
        path = self.run_dir / vid / PID_FILE
        try:
            rec = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            rec = None
        if rec is not None and _alive(rec["pid"], rec["start"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec["pid"], signal.SIGTERM)
            if not poll_until(lambda: not _alive(rec["pid"], rec["start"]), 15.0, interval=0.05):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec["pid"], signal.SIGKILL)
                poll_until(lambda: not _alive(rec["pid"], rec["start"]), 5.0, interval=0.05)
        cdpd_mod.unmount(self._mount_dir(vid), cdpd_mod.FSNAME_PREFIX + self._name(vid))
        path.unlink(missing_ok=True)

    # -- the block device inside the instance ----------------------------------------------

    def _attached(self, vid: str) -> dict[str, str] | None:
        try:
            rec: dict[str, str] = json.loads((self.run_dir / vid / ATTACHED_FILE).read_text())
            return rec
        except (FileNotFoundError, ValueError):
            return None

    def _netns(self, a: VolumeAttach) -> str:
        """The instance's network namespace: as its agent reported it, else (not reported
        yet) the name this host gives it."""
        return a.netns or self.netns_of(a.instance)

    def _fill(self, vid: str) -> float:
        try:
            return float(cdpd_mod.control(self._name(vid), "stats", timeout=2.0)["fill"])  # type: ignore[arg-type]
        except (VolumeError, OSError, KeyError, ValueError):
            return 0.0

    def _mount(self, vid: str, instance: str, netns: str, path: str) -> str:
        """Mount the disk at `path` in the instance's mount namespace; returns the device.

        Under the disk lies a guard: an empty read-only tmpfs mounted at `path` first. While
        the disk is replaced (its storage restarted), a program that reopens a file there
        gets EROFS instead of writing to the directory beneath, on the host's own disk,
        where whatever it was told was written would vanish under the new mount."""
        mnt = mnt_path(netns)
        if not mnt.exists():
            raise VolumeError(f"instance {instance} has no mount namespace yet")
        prev = self._attached(vid)
        if prev is not None and (prev["netns"], prev["path"]) != (netns, path):
            self._unmount(vid)
            prev = None
        file = self._mount_dir(vid) / "vol"
        source = _mounted_in(mnt, path)
        if prev is not None and source is not None and source == prev.get("device"):
            if _loop_of(file) == source:
                return source  # mounted, on a device backed by the running storage
            # Its storage restarted: the device reads a dead file. Drop that mount (the
            # kernel frees the device once no file is open on it); the guard shows.
            with contextlib.suppress(VolumeError):
                _in_mnt(mnt, ["umount", "-l", path])
            source = _mounted_in(mnt, path)
        if source is None:
            _in_mnt(mnt, ["mkdir", "-p", path])
            _in_mnt(mnt, ["mount", "-t", "tmpfs", "-o", "ro,size=4k,mode=0555", GUARD, path])
        elif source != GUARD:
            raise VolumeError(f"instance {instance} already has {source} mounted at {path}")
        dev = _loop_attach(file)
        try:
            _in_mnt(mnt, ["mount", "-t", "ext4", dev, path])
        finally:
            # Released now, freed by the kernel when the mount goes (autoclear).
            with contextlib.suppress(VolumeError):
                _run(["losetup", "-d", dev])
        rec = {"instance": instance, "netns": netns, "path": path, "device": dev}
        (self._run_dir(vid) / ATTACHED_FILE).write_text(json.dumps(rec))
        return dev

    def _unmount(self, vid: str) -> None:
        """Unmount (flushing) from whichever instance has it, and its guard; busy is an
        error to retry."""
        prev = self._attached(vid)
        if prev is None:
            return
        mnt = mnt_path(prev["netns"])
        if mnt.exists():
            path = prev["path"]
            source = _mounted_in(mnt, path)
            if source is not None and source == prev.get("device"):
                try:
                    _in_mnt(mnt, ["umount", path])
                except VolumeError as exc:
                    if self._served(vid) is not None:
                        raise VolumeError(
                            f"cannot unmount {path} in instance {prev['instance']}: "
                            f"{exc} (a process there holds files open?)"
                        ) from exc
                    _in_mnt(mnt, ["umount", "-l", path])  # its storage is gone
            if _mounted_in(mnt, path) == GUARD:
                _in_mnt(mnt, ["umount", "-l", path])
        (self.run_dir / vid / ATTACHED_FILE).unlink(missing_ok=True)

    def _grow(self, v: VolumeDesired, vd: VolumeDir) -> None:
        """A detached disk grows: the image first, then its filesystem through a loop device
        on a cdpd that serves the new size."""
        self._unmount(v.id)
        self._stop_cdpd(v.id)
        vd.grow(v.size)
        self._start_cdpd(v.id, str(vd.current()), v.size, "journal" if v.tiers else "plain")
        dev = _loop_attach(self._mount_dir(v.id) / "vol")
        try:
            subprocess.run(["e2fsck", "-f", "-p", dev], capture_output=True, timeout=300)
            _run(["resize2fs", dev], timeout=300)
        finally:
            with contextlib.suppress(VolumeError):
                _run(["losetup", "-d", dev])

    def _retire(self, vid: str) -> None:
        self._unmount(vid)
        self._stop_cdpd(vid)
        shutil.rmtree(self.run_dir / vid, ignore_errors=True)
