"""A NAT gateway between a lab-like region and its internet, on both drivers.

"linux": the topology is the lab's own (`yunhan.lab.topology`: a routed core, two hosts in
two zones, an internet namespace) with the lab's echo server (`yunhan.lab.echo`) in the
internet namespace; traffic is real: instances fetch the echo page with curl and read back
the address the internet saw, the internet connects to port forwards and EIPs and reads
back the instance's hostname. "fake": the same documents on fake hosts, answers from the
fabric's traces. Both must give the same matrix, wherever the gateway runs. Documents
come from the controller's reference compiler (`tests.worlds`); one `DataPlane` per host
applies them, announcing public addresses to the core as a lab agent does.

The VPC side of the NAT default (the NAT_BASE tables and rules that send a served subnet's
internet traffic to the gateway port) is another part of the data plane; where it is not
there (the documents carry it: `routed=True`), `_vpc_default` stands in for it with a
plain main-table default route of another protocol, never observed nor removed by the
data plane.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

import yunhan
from tests.integration import netlab
from tests.polling import wait_for
from tests.worlds import WGateway, WHost, WInstance, WVpc, documents
from yunhan.agent.dataplane import DataPlane
from yunhan.compute import netns_sandbox
from yunhan.lab import topology
from yunhan.lab.spec import ECHO_PORT, RegionSpec
from yunhan.net import nsutil
from yunhan.net.desired import NAT_BASE, NATGW_INNER_IP, HostDesired, vtep_nexthop
from yunhan.net.fake import FakeDriver, FakeFabric
from yunhan.net.naming import Naming, gateway_ifname
from yunhan.net.natgw import Announce, Uplink
from yunhan.net.state import KRoute, Op
from yunhan.nsexec import nsenter_argv
from yunhan.polling import poll_until

PORT = 80
SERVER = (
    "import socket\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PORT}))\n"
    "s.listen(64)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(socket.gethostname().encode())\n"
    "    c.close()\n"
)
CMD = (sys.executable, "-c", SERVER)
GW = "ngw-0000c001"
PUBLIC = "198.19.128.1"
EIP = "198.19.128.9"
VPC = WVpc("vpc-a", 100, ("10.1.0.0/16",), ("10.1.1.0/24", "10.1.2.0/24", "10.1.3.0/24"))
# A on the first host has an EIP; B on the second is reached through a port forward.
A = WInstance("inst-0000a001", "az1-h1", "vpc-a", "10.1.1.10", command=CMD)
B = WInstance("inst-0000a002", "az2-h1", "vpc-a", "10.1.2.10", command=CMD)
# C sits in a subnet the gateway does not serve: a forward to it has no way back.
C = WInstance("inst-0000a003", "az1-h1", "vpc-a", "10.1.3.10", command=CMD)
INSTANCES = (A, B, C)


def gateway(host: str) -> WGateway:
    return WGateway(
        GW,
        "vpc-a",
        host,
        PUBLIC,
        VPC.subnets[:2],
        forwards=(("tcp", 8080, B.id, PORT), ("tcp", 8081, C.id, PORT)),
        eips=((A.id, EIP),),
    )


@dataclass
class Region:
    driver: str
    spec: RegionSpec
    state: pathlib.Path
    fabric: FakeFabric | None = None
    echo: subprocess.Popen[bytes] | None = None
    dps: dict[str, DataPlane] = field(default_factory=dict)

    @property
    def hosts(self) -> list[WHost]:
        return [WHost(h.name, h.underlay_ip, i) for i, h in enumerate(self.spec.hosts, start=1)]

    def naming(self, host: str) -> Naming:
        return Naming(next(h.agent_prefix for h in self.spec.hosts if h.name == host))

    def docs(self, gw_host: str) -> dict[str, HostDesired]:
        return documents(self.hosts, [VPC], list(INSTANCES), [gateway(gw_host)], routed=True)

    def apply(self, gw_host: str, order: list[str]) -> None:
        """Apply the documents with the gateway on `gw_host`, hosts in `order`."""
        self._vpc_default(None)
        docs = self.docs(gw_host)
        for h in order:
            r = self.dps[h].apply(docs[h])
            assert r.errors == [], r.errors
            assert self.dps[h].plan(docs[h]) == [], h  # round trip
        self._vpc_default(gw_host)

    def _vpc_default(self, gw_host: str | None) -> None:
        """The stand-in for the VPC side of the NAT default (see the module docstring):
        the gateway's host sends internet traffic to the gateway port, the others to it.
        Nothing when the data plane routes NAT defaults itself (a NAT_BASE table)."""
        doc = next(iter(self.docs(self.spec.hosts[0].name).values()))
        want = self.dps[doc.host].compile(doc)
        if any(isinstance(o, KRoute) and o.table >= NAT_BASE for o in want.values()):
            return
        index = {h.name: h.vtep_index for h in self.hosts}
        for h in self.spec.hosts:
            ns = self.naming(h.name).vpc_netns(VPC.vni)
            route: KRoute | None = None
            if gw_host == h.name:
                route = KRoute(
                    ns, "0.0.0.0/0", "gateway", gateway_ifname(GW), NATGW_INNER_IP, onlink=True
                )
            elif gw_host is not None:
                route = KRoute(ns, "0.0.0.0/0", "remote", "vxlan0", vtep_nexthop(index[gw_host]))
            if self.driver == "fake":
                drv = self.dps[h.name].driver
                assert isinstance(drv, FakeDriver)
                if route is None:
                    drv.objs.pop(("route", ns, "254", "0.0.0.0/0", "0"), None)
                else:
                    drv.apply(Op("create", new=route))
            elif route is not None:
                netlab.ip(ns, "route", "replace", "default", "via", str(route.via),
                          "dev", str(route.dev), "onlink", "proto", "static")  # fmt: skip

    def inst_ns(self, inst: WInstance) -> str:
        return self.naming(inst.host).instance_netns(inst.id)

    def egress(self, inst: WInstance) -> str:
        """The address the internet sees `inst` fetch from ("" when it cannot)."""
        if self.fabric is not None:
            t = self.fabric.trace(inst.id, self.spec.internet_ip)
            return t.source if t.delivered and t.to_netns is None else ""
        url = f"http://{self.spec.internet_ip}:{ECHO_PORT}/"
        r = netlab.nsexec(self.inst_ns(inst), "curl", "-s", "--max-time", "2", url)
        return r.stdout.strip().removeprefix("client ")

    def inbound(self, ip: str, port: int) -> str:
        """The instance the internet reaches at ip:port (tcp), "" for none."""
        if self.fabric is not None:
            t = self.fabric.trace_inbound(ip, "tcp", port)
            ns = t.to_netns if t.delivered else None
            return next((i.id for i in INSTANCES if self.inst_ns(i) == ns), "")
        code = (
            "import socket, sys\n"
            "try:\n"
            "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n"
            "    print(s.recv(100).decode())\n"
            "except OSError:\n"
            "    pass\n"
        )
        r = netlab.nsexec(self.spec.internet_netns, sys.executable, "-c", code, ip, str(port))
        return next((i.id for i in INSTANCES if r.stdout.strip() == _hostname(i)), "")

    def announced(self, ip: str) -> str:
        """The host the uplink routes `ip` to ("" for none)."""
        if self.fabric is not None:
            return next(
                (h for h, dp in self.dps.items() if ("announce", ip) in dp.driver.observe()), ""
            )
        route = self.core_route(ip).split()
        via = route[route.index("via") + 1] if "via" in route else ""
        return next((h.name for h in self.spec.hosts if h.underlay_ip == via), "")

    def core_route(self, ip: str) -> str:
        return netlab.ip(self.spec.core_netns, "route", "show", f"{ip}/32").strip()


def _hostname(inst: WInstance) -> str:
    return f"vm-{inst.id.rsplit('-', 1)[-1]}"


@pytest.fixture(scope="module", params=["fake", pytest.param("linux", marks=pytest.mark.root)])
def region(
    request: pytest.FixtureRequest, run_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Region]:
    driver = request.param
    spec = RegionSpec.build(f"{run_prefix}-ngw{driver[0]}", zones=2, hosts_per_zone=1)
    state = tmp_path_factory.mktemp(f"natgw-{driver}")
    reg = Region(driver, spec, state, FakeFabric() if driver == "fake" else None)
    if driver == "linux" and os.geteuid() != 0:
        pytest.fail("real namespaces need root")
    try:
        if driver == "linux":
            topology.realise(spec)
            env = dict(os.environ, PYTHONPATH=str(pathlib.Path(yunhan.__file__).parents[1]))
            argv = [sys.executable, "-m", "yunhan.lab.echo", "--listen", f"0.0.0.0:{ECHO_PORT}"]
            reg.echo = subprocess.Popen(nsenter_argv(argv, net=spec.internet_netns), env=env)
        for h in spec.hosts:
            reg.dps[h.name] = DataPlane(
                naming=Naming(h.agent_prefix),
                host_netns=h.netns,
                driver=driver,
                state_dir=state / h.name,
                fabric=reg.fabric,
                uplink=Uplink(spec.core_netns, h.underlay_ip),
            )
        reg.apply("az1-h1", [h.name for h in spec.hosts])
        yield reg
    finally:
        if driver == "linux":
            _teardown(reg)
    if driver == "linux":
        assert [n for n in netlab.list_netns() if netlab.owned(n, spec.prefix)] == []


def _teardown(reg: Region) -> None:
    try:
        for dp in reg.dps.values():
            dp.teardown()
    finally:
        if reg.echo is not None:
            reg.echo.terminate()
            reg.echo.wait(timeout=10)
        for d in reg.state.glob("*/proc/*.json"):
            netns_sandbox.stop(d.parent.parent, d.name.removesuffix(".json"), grace=0.5)
        topology.teardown(reg.spec.prefix)
        if nsutil.UTS_DIR.is_dir():
            for p in nsutil.UTS_DIR.iterdir():
                if netlab.owned(p.name, reg.spec.prefix):
                    nsutil.remove_ns_file(p)
        shutil.rmtree(reg.state, ignore_errors=True)


# What the internet sees, wherever the gateway runs: A has an EIP (its own address both
# ways), B only the gateway's address and a port forward; nothing else answers.
MATRIX = {
    ("egress", A.id): EIP,
    ("egress", B.id): PUBLIC,
    ("in", f"{PUBLIC}:8080"): B.id,
    ("in", f"{PUBLIC}:8081"): "",  # forwarded to C, whose subnet is not served
    ("egress", C.id): "",
    ("in", f"{EIP}:{PORT}"): A.id,
    ("in", f"{PUBLIC}:{PORT}"): "",  # not forwarded: the gateway itself listens on nothing
    ("in", "198.19.128.77:80"): "",  # in the pool, announced by no one
}


def _matrix(region: Region) -> dict[tuple[str, str], str]:
    def row(kind: str, what: str) -> str:
        if kind == "egress":
            return region.egress(next(i for i in INSTANCES if i.id == what))
        ip, port = what.split(":")
        return region.inbound(ip, int(port))

    got: dict[tuple[str, str], str] = {}

    def settled() -> bool:
        got.update({k: row(*k) for k in MATRIX})
        return got == MATRIX

    poll_until(settled, 10.0)  # a new path may take a moment (first ARP on the underlay)
    return got


@pytest.mark.parametrize("host", [0, 1, 0], ids=["first", "moved", "back"])
def test_what_the_internet_sees_follows_the_gateway(region: Region, host: int) -> None:
    first, second = region.spec.hosts
    gw_host = region.spec.hosts[host].name
    # The new host is applied first (it announces while the old one still does), then the
    # old one: it must withdraw nothing that now points at the new one.
    region.apply(gw_host, [second.name, first.name] if host else [first.name, second.name])
    assert {ip: region.announced(ip) for ip in (PUBLIC, EIP)} == {PUBLIC: gw_host, EIP: gw_host}
    assert _matrix(region) == MATRIX
    others = [h.name for h in region.spec.hosts if h.name != gw_host]
    for h in others:
        assert not [k for k in region.dps[h].observe() if k[0] in ("nat", "announce")]


LINUX_ONLY = pytest.mark.parametrize("region", ["linux"], indirect=True)


@LINUX_ONLY
def test_the_core_routes_public_addresses_as_announced(region: Region) -> None:
    first = region.spec.hosts[0]
    region.apply(first.name, [h.name for h in region.spec.hosts])
    assert f"via {first.underlay_ip} dev {first.core_port} proto 89 onlink" in (
        region.core_route(PUBLIC)
    )
    assert region.naming(region.spec.hosts[1].name).natgw_netns(GW) not in netlab.list_netns()


@LINUX_ONLY
def test_a_nat_rule_changed_by_hand_is_repaired(region: Region) -> None:
    host = region.spec.hosts[0].name
    ns = region.naming(host).natgw_netns(GW)
    netlab.nsexec(ns, "nft", "flush", "chain", "ip", "yunhan", "post", check=True)
    doc = region.docs(host)[host]
    ops = region.dps[host].plan(doc)
    assert [str(op).split(" ", 1)[0] + " " + type(op.obj).__name__ for op in ops] == [
        "replace NatTable"
    ]
    assert region.dps[host].apply(doc).errors == []
    assert region.dps[host].plan(doc) == []


@LINUX_ONLY
def test_a_withdrawn_announcement_is_restored_and_a_foreign_one_left_alone(
    region: Region,
) -> None:
    first, second = region.spec.hosts
    core = region.spec.core_netns
    netlab.ip(core, "route", "del", f"{EIP}/32")
    # An announcement pointing at the second host, of an address it no longer runs.
    other = "198.19.128.77"
    netlab.ip(core, "route", "replace", f"{other}/32", "via", second.underlay_ip,
              "dev", second.core_port, "onlink", "proto", "89")  # fmt: skip
    doc = region.docs(first.name)[first.name]
    ops = region.dps[first.name].plan(doc)
    assert [(op.action, type(op.obj).__name__) for op in ops] == [("create", "Announce")]
    assert region.dps[first.name].apply(doc).errors == []
    assert f"via {first.underlay_ip} " in region.core_route(EIP)
    assert f"via {second.underlay_ip} " in region.core_route(other)  # not the first's
    # The second host takes it for a stale announcement of its own, and withdraws it.
    doc2 = region.docs(first.name)[second.name]
    ops = region.dps[second.name].plan(doc2)
    assert [(op.action, op.obj) for op in ops] == [("delete", Announce(other))]
    assert region.dps[second.name].apply(doc2).errors == []
    assert region.core_route(other) == ""
    assert wait_for(lambda: region.inbound(EIP, PORT), 10, "EIP") == A.id
