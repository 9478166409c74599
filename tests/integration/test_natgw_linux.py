"""A NAT gateway on real namespaces, between a lab-like region and its internet.

The topology is the lab's own (`yunhan.lab.topology`: a routed core, two hosts in two
zones, an internet namespace), with the lab's echo server (`yunhan.lab.echo`) in the
internet namespace; documents come from the controller's reference compiler
(`tests.worlds`), and one `DataPlane` per host applies them, announcing public addresses
to the core as a lab agent does. Traffic is real: instances fetch the echo page with curl
and read back the address the internet saw; the internet connects to port forwards and
EIPs and reads back the instance's hostname.

The VPC side of the NAT default (the NAT_BASE tables and rules that send a served subnet's
internet traffic to the gateway port) is another part of the data plane; until it is in,
`_vpc_default` stands in for it with a plain main-table default route of another protocol
(never observed nor removed by the data plane, and shadowed by the real rules once they
exist).
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
from yunhan.net.desired import NATGW_INNER_IP, HostDesired, vtep_nexthop
from yunhan.net.naming import Naming, gateway_ifname
from yunhan.net.natgw import Announce, Uplink
from yunhan.nsexec import nsenter_argv

pytestmark = pytest.mark.root

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
VPC = WVpc("vpc-a", 100, ("10.1.0.0/16",), ("10.1.1.0/24", "10.1.2.0/24"))
# A on the first host has an EIP; B on the second is reached through a port forward.
A = WInstance("inst-0000a001", "az1-h1", "vpc-a", "10.1.1.10", command=CMD)
B = WInstance("inst-0000a002", "az2-h1", "vpc-a", "10.1.2.10", command=CMD)


def gateway(host: str) -> WGateway:
    return WGateway(
        GW,
        "vpc-a",
        host,
        PUBLIC,
        VPC.subnets,
        forwards=(("tcp", 8080, B.id, PORT),),
        eips=((A.id, EIP),),
    )


@dataclass
class Region:
    spec: RegionSpec
    state: pathlib.Path
    echo: subprocess.Popen[bytes] | None = None
    dps: dict[str, DataPlane] = field(default_factory=dict)

    @property
    def hosts(self) -> list[WHost]:
        return [WHost(h.name, h.underlay_ip, i) for i, h in enumerate(self.spec.hosts, start=1)]

    def naming(self, host: str) -> Naming:
        return Naming(next(h.agent_prefix for h in self.spec.hosts if h.name == host))

    def docs(self, gw_host: str) -> dict[str, HostDesired]:
        return documents(self.hosts, [VPC], [A, B], [gateway(gw_host)])

    def apply(self, gw_host: str, order: list[str]) -> None:
        docs = self.docs(gw_host)
        for h in order:
            r = self.dps[h].apply(docs[h])
            assert r.errors == [], r.errors
            assert self.dps[h].plan(docs[h]) == [], h  # round trip on the kernel
        self._vpc_default(gw_host)

    def _vpc_default(self, gw_host: str) -> None:
        index = {h.name: h.vtep_index for h in self.hosts}
        for h in self.spec.hosts:
            ns = self.naming(h.name).vpc_netns(VPC.vni)
            if h.name == gw_host:
                via = [NATGW_INNER_IP, "dev", gateway_ifname(GW)]
            else:
                via = [vtep_nexthop(index[gw_host]), "dev", "vxlan0"]
            netlab.ip(ns, "route", "replace", "default", "via", *via, "onlink", "proto", "static")

    def inst_ns(self, inst: WInstance) -> str:
        return self.naming(inst.host).instance_netns(inst.id)

    def fetch(self, inst: WInstance) -> str:
        """What the internet's echo server says to `inst` ("" when it cannot be reached)."""
        url = f"http://{self.spec.internet_ip}:{ECHO_PORT}/"
        r = netlab.nsexec(self.inst_ns(inst), "curl", "-s", "--max-time", "2", url)
        return r.stdout.strip()

    def from_internet(self, ip: str, port: int) -> str:
        """The hostname an instance answers with at ip:port, seen from the internet."""
        code = (
            "import socket, sys\n"
            "try:\n"
            "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n"
            "    print(s.recv(100).decode())\n"
            "except OSError:\n"
            "    pass\n"
        )
        r = netlab.nsexec(self.spec.internet_netns, sys.executable, "-c", code, ip, str(port))
        return r.stdout.strip()

    def core_route(self, ip: str) -> str:
        return netlab.ip(self.spec.core_netns, "route", "show", f"{ip}/32").strip()


