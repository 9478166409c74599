"""End to end: a hybrid cloud in a lab region, through the CLI, with real BGP (FRR on both
sides, MD5 and BFD) and real traffic.

One region (2 zones x 2 hosts) and one IDC site `dc1` (two LANs, servers behind a router
on a dedicated line) serve the module. VPC prod has a cloud subnet (instances a and b, one
per zone) and two subnets located in the IDC: dc-a (192.168.100.0/24, stays in the IDC)
and dc-b (192.168.101.0/24, switched to the cloud and back; instance c stands by in it
with the address of an IDC server). What a user would see is asserted; gaps are measured
and printed; nothing of the region is left after `down`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from region import CliError, Region, netns_names

from tests.polling import poll_until, wait_for
from yunhan.lab.cleanup import run

pytestmark = pytest.mark.root

HERE = Path(__file__).parent
FLOW = str(HERE / "hybridflow.py")
SECRET = "s3cret-line-key"
LAN_A, LAN_B = "192.168.100.0/24", "192.168.101.0/24"
SERVER = (
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 80)); s.listen(16)\n"
    "while True:\n"
    "    c,_=s.accept(); c.recv(1024)\n"
    "    b=socket.gethostname().encode()\n"
    "    h=b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(b)\n"
    "    c.sendall(h+b); c.close()\n"
)


@dataclass
class Lab:
    region: Region
    prefix: str
    home: Path

    @property
    def router(self) -> str:
        return f"{self.prefix}-idc-dc1"

    def servers(self) -> dict[str, str]:
        """IDC server address -> its namespace."""
        out: dict[str, str] = {}
        for ns in sorted(netns_names()):
            if ns.startswith(f"{self.router}-s"):
                text = run(["ip", "-n", ns, "-4", "-o", "addr", "show"])
                for addr in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", text):
                    if not addr.startswith("127."):
                        out[addr] = ns
        return out

    def in_ns(self, ns: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout
        )

    def ecmp_paths(self, prefix: str) -> int:
        """How many next hops the IDC router's kernel has for `prefix`."""
        out = run(["ip", "-n", self.router, "route", "show", prefix])
        if not out.strip():
            return 0
        return max(1, out.count("nexthop via"))

    def gw(self) -> dict[str, Any]:
        data: dict[str, Any] = self.region.api(f"/v1/hybrid-gws/{self.gw_id}")
        return data

    gw_id: str = ""

    def replica_ns(self, index: int) -> str:
        """The namespace of replica `index` (its agent's prefix is "<region>-<host>-")."""
        rep = next(r for r in self.gw()["status"]["replicas"] if r["index"] == index)
        return f"{self.prefix}-{rep['host']}-h-{self.gw_id.rsplit('-', 1)[-1]}"


def _gap(ping_out: str, interval: float) -> tuple[int, int, float]:
    """(sent, received, the longest run of lost replies in seconds) from `ping` output."""
    seqs = sorted({int(m) for m in re.findall(r"icmp_seq=(\d+)", ping_out)})
    sent_m = re.search(r"(\d+) packets transmitted, (\d+) received", ping_out)
    sent = int(sent_m.group(1)) if sent_m else 0
    got = int(sent_m.group(2)) if sent_m else len(seqs)
    worst, prev = 0, 0
    for s in [*seqs, sent + 1]:
        worst = max(worst, s - prev - 1)
        prev = s
    return sent, got, worst * interval


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    home = Path(tempfile.mkdtemp(prefix="yunhan-e2e-hybrid-"))
    r = Region(home)
    prefix = ""
    try:
        r.run("up", "--detach", "--zones", "2", "--hosts-per-zone", "2", timeout=300)
        prefix = json.loads((r.state / "region.json").read_text())["prefix"]
        secret = home / "secret"
        secret.write_text(SECRET + "\n")
        r.run("lab", "idc", "add", "dc1", "--cidr", LAN_A, "--cidr", LAN_B, "--servers", "1",
              "--asn", "65001", "--md5-secret-file", str(secret), timeout=120)  # fmt: skip
        server = home / "hostname80.py"
        server.write_text(SERVER)
        r.run("vpc", "create", "prod", "--cidr", "10.0.0.0/16", "--cidr", "192.168.100.0/23")
        r.run("sg", "rule", "add", "prod-default", "--direction", "ingress", "--peer", "0.0.0.0/0")
        r.run("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.1.0/24")
        r.run("subnet", "create", "dc-a", "--vpc", "prod", "--cidr", LAN_A, "--location", "idc:dc1")
        r.run("subnet", "create", "dc-b", "--vpc", "prod", "--cidr", LAN_B, "--location", "idc:dc1")
        for name, zone in (("a", "az1"), ("b", "az2")):
            r.run("instance", "create", name, "--subnet", "web", "--zone", zone,
                  "--command", f"{sys.executable} {FLOW} serve 9000", "--wait")  # fmt: skip
        lab = Lab(r, prefix, home)
        b_server = next(ip for ip in lab.servers() if ip.startswith("192.168.101."))
        r.run("instance", "create", "c", "--subnet", "dc-b", "--zone", "az2", "--ip", b_server,
              "--command", f"{sys.executable} {server}", "--wait")  # fmt: skip
        gw = r.json("hybrid-gw", "create", "hgw", "--vpc", "prod", "--idc-peer", "198.19.33.1",
                    "--peer-asn", "65001", "--replicas", "2", "--md5-secret-file", str(secret),
                    "--wait", "--timeout", "90")  # fmt: skip
        lab.gw_id = gw["id"]
        for ip, ns in lab.servers().items():  # a TCP echo on every IDC server
            subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, FLOW, "serve", "9000"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            del ip
        yield lab
    finally:
        r.run("down", check=False, timeout=300)
        try:
            leftovers = {n for n in netns_names() if prefix and n.startswith(f"{prefix}-")}
            assert not leftovers, f"yunhan down left namespaces behind: {leftovers}"
        finally:
            shutil.rmtree(home, ignore_errors=True)


