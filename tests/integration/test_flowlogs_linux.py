"""Flow-log collection on real namespaces, nftables, conntrack and NFLOG (issue 10, part 4).

One host, one VPC (10.4.0.0/16). Client c1 (egress anywhere) and servers s1, r1 (ingress tcp/80
only) in 10.4.1.0/24; d1 in 10.4.2.0/24 (its group allows tcp/22, its subnet's ACL denies
tcp/22 from 10.4.1.0/24). Each server answers 100 bytes read with 3000 bytes and closes, on
ports 80 and 22. Instance flow logs: c1, s1, d1 ALL, r1 REJECT. The collector is the
agent's (`NamespaceCollector` with the kernel's sources), polled by the test.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.integration import netlab
from tests.worlds import WHost, WInstance, WVpc, documents, with_groups
from yunhan.agent.dataplane import DataPlane
from yunhan.agent.flowlogs import logged_ports
from yunhan.compute import netns_sandbox
from yunhan.net import nftsg, nsutil
from yunhan.net.desired import (
    AclDesired,
    AclRuleDesired,
    FlowLogDesired,
    HostDesired,
    SgRuleDesired,
)
from yunhan.net.flowcollect import NamespaceCollector, Record, list_conntrack
from yunhan.net.naming import Naming

pytestmark = pytest.mark.root

SERVER = (
    "import socket, threading\n"
    "def serve(port):\n"
    "    s = socket.socket()\n"
    "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind(('0.0.0.0', port))\n"
    "    s.listen(16)\n"
    "    while True:\n"
    "        c, _ = s.accept()\n"
    "        c.settimeout(2)\n"
    "        got = b''\n"
    "        try:\n"
    "            while len(got) < 100 and (b := c.recv(100 - len(got))):\n"
    "                got += b\n"
    "            c.sendall(b'y' * 3000)\n"
    "        except OSError:\n"
    "            pass\n"
    "        c.close()\n"
    "for p in (80, 22):\n"
    "    threading.Thread(target=serve, args=(p,), daemon=True).start()\n"
    "threading.Event().wait()\n"
)
CMD = (sys.executable, "-c", SERVER)
REQUEST, ANSWER = 100, 3000

VPC = WVpc("vpc-f", 320, ("10.4.0.0/16",), ("10.4.1.0/24", "10.4.2.0/24"))
C1 = WInstance("inst-0000f001", "h1", "vpc-f", "10.4.1.10", command=CMD)
S1 = WInstance("inst-0000f002", "h1", "vpc-f", "10.4.1.20", command=CMD)
R1 = WInstance("inst-0000f003", "h1", "vpc-f", "10.4.1.21", command=CMD)
D1 = WInstance("inst-0000f004", "h1", "vpc-f", "10.4.2.10", command=CMD)
INSTS = [C1, S1, R1, D1]

EGRESS_ALL = SgRuleDesired(id="r-eg", direction="egress", cidr="0.0.0.0/0")
WEB = SgRuleDesired(id="r-80", direction="ingress", proto="tcp", port_min=80, port_max=80,
                    cidr="0.0.0.0/0")  # fmt: skip
SSH = SgRuleDesired(id="r-22", direction="ingress", proto="tcp", port_min=22, port_max=22,
                    cidr="0.0.0.0/0")  # fmt: skip
GROUPS = {"sg-cli": (EGRESS_ALL,), "sg-web": (EGRESS_ALL, WEB), "sg-ssh": (EGRESS_ALL, SSH)}
MEMBERS = {C1.id: ("sg-cli",), S1.id: ("sg-web",), R1.id: ("sg-web",), D1.id: ("sg-ssh",)}
ACL = AclDesired(
    id="acl-f",
    rules=(
        AclRuleDesired(number=10, direction="ingress", proto="tcp", port_min=22, port_max=22,
                       cidr="10.4.1.0/24", action="deny"),
        AclRuleDesired(number=100, direction="ingress", cidr="0.0.0.0/0"),
        AclRuleDesired(number=100, direction="egress", cidr="0.0.0.0/0"),
    ),
    subnets=("10.4.2.0/24",),
)  # fmt: skip
FLOWLOGS = tuple(
    FlowLogDesired(id=f"fl-{i.id[-4:]}", scope="instance", target=i.id,
                   filter="REJECT" if i is R1 else "ALL")
    for i in INSTS
)  # fmt: skip


@dataclass
class World:
    prefix: str
    dp: DataPlane
    doc: HostDesired
    naming: Naming

    @property
    def vpc_ns(self) -> str:
        return self.naming.vpc_netns(VPC.vni)

    def inst_ns(self, inst: WInstance) -> str:
        return self.naming.instance_netns(inst.id)

    def py(self, inst: WInstance, code: str, *args: str) -> str:
        p = netlab.nsexec(self.inst_ns(inst), sys.executable, "-c", code, *args)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def collector(self) -> NamespaceCollector:
        c = NamespaceCollector(self.vpc_ns, logged_ports(self.doc, self.naming)[self.vpc_ns])
        c.start()
        return c


def _doc(host: WHost) -> HostDesired:
    (doc,) = with_groups(documents([host], [VPC], INSTS), INSTS, GROUPS, MEMBERS).values()
    (vpc,) = doc.vpcs
    return doc.model_copy(
        update={"vpcs": (vpc.model_copy(update={"acls": (ACL,), "flowlogs": FLOWLOGS}),)}
    )


@pytest.fixture(scope="module")
def world(run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.fail("the linux driver needs root")
    prefix = f"{run_prefix}fl"
    state = tmp_path_factory.mktemp("flowlogs")
    dp: DataPlane | None = None
    try:
        u = netlab.build(prefix, (("h1",),))
        h = u.hosts["h1"]
        naming = Naming(f"{prefix}-h1-")
        dp = DataPlane(naming=naming, host_netns=h.netns, driver="linux",
                       state_dir=state / "h1")  # fmt: skip
        doc = _doc(WHost(h.name, h.underlay_ip, h.vtep_index))
        rep = dp.apply(doc)
        assert rep.errors == [], rep.errors
        assert dp.plan(doc) == []  # reject chains and accounting sysctls read back as written
        w = World(prefix, dp, doc, naming)
        probe = (
            "import socket\n"
            "s = socket.create_connection(('127.0.0.1', 80), timeout=1)\n"
            "s.sendall(b'x' * 100)\n"
        )
        for inst in INSTS:  # listening, checked from inside (no traffic in the VPC)
            deadline = time.monotonic() + 10
            while (
                netlab.nsexec(w.inst_ns(inst), sys.executable, "-c", probe).returncode != 0
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)
        yield w
    finally:
        try:
            if dp is not None:
                dp.teardown()
        finally:
            for d in state.glob("*/proc/*.json"):
                netns_sandbox.stop(d.parent.parent, d.name.removesuffix(".json"), grace=0.5)
            netlab.teardown(prefix)
            if nsutil.UTS_DIR.is_dir():
                for p in nsutil.UTS_DIR.iterdir():
                    if netlab.owned(p.name, prefix):
                        nsutil.remove_ns_file(p)
            shutil.rmtree(state, ignore_errors=True)
    assert [n for n in netlab.list_netns() if netlab.owned(n, prefix)] == []


def _until(
    c: NamespaceCollector, done: Callable[[list[Record]], bool], timeout: float = 10.0
) -> list[Record]:
    """Poll `c` and gather its records until `done` says they are all there."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while True:
        records, skipped = c.poll()
        assert not skipped
        out.extend(records)
        if done(out) or time.monotonic() > deadline:
            return out
        time.sleep(0.3)


