"""A lab region's processes from Python (root): a failed `up` leaves nothing but its logs;
a real 1x1 region (server + agent) comes up healthy, is visible to `status`, refuses a
second `up`, is spared by `sweep`, and leaves nothing once taken down.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from yunhan.errors import Conflict, TimedOut
from yunhan.lab import cleanup, region
from yunhan.lab.spec import ECHO_PORT, RegionSpec

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


def test_up_status_down_with_real_processes(uniq: Callable[[str], str], tmp_path: Path) -> None:
    prefix = uniq("up")
    spec = RegionSpec.build(prefix=prefix, zones=1, hosts_per_zone=1)
    try:
        with region.up(spec, tmp_path, detach=False, timeout=60) as handle:
            assert region.status(tmp_path).api_error  # type: ignore[union-attr]  # no token
            st = region.status(tmp_path, handle.token)
            assert st is not None and st.api_error is None
            assert [z["name"] for z in st.zones] == ["az1"]
            assert [(h["name"], h["status"]["healthy"]) for h in st.hosts] == [("az1-h1", True)]
            assert all(alive for _, alive in st.processes)
            assert {(p.role, p.name) for p, _ in st.processes} == {
                ("up", "up"),  # this process: a foreground region
                ("supervisor", "supervisor"),
                ("echo", "echo"),
                ("server", "server"),
                ("agent", "az1-h1"),
            }
            started = [p for p, _ in st.processes]
            agent = next(p for p, _ in st.processes if p.role == "agent")
            cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().replace(b"\0", b" ")
            assert (
                b"yunhan agent " in cmdline and f"--host-netns {prefix}-az1-h1".encode() in cmdline
            )
            _no_token_in_plaintext(tmp_path, handle.token, handle.endpoint)
            _internet_side(spec, st.processes)
            with pytest.raises(Conflict, match="already up"):
                region.up(spec, tmp_path, detach=False)
            assert region.sweep(prefixes=[prefix]) == {}  # live: never swept
        # leaving the block took it down
        assert [n for n in cleanup.list_netns() if cleanup.owned(n, prefix)] == []
        assert cleanup.marked_pids(lambda r: r == prefix) == {}
        assert not (tmp_path / region.RECORD).exists() and not (tmp_path / prefix).exists()
        assert not any(p.alive() for p in started if p.role != "up")
    finally:
        region.sweep(prefixes=[prefix])


def _internet_side(spec: RegionSpec, procs: list[tuple[region.ProcessRecord, bool]]) -> None:
    """The echo server answers in the internet namespace; the API server has the public
    pool, the agents announce to the core, and the core routes no pool address by itself."""
    echo = next(p for p, _ in procs if p.role == "echo")
    assert cleanup.pids_in_netns([spec.internet_netns]) == [echo.pid]
    got = cleanup.run(
        ["ip", "netns", "exec", spec.internet_netns, "curl", "-s", "--max-time", "5",
         f"http://{spec.internet_ip}:{ECHO_PORT}/"]
    )  # fmt: skip
    assert got == f"client {spec.internet_ip}\n"
    server = next(p for p, _ in procs if p.role == "server")
    argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--public-pool") + 1] == spec.public_pool.encode()
    agent = next(p for p, _ in procs if p.role == "agent")
    argv = Path(f"/proc/{agent.pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--uplink-netns") + 1] == spec.core_netns.encode()
    assert argv[argv.index(b"--uplink-via") + 1] == spec.hosts[0].underlay_ip.encode()
    routes = cleanup.run(["ip", "-n", spec.core_netns, "route", "show", "root", spec.public_pool])
    assert routes.strip() == ""


TOKEN_RE = re.compile(rb"yh[bh]?_[A-Za-z0-9_-]{20,}")


def _no_token_in_plaintext(state_dir: Path, admin_token: str, endpoint: str) -> None:
    """No token in any file of the state dir (the database and its WAL included), but each
    agent's own host token in its 0600 host.token; and that token serves its host only."""
    found: dict[Path, set[bytes]] = {}
    for f in state_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert admin_token.encode() not in data, f"the admin token is in {f}"
            if hits := set(TOKEN_RE.findall(data)):
                found[f] = hits
    kept = {f: hits for f, hits in found.items() if f.name == "host.token"}
    assert found == kept, f"tokens in plaintext outside the agents' host.token: {found}"
    assert len(kept) == 1  # one host in this region
    ((path, (token,)),) = kept.items()
    assert token.startswith(b"yhh_") and path.stat().st_mode & 0o777 == 0o600
    host = {"Authorization": f"Bearer {token.decode()}"}
    assert httpx.get(f"{endpoint}/v1/vpcs", headers=host).status_code == 403
    assert httpx.get(f"{endpoint}/v1/agent/hosts/az9-h9/desired", headers=host).status_code == 403
