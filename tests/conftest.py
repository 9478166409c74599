"""Shared test fixtures.

Every namespace, link, process and file a test creates carries a per-run prefix so that two
runs (or two helpers testing at once) never collide, and a leftover can be traced to its run.
Set YUNHAN_TEST_PREFIX to choose it; by default it is "t" + 4 random hex digits.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Iterator

import pytest

from tests.pgfixture import _pg_shared_url, pg_admin_url, pg_url, store_url

RUN_PREFIX = os.environ.get("YUNHAN_TEST_PREFIX") or f"t{secrets.token_hex(2)}"
_counter = itertools.count(1)
__all__ = [
    "_pg_shared_url",
    "pg_admin_url",
    "pg_url",
    "store_url",
]  # fixtures, re-exported for pytest


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return RUN_PREFIX


@pytest.fixture
def uniq() -> Callable[[str], str]:
    """uniq("ns") -> "t3fa2-7-ns": a name unique to this run and this call."""

    def make(name: str = "") -> str:
        n = next(_counter)
        return f"{RUN_PREFIX}-{n}-{name}" if name else f"{RUN_PREFIX}-{n}"

    return make


def _is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture(autouse=True)
def _root_only(request: pytest.FixtureRequest) -> Iterator[None]:
    # Integration and e2e tests need root; CI runs as root, so these never skip there.
    if request.node.get_closest_marker("root") and not _is_root():
        pytest.fail("this test needs root (network namespaces, ptrace); run it as root")
    yield
