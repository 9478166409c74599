"""The lab topology on a real kernel: reachability through the core, isolation from the root
namespace, and teardown/sweep leaving nothing of the prefix behind (root needed)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from yunhan.errors import Conflict
from yunhan.lab import cleanup, region, topology
from yunhan.lab.spec import RegionSpec

pytestmark = pytest.mark.root
LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")


def leftovers(prefix: str) -> list[str]:
    found = [n for n in cleanup.list_netns() if cleanup.owned(n, prefix)]
    found += [f"link {n}" for n in cleanup.root_links() if cleanup.owned(n, prefix)]
    found += [f"pid {p}" for p in cleanup.marked_pids(lambda r: r == prefix)]
    return found


@pytest.fixture
def prefix(uniq: Callable[[str], str]) -> Iterator[str]:
    p = uniq("lab")
    yield p
    topology.teardown(p)  # whatever the test did, leave nothing behind
    assert leftovers(p) == []


def ping(ns: str, ip: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", ip],
                          capture_output=True, text=True)  # fmt: skip


def _lines(*argv: str) -> list[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()


def root_lab_routes_and_addresses() -> list[str]:
    found = []
    for line in _lines("ip", "-4", "-o", "route", "show", "table", "all"):
        words = line.split()
        dst = (
            words[1] if words[0] in ("broadcast", "local", "unreachable", "blackhole") else words[0]
        )
        if dst != "default" and ipaddress.IPv4Network(dst, strict=False).overlaps(LAB_RANGE):
            found.append(line)
    for line in _lines("ip", "-4", "-o", "addr", "show"):
        if ipaddress.IPv4Interface(line.split()[3]).ip in LAB_RANGE:
            found.append(line)
    return found


def test_hosts_reach_each_other_through_the_core_and_root_sees_nothing(prefix: str) -> None:
    spec = RegionSpec.build(prefix=prefix, zones=2, hosts_per_zone=2, mtu=1400)
    topology.realise(spec)
    topology.realise(spec)  # ensure-style: a second run changes nothing and does not fail
    a, b = spec.zones[0].hosts[0], spec.zones[1].hosts[1]
    cross = ping(a.netns, b.underlay_ip)
    assert cross.returncode == 0, cross.stdout + cross.stderr
    assert "ttl=63" in cross.stdout  # exactly one routed hop: the core
    same = ping(a.netns, spec.zones[0].hosts[1].underlay_ip)
    assert same.returncode == 0 and "ttl=63" in same.stdout  # routed access: via the core too
    assert ping(b.netns, spec.internet_ip).returncode == 0
    link = subprocess.run(["ip", "-n", a.netns, "-o", "link", "show", "eth0"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "mtu 1400" in link
    # Routed access: the host's link ends in the core on a veth carrying the zone gateway
    # (no bridge anywhere: a routing bridge would segment VXLAN super-frames in software).
    core, zone = spec.core_netns, spec.zones[0]
    port = " ".join(_lines("ip", "-n", core, "-d", "-o", "addr", "show", "dev", a.core_port))
    assert f"{zone.gateway}/32" in port
    kinds = " ".join(_lines("ip", "-n", core, "-d", "-o", "link", "show"))
    assert " bridge " not in kinds and "mtu 1400" in kinds
    assert root_lab_routes_and_addresses() == []
    assert not any(cleanup.owned(n, prefix) for n in cleanup.root_links())

    removed = topology.teardown(prefix)
    assert sorted(removed.namespaces) == sorted(spec.namespaces)
    assert leftovers(prefix) == []
    assert not topology.teardown(prefix)  # idempotent: nothing left, nothing removed


def test_sweep_removes_orphans_with_their_processes_and_mounts(prefix: str) -> None:
    spec = RegionSpec.build(prefix=prefix, zones=1, hosts_per_zone=1)
    topology.realise(spec)
    host = spec.hosts[0]
    # What agents and instances of a crashed region leave: a VPC namespace, a process
    # inside a namespace of ours, a lab process marked with the region, a UTS bind mount.
    subprocess.run(["ip", "netns", "add", f"{host.agent_prefix}v7"], check=True)
    inner = subprocess.Popen(["ip", "netns", "exec", f"{host.agent_prefix}v7", "sleep", "300"])
    marked = subprocess.Popen(["sleep", "300"], env={**os.environ, "YUNHAN_REGION": prefix})
    # An agent restarted by hand: no YUNHAN_REGION, but it names a namespace of ours.
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                              "agent", "--host-netns", host.netns])  # fmt: skip
    uts = cleanup.RUN_DIR / "test-uts" / f"{host.agent_prefix}i-0000"
    uts.parent.mkdir(parents=True, exist_ok=True)
    uts.touch()
    subprocess.run(["unshare", f"--uts={uts}", "true"], check=True)
    try:
        removed = region.sweep(prefixes=[prefix])[prefix]
        assert f"{host.agent_prefix}v7" in removed.namespaces
        assert {inner.pid, marked.pid, agent.pid} <= set(removed.processes)
        assert str(uts) in removed.mounts and not uts.exists()
        assert leftovers(prefix) == []
        assert inner.wait(timeout=5) is not None and marked.wait(timeout=5) is not None
    finally:
        for p in (inner, marked, agent):
            p.kill()
            p.wait()
        subprocess.run(["umount", "-l", str(uts)], capture_output=True)
        uts.unlink(missing_ok=True)
        uts.parent.rmdir()


def test_sweep_spares_a_live_region_and_down_removes_it(prefix: str, tmp_path: Path) -> None:
    spec = RegionSpec.build(prefix=prefix, zones=1, hosts_per_zone=1)
    record = region.RegionRecord(prefix=prefix, state_dir=str(tmp_path), spec=spec.to_dict())
    me = os.getpid()
    record.processes.append(region.ProcessRecord("up", "up", me, cleanup.start_time(me)))
    record.data_dir.mkdir()
    record.save()
    topology.realise(spec)
    assert region.sweep(prefixes=[prefix]) == {}
    assert all(ns in cleanup.list_netns() for ns in spec.namespaces)

    removed = region.down(tmp_path)
    assert sorted(removed.namespaces) == sorted(spec.namespaces)
    assert not (tmp_path / region.RECORD).exists() and not record.data_dir.exists()
    assert not (region.REGISTRY / f"{prefix}.json").exists()
    assert not region.down(tmp_path)  # idempotent


def test_sweep_and_down_spare_a_live_region_whose_prefix_extends_theirs(
    prefix: str, tmp_path: Path
) -> None:
    # "<p>" and "<p>-b" are both valid region prefixes; every name of "<p>-b" also starts
    # with "<p>-". Taking "<p>" down must not touch the live "<p>-b".
    other = f"{prefix}-b"
    live = RegionSpec.build(prefix=other, zones=1, hosts_per_zone=1)
    record = region.RegionRecord(prefix=other, state_dir=str(tmp_path), spec=live.to_dict())
    me = os.getpid()
    record.processes.append(region.ProcessRecord("up", "up", me, cleanup.start_time(me)))
    record.data_dir.mkdir()
    record.save()
    try:
        topology.realise(live)
        topology.realise(RegionSpec.build(prefix=prefix, zones=1, hosts_per_zone=1))
        agent_ns = f"{live.hosts[0].agent_prefix}v7"
        subprocess.run(["ip", "netns", "add", agent_ns], check=True)
        removed = region.sweep(prefixes=[prefix])[prefix]
        assert not any(cleanup.owned(n, other) for n in removed.namespaces), removed
        assert all(ns in cleanup.list_netns() for ns in (*live.namespaces, agent_ns))
        assert (region.REGISTRY / f"{other}.json").exists()
        assert [n for n in cleanup.list_netns() if n.startswith(f"{prefix}-")
                and not n.startswith(f"{other}-")] == []  # fmt: skip
    finally:
        region.down(tmp_path)
        assert leftovers(other) == []


def test_up_refuses_a_prefix_that_extends_or_is_extended_by_a_live_region(
    prefix: str, tmp_path: Path
) -> None:
    # Agents match their namespaces by name: a region "<p>-az1-h1-i" would have its core
    # "<p>-az1-h1-i-core" taken by host az1-h1 of region "<p>" for an instance namespace
    # of its own (and removed). Two live regions never nest their prefixes.
    live = RegionSpec.build(prefix=prefix, zones=1, hosts_per_zone=1)
    record = region.RegionRecord(prefix=prefix, state_dir=str(tmp_path / "a"), spec=live.to_dict())
    me = os.getpid()
    record.processes.append(region.ProcessRecord("up", "up", me, cleanup.start_time(me)))
    record.data_dir.mkdir(parents=True)
    record.save()
    try:
        for other in (prefix, f"{prefix}-az1-h1-i", prefix.rsplit("-", 1)[0]):
            spec = RegionSpec.build(prefix=other, zones=1, hosts_per_zone=1)
            with pytest.raises(Conflict, match=prefix):
                region.up(spec, tmp_path / other, detach=True, timeout=5)
            assert not (tmp_path / other / region.RECORD).exists()
            assert not any(cleanup.owned(n, other) for n in cleanup.list_netns())
    finally:
        region.down(tmp_path / "a")
        region.sweep(prefixes=[prefix, f"{prefix}-az1-h1-i", prefix.rsplit("-", 1)[0]])
