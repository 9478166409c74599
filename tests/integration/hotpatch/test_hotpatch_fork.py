"""A fork of a patched process runs the patch: it inherits the parent's record, so it can
be rolled back and is not taken for a function someone else hooked; a child forked
before the patch inherits nothing and is patched on its own."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hotpatch_support import Built, Proc

from yunhan import hotpatch
from yunhan.errors import Conflict
from yunhan.hotpatch import journal, procfs

pytestmark = pytest.mark.root

FIX_COMPUTE = """
#include <yunhan/hotpatch.h>
static int compute_v2(int x) { return x * 100; }
YUNHAN_PATCH(compute, compute_v2);
"""
MakePatch = Callable[[str, str, Path], Path]


@pytest.fixture
def children() -> Iterator[list[int]]:
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _bytes_at(pid: int, addr: int, n: int) -> bytes:
    with procfs.Memory(pid) as mem:
        return mem.read(addr, n)


def test_a_fork_inherits_the_patch_record_and_rolls_back(
    built: Built,
    spawn: Callable[..., Proc],
    make_patch: MakePatch,
    journal_dir: Path,
    children: list[int],
) -> None:
    parent = spawn(built.target)
    assert parent.readline() == "ready"
    early = int(parent.ask("f"))  # forked before the patch
    children.append(early)
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    (site,) = hotpatch.apply(parent.pid, yhp, journal_dir=journal_dir).sites
    jump, original = bytes.fromhex(site.new), bytes.fromhex(site.original)
    child = int(parent.ask("f"))  # forked after it: a copy of the patched memory
    children.append(child)
    assert _bytes_at(child, site.write_addr, len(jump)) == jump

    assert hotpatch.inherit(child, journal_dir=journal_dir) == 1
    start = procfs.proc_state(child).start_time
    rec = journal.load(journal_dir, child, start).find("fix_compute")
    assert rec is not None and rec.state == "applied"
    assert hotpatch.inherit(child, journal_dir=journal_dir) == 0  # it has one now
    with pytest.raises(Conflict, match="already applied"):
        hotpatch.apply(child, yhp, journal_dir=journal_dir)
    hotpatch.rollback(child, journal_dir=journal_dir)
    assert _bytes_at(child, site.write_addr, len(jump)) == original
    assert parent.ask("c 5") == "500"  # the parent keeps its patch

    # The early child never ran the patch: it inherits nothing and is patched on its own.
    assert hotpatch.inherit(early, journal_dir=journal_dir) == 0
    assert _bytes_at(early, site.write_addr, len(jump)) == original
    hotpatch.apply(early, yhp, journal_dir=journal_dir)
    assert _bytes_at(early, site.write_addr, len(jump)) == jump
    hotpatch.rollback(early, journal_dir=journal_dir)
    hotpatch.rollback(parent.pid, journal_dir=journal_dir)
    assert parent.ask("c 5") == "11"


def test_rollback_of_a_fork_finds_its_record_without_asking_first(
    built: Built,
    spawn: Callable[..., Proc],
    make_patch: MakePatch,
    journal_dir: Path,
    children: list[int],
) -> None:
    parent = spawn(built.target)
    assert parent.readline() == "ready"
    yhp = make_patch("fix_compute", FIX_COMPUTE, built.target)
    (site,) = hotpatch.apply(parent.pid, yhp, journal_dir=journal_dir).sites
    child = int(parent.ask("f"))
    children.append(child)
    hotpatch.rollback(child, journal_dir=journal_dir)  # inherits, then rolls back
    original = bytes.fromhex(site.original)
    assert _bytes_at(child, site.write_addr, len(original)) == original
    hotpatch.rollback(parent.pid, journal_dir=journal_dir)