def _hostname(inst: WInstance) -> str:
    return f"vm-{inst.id.rsplit('-', 1)[-1]}"


@pytest.fixture(scope="module")
def region(run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    if os.geteuid() != 0:
        pytest.fail("real namespaces need root")
    spec = RegionSpec.build(f"{run_prefix}-ngw", zones=2, hosts_per_zone=1)
    state = tmp_path_factory.mktemp("natgw")
    reg = Region(spec, state)
    try:
        topology.realise(spec)
        env = dict(os.environ, PYTHONPATH=str(pathlib.Path(yunhan.__file__).parents[1]))
        argv = [sys.executable, "-m", "yunhan.lab.echo", "--listen", f"0.0.0.0:{ECHO_PORT}"]
        reg.echo = subprocess.Popen(nsenter_argv(argv, net=spec.internet_netns), env=env)
        for h in spec.hosts:
            reg.dps[h.name] = DataPlane(
                naming=Naming(h.agent_prefix),
                host_netns=h.netns,
                state_dir=state / h.name,
                uplink=Uplink(spec.core_netns, h.underlay_ip),
            )
        reg.apply("az1-h1", [h.name for h in spec.hosts])
        yield reg
    finally:
        try:
            for dp in reg.dps.values():
                dp.teardown()
        finally:
            if reg.echo is not None:
                reg.echo.terminate()
                reg.echo.wait(timeout=10)
            for d in state.glob("*/proc/*.json"):
                netns_sandbox.stop(d.parent.parent, d.name.removesuffix(".json"), grace=0.5)
            topology.teardown(spec.prefix)
            if nsutil.UTS_DIR.is_dir():
                for p in nsutil.UTS_DIR.iterdir():
                    if netlab.owned(p.name, spec.prefix):
                        nsutil.remove_ns_file(p)
            shutil.rmtree(state, ignore_errors=True)
    assert [n for n in netlab.list_netns() if netlab.owned(n, spec.prefix)] == []


def test_egress_is_seen_from_the_public_address(region: Region) -> None:
    # B has no public address of its own: the internet sees the gateway's.
    assert wait_for(lambda: region.fetch(B), 10, "B's fetch") == f"client {PUBLIC}"
    # The gateway runs on the first host; the core routes its addresses there, only there.
    first = region.spec.hosts[0]
    assert f"via {first.underlay_ip} dev {first.core_port} proto 89 onlink" in (
        region.core_route(PUBLIC)
    )


def test_an_eip_is_the_instance_s_own_address_both_ways(region: Region) -> None:
    assert wait_for(lambda: region.fetch(A), 10, "A's fetch") == f"client {EIP}"
    assert wait_for(lambda: region.from_internet(EIP, PORT), 10, "EIP") == _hostname(A)


def test_a_port_forward_reaches_the_instance_from_the_internet(region: Region) -> None:
    assert wait_for(lambda: region.from_internet(PUBLIC, 8080), 10, "forward") == _hostname(B)
    # Only the forwarded port: the gateway's address itself answers nothing else.
    assert region.from_internet(PUBLIC, PORT) == ""


def test_a_gateway_that_moves_takes_its_addresses_along(region: Region) -> None:
    first, second = region.spec.hosts
    # The new host announces first, then the old one removes the gateway: the old one
    # must not withdraw routes that now point at the new one.
    region.apply(second.name, [second.name, first.name])
    for ip in (PUBLIC, EIP):
        route = region.core_route(ip)
        assert f"via {second.underlay_ip} dev {second.core_port} proto 89 onlink" in route, ip
    gone = region.naming(first.name).natgw_netns(GW)
    assert gone not in netlab.list_netns()
    assert wait_for(lambda: region.fetch(B), 10, "B's fetch") == f"client {PUBLIC}"
    assert wait_for(lambda: region.fetch(A), 10, "A's fetch") == f"client {EIP}"
    assert wait_for(lambda: region.from_internet(PUBLIC, 8080), 10, "forward") == _hostname(B)
    assert wait_for(lambda: region.from_internet(EIP, PORT), 10, "EIP") == _hostname(A)
    # And back, in the other order (the old host withdraws first).
    region.apply(first.name, [second.name, first.name])
    assert f"via {first.underlay_ip} " in region.core_route(PUBLIC)
    assert wait_for(lambda: region.fetch(B), 10, "B's fetch") == f"client {PUBLIC}"


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
    assert wait_for(lambda: region.from_internet(EIP, PORT), 10, "EIP") == _hostname(A)
