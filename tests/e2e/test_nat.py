"""End to end: a NAT gateway, a port forward and an EIP in a lab region, through the CLI,
checked by real traffic to and from the lab internet (its echo server answers with the
address it saw), and the gateway's failover measured.

One region (2 zones x 1 host) serves the module: VPC prod, subnet web, an instance in
each zone. What a user would see is asserted; nothing of the region is left after `down`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from region import Region, netns_names

from tests.polling import wait_for
from yunhan.lab.cleanup import run

pytestmark = pytest.mark.root

# Answers every TCP connection on port 80 with the hostname of its instance.
SERVER = (
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 80)); s.listen(16)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall((socket.gethostname()+'\\n').encode()); c.close()\n"
)


@dataclass
class Lab:
    region: Region
    record: dict[str, Any]

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.record["spec"]
        return spec

    def seen_as(self, instance: str) -> str:
        """The address the internet's echo server sees `instance` fetch from ("": none)."""
        url = f"http://{self.spec['internet_ip']}/"
        p = self.region.exec(instance, "curl", "-s", "--max-time", "2", url)
        return p.stdout.strip().removeprefix("client ")

    def from_internet(self, ip: str, port: int) -> str:
        """Who answers ip:port (tcp) from the internet namespace ("": nobody)."""
        code = (
            "import socket,sys\n"
            "try:\n"
            "    s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2)\n"
            "    sys.stdout.write(s.makefile().readline())\n"
            "except OSError:\n"
            "    pass\n"
        )
        argv = ["ip", "netns", "exec", self.spec["internet_netns"], sys.executable, "-c", code]
        return run([*argv, ip, str(port)], check=False).strip()

    def routed_to(self, ip: str) -> str:
        """The host the core routes public address `ip` to ("": none)."""
        out = run(["ip", "-n", self.spec["core_netns"], "route", "show", f"{ip}/32"]).split()
        via = out[out.index("via") + 1] if "via" in out else ""
        hosts = [h for z in self.spec["zones"] for h in z["hosts"]]
        return next((h["name"] for h in hosts if h["underlay_ip"] == via), "")

    def agent_pid(self, host: str) -> int:
        procs = self.region.json("status")["processes"]  # the supervisor's, with the others
        return int(next(p["pid"] for p in procs if p["name"] == host and p["role"] == "agent"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    home = Path(tempfile.mkdtemp(prefix="yunhan-e2e-nat-"))
    r = Region(home)
    prefix = ""
    try:
        r.run("up", "--detach", "--zones", "2", "--hosts-per-zone", "1", timeout=300)
        record = json.loads((r.state / "region.json").read_text())
        prefix = record["prefix"]
        server = home / "hello80.py"  # instances share the host's filesystem
        server.write_text(SERVER)
        r.run("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
        # These tests are about NAT: the default group admits the internet's connections
        # (security groups have tests of their own, test_secgroups.py).
        r.run("sg", "rule", "add", "prod-default", "--direction", "ingress", "--peer", "0.0.0.0/0")
        r.run("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
        for name, zone in (("w1", "az1"), ("w2", "az2")):
            r.run("instance", "create", name, "--subnet", "web", "--zone", zone,
                  "--command", f"{sys.executable} {server}", "--wait")  # fmt: skip
        r.run("natgw", "create", "gw", "--vpc", "prod", "--subnet", "web")
        yield Lab(r, record)
    finally:
        r.run("down", check=False, timeout=300)
        try:
            leftovers = {n for n in netns_names() if prefix and n.startswith(f"{prefix}-")}
            assert not leftovers, f"yunhan down left namespaces behind: {leftovers}"
        finally:
            shutil.rmtree(home, ignore_errors=True)


def gateway(lab: Lab) -> dict[str, Any]:
    data: dict[str, Any] = lab.region.json("natgw", "show", "gw")
    return data


def test_egress_is_seen_from_the_gateway_s_address(lab: Lab) -> None:
    gw = gateway(lab)
    public = gw["public_ip"]
    assert gw["host"] and lab.routed_to(public) == gw["host"]
    for inst in ("w1", "w2"):  # one on the gateway's host, one across the zones
        assert wait_for(lambda i=inst: lab.seen_as(i), 15, f"{inst}'s fetch") == public


def test_a_port_forward_and_an_eip(lab: Lab) -> None:
    public = gateway(lab)["public_ip"]
    lab.region.run("natgw", "forward", "add", "gw", "--proto", "tcp", "--port", "8080",
                   "--to", "w1:80")  # fmt: skip
    assert wait_for(lambda: lab.from_internet(public, 8080), 15, "the forward") == "w1"
    assert lab.from_internet(public, 80) == ""  # only what is forwarded
    eip = lab.region.json("eip", "allocate")["address"]
    assert lab.from_internet(eip, 80) == ""  # allocated, bound to nothing: not routed
    lab.region.run("eip", "bind", eip, "w2")
    assert wait_for(lambda: lab.seen_as("w2"), 15, "w2 by its EIP") == eip
    assert wait_for(lambda: lab.from_internet(eip, 80), 15, "the EIP") == "w2"
    assert lab.seen_as("w1") == public  # the others still leave by the gateway's address
    lab.region.run("eip", "unbind", eip)
    assert wait_for(lambda: lab.seen_as("w2") == public, 15, "w2 back to the gateway")
    assert wait_for(lambda: lab.from_internet(eip, 80) == "", 15, "the EIP withdrawn")


def test_gateway_failover_is_measured(lab: Lab) -> None:
    gw = gateway(lab)
    public, old = gw["public_ip"], gw["host"]
    other = next(i for i in ("w1", "w2") if lab.region.instance(i)["host"] != old)
    pid = lab.agent_pid(old)
    # The old host stops answering (its agent frozen: no heartbeats, its kernel state
    # left as it was, as after a crash of the agent or a partition of the host).
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        placed: list[float] = []  # when the controller moved it (seen by the API)

        def restored() -> bool:
            if not placed and gateway(lab)["host"] != old:
                placed.append(time.monotonic() - t0)
            moved = lab.routed_to(public) not in ("", old)
            return moved and lab.seen_as(other) == public

        assert wait_for(restored, 60, "egress through the new gateway")
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    new = gateway(lab)["host"]
    assert new != old
    moved = f"{placed[0]:.1f}" if placed else "?"
    print(
        f"RESULT natgw failover: egress restored {took:.1f} s after its host stopped "
        f"(moved by the controller after {moved} s)"
    )
    # The old host comes back: it removes its gateway and leaves the routes to the new one.
    old_ns = next(h["netns"] for z in lab.spec["zones"] for h in z["hosts"] if h["name"] == old)
    assert wait_for(
        lambda: not [n for n in netns_names() if n.startswith(f"{old_ns}-g-")],
        30,
        "the old gateway removed",
    )
    assert lab.routed_to(public) == new
    for inst in ("w1", "w2"):
        assert wait_for(lambda i=inst: lab.seen_as(i), 15, f"{inst}'s fetch") == public
