"""`up` that fails part-way leaves nothing but its logs; `down` after it is a no-op (root).

The full `up`/`down` with healthy agents is an e2e test; this one needs only the server to
be slow to answer, which a 0.05 s start-up deadline guarantees.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from yunhan.errors import TimedOut
from yunhan.lab import cleanup, region
from yunhan.lab.spec import RegionSpec

pytestmark = pytest.mark.root


def test_failed_up_removes_everything_but_logs(uniq: Callable[[str], str], tmp_path: Path) -> None:
    prefix = uniq("up")
    spec = RegionSpec.build(prefix=prefix, zones=1, hosts_per_zone=1)
    try:
        with pytest.raises(TimedOut, match="API server did not answer"):
            region.up(spec, tmp_path, detach=True, timeout=0.05)
        assert [n for n in cleanup.list_netns() if cleanup.owned(n, prefix)] == []
        assert cleanup.marked_pids(lambda r: r == prefix) == {}
        assert not (tmp_path / region.RECORD).exists()
        assert not (tmp_path / prefix).exists()  # token and data are gone
        assert (tmp_path / "logs" / prefix / "server.log").exists()  # the log stays
        assert not (region.REGISTRY / f"{prefix}.json").exists()
        assert not region.down(tmp_path)
        assert region.status(tmp_path) is None
    finally:
        region.sweep(prefixes=[prefix])
