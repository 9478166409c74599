"""End to end: a lab region, VPCs and instances made through the CLI, checked by real traffic.

One region (2 zones x 2 hosts) serves the module. What a user would see is asserted:
pings and TCP connections that arrive (or do not), the hostname that answers, errors that
name the problem, and nothing of the region left after `yunhan down`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from region import CliError, Region, netns_names

from tests.polling import wait_for
from yunhan import procstat

pytestmark = pytest.mark.root

# Answers every TCP connection with the hostname of the instance it runs in: a peer that
# says who it is proves where a packet went.
SERVER = (
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 7000)); s.listen(16)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall((socket.gethostname()+'\\n').encode()); c.close()\n"
)


def tcp_hello(region: Region, src: str, dst_ip: str) -> str | None:
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(({dst_ip!r},7000),timeout=2)\n"
        "sys.stdout.write(s.makefile().readline())\n"
    )
    p = region.exec(src, sys.executable, "-c", code)
    return p.stdout.strip() if p.returncode == 0 else None


@pytest.fixture(scope="module")
def region() -> Iterator[Region]:
    home = Path(tempfile.mkdtemp(prefix="yunhan-e2e-"))
    r = Region(home)
    prefix = ""
    try:
        r.run("up", "--detach", "--zones", "2", "--hosts-per-zone", "2", timeout=300)
        prefix = json.loads((r.state / "region.json").read_text())["prefix"]
        yield r
    finally:
        r.run("down", check=False, timeout=300)
        try:
            # Only this region's names: a concurrent run may have a region of its own up.
            leftovers = {n for n in netns_names() if prefix and n.startswith(f"{prefix}-")}
            assert not leftovers, f"yunhan down left namespaces behind: {leftovers}"
            procs = processes_mentioning(str(r.state))
            assert not procs, f"yunhan down left processes behind: {procs}"
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def net(region: Region) -> dict[str, dict[str, str]]:
    """VPC "prod" (two subnets) and VPC "shadow" with the same CIDR and the same IPs."""
    server = region.home / "hello_server.py"  # instances share the host's filesystem
    server.write_text(SERVER)
    server_cmd = f"{sys.executable} {server}"
    region.run("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    region.run("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    region.run("subnet", "create", "db", "--vpc", "prod", "--cidr", "10.0.2.0/24")
    # Three instances of az1 across two hosts: two of them share a host (least-loaded).
    plan = [
        ("w1", "web", "az1"),
        ("w2", "web", "az2"),
        ("w3", "web", "az1"),
        ("w4", "web", "az1"),
        ("d1", "db", "az2"),
    ]
    out: dict[str, dict[str, str]] = {}
    for name, subnet, zone in plan:
        region.run("instance", "create", name, "--subnet", subnet, "--zone", zone,
                   "--command", server_cmd)  # fmt: skip
    region.run("vpc", "create", "shadow", "--cidr", "10.0.0.0/16")
    region.run("subnet", "create", "shadow-web", "--vpc", "shadow", "--cidr", "10.0.1.0/24")
    w1_ip = region.instance("w1")["ip"]
    region.run("instance", "create", "s1", "--subnet", "shadow-web", "--zone", "az2",
               "--ip", w1_ip, "--command", server_cmd, "--wait")  # fmt: skip
    for item in region.json("instance", "list"):
        out[item["name"]] = item
    wait_for(lambda: all(region.instance(n)["phase"] == "running" for n in out), 60, "running")
    return out


def same_host_pair(net: dict[str, dict[str, str]]) -> tuple[str, str]:
    az1 = [n for n in ("w1", "w3", "w4")]
    for a in az1:
        for b in az1:
            if a < b and net[a]["host"] == net[b]["host"]:
                return a, b
    raise AssertionError(f"no two az1 instances share a host: {net}")


def test_cross_zone_same_subnet(region: Region, net: dict[str, dict[str, str]]) -> None:
    assert net["w1"]["zone"] != net["w2"]["zone"]
    assert region.ping("w1", net["w2"]["ip"])
    assert tcp_hello(region, "w1", net["w2"]["ip"]) == "w2"
    assert tcp_hello(region, "w2", net["w1"]["ip"]) == "w1"


def test_two_subnets_across_zones_and_on_one_host(
    region: Region, net: dict[str, dict[str, str]]
) -> None:
    assert region.ping("w1", net["d1"]["ip"])  # web/az1 -> db/az2
    assert tcp_hello(region, "d1", net["w1"]["ip"]) == "w1"
    a, b = same_host_pair(net)
    assert region.ping(a, net[b]["ip"])
    assert tcp_hello(region, a, net[b]["ip"]) == b


def test_gateway_answers_and_unknown_address_is_unreachable(
    region: Region, net: dict[str, dict[str, str]]
) -> None:
    assert region.ping("w1", "10.0.1.1")
    assert not region.ping("w1", "10.0.1.250", count=1)  # inside the VPC, no instance
    assert not region.ping("w1", "10.0.9.9", count=1)  # inside the VPC, no subnet
    assert not region.ping("w1", "198.18.1.1", count=1)  # the underlay is not reachable


def test_vpcs_with_same_cidr_are_isolated(region: Region, net: dict[str, dict[str, str]]) -> None:
    assert net["s1"]["ip"] == net["w1"]["ip"]
    # From prod, w1's address answers as w1; from shadow, nothing of prod is reachable.
    assert tcp_hello(region, "w2", net["w1"]["ip"]) == "w1"
    assert not region.ping("s1", net["w2"]["ip"], count=1)
    assert tcp_hello(region, "s1", net["w2"]["ip"]) is None


def test_spoofed_source_ip_is_dropped(region: Region, net: dict[str, dict[str, str]]) -> None:
    spoof = "10.0.1.77"
    assert region.exec("w1", "ip", "addr", "add", f"{spoof}/24", "dev", "eth0").returncode == 0
    try:
        assert region.ping("w1", net["w2"]["ip"])  # own address still works
        p = region.exec("w1", "ping", "-c", "2", "-W", "1", "-I", spoof, net["w2"]["ip"])
        assert p.returncode != 0
    finally:
        region.exec("w1", "ip", "addr", "del", f"{spoof}/24", "dev", "eth0")


def test_spoofed_mac_is_dropped(region: Region, net: dict[str, dict[str, str]]) -> None:
    mac = region.instance("w2")["mac"]
    assert (
        region.exec("w2", "ip", "link", "set", "eth0", "address", "02:00:00:00:be:ef").returncode
        == 0
    )
    try:
        assert not region.ping("w2", net["w1"]["ip"], count=2)
    finally:
        region.exec("w2", "ip", "link", "set", "eth0", "address", mac)
    wait_for(lambda: region.ping("w2", net["w1"]["ip"], count=1), 10, "w2 back after MAC restore")


def test_bad_input_is_refused_and_changes_nothing(
    region: Region, net: dict[str, dict[str, str]]
) -> None:
    def revision() -> int:
        return int(region.api("/v1/revision")["revision"])

    bad = [
        ("vpc", "create", "pub", "--cidr", "8.8.0.0/16"),
        ("vpc", "create", "tiny", "--cidr", "10.9.0.0/30"),
        ("subnet", "create", "out", "--vpc", "prod", "--cidr", "10.1.0.0/24"),
        ("subnet", "create", "overlap", "--vpc", "prod", "--cidr", "10.0.1.128/25"),
        ("instance", "create", "x1", "--subnet", "web", "--zone", "az1", "--ip", "10.0.1.1"),
        ("instance", "create", "x2", "--subnet", "web", "--zone", "az1", "--ip", net["w2"]["ip"]),
        ("instance", "create", "x3", "--subnet", "web", "--zone", "az1", "--ip", "10.0.2.9"),
        ("instance", "create", "x4", "--subnet", "web", "--zone", "az9"),
        ("vpc", "delete", "prod"),
    ]
    for argv in bad:
        rev = revision()
        with pytest.raises(CliError) as err:
            region.run(*argv)
        msg = err.value.stderr.strip()
        assert msg and "Traceback" not in msg, f"{argv}: {msg!r}"
        assert revision() == rev, f"{argv} changed the store"


def _agent_pid(region: Region, host: str) -> int:
    # Only this region's agent: other regions (a concurrent run) have hosts of that name too.
    out: list[str] = []

    def one() -> bool:
        nonlocal out
        out = subprocess.run(["pgrep", "-f", f"yunhan agent .*--host {host} .*{region.state}/"],
                             capture_output=True, text=True).stdout.split()  # fmt: skip
        return len(out) == 1

    # One at a time: between a kill and the supervisor's restart there may be none.
    wait_for(one, 10, f"one agent for {host} (found {out})")
    return int(out[0])


def _links(netns: str) -> dict[str, int]:
    """ifname -> ifindex in a namespace: a re-created link gets a new ifindex."""
    out = subprocess.run(["ip", "-n", netns, "-o", "link"], capture_output=True, text=True).stdout
    links = {}
    for line in out.splitlines():
        idx, name = line.split(":")[:2]
        links[name.strip().split("@")[0]] = int(idx)
    return links


def test_agent_sigkill_keeps_traffic_and_restart_changes_nothing(
    region: Region, net: dict[str, dict[str, str]]
) -> None:
    host = net["w1"]["host"]
    pid = _agent_pid(region, host)
    inst_ns = Path(str(region.instance("w1")["netns"])).name  # "<host netns>-i-<id>"
    host_ns = inst_ns.rsplit("-i-", 1)[0]
    vpc_ns = [n for n in netns_names() if n.startswith(f"{host_ns}-v")]
    assert vpc_ns, "no VPC namespace found for the host"
    before = {ns: _links(ns) for ns in vpc_ns}
    # 60 pings at 50 ms: the agent is killed, and restarted by the region's supervisor,
    # while they run.
    ping = subprocess.Popen(
        [region.bin, "instance", "exec", "w1", "--", "ping", "-c", "60", "-i", "0.05", "-W", "1",
         net["w2"]["ip"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=region.env,
    )  # fmt: skip
    try:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _agent_pid(region, host) != pid, 10, "agent restarted")
        out, _ = ping.communicate(timeout=60)
        assert ping.returncode == 0, out
        assert " 0% packet loss" in out, out
        wait_for(lambda: region_host(region, host)["healthy"], 30, "restarted agent healthy")
        after = {ns: _links(ns) for ns in vpc_ns}
        assert after == before, "restart re-created links"
        assert tcp_hello(region, "w1", net["w2"]["ip"]) == "w2"
    finally:
        if ping.poll() is None:
            ping.kill()


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (the region's state dir)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and not _zombie(int(d.name)):
            found.append(cmd)
    return found


def _zombie(pid: int) -> bool:
    st = procstat.read(pid)
    return st is None or st.state == "Z"


def region_host(region: Region, host: str) -> dict[str, object]:
    for h in region.json("host", "list"):
        if h["name"] == host:
            return dict(h)
    raise AssertionError(f"host {host} not listed")


def test_instance_mtu_leaves_room_for_vxlan(region: Region, net: dict[str, dict[str, str]]) -> None:
    # Underlay 1500 - 50 bytes of VXLAN: a full-size, don't-fragment packet crosses zones.
    link = region.exec("w1", "ip", "-o", "link", "show", "eth0").stdout
    assert " mtu 1450 " in link
    full = region.exec(
        "w1", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", net["w2"]["ip"]
    )
    assert full.returncode == 0, full.stdout + full.stderr
    over = region.exec(
        "w1", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1423", net["w2"]["ip"]
    )
    assert over.returncode != 0


def test_migration_across_zones_keeps_the_address_and_ends_the_old_processes(
    region: Region, net: dict[str, dict[str, str]]
) -> None:
    before = region.instance("w4")
    assert before["zone"] == "az1" and tcp_hello(region, "w2", before["ip"]) == "w4"
    # A process started by `instance exec` (not the instance's command) is ended with it.
    left = region.exec("w4", "sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!")
    pid = int(left.stdout.strip())
    old_netns = before["netns"]
    region.run("instance", "migrate", "w4", "--zone", "az2", "--wait")
    st = region.instance("w4")
    assert (st["ip"], st["mac"], st["phase"]) == (before["ip"], before["mac"], "running")
    assert st["zone"] == "az2" and st["netns"] != old_netns
    assert st["host"] != before["host"] and st["host"].startswith("az2")
    assert [(m["from_host"], m["to_host"]) for m in st["migrations"]] == [
        (before["host"], st["host"])
    ]
    gone = procstat.read(pid)
    assert gone is None or not gone.alive, "a process of the old instance outlived its move"
    assert old_netns not in netns_names()
    # Nobody changed anything: w1 (az1) and w2 (az2) reach it again at the same address,
    # and a TCP client that connects again is answered by its command, started anew.
    wait_for(lambda: region.ping("w1", before["ip"], count=1), 10, "w4 answers after its move")
    assert tcp_hello(region, "w1", before["ip"]) == "w4"
    assert tcp_hello(region, "w2", before["ip"]) == "w4"
    refused = region.run("instance", "migrate", "w4", "--zone", "az2", "--host", st["host"],
                         check=False)  # fmt: skip
    assert refused.returncode != 0 and "already runs on host" in refused.stderr