def test_instances_and_idc_servers_reach_each_other_through_two_replicas(lab: Lab) -> None:
    a_ip = lab.region.instance("a")["ip"]
    server_a = next(ip for ip in lab.servers() if ip.startswith("192.168.100."))
    assert wait_for(lambda: lab.ecmp_paths("10.0.0.0/16") == 2, 30, "two ECMP paths at the IDC")
    assert wait_for(lambda: lab.region.ping("a", server_a), 20, "a -> IDC server")
    assert lab.region.ping("b", server_a)
    ns = lab.servers()[server_a]
    assert lab.in_ns(ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", a_ip).returncode == 0
    routes = lab.region.json("hybrid-gw", "routes", "hgw")
    origins = {(r["prefix"], r["origin"]) for r in routes}
    assert (LAN_A, "declared") in origins and (LAN_A, "learned") in origins
    assert ("10.0.0.0/16", "announced") in origins
    # No NAT: the IDC server (the lab's echo server) sees the instance's own address.
    out = lab.region.exec("a", "curl", "-s", "--max-time", "3", f"http://{server_a}/")
    assert a_ip in out.stdout


def _ping_truth(r: dict[str, Any]) -> bool:
    """The ground truth of one matrix pair: a plain ping from the same namespace."""
    bind = ["-I", r["src_ip"]] if r["src_kind"] == "replica" else []
    argv = ["ip", "netns", "exec", r["src_netns"], "ping", "-c", "2", "-i", "0.2", "-W", "1"]
    return subprocess.run([*argv, *bind, r["dst_ip"]], capture_output=True).returncode == 0


def test_the_connectivity_matrix_matches_ping_and_names_the_blocking_rule(lab: Lab) -> None:
    a_ip = lab.region.instance("a")["ip"]
    lab.region.run("sg", "rule", "add", "prod-default", "--direction", "ingress", "--proto",
                   "icmp", "--peer", f"{a_ip}/32", "--action", "deny", "--priority", "10",
                   "--wait")  # fmt: skip
    group = lab.region.json("sg", "show", "prod-default")
    rule = next(r for r in group["rules"] if r["action"] == "deny")
    try:
        p = lab.region.run("check", "connectivity", "--vpc", "prod", "--json", check=False)
        assert p.returncode == 1, p.stderr  # a pair is not reached
        m = json.loads(p.stdout)
        kinds = {r["src_kind"] for r in m["results"]}
        assert kinds == {"instance", "idc-server", "replica"}
        pairs = {(r["src"], r["dst"]): r for r in m["results"]}
        print(f"matrix: {m['pairs']} pairs in {m['seconds']} s, {m['reached']} reached")
        # Every pair agrees with a plain ping from the same place.
        wrong = [k for k, r in pairs.items() if r["reached"] != _ping_truth(r)]
        assert not wrong, wrong
        # a -> b is the one pair dropped, by the deny rule, named with where it acted.
        assert [k for k, r in pairs.items() if not r["reached"]] == [("a", "b")]
        why = pairs[("a", "b")]["why"]
        assert why["reason"] == "security-group" and rule["id"] in why["rule"] + why["detail"]
        assert "drop" in why["live"]  # the live trace saw the real probe dropped
        assert pairs[("b", "a")]["reached"]  # the rule is b's ingress only
        for idx in (1, 2):  # each replica's line reaches the IDC servers, and back
            assert any(r["reached"] for k, r in pairs.items() if k[0] == f"gw:hgw/{idx}")
            assert any(r["reached"] for k, r in pairs.items() if k[1] == f"gw:hgw/{idx}")
    finally:
        lab.region.run("sg", "rule", "delete", "prod-default", rule["id"], "--wait")
    m = lab.region.json("check", "connectivity", "--vpc", "prod")
    assert m["reached"] == m["pairs"] and m["not_as_expected"] == 0


def _switch_routes(lab: Lab) -> str:
    return run(["ip", "-n", lab.router, "route", "show", "proto", "187"]).strip()


def test_a_netconf_push_that_breaks_connectivity_rolls_back_and_a_good_one_is_confirmed(
    lab: Lab,
) -> None:
    # Bad: the IDC router blackholes the VPC (metric 10 beats BGP's 20): the servers can
    # no longer answer the instances. The switch must roll it back by itself.
    bad = lab.home / "bad.yaml"
    bad.write_text("routes:\n  - {prefix: 10.0.0.0/16, blackhole: true}\n")
    t0 = time.monotonic()
    p = lab.region.run("netconf", "push", "dc1", "--config", str(bad), "--confirm-timeout",
                       "8", check=False, timeout=120)  # fmt: skip
    took = time.monotonic() - t0
    print(p.stdout, p.stderr)
    assert p.returncode == 1, p.stderr
    assert "+ route 10.0.0.0/16 blackhole metric 10" in p.stdout
    assert "LOST a -> idc:dc1/s1" in p.stdout  # the check that failed, named
    assert "rolled back by the switch" in p.stderr and "matrix is green again" in p.stderr
    (entry,) = lab.region.json("netconf", "log", "dc1")
    assert entry["outcome"] == "rolled-back" and entry["diff"] == [
        "+ route 10.0.0.0/16 blackhole metric 10"
    ]
    print(f"bad push: rolled back {entry['rollback_s']} s after the commit (timeout 8 s)")
    # (netconfd's deadline is in whole seconds: up to a second early, a few late)
    assert 8 - 1 <= entry["rollback_s"] <= 8 + 3 and took < 60
    assert _switch_routes(lab) == ""
    assert lab.region.json("check", "connectivity", "--vpc", "prod")["not_as_expected"] == 0
    # Good: a route the checks do not mind, and an ACL rule for a range nobody uses.
    good = lab.home / "good.yaml"
    good.write_text(
        "routes:\n  - {prefix: 10.77.0.0/16, blackhole: true, metric: 5}\n"
        "acl:\n  - {seq: 10, source: 10.66.0.0/16, protocol: tcp, action: deny}\n"
    )
    p = lab.region.run("netconf", "push", "dc1", "--config", str(good), "--confirm-timeout",
                       "30", timeout=120)  # fmt: skip
    assert "confirmed #2" in p.stdout, p.stdout
    time.sleep(1)
    shown = lab.region.json("netconf", "show", "dc1")
    assert shown["running"]["routes"] == [
        {"prefix": "10.77.0.0/16", "metric": 5, "blackhole": True}
    ]
    assert shown["applied"]["digest"] == shown["digest"]
    assert _switch_routes(lab) == "blackhole 10.77.0.0/16 metric 5"
    # A bad file changes nothing: refused before anything is sent.
    typo = lab.home / "typo.yaml"
    typo.write_text("routes:\n  - {prefix: 10.77.0.0/33, blackhole: true}\n")
    p = lab.region.run("netconf", "push", "dc1", "--config", str(typo), check=False)
    assert p.returncode != 0 and "routes[0].prefix" in p.stderr
    assert len(lab.region.json("netconf", "log", "dc1")) == 2
    # Rollback: to what ran before the good push (empty), checked like a push.
    p = lab.region.run("netconf", "rollback", "dc1", timeout=120)
    assert "to before #2" in p.stdout and "confirmed #3" in p.stdout, p.stdout
    assert _switch_routes(lab) == ""
    assert [e["action"] for e in lab.region.json("netconf", "log", "dc1")] == [
        "push", "push", "rollback"
    ]  # fmt: skip


def _changes(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """`n` changes to dc-a's migration: blackhole /28s of its upper half (no server there)
    and ACL rules from 172.16/12 (no instance there), put or deleted at random."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        op = rng.choice(("put", "put", "delete"))
        if i % 2:
            out.append(
                {
                    "kind": "route",
                    "op": op,
                    "prefix": f"192.168.100.{128 + 16 * rng.randrange(8)}/28",
                }
            )
        else:
            out.append({"kind": "acl", "op": op, "seq": rng.randrange(1, 41),
                        "peer": f"172.16.{rng.randrange(256)}.0/24",
                        "protocol": rng.choice(("any", "icmp", "tcp", "udp")),
                        "action": rng.choice(("permit", "deny"))})  # fmt: skip
    return out


def test_dual_write_survives_a_killed_consumer_and_queue_and_reconcile_repairs(
    lab: Lab,
) -> None:
    from yunhan.lab import dualwrite as ldw
    from yunhan.lab.region import RegionRecord
    from yunhan.net import dualwrite as dw

    r = lab.region
    r.run("route-table", "create", "mig", "--vpc", "prod")
    r.run("acl", "create", "mig-acl", "--vpc", "prod")
    start = ("migrate", "start", "m1", "--prefix", LAN_A, "--site", "dc1", "--vpc", "prod",
             "--route-table", "mig", "--acl", "mig-acl")  # fmt: skip
    r.run(*start)
    record = RegionRecord.load(r.state)
    assert record is not None
    data = record.data_dir
    m = ldw.load(data, "m1")
    changes = [dw.parse_change(LAN_A, c) for c in _changes(500)]
    expected: dw.Items = {}
    for ch in changes:
        expected = dw.apply_to(expected, ch)

    async def produce() -> None:
        url = ldw.nats_url(data)
        for i, ch in enumerate(changes):
            await ldw.publish(url, m, [ch])
            if i == 150:  # the consumer dies mid-stream, and comes back 100 changes later
                pid = ldw.daemon_pid(data, "m1")
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
            if i == 250:
                await asyncio.to_thread(r.run, *start)
            if i == 320:  # the queue dies, and comes back a second later
                pid = ldw.nats_pid(data)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                asyncio.get_running_loop().call_later(
                    1.0, lambda: threading.Thread(target=r.run, args=start).start()
                )
            await asyncio.sleep(0.004)

    t0 = time.monotonic()
    asyncio.run(produce())

    def caught_up() -> bool:
        st = json.loads(ldw.status_file(data, "m1").read_text())
        return all(st["sides"][s]["position"] == 500 for s in dw.SIDES)

    assert wait_for(caught_up, 60, "both sides at the last change")
    print(f"dual write: 500 changes through two kills in {time.monotonic() - t0:.1f} s")
    # Nothing lost, nothing applied twice or out of order: each side is the changes' result.
    sides = ldw.make_sides(m, record, json.loads(
        (r.home / ".config" / "yunhan" / "config.json").read_text())["token"])  # fmt: skip
    try:
        assert sides["yunhan"].items() == expected
        assert sides["idc"].items() == expected
    finally:
        sides["idc"].close()
    rec = r.json("migrate", "reconcile")
    assert rec["differences"] == []
    # A difference made by hand on the switch is found, then repaired from the truth.
    gone = next(k for k in sorted(expected) if k[0] == "route")
    _switch_delete_route(lab, gone[1])
    p = r.run("migrate", "reconcile", check=False)
    assert p.returncode == 1 and f"missing on idc: route {gone[1]}" in p.stdout, p.stdout
    p = r.run("migrate", "reconcile", "--repair")
    assert "repaired idc: 0 differences now" in p.stdout
    assert r.json("migrate", "reconcile")["differences"] == []
    # Leave the lab as it was: every key deleted through the same path, then the window closed.
    undo = lab.home / "undo.jsonl"
    undo.write_text("".join(
        json.dumps({"kind": k, "op": "delete", **({"prefix": key} if k == "route" else
                    {"seq": int(key)})}) + "\n" for k, key in expected))  # fmt: skip
    r.run("migrate", "apply", "--changes", str(undo), "--wait")
    r.run("migrate", "stop")
    r.run("acl", "delete", "mig-acl")
    r.run("route-table", "delete", "mig")


def _switch_delete_route(lab: Lab, prefix: str) -> None:
    """Delete one route on the IDC switch by hand, over NETCONF."""
    from yunhan.lab import idc, netconfsw
    from yunhan.lab.region import RegionRecord

    record = RegionRecord.load(lab.region.state)
    assert record is not None
    site = idc.load_sites(record)["dc1"].spec
    m = netconfsw.connect(site, netconfsw.paths(site, record.data_dir))
    try:
        xml = (
            '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" '
            'xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><switch xmlns="urn:yunhan:switch">'
            f'<route nc:operation="delete"><prefix>{prefix}</prefix></route></switch></config>'
        )
        m.edit_config(target="candidate", config=xml)
        m.commit()
    finally:
        m.close_session()


def test_a_subnet_overlapping_another_and_a_wrong_secret_are_refused(lab: Lab) -> None:
    with pytest.raises(CliError) as exc:
        lab.region.run("subnet", "create", "dup", "--vpc", "prod", "--cidr", "192.168.100.0/25",
                       "--location", "idc:dc1")  # fmt: skip
    assert "overlaps" in exc.value.stderr
    lab.region.run("vpc", "create", "other", "--cidr", "10.9.0.0/16")
    lab.region.run("subnet", "create", "o", "--vpc", "other", "--cidr", "10.9.1.0/24")
    lab.region.run("instance", "create", "o1", "--subnet", "o", "--zone", "az1", "--wait")
    wrong = lab.home / "wrong"
    wrong.write_text("not-the-secret\n")
    lab.region.run("hybrid-gw", "create", "bad", "--vpc", "other", "--idc-peer",
                   "198.19.33.1", "--peer-asn", "65001", "--replicas", "1",
                   "--md5-secret-file", str(wrong))  # fmt: skip

    def reason() -> str:
        reps = lab.region.json("hybrid-gw", "show", "bad")["replicas"]
        return reps[0] if reps and "pending" not in reps[0] else ""

    seen = wait_for(lambda: "MD5" in reason() and reason(), 40, "the wrong secret's reason")
    print(f"wrong secret: {seen}")
    assert "Established" not in seen
    time.sleep(5)  # hold time and then some: it stays down
    assert "Established" not in reason()
    assert lab.ecmp_paths("10.9.0.0/16") == 0  # the IDC learned nothing from it
    lab.region.run("hybrid-gw", "delete", "bad", "--wait")
    lab.region.run("instance", "delete", "o1", "--wait")


def _stream(lab: Lab, dst: str, seconds: float, src: str = "a") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            lab.region.bin,
            "instance",
            "exec",
            src,
            "--",
            sys.executable,
            FLOW,
            "stream",
            dst,
            "9000",
            str(seconds),
        ],
        env=lab.region.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ping(lab: Lab, dst: str, seconds: float, interval: float = 0.02) -> subprocess.Popen[str]:
    # -c, not -w: with a deadline iputils' ping stops at the first ICMP error it gets (an
    # unreachable during a failover), which would end the measurement at the gap.
    return subprocess.Popen(
        [
            lab.region.bin,
            "instance",
            "exec",
            "a",
            "--",
            "ping",
            "-i",
            str(interval),
            "-W",
            "1",
            "-c",
            str(int(seconds / interval)),
            dst,
        ],
        env=lab.region.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_losing_a_replica_keeps_a_ping_and_a_tcp_stream(lab: Lab) -> None:
    server_a = next(ip for ip in lab.servers() if ip.startswith("192.168.100."))
    assert wait_for(lambda: lab.ecmp_paths("10.0.0.0/16") == 2, 30, "two paths")
    ping = _ping(lab, server_a, 14)
    stream = _stream(lab, server_a, 14)
    time.sleep(4)
    victim = lab.replica_ns(1)
    # The replica dies without a word: its line goes dark (no FIN or RST reaches the IDC,
    # only BFD can tell), then its FRR is killed.
    run(["ip", "-n", victim, "link", "set", "line0", "down"])
    pids = run(["ip", "netns", "pids", victim]).split()
    run(["kill", "-9", *pids])
    killed = time.monotonic()
    assert wait_for(lambda: lab.ecmp_paths("10.0.0.0/16") == 1, 20, "the IDC drops the path")
    idc_side = time.monotonic() - killed
    p_out, _ = ping.communicate(timeout=60)
    s_out, s_err = stream.communicate(timeout=60)
    sent, got, gap = _gap(p_out, 0.02)
    flow = json.loads(s_out.strip().splitlines()[-1])
    print(
        f"RESULT hybrid replica loss: ping {got}/{sent} answered, longest gap {gap:.2f} s; "
        f"TCP stream {flow['lines']} lines, worst wait {flow['worst_gap_s']} s; the IDC "
        f"router dropped the path {idc_side:.2f} s after the kill"
    )
    assert not flow["broke"], f"the TCP stream broke: {flow} {s_err}"
    assert got > 0.5 * sent
    # The agent brings the replica back, and the IDC gets its second path again.
    assert wait_for(lambda: lab.ecmp_paths("10.0.0.0/16") == 2, 60, "the replica back")


def test_scaling_out_takes_new_flows_and_in_drops_no_established_one(lab: Lab) -> None:
    server_a = next(ip for ip in lab.servers() if ip.startswith("192.168.100."))
    stream = _stream(lab, server_a, 45, src="b")  # established before the scale-out
    time.sleep(2)
    lab.region.run("hybrid-gw", "scale", "hgw", "--replicas", "3", "--wait", "--timeout", "90")
    assert wait_for(lambda: lab.ecmp_paths("10.0.0.0/16") == 3, 30, "three ECMP paths")
    # d runs on the host without a replica: a host with its own replica sends to it alone,
    # the others spread their flows over every replica.
    placed = {r["host"] for r in lab.gw()["status"]["replicas"]}
    (free,) = {h["name"] for h in lab.region.api("/v1/hosts")["items"]} - placed
    lab.region.run("instance", "create", "d", "--subnet", "web", "--zone", free.split("-")[0],
                   "--wait")  # fmt: skip
    if lab.region.instance("d")["host"] != free:
        lab.region.run("instance", "migrate", "d", "--zone", free.split("-")[0], "--host", free,
                       "--wait")  # fmt: skip
    third = lab.replica_ns(3)

    def from_vpc() -> int:
        # What the third replica received from the VPC: data only (BGP and BFD are on line0).
        out = run(["ip", "-n", third, "-s", "-j", "link", "show", "vpc0"])
        return int(json.loads(out)[0]["stats64"]["rx"]["packets"])

    before = from_vpc()
    for _ in range(24):  # new flows (new source ports) from d
        lab.region.exec("d", sys.executable, FLOW, "stream", server_a, "9000", "0.05")
    took = from_vpc() - before
    assert took > 10, f"the third replica took {took} packets of 24 new flows"
    # Scaling in: the highest replica goes; flows on the others carry on.
    lab.region.run("hybrid-gw", "scale", "hgw", "--replicas", "2", "--wait", "--timeout", "90")
    assert wait_for(lambda: lab.ecmp_paths("10.0.0.0/16") == 2, 30, "two paths again")
    out, err = stream.communicate(timeout=90)
    flow = json.loads(out.strip().splitlines()[-1])
    print(f"RESULT hybrid scale 2 -> 3 -> 2: the third took {took} packets of 24 new flows; "
          f"a stream across both scalings: {flow}")  # fmt: skip
    assert not flow["broke"], f"a stream broke while scaling: {flow} {err}"
    lab.region.run("instance", "delete", "d", "--wait")


def test_route_switch_to_the_cloud_and_back(lab: Lab) -> None:
    server_a = next(ip for ip in lab.servers() if ip.startswith("192.168.100."))
    server_b = next(ip for ip in lab.servers() if ip.startswith("192.168.101."))
    client = lab.servers()[server_a]  # a client in the IDC, on the other LAN

    def who() -> str:
        p = lab.in_ns(client, "curl", "-s", "--max-time", "2", f"http://{server_b}/")
        return p.stdout.strip()

    before = wait_for(who, 20, "the IDC server answering")
    assert "client" in before  # the lab's echo server of the IDC, not the instance
    dry = lab.region.run("hybrid", "switch", LAN_B, "--to", "cloud", "--dry-run").stdout
    assert "would switch" in dry and "192.168.101.0/25" in dry
    assert wait_for(who, 5, "still the IDC") == before  # a dry run changes nothing
    ping = subprocess.Popen(
        ["ip", "netns", "exec", client, "ping", "-i", "0.02", "-W", "1", "-c", "600", server_b],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2)
    out = lab.region.run("hybrid", "switch", LAN_B, "--to", "cloud", "--check").stdout
    print(out.strip())
    assert "switched" in out
    assert "checked: the" in out and "LOST" not in out  # gated by the matrix, passed
    if not poll_until(lambda: who() == "c", 10):
        routes = run(["ip", "-n", lab.router, "route"])
        routes += run(["ip", "netns", "exec", lab.router, "ip", "route", "get", server_b,
                       "from", server_a, "iif", "lan0"])  # fmt: skip
        for ns in sorted(netns_names()):
            if ns.startswith(lab.prefix) and ("-h-" in ns or ns.endswith("-v1")):
                routes += f"== {ns}\n" + run(["ip", "-n", ns, "route"])
        gw = lab.region.run("hybrid-gw", "show", "hgw").stdout
        raise AssertionError(f"not the cloud instance: {who()!r}\n{routes}\n{gw}")
    time.sleep(3)
    back = lab.region.run("hybrid", "switch", LAN_B, "--to", "idc").stdout
    print(back.strip())
    p_out, _ = ping.communicate(timeout=60)
    sent, got, gap = _gap(p_out, 0.02)
    print(
        f"RESULT hybrid route switch: the IDC client's ping {got}/{sent}, longest gap {gap:.2f} s"
    )
    assert wait_for(lambda: "client" in who(), 10, "the IDC server again")
    assert got > 0.5 * sent


def _sent_got(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def _counted(lab: Lab, prefix: str, since: float) -> dict[tuple[str, str], tuple[int, int]]:
    """(point, direction) -> (packets, bytes) of `prefix` since `since`, as the CLI says."""
    ans = lab.region.json("hybrid", "stats", "--prefix", prefix, "--since", f"{since:.3f}",
                          "--window", "5s")  # fmt: skip
    assert ans["switch"] == "read", ans["switch"]
    return {
        (s["point"], s["direction"]): (s["total_packets"], s["total_bytes"]) for s in ans["series"]
    }


def _settled(
    lab: Lab, since: float, want: dict[str, dict[tuple[str, str], tuple[int, int]]]
) -> dict[str, dict[tuple[str, str], tuple[int, int]]]:
    """What is counted per prefix once it matches `want` within 1% (or after 20 s: the
    caller's assertion then shows the difference)."""
    got: dict[str, dict[tuple[str, str], tuple[int, int]]] = {}

    def close() -> bool:
        for prefix in want:
            got[prefix] = _counted(lab, prefix, since)
        return all(_within(got[p], w) for p, w in want.items())

    poll_until(close, 20, interval=1.0)
    return got


def _within(
    got: dict[tuple[str, str], tuple[int, int]], want: dict[tuple[str, str], tuple[int, int]]
) -> bool:
    for key in set(got) | set(want):
        g, w = got.get(key, (0, 0)), want.get(key, (0, 0))
        for a, b in zip(g, w, strict=True):
            if abs(a - b) > 0.01 * b or (b == 0 and a != 0):
                return False
    return True


def test_traffic_stats_follow_a_route_switch_and_sum_to_what_was_sent(lab: Lab) -> None:
    server_a = next(ip for ip in lab.servers() if ip.startswith("192.168.100."))
    server_b = next(ip for ip in lab.servers() if ip.startswith("192.168.101."))
    client = lab.servers()[server_a]
    dry = lab.region.json("hybrid", "switch", LAN_B, "--to", "idc", "--dry-run")
    assert dry["changes"]["from"] == "idc"  # dc-b starts served in the IDC
    time.sleep(3)  # what earlier tests sent is read and posted before `since`
    # Before: dc-b is served in the IDC. An IDC client pings it (routed inside the IDC), and
    # instance a pings an IDC server of dc-a (across the line, through the replicas).
    t0 = time.time()
    n1, n2 = 300, 200
    ping_a = subprocess.Popen(
        [lab.region.bin, "instance", "exec", "a", "--", "ping", "-q", "-i", "0.01", "-W", "1",
         "-c", str(n1), "-s", "200", server_a],
        env=lab.region.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    p2 = lab.in_ns(client, "ping", "-q", "-i", "0.01", "-W", "1", "-c", str(n2), "-s", "100",
                   server_b)  # fmt: skip
    out1, _ = ping_a.communicate(timeout=60)
    s1, g1 = _sent_got(out1)
    s2, g2 = _sent_got(p2.stdout)
    assert g1 > 0.9 * s1 and g2 > 0.9 * s2, (out1, p2.stdout)
    b1, b2 = 228, 128  # IP packet sizes: 20 + 8 + payload
    before = _settled(
        lab,
        t0,
        {
            LAN_B: {("switch-local", "in"): (s2, s2 * b2), ("switch-local", "out"): (g2, g2 * b2)},
            LAN_A: {
                ("switch-line", "in"): (s1, s1 * b1),
                ("switch-line", "out"): (g1, g1 * b1),
                ("replica", "in"): (s1, s1 * b1),
                ("replica", "out"): (g1, g1 * b1),
                ("host-sent", "in"): (s1, s1 * b1),  # by instance a
                ("host-delivered", "out"): (g1, g1 * b1),  # the replies, to a
                ("switch-local", "out"): (s2, s2 * b2),
                ("switch-local", "in"): (g2, g2 * b2),
            },
        },
    )
    print(f"before the switch (pings {g1}/{s1} across the line, {g2}/{s2} inside the IDC):")
    for prefix, counts in before.items():
        print(f"  {prefix}: {sorted(counts.items())}")
    assert before[LAN_B] and not any(p != "switch-local" for p, _ in before[LAN_B])
    assert _within(before[LAN_B], {("switch-local", "in"): (s2, s2 * b2),
                                   ("switch-local", "out"): (g2, g2 * b2)})  # fmt: skip
    assert before[LAN_A][("replica", "in")] == before[LAN_A][("host-sent", "in")]
    # The switch: dc-b's addresses move to the cloud (instance c takes the server's).
    lab.region.run("hybrid", "switch", LAN_B, "--to", "cloud")
    try:
        assert (
            wait_for(
                lambda: lab.in_ns(
                    client, "curl", "-s", "--max-time", "2", f"http://{server_b}/"
                ).stdout.strip(),
                15,
                "the cloud instance answering",
            )
            == "c"
        )
        time.sleep(3)  # the curl's packets are read and posted before `since`
        t1 = time.time()
        n3 = 250
        p3 = lab.in_ns(client, "ping", "-q", "-i", "0.01", "-W", "1", "-c", str(n3), "-s",
                       "300", server_b)  # fmt: skip
        s3, g3 = _sent_got(p3.stdout)
        assert g3 > 0.9 * s3, p3.stdout
        b3 = 328
        after = _settled(
            lab,
            t1,
            {
                LAN_B: {
                    ("switch-line", "in"): (s3, s3 * b3),
                    ("switch-line", "out"): (g3, g3 * b3),
                    ("replica", "in"): (s3, s3 * b3),
                    ("replica", "out"): (g3, g3 * b3),
                    ("host-delivered", "in"): (s3, s3 * b3),  # to instance c
                    ("host-sent", "out"): (g3, g3 * b3),  # its replies
                },
                LAN_A: {
                    ("switch-line", "out"): (s3, s3 * b3),
                    ("switch-line", "in"): (g3, g3 * b3),
                    ("replica", "out"): (s3, s3 * b3),
                    ("replica", "in"): (g3, g3 * b3),
                    ("host-delivered", "out"): (s3, s3 * b3),
                    ("host-sent", "in"): (g3, g3 * b3),
                },
            },
        )
        print(f"after the switch (ping {g3}/{s3} from the IDC client to the cloud):")
        for prefix, counts in after.items():
            print(f"  {prefix}: {sorted(counts.items())}")
        # dc-b's traffic moved: nothing routed inside the IDC any more, all of it across the
        # line, the replicas and the host of instance c, each sum within 1% of what was sent.
        assert ("switch-local", "in") not in after[LAN_B]
        assert _within(after[LAN_B], {
            ("switch-line", "in"): (s3, s3 * b3), ("switch-line", "out"): (g3, g3 * b3),
            ("replica", "in"): (s3, s3 * b3), ("replica", "out"): (g3, g3 * b3),
            ("host-delivered", "in"): (s3, s3 * b3), ("host-sent", "out"): (g3, g3 * b3),
        }), after[LAN_B]  # fmt: skip
        table = lab.region.run("hybrid", "stats", "--since", f"{t0:.3f}", "--window", "2s").stdout
        print(table)
        rows = [ln for ln in table.splitlines() if ln.startswith(LAN_B)]
        assert {ln.split()[1] for ln in rows} >= {
            "switch-local",
            "switch-line",
            "replica",
            "host-delivered",
        }
        assert all(any(ch in ln for ch in "▁▂▃▄▅▆▇█") for ln in rows), table
    finally:
        lab.region.run("hybrid", "switch", LAN_B, "--to", "idc")