CONNECT = (
    "import socket, sys\n"
    "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
    f"s.sendall(b'x' * {REQUEST})\n"
    "n = 0\n"
    "while (b := s.recv(4096)):\n"
    "    n += len(b)\n"
    "print(s.getsockname()[1], n)\n"
    "s.close()\n"
)
# One SYN per attempt: the connect gives up (0.5 s) before the first retransmission (1 s).
ATTEMPTS = (
    "import socket, sys\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    s = socket.socket()\n"
    "    s.settimeout(0.5)\n"
    "    try:\n"
    "        s.connect((sys.argv[1], int(sys.argv[2])))\n"
    "        print('connected')\n"
    "    except OSError:\n"
    "        print(s.getsockname()[1])\n"
    "    s.close()\n"
)


def test_namespace_has_conntrack_accounting(world: World) -> None:
    got = nsutil.read_sysctls(
        world.vpc_ns, ["net/netfilter/nf_conntrack_acct", "net/netfilter/nf_conntrack_timestamp"]
    )
    assert set(got.values()) == {"1"}


def test_accepted_flow_counters_and_rejected_syns(world: World) -> None:
    w = world
    c = w.collector()
    try:
        c.poll()  # the baseline
        t0 = time.time()
        sport, n = map(int, w.py(C1, CONNECT, S1.ip, "80").split())
        assert n == ANSWER
        refused = [int(x) for x in w.py(C1, ATTEMPTS, S1.ip, "22", "3").split()]
        assert len(refused) == 3

        def complete(recs: list[Record]) -> bool:
            acc = {(r.interface, r.flow_direction) for r in recs if r.action == "ACCEPT"}
            rej = sum(r.packets for r in recs if r.action == "REJECT" and r.dstport == 22)
            return len(acc) == 4 and rej == 3

        recs = _until(c, complete)
        # The kernel's own count of the flow (closed: its counters no longer move).
        (flow,) = [
            f for f in list_conntrack(w.vpc_ns) if f.orig.sport == sport and f.orig.dport == 80
        ]
        recs += c.poll()[0]
        mine = [r for r in recs if r.action == "ACCEPT" and 80 in (r.srcport, r.dstport)
                and sport in (r.srcport, r.dstport)]  # fmt: skip

        def total(ifname: str, direction: str) -> tuple[int, int]:
            rs = [r for r in mine if r.interface == ifname and r.flow_direction == direction]
            return sum(r.packets for r in rs), sum(r.bytes for r in rs)

        orig, reply = (flow.orig.packets, flow.orig.bytes), (flow.reply.packets, flow.reply.bytes)
        assert total(C1.port, "egress") == orig and total(S1.port, "ingress") == orig
        assert total(C1.port, "ingress") == reply and total(S1.port, "egress") == reply
        # The payloads are in there: each packet carries at least 40 bytes of headers.
        assert orig[1] - 40 * orig[0] >= REQUEST and reply[1] - 40 * reply[0] >= ANSWER
        out = next(r for r in mine if r.interface == C1.port and r.flow_direction == "egress")
        assert (out.srcaddr, out.dstaddr, out.srcport, out.dstport, out.protocol) == (
            C1.ip, S1.ip, sport, 80, 6)  # fmt: skip
        assert t0 - 1 <= out.start <= out.end <= time.time()
        # Each refused attempt: one SYN logged at s1's ingress; the client's side accepted
        # it (its egress allows everything) but conntrack never confirmed it.
        rej = [r for r in recs if r.action == "REJECT"]
        assert sorted(r.srcport for r in rej) == sorted(refused)
        for r in rej:
            assert (r.interface, r.flow_direction, r.dstport, r.packets) == (
                S1.port, "ingress", 22, 1)  # fmt: skip
            # A Linux SYN: 20 bytes of IP, 20 of TCP, 20 of options (MSS, SACK, TS, WS).
            assert r.bytes == 60 and r.start == r.end
        assert not [r for r in recs if r.action == "ACCEPT" and r.dstport == 22]
    finally:
        c.stop()


