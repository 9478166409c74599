"""End to end: security groups made through the CLI on a lab region, checked by real traffic
(issue 10): an nmap scan that finds exactly the allowed ports open, TCP connects allowed
and refused, a group peer admitting a new member at once, stateful replies, an established
stream cut when its allow rule goes, every bad input refused with a clear error, and the
VPC's flow log showing those accepted flows and refused attempts with exact counters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from region import CliError, Region, netns_names

from tests.polling import wait_for

pytestmark = pytest.mark.root

PORTS = (22, 80, 7000, 8080, 9000)
SERVER = (
    "import selectors, socket, threading\n"
    "def echo(c):\n"
    "    try:\n"
    "        while (b := c.recv(100)):\n"
    "            c.sendall(b)\n"
    "    except OSError:\n"
    "        pass\n"
    "sel = selectors.DefaultSelector()\n"
    f"for port in {PORTS!r}:\n"
    "    s = socket.socket()\n"
    "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind(('0.0.0.0', port))\n"
    "    s.listen(16)\n"
    "    sel.register(s, selectors.EVENT_READ, port)\n"
    "while True:\n"
    "    for key, _ in sel.select():\n"
    "        c, _ = key.fileobj.accept()\n"
    "        if key.data == 9000:\n"
    "            threading.Thread(target=echo, args=(c,), daemon=True).start()\n"
    "            continue\n"
    "        try:\n"  # a scanner resets its connections at once
    "            c.sendall((socket.gethostname() + '\\n').encode())\n"
    "        except OSError:\n"
    "            pass\n"
    "        c.close()\n"
)


def connects(region: Region, src: str, dst_ip: str, port: int) -> bool:
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(({dst_ip!r},{port}),timeout=1.5)\n"
        "sys.stdout.write(s.makefile().readline())\n"
    )
    return region.exec(src, sys.executable, "-c", code).returncode == 0


@pytest.fixture(scope="module")
def region() -> Iterator[Region]:
    home = Path(tempfile.mkdtemp(prefix="yunhan-e2e-sg-"))
    r = Region(home)
    prefix = ""
    try:
        r.run("up", "--detach", "--zones", "2", "--hosts-per-zone", "1", timeout=300)
        prefix = json.loads((r.state / "region.json").read_text())["prefix"]
        yield r
    finally:
        r.run("down", check=False, timeout=300)
        try:
            leftovers = {n for n in netns_names() if prefix and n.startswith(f"{prefix}-")}
            assert not leftovers, f"yunhan down left namespaces behind: {leftovers}"
        finally:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def net(region: Region) -> dict[str, Any]:
    """prod: s1 (group srv, az2), c1 (group cli, az1), n1 (the default group, az1)."""
    server = region.home / "server.py"
    server.write_text(SERVER)
    cmd = f"{sys.executable} {server}"
    run = region.run
    run("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    run("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
    run("flowlog", "enable", "--vpc", "prod")
    run("sg", "create", "cli", "--vpc", "prod")
    run("sg", "rule", "add", "cli", "--direction", "egress", "--peer", "0.0.0.0/0")
    run("sg", "create", "srv", "--vpc", "prod")
    for args in (
        ("--direction", "egress", "--peer", "0.0.0.0/0"),
        ("--direction", "ingress", "--proto", "tcp", "--port", "22", "--peer", "10.0.0.0/8"),
        ("--direction", "ingress", "--proto", "tcp", "--port", "7000", "--peer", "sg:cli"),
        ("--direction", "ingress", "--proto", "tcp", "--port", "9000", "--peer", "sg:cli"),
        ("--direction", "ingress", "--proto", "udp", "--port", "7001", "--peer", "sg:cli"),
        ("--direction", "ingress", "--proto", "tcp", "--port", "8000-8999", "--peer",
         "0.0.0.0/0", "--action", "deny", "--priority", "10"),
        ("--direction", "ingress", "--proto", "tcp", "--port", "8080", "--peer", "0.0.0.0/0"),
    ):  # fmt: skip
        run("sg", "rule", "add", "srv", *args)
    for name, zone, groups in (("s1", "az2", ("srv",)), ("c1", "az1", ("cli",)),
                               ("n1", "az1", ())):  # fmt: skip
        sgs = [a for g in groups for a in ("--sg", g)]
        run("instance", "create", name, "--subnet", "web", "--zone", zone, "--command", cmd,
            *sgs)  # fmt: skip
    names = ("s1", "c1", "n1")
    wait_for(lambda: all(region.instance(n)["phase"] == "running" for n in names), 90, "running")
    ips = {n: region.instance(n)["ip"] for n in names}
    s1 = ips["s1"]
    wait_for(lambda: connects(region, "c1", s1, 22), 30, "s1 listening")
    wait_for(lambda: connects(region, "c1", s1, 7000), 30, "c1 admitted by s1's group peer")
    return {"ips": ips}


def test_nmap_finds_exactly_the_allowed_ports_open(region: Region, net: dict[str, Any]) -> None:
    if shutil.which("nmap") is None:
        pytest.fail("nmap is missing: apt-get install -y nmap (scripts/install.sh)")
    s1 = net["ips"]["s1"]
    p = region.exec("c1", "nmap", "-n", "-Pn", "-sT", "-T4", "--max-retries", "1",
                    "--host-timeout", "120s", "-p", "1-1024,7000,8080,9000", "-oG", "-", s1,
                    timeout=150)  # fmt: skip
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if "Ports:" in x)
    opened = sorted(
        int(e.split("/")[0]) for e in line.split("Ports:")[1].split(",") if "/open/" in e
    )
    if opened != [22, 7000, 9000]:  # what the hosts hold, to say why
        for ns in sorted(n for n in netns_names() if "-v" in n):
            out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip",
                                  "yunhan_sg"], capture_output=True, text=True)  # fmt: skip
            print(ns, out.stdout, out.stderr)
        print(region.run("instance", "list", "-o", "wide").stdout)
    assert opened == [22, 7000, 9000]  # 80: no rule; 8080: the deny of 8000-8999 comes first


def test_connects_follow_the_rules(region: Region, net: dict[str, Any]) -> None:
    ips = net["ips"]
    assert connects(region, "c1", ips["s1"], 7000)
    assert not connects(region, "c1", ips["s1"], 80)
    assert not connects(region, "c1", ips["s1"], 8080)
    # n1 (default group) is not in cli: only ssh from the VPC's range.
    assert connects(region, "n1", ips["s1"], 22)
    assert not connects(region, "n1", ips["s1"], 7000)
    # Stateful: c1's group admits no ingress at all, yet its connections' replies come back;
    # nobody can open one to c1.
    assert not connects(region, "s1", ips["c1"], 7000)
    assert not connects(region, "n1", ips["c1"], 7000)
    # The default group admits its own members: c1 -> n1 is refused, n1 <- n1's peers fine.
    assert not connects(region, "c1", ips["n1"], 7000)


def test_a_new_member_of_a_peer_group_is_admitted_at_once(
    region: Region, net: dict[str, Any]
) -> None:
    s1 = net["ips"]["s1"]
    assert not connects(region, "n1", s1, 7000)
    region.run("instance", "set-sg", "n1", "cli", "default", "--wait")
    assert connects(region, "n1", s1, 7000)
    region.run("instance", "set-sg", "n1", "default", "--wait")
    assert not connects(region, "n1", s1, 7000)


def test_removing_the_allow_rule_cuts_an_established_stream(
    region: Region, net: dict[str, Any]
) -> None:
    s1 = net["ips"]["s1"]
    client = (
        "import socket, sys, time\n"
        f"s = socket.create_connection(({s1!r}, 9000), timeout=1)\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        s.sendall(b'x'); s.recv(1)\n"
        "    except OSError:\n"
        "        print('cut', n, flush=True); break\n"
        "    n += 1\n"
        "    if n == 20:\n"
        "        print('flowing', flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    argv = [region.bin, "instance", "exec", "c1", "--", sys.executable, "-c", client]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=region.env)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "flowing"
        group = region.json("sg", "show", "srv")
        rule = next(r for r in group["rules"] if r["port"] == "9000")
        region.run("sg", "rule", "delete", "srv", rule["id"], "--wait")
        assert p.stdout.readline().startswith("cut")
        p.wait(timeout=10)
    finally:
        p.kill()
        p.wait()
    assert not connects(region, "c1", s1, 9000)


def test_bad_inputs_are_refused_and_change_nothing(region: Region, net: dict[str, Any]) -> None:
    region.run("vpc", "create", "other", "--cidr", "10.9.0.0/16")
    region.run("sg", "create", "far", "--vpc", "other")
    before = region.json("sg", "show", "srv")
    cases = (
        (("--direction", "ingress", "--proto", "icmp", "--port", "22", "--peer", "0.0.0.0/0"),
         "not protocol icmp"),
        (("--direction", "ingress", "--peer", "sg:far"), "belongs to VPC other"),
        (("--direction", "ingress", "--proto", "tcp", "--port", "90-80", "--peer",
          "0.0.0.0/0"), "runs backwards"),
    )  # fmt: skip
    for args, message in cases:
        with pytest.raises(CliError) as e:
            region.run("sg", "rule", "add", "srv", *args)
        assert message in e.value.stderr
    with pytest.raises(CliError) as e:
        region.run("sg", "delete", "srv")
    assert "still used by instance(s) s1" in e.value.stderr
    assert region.json("sg", "show", "srv") == before


UDP_COUNT, UDP_SIZE, UDP_SPORT = 37, 200, 40123  # c1 -> s1:7001, admitted, nobody listens


def _records(region: Region, *args: str) -> list[dict[str, Any]]:
    out = region.json(
        "flowlog", "query", "--vpc", "prod", "--since", "30m", "--limit", "10000", *args
    )
    assert isinstance(out, list)
    return out


def _totals(recs: list[dict[str, Any]]) -> tuple[int, int]:
    return sum(r["packets"] for r in recs), sum(r["bytes"] for r in recs)


def test_flow_logs_show_the_accepted_flows_and_rejected_attempts(
    region: Region, net: dict[str, Any]
) -> None:
    ips = net["ips"]
    s1, c1 = ips["s1"], ips["c1"]
    # Exact counters: datagrams of a known size, one flow in one direction.
    send = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('0.0.0.0', {UDP_SPORT}))\n"
        f"for _ in range({UDP_COUNT}):\n"
        f"    s.sendto(b'u' * {UDP_SIZE}, ({s1!r}, 7001))\n"
    )
    assert region.exec("c1", sys.executable, "-c", send).returncode == 0
    assert not connects(region, "c1", s1, 80)
    want = (UDP_COUNT, UDP_COUNT * (UDP_SIZE + 28))  # IP and UDP headers: 28 bytes

    def udp(instance: str) -> list[dict[str, Any]]:
        recs = _records(region, "--instance", instance, "--action", "ACCEPT")
        return [r for r in recs if (r["srcport"], r["dstport"]) == (UDP_SPORT, 7001)]

    # Records come within a few collection intervals; a flow's windows add up.
    wait_for(lambda: _totals(udp("s1")) == want, 60, "the UDP flow's records at s1")
    got = udp("s1")
    assert {(r["srcaddr"], r["dstaddr"], r["protocol"], r["direction"]) for r in got} == {
        (c1, s1, "udp", "ingress")
    }
    # c1's host logged the same flow on c1's interface, as egress, with the same counters.
    wait_for(lambda: _totals(udp("c1")) == want, 60, "the UDP flow's records at c1")
    assert {r["direction"] for r in udp("c1")} == {"egress"}

    # The refused connects of the tests above: REJECT at s1, never for an allowed port.
    def rejected() -> set[int]:
        recs = _records(region, "--instance", "s1", "--action", "REJECT")
        return {r["dstport"] for r in recs if r["srcaddr"] == c1}

    wait_for(lambda: {80, 8080} <= rejected(), 60, "REJECT records of ports 80 and 8080")
    assert not rejected() & {22, 7000, 7001}  # 9000: refused after its rule went (above)
    # The accepted TCP flows of those tests, at s1.
    accepted = {
        (r["srcaddr"], r["dstport"], r["protocol"])
        for r in _records(region, "--instance", "s1", "--action", "ACCEPT")
    }
    assert {(c1, 22, "tcp"), (c1, 7000, "tcp"), (c1, 9000, "tcp")} <= accepted
    # Top talkers by bytes: c1 -> s1 (scans, streams, datagrams) leads the VPC.
    top = region.json("flowlog", "top", "--vpc", "prod", "--window", "30m")
    assert (top[0]["srcaddr"], top[0]["dstaddr"]) == (c1, s1)
    assert top == sorted(top, key=lambda t: -t["bytes"])
