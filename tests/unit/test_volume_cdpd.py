"""yunhan.volume.cdpd without root: volume directories, mount table parsing, the binary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from yunhan.errors import VolumeError
from yunhan.volume import cdpd as cd
from yunhan.volume import journal as j

MOUNTINFO = (
    "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "53 22 0:40 / /tmp/a\\040b/mnt rw,nosuid - fuse.yunhan-cdpd yunhan-cdpd:t1-2-cdpd rw\n"
    "54 22 0:41 / /tmp/c rw - fuse.yunhan-cdpd yunhan-cdpd:old rw\n"
    "55 54 0:42 / /tmp/c rw - tmpfs tmpfs rw\n"
)


def test_mount_source_reads_escaped_paths_and_the_top_of_a_stack() -> None:
    assert cd.mount_source("/tmp/a b/mnt", MOUNTINFO) == "yunhan-cdpd:t1-2-cdpd"
    assert cd.mount_source("/tmp/c", MOUNTINFO) == "tmpfs"
    assert cd.mount_source("/tmp/a", MOUNTINFO) is None


def test_create_volume_makes_a_sparse_base_and_refuses_another_size(tmp_path: Path) -> None:
    d = cd.create_volume(tmp_path / "v", 1 << 30)
    base = d / j.BASE_FILE
    assert base.stat().st_size == 1 << 30
    assert base.stat().st_blocks == 0  # sparse: nothing written
    assert cd.create_volume(d, 1 << 30) == d  # the same again: kept
    with pytest.raises(VolumeError, match="not 4096"):
        cd.create_volume(d, 4096)
    with pytest.raises(VolumeError, match="multiple of 4096"):
        cd.create_volume(tmp_path / "w", 1000)
    assert not (tmp_path / "w").exists()


def test_find_binary_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = tmp_path / "cdpd"
    exe.write_text("#!/bin/sh\n")
    monkeypatch.setenv(cd.BINARY_ENV, str(exe))
    with pytest.raises(VolumeError, match="not an executable"):
        cd.find_binary()
    os.chmod(exe, 0o755)
    assert cd.find_binary() == exe


def test_find_binary_builds_from_source_when_missing_or_older(tmp_path: Path) -> None:
    src = tmp_path / "cdpd"
    src.mkdir()
    (src / "cdpd.c").write_bytes((cd.SOURCE_DIR / "cdpd.c").read_bytes())
    (src / "Makefile").write_bytes((cd.SOURCE_DIR / "Makefile").read_bytes())
    built = cd.find_binary(src)
    assert built == src / cd.BINARY_NAME and os.access(built, os.X_OK)
    mtime = built.stat().st_mtime_ns
    assert cd.find_binary(src).stat().st_mtime_ns == mtime  # up to date: not rebuilt
    (src / "cdpd.c").write_text("#error broken\n")
    os.utime(src / "cdpd.c", ns=(mtime + 10**9, mtime + 10**9))
    with pytest.raises(VolumeError, match="building yunhan-cdpd failed"):
        cd.find_binary(src)
