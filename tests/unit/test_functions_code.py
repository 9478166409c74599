"""Pure parts of deploy and of the cgroup layout: syntax checks, module files, and where
the worker groups go, read from /proc texts."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from yunhan.errors import DriverError
from yunhan.functions.cgroups import CgroupLayout
from yunhan.functions.deploy import module_candidates, syntax_errors


def test_syntax_errors_name_the_file_and_line() -> None:
    got = syntax_errors(
        {"ok.py": "x = 1\n", "pkg/bad.py": "def f(:\n    pass\n", "nul.py": "x = '\0'"}
    )
    assert got[0].startswith("nul.py")
    assert got[1].startswith("pkg/bad.py:1: ")
    assert len(got) == 2


def test_module_candidates() -> None:
    assert module_candidates("main") == ["main.py", "main/__init__.py"]
    assert module_candidates("pkg.mod") == ["pkg/mod.py", "pkg/mod/__init__.py"]


MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PROC_CGROUP = """\
8:pids:/
4:memory:/process_api/abc
2:cpu,cpuacct:/
0::/
"""


def test_worker_groups_go_under_the_runtimes_own_group_in_each_controller() -> None:
    layout = CgroupLayout.parse(MOUNTINFO, PROC_CGROUP)
    assert layout.bases == {
        "memory": Path("/sys/fs/cgroup/memory/process_api/abc/yunhan/fn"),
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct/yunhan/fn"),
        "pids": Path("/sys/fs/cgroup/pids/yunhan/fn"),
    }
    g = layout.group("t1-3")
    assert g.procs_files()[0] == "/sys/fs/cgroup/memory/process_api/abc/yunhan/fn/t1-3/cgroup.procs"


def test_a_missing_controller_is_a_clear_error() -> None:
    without_pids = "\n".join(line for line in MOUNTINFO.splitlines() if "pids" not in line)
    with pytest.raises(DriverError, match="not mounted: pids"):
        CgroupLayout.parse(without_pids, PROC_CGROUP)


def test_a_dir_under_a_closed_parent_is_not_reachable_by_others() -> None:
    from yunhan.functions.worker import reachable_by_others

    # Not pytest's tmp_path: /tmp/pytest-of-<user> is closed (0700) itself.
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        root.chmod(0o755)
        lib = root / "home" / "lib"
        lib.mkdir(parents=True)
        lib.chmod(0o755)
        (root / "home").chmod(0o755)
        assert reachable_by_others(str(lib))
        (root / "home").chmod(0o700)  # as /root is, with a pyenv build under it
        assert not reachable_by_others(str(lib))
        (root / "home").chmod(0o755)
        lib.chmod(0o750)
        assert not reachable_by_others(str(lib))


def test_a_runtime_finds_its_own_groups_and_no_one_elses(tmp_path: Path) -> None:
    layout = CgroupLayout({c: tmp_path / c for c in ("memory", "cpu", "pids")})
    for name in ("a-1", "a-12", "a-x", "ab-1", "a-1-2"):
        (tmp_path / "memory" / name).mkdir(parents=True)
    (tmp_path / "pids" / "a-7").mkdir(parents=True)
    assert [g.name for g in layout.groups("a")] == ["a-1", "a-12", "a-7"]
    assert [g.name for g in layout.groups("a-1")] == ["a-1-2"]
