"""End to end: `yunhan trace --live` on a lab region explains every case of issue 8.

One region (2 zones x 1 host), built through the CLI: VPC prod with subnets web (its own
route table), db, fw (two appliances), app (default table, no NAT); a NAT gateway for web
and db with an EIP on b and a port forward to b; VPC other with its own gateway. Each case
runs `yunhan trace FROM TO --live --json`: the model's verdict must be the expected one,
and the live probe must agree with it (`agree`, exit 0).
"""

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
from region import Region, netns_names

from tests.polling import wait_for

pytestmark = pytest.mark.root

SERVER = (
    "import selectors, socket\n"
    "sel = selectors.DefaultSelector()\n"
    "for port in (7000, 22, 80):\n"
    "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind(('0.0.0.0', port)); s.listen(16); sel.register(s, selectors.EVENT_READ)\n"
    "while True:\n"
    "    for key, _ in sel.select():\n"
    "        c, _ = key.fileobj.accept(); c.sendall(socket.gethostname().encode()); c.close()\n"
)
INTERNET = "198.19.0.2"  # the lab internet's echo server (port 80)


@pytest.fixture(scope="module")
def region() -> Iterator[Region]:
    home = Path(tempfile.mkdtemp(prefix="yunhan-e2e-trace-"))
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
    server = region.home / "server.py"
    server.write_text(SERVER)
    cmd = f"{sys.executable} {server}"
    run = region.run
    run("vpc", "create", "prod", "--cidr", "10.0.0.0/16")
    for name, cidr in (("web", "10.0.1.0/24"), ("db", "10.0.2.0/24"), ("fw", "10.0.3.0/24"),
                       ("app", "10.0.4.0/24")):  # fmt: skip
        run("subnet", "create", name, "--vpc", "prod", "--cidr", cidr)
    for name, subnet, zone in (("a", "web", "az1"), ("b", "db", "az2"), ("fw1", "fw", "az2"),
                               ("fw2", "fw", "az1"), ("c2", "app", "az1")):  # fmt: skip
        run("instance", "create", name, "--subnet", subnet, "--zone", zone, "--command", cmd)
    run("vpc", "create", "other", "--cidr", "10.9.0.0/16")
    run("subnet", "create", "o1", "--vpc", "other", "--cidr", "10.9.1.0/24")
    run("instance", "create", "c", "--subnet", "o1", "--zone", "az2", "--command", cmd)
    names = ("a", "b", "fw1", "fw2", "c2", "c")
    wait_for(lambda: all(region.instance(n)["phase"] == "running" for n in names), 90, "running")
    for fw in ("fw1", "fw2"):
        assert region.exec(fw, "sysctl", "-w", "net.ipv4.ip_forward=1").returncode == 0
    run("route-table", "create", "edge", "--vpc", "prod")
    run("route-table", "associate", "edge", "--subnet", "web")
    run("route", "add", "edge", "--dst", "10.0.2.0/24", "--next-hop", "instance:fw1",
        "--priority", "10")  # fmt: skip
    run("route", "add", "edge", "--dst", "10.0.2.0/24", "--next-hop", "instance:fw2",
        "--priority", "20")  # fmt: skip
    run("route", "add", "edge", "--dst", "10.0.9.0/24", "--next-hop", "blackhole")
    run("policy-route", "add", "edge", "--priority", "10", "--dst", "10.0.2.0/24",
        "--proto", "tcp", "--port", "22", "--action", "drop")  # fmt: skip
    run("policy-route", "add", "edge", "--priority", "20", "--dst", "10.0.4.0/24",
        "--proto", "tcp", "--port", "80", "--action", "reroute",
        "--next-hop", "instance:fw2")  # fmt: skip
    run("natgw", "create", "gw", "--vpc", "prod", "--subnet", "web", "--subnet", "db")
    run("natgw", "create", "gw2", "--vpc", "other", "--subnet", "o1")
    eip = region.json("eip", "allocate")["address"]
    run("eip", "bind", eip, "b")
    run("natgw", "forward", "add", "gw", "--proto", "tcp", "--port", "8080", "--to", "b:7000",
        "--wait")  # fmt: skip
    gw = region.json("natgw", "show", "gw")
    out: dict[str, Any] = {"eip": eip, "gw_ip": gw.get("public_ip")}
    for item in region.json("instance", "list"):
        out[item["name"]] = item
    return out


def trace(region: Region, *args: str) -> dict[str, Any]:
    p = region.run("trace", *args, "--live", "--json", check=False, timeout=120)
    body: dict[str, Any] = json.loads(p.stdout) if p.stdout.strip() else {}
    assert body.get("agree") is True, (args, p.stderr, body.get("disagreements"), body.get("text"))
    assert p.returncode == 0
    return body


def through(t: dict[str, Any]) -> list[str]:
    """The instances the packet crossed after its source (appliances, then the target)."""
    names: dict[str, str] = t["names"]
    return [names.get(h["ref"], h["ref"]) for h in t["hops"] if h["place"] == "instance"][1:]


