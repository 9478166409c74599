"""Fixtures for hot patching tests: C targets built once per session, processes that are
always killed in teardown, a journal folder per test, patches built from C text."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hotpatch_support import CFLAGS, CSRC, Built, Proc, cc

from yunhan import hotpatch


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    d = tmp_path_factory.mktemp("hotpatch-bin")
    lib = d / "libdemo.so"
    cc(*CFLAGS, "-fPIC", "-shared", CSRC / "libdemo.c", "-o", lib)
    target = d / "target"
    cc(*CFLAGS, "-fPIE", "-pie", "-pthread", CSRC / "target.c", "-o", target,
        f"-L{d}", "-ldemo", f"-Wl,-rpath,{d}")  # fmt: skip
    service = d / "service"
    cc(*CFLAGS, "-pthread", CSRC / "service.c", "-o", service)
    regs = d / "regs"
    cc(*CFLAGS, CSRC / "regs.c", "-o", regs)
    evloop = d / "evloop"
    cc(*CFLAGS, CSRC / "evloop.c", "-o", evloop)
    return Built(d, target, lib, service, regs, evloop)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(*argv: str | Path) -> Proc:
        p = Proc([str(a) for a in argv])
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            p.kill()


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
def make_patch(tmp_path: Path) -> Callable[..., Path]:
    """make_patch(name, c_source, target) -> path of the built .yhp"""

    def make(name: str, source: str, target: Path) -> Path:
        src = tmp_path / f"{name}.c"
        src.write_text(source)
        out = tmp_path / f"{name}.yhp"
        hotpatch.build(src, target, out)
        return out

    return make