def test_a_reject_only_port_gets_no_accept_records(world: World) -> None:
    w = world
    c = w.collector()
    try:
        c.poll()
        sport, n = map(int, w.py(C1, CONNECT, R1.ip, "80").split())
        assert n == ANSWER
        (refused,) = [int(x) for x in w.py(C1, ATTEMPTS, R1.ip, "22", "1").split()]

        def complete(recs: list[Record]) -> bool:
            return any(r.action == "REJECT" for r in recs) and any(
                r.interface == C1.port and r.srcport == 80 for r in recs
            )

        recs = _until(c, complete)
        assert not [r for r in recs if r.interface == R1.port and r.action == "ACCEPT"]
        assert {(r.interface, r.flow_direction) for r in recs if r.srcport == sport or
                r.dstport == sport} == {(C1.port, "egress"), (C1.port, "ingress")}  # fmt: skip
        (rej,) = [r for r in recs if r.action == "REJECT"]
        assert (rej.interface, rej.srcport, rej.dstport, rej.packets) == (R1.port, refused, 22, 1)
    finally:
        c.stop()


def test_an_acl_deny_is_logged_as_reject(world: World) -> None:
    w = world
    c = w.collector()
    try:
        c.poll()
        refused = [int(x) for x in w.py(C1, ATTEMPTS, D1.ip, "22", "2").split()]
        assert len(refused) == 2  # d1's group allows 22: the ACL refused them
        recs = _until(c, lambda rs: sum(r.action == "REJECT" for r in rs) >= 2)
        rej = [r for r in recs if r.action == "REJECT"]
        assert sorted(r.srcport for r in rej) == sorted(refused)
        assert {(r.interface, r.flow_direction, r.srcaddr, r.dstport) for r in rej} == {
            (D1.port, "ingress", C1.ip, 22)
        }
    finally:
        c.stop()


