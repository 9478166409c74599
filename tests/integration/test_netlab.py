"""The test underlay's own cleanup matches its prefix exactly (root needed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration import netlab

pytestmark = pytest.mark.root


def test_teardown_never_takes_a_namespace_of_a_longer_prefix(uniq: Callable[[str], str]) -> None:
    p = uniq("nl")
    mine, other = f"{p}-rt", f"{p}0-rt"  # "<p>0" is another run's prefix, not ours
    try:
        for ns in (mine, other):
            netlab.sh("ip", "netns", "add", ns)
        assert netlab.teardown(p) == [mine]
        assert other in netlab.list_netns() and mine not in netlab.list_netns()
    finally:
        for ns in (mine, other):
            netlab.sh("ip", "netns", "del", ns, check=False)
