"""The agent's volume manager for real (root): cdpd, loop devices, ext4, instances' private
mount namespaces, a storage process killed with SIGKILL.

Instances here are what the data plane makes of them: a network namespace plus the UTS and
mount namespaces of `netns_sandbox.ensure_uts`. Every namespace, mount, process and file
carries the run's prefix and is removed on teardown, also when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from yunhan.agent.volumes import VolumeManager, _loop_of, _mounted_in
from yunhan.compute import netns_sandbox
from yunhan.net import nsutil
from yunhan.net.desired import VolumeAttach, VolumeDesired
from yunhan.nsexec import mnt_path
from yunhan.polling import poll_until
from yunhan.volume import cdpd as cd

pytestmark = pytest.mark.root

GIB = 1 << 30


def Vol(
    id: str,
    name: str,
    *,
    attach: VolumeAttach | None = None,
    tiers: tuple[tuple[int, int], ...] | None = None,
    delete: bool = False,
    size: int = GIB,
) -> VolumeDesired:
    return VolumeDesired(
        id=id, name=name, size=size, zone="az1", tiers=tiers, attach=attach, delete=delete
    )


def Attach(instance: str, netns: str, path: str = "/data") -> VolumeAttach:
    return VolumeAttach(instance=instance, netns=netns, path=path)


@pytest.fixture
def instances(uniq: Callable[[str], str]) -> Iterator[Callable[[], str]]:
    """make() -> the netns name of a new instance (netns + UTS + mount namespace)."""
    made: list[str] = []

    def make() -> str:
        name = uniq("vm")
        nsutil.create_netns(name)
        made.append(name)
        netns_sandbox.ensure_uts(name, name)
        return name

    yield make
    for name in made:
        nsutil.end_all(name)
        netns_sandbox.remove_uts(name)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def manager(tmp_path: Path, uniq: Callable[[str], str]) -> Iterator[VolumeManager]:
    m = VolumeManager(tmp_path / "pool", tmp_path / "agent", uniq("h") + "-")
    yield m
    m.stop()
    m.teardown()


def sh(netns: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = netns_sandbox.exec_argv(netns, netns_sandbox.uts_path(netns), ["sh", "-c", script])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{script!r} failed: {p.stderr}")
    return p


def test_an_attached_volume_is_mounted_inside_its_instance_only(
    manager: VolumeManager, instances: Callable[[], str], uniq: Callable[[str], str]
) -> None:
    vm = instances()
    vid = "vol-" + uniq("a")[-8:]
    assert manager.apply([Vol(vid, "a", attach=Attach("i1", vm))]) == []
    rep = manager.report()[vid]
    assert rep["phase"] == "attached" and rep["mounted"] and rep["device"].startswith("/dev/loop")
    sh(vm, "echo hello > /data/f && sync")
    assert sh(vm, "cat /data/f").stdout == "hello\n"
    # the disk, on its read-only guard
    assert sh(vm, "findmnt -n -o FSTYPE /data").stdout.split() == ["tmpfs", "ext4"]
    # The host (and every other instance) sees its own /data, not the volume.
    assert not Path("/data/f").exists() or Path("/data/f").read_text() != "hello\n"
    other = instances()
    assert sh(other, "findmnt -n /data", check=False).returncode != 0


def test_detach_flushes_and_another_instance_reads_the_data(
    manager: VolumeManager, instances: Callable[[], str], uniq: Callable[[str], str]
) -> None:
    a, b = instances(), instances()
    vid = "vol-" + uniq("d")[-8:]
    manager.apply([Vol(vid, "d", attach=Attach("i1", a))])
    sh(a, "seq 1 10000 > /data/numbers")  # no sync: the unmount must flush it
    manager.apply([Vol(vid, "d")])
    rep = manager.report()[vid]
    assert rep["phase"] == "available" and not rep["mounted"]
    assert sh(a, "findmnt -n /data", check=False).returncode != 0
    assert manager._served(vid) is None  # unprotected and detached: nothing serves it
    manager.apply([Vol(vid, "d", attach=Attach("i2", b, "/mnt/disk"))])
    assert sh(b, "wc -l < /mnt/disk/numbers").stdout.strip() == "10000"


def test_a_volume_gone_from_the_document_stops_and_a_deleted_one_loses_its_data(
    manager: VolumeManager, instances: Callable[[], str], uniq: Callable[[str], str]
) -> None:
    vm = instances()
    vid = "vol-" + uniq("g")[-8:]
    manager.apply([Vol(vid, "g", attach=Attach("i1", vm), tiers=((60, 1),))])
    mount = manager.run_dir / vid / "mnt"
    assert cd.mount_source(mount) is not None
    manager.apply([])  # moved to another host: unmounted, stopped, data kept
    assert sh(vm, "findmnt -n /data", check=False).returncode != 0
    assert cd.mount_source(mount) is None
    assert (manager.pool / vid).is_dir()
    manager.apply([Vol(vid, "g", delete=True)])
    assert not (manager.pool / vid).exists()
    assert manager.report()[vid]["phase"] == "deleted"


def test_a_killed_storage_process_is_restarted_and_nothing_acknowledged_is_lost(
    manager: VolumeManager, instances: Callable[[], str], uniq: Callable[[str], str]
) -> None:
    vm = instances()
    vid = "vol-" + uniq("k")[-8:]
    manager.apply([Vol(vid, "k", attach=Attach("i1", vm), tiers=((600, 1),))])
    manager.start()
    sh(vm, "for i in $(seq 1 200); do echo rec $i >> /data/log; done; sync /data/log")
    served = manager._served(vid)
    assert served is not None
    os.kill(served["pid"], signal.SIGKILL)

    def back() -> bool:
        # A new cdpd, and /data mounted from a device backed by its file (until then the
        # old mount may still answer from its page cache, or nothing is mounted).
        s = manager._served(vid)
        if s is None or s["pid"] == served["pid"]:
            return False
        source = _mounted_in(mnt_path(vm), "/data")
        return source is not None and source == _loop_of(manager.run_dir / vid / "mnt" / "vol")

    assert poll_until(back, 20.0, interval=0.2), "the storage did not come back"
    lines = sh(vm, "cat /data/log").stdout.splitlines()
    assert lines[:200] == [f"rec {i}" for i in range(1, 201)]


def test_an_instance_exec_enters_the_mount_namespace(instances: Callable[[], str]) -> None:
    vm = instances()
    assert mnt_path(vm).exists()
    inside = sh(vm, "readlink /proc/self/ns/mnt").stdout.strip()
    assert inside != os.readlink("/proc/self/ns/mnt")


def test_while_the_disk_is_away_its_path_refuses_writes(
    manager: VolumeManager, instances: Callable[[], str], uniq: Callable[[str], str]
) -> None:
    """The guard under a mounted disk: with the disk gone (as while its storage restarts),
    a write to its path fails instead of landing on the host's disk beneath."""
    vm = instances()
    vid = "vol-" + uniq("r")[-8:]
    manager.apply([Vol(vid, "r", attach=Attach("i1", vm))])
    sh(vm, "umount -l /data")  # the disk goes; the guard shows
    p = sh(vm, "echo lost > /data/f", check=False)
    assert p.returncode != 0 and "Read-only" in p.stderr
    manager.apply([Vol(vid, "r", attach=Attach("i1", vm))])  # the next pass mounts it again
    sh(vm, "echo kept > /data/f")
    manager.apply([Vol(vid, "r")])
    assert sh(vm, "findmnt -n /data", check=False).returncode != 0  # disk and guard gone