CASES = [
    # (id, args, verdict, reason, instances crossed (None: not checked))
    ("appliance route, lower priority wins", ("a", "b", "--port", "7000"), "delivered", "",
     ["fw1", "b"]),
    ("policy drop tcp/22", ("a", "b", "--port", "22"), "dropped", "policy-drop", None),
    ("icmp still flows", ("a", "b"), "delivered", "", ["fw1", "b"]),
    ("policy reroute tcp/80", ("a", "c2", "--port", "80"), "delivered", "", ["fw2", "c2"]),
    ("no reroute for another port", ("a", "c2", "--port", "7000"), "delivered", "", ["c2"]),
    ("two tables: app goes direct", ("c2", "b", "--port", "7000"), "delivered", "", ["b"]),
    ("blackhole route", ("a", "10.0.9.5"), "dropped", "blackhole", None),
    ("no member holds the address", ("a", "10.0.2.250"), "dropped", "no-member", None),
    ("NAT egress", ("a", INTERNET, "--port", "80"), "internet", "", None),
    ("EIP egress", ("b", INTERNET, "--port", "80"), "internet", "", None),
    ("no NAT gateway for app", ("c2", INTERNET, "--port", "80"), "dropped", "no-natgw", None),
    ("outside everything", ("a", "203.0.113.7", "--port", "80"), "internet", "", None),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trace_explains_and_the_probe_agrees(
    region: Region, net: dict[str, Any], case: tuple[Any, ...]
) -> None:
    _id, args, verdict, reason, crossed = case
    t = trace(region, *args)
    assert (t["verdict"], t["reason"]) == (verdict, reason), t["text"]
    if crossed is not None:
        assert through(t) == crossed, t["text"]


def test_nat_snat_addresses(region: Region, net: dict[str, Any]) -> None:
    t = trace(region, "a", INTERNET, "--port", "80")
    assert f"-> {net['gw_ip']} (the gateway's address)" in " ".join(h["nat"] for h in t["hops"])
    t = trace(region, "b", INTERNET, "--port", "80")
    assert f"-> {net['eip']} (the instance's EIP)" in " ".join(h["nat"] for h in t["hops"])


def test_dnat_port_forward_and_eip_from_another_vpc(region: Region, net: dict[str, Any]) -> None:
    t = trace(region, "c", net["gw_ip"], "--port", "8080")
    assert t["verdict"] == "delivered" and t["delivered_to"] == f"instance:{net['b']['id']}"
    assert any(h["nat"].startswith(f"dnat {net['gw_ip']}:8080") for h in t["hops"])
    t = trace(region, "c", net["eip"], "--port", "7000")
    assert t["verdict"] == "delivered" and t["delivered_to"] == f"instance:{net['b']['id']}"
    # from the gateway's own subnet, without an EIP of its own: a martian on the way back in
    t = trace(region, "a", net["eip"])
    assert (t["verdict"], t["reason"]) == ("dropped", "martian-source")


def _hello(region: Region, src: str, dst_ip: str, port: int) -> str | None:
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(({dst_ip!r},{port}),timeout=2)\n"
        "sys.stdout.write(s.recv(100).decode())\n"
    )
    p = region.exec(src, sys.executable, "-c", code)
    return p.stdout.strip() if p.returncode == 0 else None


def _forwarded(region: Region, appliance: str) -> int:
    """Packets the appliance's kernel forwarded (its own capture of traffic through it)."""
    lines = region.exec(appliance, "cat", "/proc/net/snmp").stdout.splitlines()
    names, values = (line.split() for line in lines if line.startswith("Ip:"))
    return int(values[names.index("ForwDatagrams")])


def test_real_traffic_follows_the_routes_and_policies(region: Region, net: dict[str, Any]) -> None:
    b_ip, c2_ip = net["b"]["ip"], net["c2"]["ip"]
    before = _forwarded(region, "fw1")
    assert _hello(region, "a", b_ip, 7000) == "b"  # through fw1 (priority 10)
    assert _forwarded(region, "fw1") > before
    assert _hello(region, "a", b_ip, 22) is None  # policy drop of tcp/22
    assert region.ping("a", b_ip)  # while icmp flows
    fw2 = _forwarded(region, "fw2")
    assert _hello(region, "a", c2_ip, 80) == "c2"  # rerouted through fw2
    assert _forwarded(region, "fw2") > fw2
    fw2 = _forwarded(region, "fw2")
    assert _hello(region, "a", c2_ip, 7000) == "c2"  # not tcp/80: direct
    assert _hello(region, "c2", b_ip, 7000) == "b"  # app's table: direct
    assert _forwarded(region, "fw2") == fw2


def test_route_edits_and_associations_do_not_touch_other_flows(
    region: Region, net: dict[str, Any]
) -> None:
    # c2 -> b is on the default tables; a stream of pings runs while the web table gets
    # and loses routes and db (b's subnet) moves to that table and back.
    b_ip = net["b"]["ip"]
    argv = [region.bin, "instance", "exec", "c2", "--",
            "ping", "-c", "200", "-i", "0.02", "-W", "1", b_ip]  # fmt: skip
    pinger = subprocess.Popen(argv, env=region.env, stdout=subprocess.PIPE, text=True)
    try:
        for i in range(5):
            dst = f"192.168.{100 + i}.0/24"
            region.run("route", "add", "edge", "--dst", dst, "--next-hop", "instance:fw2")
        region.run("route-table", "associate", "edge", "--subnet", "db")
        rows = region.json("route-table", "show", "edge")["routes"]
        for r in rows:
            if r["type"] == "custom" and r["dst"].startswith("192.168.1"):
                region.run("route", "delete", r["id"])
        region.run("route-table", "associate", "prod-default", "--subnet", "db")
        out, _ = pinger.communicate(timeout=60)
    finally:
        pinger.kill()
    assert " 0% packet loss" in out, out


def test_priority_failover_follows_the_next_hop(region: Region, net: dict[str, Any]) -> None:
    # last in the module: fw1 goes, the priority-20 route to fw2 takes over, no API call
    region.run("instance", "delete", "fw1", "--wait")
    t = trace(region, "a", "b", "--port", "7000")
    assert t["verdict"] == "delivered" and through(t) == ["fw2", "b"], t["text"]
