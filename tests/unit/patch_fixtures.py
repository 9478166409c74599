"""Real .yhp files for the fleet patch tests, built once per session with
`yunhan.hotpatch.build` from tiny C targets compiled by gcc (as tests/integration/hotpatch
builds its targets). Load with `pytest_plugins = ["patch_fixtures"]`."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from yunhan.hotpatch import build

_TARGET = """
__attribute__((noinline)) int price(int x) { return x * 2 + %d; }
__attribute__((noinline)) int tax(int x) { return x / 3 + 7; }
int main(int argc, char **argv) { (void)argv; return price(argc) + tax(argc); }
"""
_PATCH = """
#include <yunhan/hotpatch.h>
static int %(fn)s_v2(int x) { return x * 3 + %(n)d; }
YUNHAN_PATCH(%(fn)s, %(fn)s_v2);
"""


@dataclass(frozen=True)
class Yhp:
    """A built patch file: its bytes and what the manifest says."""

    path: Path
    content: bytes
    build_id: str
    patch_id: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def body(self, name: str, **kw: object) -> dict[str, object]:
        """A POST /v1/patches body for this file."""
        b64 = base64.b64encode(self.content).decode()
        return {"name": name, "content": b64, "digest": self.digest, **kw}


@dataclass(frozen=True)
class Yhps:
    price: Yhp  # replaces price() of build A
    price2: Yhp  # price() of build A again (another fix, stacks on the first)
    tax: Yhp  # tax() of build A
    other: Yhp  # price() of build B, which no host has
    target: Path  # build A itself: an ELF, but not a patch


def _gcc(src: Path, out: Path) -> None:
    p = subprocess.run(
        ["gcc", "-O2", "-Wl,--build-id", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="session")
def yhp(tmp_path_factory: pytest.TempPathFactory) -> Yhps:
    d = tmp_path_factory.mktemp("yhp")
    targets = {}
    for tag, n in (("a", 1), ("b", 5)):
        (d / f"{tag}.c").write_text(_TARGET % n)
        _gcc(d / f"{tag}.c", d / tag)
        targets[tag] = d / tag

    def make(name: str, target: str, fn: str, n: int) -> Yhp:
        src = d / f"{name}.c"
        src.write_text(_PATCH % {"fn": fn, "n": n})
        out = d / f"{name}.yhp"
        m = build(src, targets[target], out)
        return Yhp(out, out.read_bytes(), m.build_id, m.patch_id)

    return Yhps(
        price=make("fix-price", "a", "price", 1),
        price2=make("fix-price-2", "a", "price", 2),
        tax=make("fix-tax", "a", "tax", 3),
        other=make("fix-other", "b", "price", 4),
        target=targets["a"],
    )