def test_a_burst_is_dropped_whole_and_logged_up_to_the_limit(world: World) -> None:
    w = world
    c = w.collector()
    try:
        c.poll()
        # An earlier test spent some of s1's ingress budget: wait until it is full again.
        time.sleep(nftsg.LOG_BURST / nftsg.LOG_RATE + 0.5)
        burst = (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 40999))\n"
            "t = time.monotonic()\n"
            "for _ in range(int(sys.argv[2])):\n"
            "    s.sendto(b'z' * 50, (sys.argv[1], 9999))\n"
            "print(time.monotonic() - t)\n"
        )
        sent = 500
        took = float(w.py(C1, burst, S1.ip, str(sent)))
        recs = _until(c, lambda rs: False, timeout=1.5)  # everything logged by then
        # (one record per window: a burst can straddle two polls)
        rs = [r for r in recs if r.action == "REJECT" and r.dstport == 9999]
        logged = sum(r.packets for r in rs)
        # The burst, and what the rate refilled while it lasted: never all of it.
        assert nftsg.LOG_BURST <= logged <= nftsg.LOG_BURST + nftsg.LOG_RATE * took + 1
        assert logged < sent
        assert sum(r.bytes for r in rs) == logged * (20 + 8 + 50)
        assert {(r.interface, r.flow_direction, r.srcport, r.protocol) for r in rs} == {
            (S1.port, "ingress", 40999, 17)}  # fmt: skip
        # None of it was accepted: conntrack holds no such flow.
        assert not [f for f in list_conntrack(w.vpc_ns) if f.orig.dport == 9999]
    finally:
        c.stop()


def test_the_reject_chains_read_back_and_a_hand_edit_is_repaired(world: World) -> None:
    w = world
    assert w.dp.plan(w.doc) == []
    # Emptied by hand: no log, and no drop either (a hole).
    netlab.nsexec(w.vpc_ns, "nft", "flush", "chain", "ip", nftsg.TABLE, f"xi_{S1.port}",
                  check=True)  # fmt: skip
    assert w.dp.plan(w.doc) != []
    rep = w.dp.apply(w.doc)
    assert rep.errors == [] and rep.changes >= 1
    assert w.dp.plan(w.doc) == []
