"""Distributed routing on real namespaces and on the fake, held to the same answers.

Two hosts in one zone, one VPC with three subnets: clients (table 1), servers (table 2)
and appliances (table 3, so that what an appliance forwards goes by destination). Every
instance serves TCP on ports 7000, 22 and 80 (replying with its hostname); the
appliances forward (ip_forward=1) and hold 192.168.50.1 on `lo`, a destination outside
the VPC that only they can answer. Each scenario applies a document to both hosts (the
plan after it must be empty: what was written reads back the same), then asks who
answers and which appliance forwarded the packets: on linux from real connections and
the appliances' forwarding counters, on the fake from its packet trace.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration import netlab
from tests.integration.columns import COLUMNS, TAG, dataplane_args
from tests.worlds import WHost, WInstance, WPolicy, WRoute, WRouting, WVpc, documents, with_routing
from yunhan.agent.dataplane import DataPlane
from yunhan.compute import netns_sandbox
from yunhan.net import nsutil
from yunhan.net.desired import HostDesired
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming
from yunhan.net.state import Address, Op, Sysctl

SERVER = (
    "import selectors, socket\n"
    "sel = selectors.DefaultSelector()\n"
    "for port in (7000, 22, 80):\n"
    "    s = socket.socket()\n"
    "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind(('0.0.0.0', port))\n"
    "    s.listen(16)\n"
    "    sel.register(s, selectors.EVENT_READ)\n"
    "while True:\n"
    "    for key, _ in sel.select():\n"
    "        c, _ = key.fileobj.accept()\n"
    "        c.sendall(socket.gethostname().encode())\n"
    "        c.close()\n"
)
CMD = (sys.executable, "-c", SERVER)
OUTSIDE = "192.168.50.1"

VPC = WVpc("vpc-r", 300, ("10.2.0.0/16",), ("10.2.1.0/24", "10.2.2.0/24", "10.2.3.0/24"))
A1 = WInstance("inst-0000c001", "h1", "vpc-r", "10.2.1.10", command=CMD)  # client
B1 = WInstance("inst-0000c002", "h2", "vpc-r", "10.2.2.10", command=CMD)  # server
B2 = WInstance("inst-0000c003", "h1", "vpc-r", "10.2.2.11", command=CMD)  # client of table 2
FW1 = WInstance("inst-0000cf01", "h2", "vpc-r", "10.2.3.10", command=CMD)  # on the other host
FW2 = WInstance("inst-0000cf02", "h1", "vpc-r", "10.2.3.11", command=CMD)  # on a1's host
INSTS = [A1, B1, B2, FW1, FW2]
APPLIANCES = [FW1, FW2]
SUBNETS = (("10.2.1.0/24", 1, 1), ("10.2.2.0/24", 2, 2), ("10.2.3.0/24", 3, 3))


def routing(
    t1: tuple[WRoute, ...] = (), t2: tuple[WRoute, ...] = (), policies: tuple[WPolicy, ...] = ()
) -> WRouting:
    return WRouting(VPC.id, SUBNETS, ((1, t1), (2, t2), (3, ())), policies)


@dataclass
class World:
    driver: str
    prefix: str
    hosts: list[WHost]
    host_netns: dict[str, str | None]
    state: pathlib.Path
    fabric: FakeFabric | None = None
    dps: dict[str, DataPlane] = field(default_factory=dict)

    def naming(self, host: str) -> Naming:
        return Naming(f"{self.prefix}-{host}-")

    def inst_ns(self, inst: WInstance) -> str:
        return self.naming(inst.host).instance_netns(inst.id)

    def docs(self, r: WRouting | None) -> dict[str, HostDesired]:
        docs = documents(self.hosts, [VPC], INSTS)
        return docs if r is None else with_routing(docs, INSTS, [r])

    def apply(self, r: WRouting | None) -> None:
        """Apply on every host; what was written must read back as written."""
        for h, d in self.docs(r).items():
            rep = self.dps[h].apply(d)
            assert rep.errors == [], rep.errors
        for h, d in self.docs(r).items():
            assert self.dps[h].plan(d) == [], h

    def answer(self, src: WInstance, dst: str, proto: str = "tcp", port: int = 7000) -> str | None:
        """Who answers: an instance id, or None."""
        return self.path(src, dst, proto, port)[0]

    def path(
        self, src: WInstance, dst: str, proto: str = "tcp", port: int = 7000
    ) -> tuple[str | None, frozenset[str]]:
        """(who answers, the appliances that forwarded on the way)."""
        by_ns = {self.inst_ns(i): i.id for i in INSTS}
        if self.fabric is not None:
            t = self.fabric.trace(src.id, dst, proto=proto, port=port if proto != "icmp" else None)
            who = by_ns.get(t.to_netns or "") if t.delivered else None
            return who, frozenset(by_ns[ns] for ns in t.forwarded_by)
        before = {a.id: self._forwarded(a) for a in APPLIANCES}
        ns = self.inst_ns(src)
        if proto == "icmp":
            ok = netlab.nsexec(ns, "ping", "-c1", "-W1", dst).returncode == 0
            who = next((i.id for i in INSTS if i.ip == dst), "?") if ok else None
        else:
            code = (
                "import socket, sys\n"
                "try:\n"
                f"    s = socket.create_connection((sys.argv[1], {port}), timeout=1)\n"
                "    print(s.recv(100).decode())\n"
                "except OSError:\n"
                "    pass\n"
            )
            out = netlab.nsexec(ns, sys.executable, "-c", code, dst).stdout.strip()
            who = next(
                (i.id for i in INSTS if out and out == f"vm-{i.id.rsplit('-', 1)[-1]}"), None
            )
        via = frozenset(a.id for a in APPLIANCES if self._forwarded(a) > before[a.id])
        return who, via

    def _forwarded(self, inst: WInstance) -> int:
        lines = netlab.nsexec(self.inst_ns(inst), "cat", "/proc/net/snmp").stdout.splitlines()
        names, values = (line.split() for line in lines if line.startswith("Ip:"))
        return int(values[names.index("ForwDatagrams")])


@pytest.fixture(scope="module", params=COLUMNS)
def world(
    request: pytest.FixtureRequest, run_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    driver = request.param
    prefix = f"{run_prefix}r{TAG[driver]}"
    state = tmp_path_factory.mktemp(f"rt-{driver}")
    zones = (("h1", "h2"),)
    if driver != "fake":
        if os.geteuid() != 0:
            pytest.fail("the linux driver needs root")
        try:
            u = netlab.build(prefix, zones)
        except Exception:
            netlab.teardown(prefix)
            raise
        hosts = [WHost(h.name, h.underlay_ip, h.vtep_index) for h in u.hosts.values()]
        host_ns: dict[str, str | None] = {h.name: h.netns for h in u.hosts.values()}
        w = World(driver, prefix, hosts, host_ns, state)
    else:
        hosts = [WHost("h1", "198.18.1.11", 1), WHost("h2", "198.18.1.12", 2)]
        w = World(driver, prefix, hosts, {h.name: None for h in hosts}, state, FakeFabric())
    try:
        w.dps = {
            h.name: DataPlane(
                naming=w.naming(h.name),
                host_netns=w.host_netns[h.name],
                state_dir=state / h.name,
                fabric=w.fabric,
                **dataplane_args(driver),
            )
            for h in hosts
        }
        w.apply(routing())
        # The appliances: they forward, and answer for an address outside the VPC. Their
        # ARP must carry their own address (arp_announce 2): replies from the outside
        # address would otherwise ask for the gateway with it, which the port's
        # anti-spoofing drops (ARP is checked for forwarders too).
        for a in APPLIANCES:
            dp, ns = w.dps[a.host], w.inst_ns(a)
            dp.driver.apply(Op("create", new=Sysctl(ns, "net/ipv4/ip_forward", "1")))
            dp.driver.apply(Op("create", new=Sysctl(ns, "net/ipv4/conf/all/arp_announce", "2")))
            dp.driver.apply(Op("create", new=Address(ns, "lo", f"{OUTSIDE}/32")))
        yield w
    finally:
        try:
            for dp in w.dps.values():
                dp.teardown()
        finally:
            if driver != "fake":
                for d in state.glob("*/proc/*.json"):
                    netns_sandbox.stop(d.parent.parent, d.name.removesuffix(".json"), grace=0.5)
                netlab.teardown(prefix)
                if nsutil.UTS_DIR.is_dir():
                    for p in nsutil.UTS_DIR.iterdir():
                        if netlab.owned(p.name, prefix):
                            nsutil.remove_ns_file(p)
                shutil.rmtree(state, ignore_errors=True)
    if driver != "fake":
        assert [n for n in netlab.list_netns() if netlab.owned(n, prefix)] == []


def test_without_routes_traffic_goes_direct(world: World) -> None:
    world.apply(routing())
    assert world.path(A1, B1.ip) == (B1.id, frozenset())
    assert world.path(A1, B1.ip, "icmp") == (B1.id, frozenset())
    assert world.answer(A1, OUTSIDE) is None


def test_a_route_to_an_appliance_on_another_host_carries_the_traffic(world: World) -> None:
    # (a) a prefix outside the VPC and a subnet of the VPC, both to fw1 on h2.
    world.apply(
        routing(t1=(WRoute("192.168.50.0/24", f"instance:{FW1.id}"),
                    WRoute("10.2.2.0/24", f"instance:{FW1.id}")))
    )  # fmt: skip
    assert world.answer(A1, OUTSIDE) == FW1.id
    assert world.path(A1, B1.ip) == (B1.id, frozenset({FW1.id}))
    # Only table 1 has the routes: b2 (table 2) reaches b1 directly, the outside not at all.
    assert world.path(B2, B1.ip) == (B1.id, frozenset())
    # Removing the routes restores the direct path.
    world.apply(routing())
    assert world.path(A1, B1.ip) == (B1.id, frozenset())
    assert world.answer(A1, OUTSIDE) is None


def test_the_winner_of_two_routes_for_one_prefix_is_the_documents(world: World) -> None:
    # (b) fw1 (priority 100) wins over fw2 (200); when fw1 goes, the engine makes fw2 the
    # winner: the document changes, and the path with it (from remote to local).
    world.apply(routing(t1=(WRoute("10.2.2.0/24", f"instance:{FW1.id}", 100),)))
    assert world.path(A1, B1.ip) == (B1.id, frozenset({FW1.id}))
    world.apply(routing(t1=(WRoute("10.2.2.0/24", f"instance:{FW2.id}", 200),)))
    assert world.path(A1, B1.ip) == (B1.id, frozenset({FW2.id}))
    # No next hop up: unreachable, not the direct path.
    world.apply(routing(t1=(WRoute("10.2.2.0/24", "unreachable", 100),)))
    assert world.answer(A1, B1.ip) is None
    world.apply(routing())


def test_policies_drop_and_reroute_by_protocol_and_port(world: World) -> None:
    # (c) between the client and server subnets: tcp/22 dropped, tcp/80 through fw1.
    pols = (
        WPolicy(1, 11, 10, "drop", "10.2.1.0/24", "10.2.2.0/24", "tcp", (22, 22)),
        WPolicy(1, 12, 20, "reroute", None, "10.2.2.0/24", "tcp", (80, 80), f"instance:{FW1.id}"),
    )
    world.apply(routing(policies=pols))
    assert world.answer(A1, B1.ip, "tcp", 22) is None
    assert world.path(A1, B1.ip, "icmp") == (B1.id, frozenset())
    assert world.path(A1, B1.ip, "tcp", 7000) == (B1.id, frozenset())
    assert world.path(A1, B1.ip, "tcp", 80) == (B1.id, frozenset({FW1.id}))
    # The servers' subnet has other policies (none): the same ports pass from there.
    assert world.answer(B2, B1.ip, "tcp", 22) == B1.id
    # An allow before the drop wins (first match decides).
    allow = WPolicy(1, 13, 5, "allow", None, None, "tcp", (20, 30))
    world.apply(routing(policies=(*pols, allow)))
    assert world.answer(A1, B1.ip, "tcp", 22) == B1.id
    world.apply(routing())
    assert world.answer(A1, B1.ip, "tcp", 22) == B1.id


def test_two_subnets_with_different_tables_differ_for_one_destination(world: World) -> None:
    # (d) the outside prefix: table 1 to fw1 (other host), table 2 to fw2 (same host).
    world.apply(
        routing(t1=(WRoute("192.168.50.0/24", f"instance:{FW1.id}"),),
                t2=(WRoute("192.168.50.0/24", f"instance:{FW2.id}"),))
    )  # fmt: skip
    assert world.answer(A1, OUTSIDE) == FW1.id
    assert world.answer(B2, OUTSIDE) == FW2.id
    world.apply(
        routing(t1=(WRoute("192.168.50.0/24", f"instance:{FW1.id}"),),
                t2=(WRoute("192.168.50.0/24", "blackhole"),))
    )  # fmt: skip
    assert world.answer(A1, OUTSIDE) == FW1.id
    assert world.answer(B2, OUTSIDE) is None
    world.apply(routing())


def test_an_older_document_without_routing_keeps_the_main_table_only(world: World) -> None:
    world.apply(None)
    assert world.path(A1, B1.ip) == (B1.id, frozenset())
    assert world.answer(A1, OUTSIDE) is None
    if world.driver != "fake":
        vpc = world.naming("h1").vpc_netns(VPC.vni)
        assert "proto 89" not in netlab.ip(vpc, "rule")
        assert "table ip yunhan" not in netlab.nsexec(vpc, "nft", "list", "tables").stdout
    world.apply(routing())
    assert world.path(A1, B1.ip) == (B1.id, frozenset())


@pytest.mark.parametrize("world", ["linux", "fast"], indirect=True)
def test_rules_and_marks_changed_by_hand_are_repaired_and_foreign_rules_kept(
    world: World,
) -> None:
    w = world
    r = routing(t1=(WRoute("10.2.2.0/24", f"instance:{FW1.id}"),))
    w.apply(r)
    h1, h2 = w.naming("h1").vpc_netns(VPC.vni), w.naming("h2").vpc_netns(VPC.vni)
    # A rule of someone else's (another protocol) is neither adopted nor removed.
    netlab.ip(h1, "rule", "add", "pref", "500", "from", "10.9.9.9", "lookup", "main")
    # Ours: a selector rule deleted, a port's mark and a subnet's selector deleted.
    netlab.ip(h1, "rule", "del", "pref", "30000", "fwmark", "0x10000/0xffff0000")
    netlab.nsexec(h2, "nft", "delete", "element", "ip", "yunhan", "src_sel", "{ 10.2.1.0/24 }",
                  check=True)  # fmt: skip
    assert w.path(A1, B1.ip) == (B1.id, frozenset())  # the route is no longer followed
    for h, d in w.docs(r).items():
        rep = w.dps[h].apply(d)
        assert rep.errors == [] and rep.changes >= 1, (h, rep)
        assert w.dps[h].plan(d) == []
    assert w.path(A1, B1.ip) == (B1.id, frozenset({FW1.id}))
    assert "500:\tfrom 10.9.9.9 lookup main" in netlab.ip(h1, "rule")
    netlab.ip(h1, "rule", "del", "pref", "500")
    w.apply(routing())
