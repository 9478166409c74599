"""A hybrid gateway replica on a real host data plane (the linux driver), with a site router.

    <r>-host (eth0 198.18.1.11) ══ veth ══ (wan0 198.19.16.1) <r>-site
       │ VPC ns <r>-h1-v100 ── h-0000d001 ║ vpc0  <r>-h1-h-0000d001  line0 ~~ VXLAN 8472 ~~ line0
       │ instance <r>-h1-i-0000a001 (10.1.1.10)      198.19.33.11/24          198.19.33.1/24

A hand-made `HostDesired` carries one VPC with one instance, a remote peer (a host that
does not exist: its objects are only checked, never reached) and one hybrid gateway whose
replica runs here. The site router is a namespace with its end of the line (learning on,
no FDB entry) and FRR, passive, listening on the line's subnet; an IDC server stands in as
an address on its `lo`. Checked: the kernel objects the contract names, a second apply
that changes nothing, drift repaired (the all-zeros FDB entry, a multipath route), the
BGP session up and traffic from the instance to the IDC and back, a change of
announcements applied without resetting the session, and a teardown that leaves no
namespace, no FRR process and no FRR directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration import netlab
from tests.polling import wait_for
from yunhan.agent.dataplane import DataPlane
from yunhan.compute import netns_sandbox
from yunhan.net import frr, nsutil
from yunhan.net.desired import (
    HYBRID_INNER_IP,
    HostDesired,
    HybridGwDesired,
    HybridReplicaDesired,
    HybridRouteDesired,
    InstanceDesired,
    NextHop,
    Peer,
    Port,
    Route,
    VpcDesired,
    vtep_mac,
    vtep_nexthop,
)
from yunhan.net.naming import Naming, hybrid_ifname, port_ifname
from yunhan.net.state import Bgp, Fdb, KRoute

pytestmark = pytest.mark.root

GW = "hgw-0000d001"
INST = "inst-0000a001"
HOST_IP = "198.18.1.11"
SITE_VTEP = "198.19.16.1"
LINE_VNI = 0x700001
ROUTER_LINE_IP = "198.19.33.1"
IDC = "192.168.100.0/24"  # the site's, served by the replica here
IDC_SERVER = "192.168.100.10"
ECMP = "192.168.101.0/24"  # through the replica here and the remote host: multipath
REMOTE = "192.168.102.0/24"  # through the remote host only
DOWN = "192.168.103.0/24"  # no replica up
SECRET = "hybrid-test-secret"
ASN, PEER_ASN = 64512, 65001
ANNOUNCE = ("10.1.0.0/16",)


def document(announce: tuple[str, ...] = ANNOUNCE) -> HostDesired:
    port = port_ifname(INST)
    local = NextHop(kind="local", ip=HYBRID_INNER_IP, port=hybrid_ifname(GW))
    remote = NextHop(kind="remote", peer="h2", ip=HYBRID_INNER_IP)
    gw = HybridGwDesired(
        id=GW,
        index=1,
        ifname=hybrid_ifname(GW),
        routes=(
            HybridRouteDesired(dst=IDC, nexthops=(local,)),
            HybridRouteDesired(dst=ECMP, nexthops=(local, remote)),
            HybridRouteDesired(dst=REMOTE, nexthops=(remote,)),
            HybridRouteDesired(dst=DOWN),
        ),
        replica=HybridReplicaDesired(
            index=1,
            line_vni=LINE_VNI,
            line_vtep=SITE_VTEP,
            line_ip="198.19.33.11/24",
            peer_ip=ROUTER_LINE_IP,
            peer_asn=PEER_ASN,
            asn=ASN,
            md5_secret=SECRET,
            bfd=True,
            announce=announce,
        ),
    )
    vpc = VpcDesired(
        id="vpc-a",
        vni=100,
        cidrs=("10.1.0.0/16",),
        gateways=("10.1.1.1/24",),
        ports=(
            Port(
                instance_id=INST,
                ifname=port,
                ip="10.1.1.10",
                prefixlen=24,
                gateway="10.1.1.1",
                mac="02:00:00:00:a0:01",
            ),
        ),
        peers=(
            Peer(
                host="h2",
                vtep_index=2,
                underlay_ip="198.18.1.12",
                mac=vtep_mac(2),
                nexthop=vtep_nexthop(2),
            ),
        ),
        routes=(
            Route(dst="10.1.1.10/32", kind="local", port=port),
            Route(dst="10.1.0.0/16", kind="unreachable"),
        ),
        hybrids=(gw,),
    )
    inst = InstanceDesired(id=INST, name="vm-a001", vpc_id="vpc-a", vni=100, port=port)
    return HostDesired(host="h1", underlay_ip=HOST_IP, vtep_index=1, vpcs=(vpc,), instances=(inst,))


def site_config(name: str) -> str:
    """The site router's FRR: passive, any replica of the line's subnet may connect."""
    return f"""frr defaults traditional
hostname {name}
log stdout warnings
!
router bgp {PEER_ASN}
 bgp router-id {ROUTER_LINE_IP}
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor CLOUD peer-group
 neighbor CLOUD remote-as {ASN}
 neighbor CLOUD password {SECRET}
 neighbor CLOUD timers 3 9
 neighbor CLOUD advertisement-interval 0
 neighbor CLOUD bfd
 bgp listen range 198.19.33.0/24 peer-group CLOUD
 address-family ipv4 unicast
  network {IDC}
  maximum-paths 8
 exit-address-family
!
"""


@dataclass
class Rig:
    prefix: str
    host: str
    site: str
    naming: Naming
    dp: DataPlane

    @property
    def vpc_ns(self) -> str:
        return self.naming.vpc_netns(100)

    @property
    def replica_ns(self) -> str:
        return self.naming.hybrid_netns(GW)

    @property
    def inst_ns(self) -> str:
        return self.naming.instance_netns(INST)


def _underlay(prefix: str) -> tuple[str, str]:
    host, site = f"{prefix}-host", f"{prefix}-site"
    for ns in (host, site):
        netlab.sh("ip", "netns", "add", ns)
        netlab.ip(ns, "link", "set", "lo", "up")
    netlab.ip(host, "link", "add", "eth0", "type", "veth", "peer", "name", "wan0", "netns", site)
    netlab.ip(host, "addr", "add", f"{HOST_IP}/32", "dev", "eth0")
    netlab.ip(host, "link", "set", "eth0", "up")
    netlab.ip(host, "route", "add", f"{SITE_VTEP}/32", "dev", "eth0")
    netlab.ip(site, "addr", "add", f"{SITE_VTEP}/32", "dev", "wan0")
    netlab.ip(site, "link", "set", "wan0", "up")
    netlab.ip(site, "route", "add", f"{HOST_IP}/32", "dev", "wan0")
    # The site router's end of the line: learning, no FDB entry (it learns each replica
    # from its first frame; replicas open the session).
    netlab.ip(site, "link", "add", "line0", "type", "vxlan", "id", str(LINE_VNI),
              "local", SITE_VTEP, "dstport", "8472")  # fmt: skip
    netlab.ip(site, "addr", "add", f"{ROUTER_LINE_IP}/24", "dev", "line0")
    netlab.ip(site, "link", "set", "line0", "up")
    netlab.ip(site, "addr", "add", f"{IDC_SERVER}/32", "dev", "lo")
    return host, site


def _leftovers(names: list[str]) -> list[str]:
    """FRR processes, run dirs and sockets of these namespaces that still exist."""
    out = [str(p) for n in names for p in (frr.RUN_ROOT / n, pathlib.Path("/var/run/frr") / n)]
    out = [p for p in out if os.path.exists(p)]
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace") in names for a in argv):
            out.append(f"pid {pid}: {b' '.join(argv).decode(errors='replace')}")
    return out


@pytest.fixture(scope="module")
def rig(run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    prefix = f"{run_prefix}-hyb"
    state = tmp_path_factory.mktemp("hybrid")
    naming = Naming(f"{prefix}-h1-")
    dp: DataPlane | None = None
    frr_names = [naming.hybrid_netns(GW), f"{prefix}-site"]
    try:
        host, site = _underlay(prefix)
        dp = DataPlane(naming=naming, host_netns=host, state_dir=state)
        r = dp.apply(document())
        assert r.errors == [], r.errors
        yield Rig(prefix, host, site, naming, dp)
    finally:
        try:
            if dp is not None:
                dp.teardown()
        finally:
            frr.stop(f"{prefix}-site")
            frr.stop(naming.hybrid_netns(GW))  # only if the teardown failed before it
            netlab.teardown(prefix)
            if nsutil.UTS_DIR.is_dir():
                for p in nsutil.UTS_DIR.iterdir():
                    if netlab.owned(p.name, prefix):
                        nsutil.remove_ns_file(p)
            for d in state.glob("proc/*.json"):
                netns_sandbox.stop(state, d.name.removesuffix(".json"), grace=0.5)
            shutil.rmtree(state, ignore_errors=True)
    assert [n for n in netlab.list_netns() if netlab.owned(n, prefix)] == []
    assert _leftovers(frr_names) == []


def test_the_kernel_holds_what_the_contract_names(rig: Rig) -> None:
    vpc, rep = rig.vpc_ns, rig.replica_ns
    port = hybrid_ifname(GW)
    assert netlab.ip(vpc, "route", "show", IDC).strip() == (
        f"{IDC} via {HYBRID_INNER_IP} dev {port} proto 89 onlink"
    )
    ecmp = netlab.ip(vpc, "route", "show", ECMP)
    assert f"nexthop via {HYBRID_INNER_IP} dev {port} weight 1 onlink" in ecmp
    assert f"nexthop via {vtep_nexthop(2)} dev vxlan0 weight 1 onlink" in ecmp
    # No realm: the far host delivers it by its main table.
    assert netlab.ip(vpc, "route", "show", REMOTE).strip() == (
        f"{REMOTE} via {vtep_nexthop(2)} dev vxlan0 proto 89 onlink"
    )
    assert netlab.ip(vpc, "route", "show", DOWN).strip() == f"unreachable {DOWN} proto 89"
    hash_policy = netlab.nsexec(vpc, "sysctl", "-n", "net.ipv4.fib_multipath_hash_policy")
    assert hash_policy.stdout.strip() == "1"
    line = netlab.ip(rep, "-d", "link", "show", "line0")
    assert f"vxlan id {LINE_VNI} local {HOST_IP}" in line and "dstport 8472" in line
    assert "nolearning" in line and "gbp" not in line
    fdb = netlab.sh("bridge", "-n", rep, "fdb", "show", "dev", "line0")
    assert f"00:00:00:00:00:00 dst {SITE_VTEP} " in fdb
    assert "198.19.33.11/24" in netlab.ip(rep, "addr", "show", "line0")
    assert f"{HYBRID_INNER_IP}/32" in netlab.ip(rep, "addr", "show", "vpc0")
    assert netlab.ip(rep, "route", "show", "10.1.0.0/16").strip() == (
        "10.1.0.0/16 via 169.254.255.254 dev vpc0 proto 89 onlink"
    )
    assert frr.running(rep)
    # A second apply changes nothing.
    assert rig.dp.plan(document()) == []
    assert rig.dp.apply(document()).changes == 0


def _kinds(rig: Rig) -> list[tuple[str, str]]:
    return [(op.action, type(op.obj).__name__) for op in rig.dp.plan(document())]


def test_drift_in_the_line_and_a_multipath_route_is_repaired(rig: Rig) -> None:
    rep = rig.replica_ns
    # A second destination on the all-zeros entry would send every frame twice.
    netlab.sh("bridge", "-n", rep, "fdb", "append", "00:00:00:00:00:00", "dev", "line0",
              "dst", "198.19.16.99")  # fmt: skip
    assert _kinds(rig) == [("replace", "Fdb")]
    netlab.ip(rig.vpc_ns, "route", "del", ECMP)
    assert sorted(_kinds(rig)) == [("create", "KRoute"), ("replace", "Fdb")]
    assert rig.dp.apply(document()).errors == []
    assert rig.dp.plan(document()) == []
    fdb = netlab.sh("bridge", "-n", rep, "fdb", "show", "dev", "line0")
    assert "198.19.16.99" not in fdb and f"dst {SITE_VTEP} " in fdb
    # The entry deleted by hand comes back.
    netlab.sh("bridge", "-n", rep, "fdb", "del", "00:00:00:00:00:00", "dev", "line0")
    assert _kinds(rig) == [("create", "Fdb")]
    assert rig.dp.apply(document()).errors == []
    have = rig.dp.observe()
    assert have[("fdb", rep, "line0", "00:00:00:00:00:00")] == Fdb(
        rep, "line0", "00:00:00:00:00:00", SITE_VTEP
    )
    route = have[("route", rig.vpc_ns, "254", ECMP, "0")]
    assert isinstance(route, KRoute) and route.kind == "multipath"


def _route(ns: str, dst: str) -> str:
    return netlab.ip(ns, "route", "show", dst)


def _established(rig: Rig) -> frr.BgpStatus | None:
    st = frr.bgp_status(rig.replica_ns)
    return st if st.state == "Established" else None


def test_bgp_comes_up_and_traffic_crosses_the_line(rig: Rig) -> None:
    frr.start(rig.site, site_config(rig.site))
    wait_for(lambda: _established(rig), 60, "the BGP session to come up")
    # What each side learned is in its kernel (zebra's routes, not ours).
    learned = f"via {ROUTER_LINE_IP} dev line0"
    wait_for(lambda: learned in _route(rig.replica_ns, IDC), 20, "the replica to learn the IDC")
    back = "via 198.19.33.11 dev line0"
    wait_for(lambda: back in _route(rig.site, "10.1.0.0/16"), 20, "the site to learn the VPC")
    ping = ["ping", "-c", "1", "-W", "1", IDC_SERVER]
    wait_for(lambda: netlab.nsexec(rig.inst_ns, *ping).returncode == 0, 20, "a ping to the IDC")
    # Learned routes are not ours: nothing to plan.
    assert rig.dp.plan(document()) == []


def _connections(rig: Rig) -> int:
    """How many times the replica's session was established (a reset counts one more)."""
    shown = json.loads(frr.vtysh(rig.replica_ns, "show bgp neighbors json"))
    return int(shown[ROUTER_LINE_IP]["connectionsEstablished"])


def test_a_change_of_announcements_keeps_the_session(rig: Rig) -> None:
    wait_for(lambda: _established(rig), 60, "the BGP session to be up")
    before = _connections(rig)
    more = document(("10.1.0.0/16", "10.9.0.0/16"))
    assert sorted((op.action, type(op.obj).__name__) for op in rig.dp.plan(more)) == [
        ("create", "KRoute"),
        ("replace", "Bgp"),
    ]
    assert rig.dp.apply(more).errors == []
    assert rig.dp.plan(more) == []
    wait_for(lambda: "via 198.19.33.11" in _route(rig.site, "10.9.0.0/16"), 20, "the new prefix")
    assert frr.bgp_status(rig.replica_ns).state == "Established"
    assert _connections(rig) == before  # never reset
    bgp = rig.dp.observe()[("bgp", rig.replica_ns)]
    assert isinstance(bgp, Bgp) and bgp.session is not None
    assert bgp.session.announce == ("10.1.0.0/16", "10.9.0.0/16")
    assert rig.dp.apply(document()).errors == []  # back, for the tests after this one


def test_a_dead_frr_is_started_again(rig: Rig) -> None:
    assert rig.dp.apply(document()).errors == []
    frr.stop(rig.replica_ns)
    assert not frr.running(rig.replica_ns)
    assert [(op.action, type(op.obj).__name__) for op in rig.dp.plan(document())] == [
        ("create", "Bgp")
    ]
    assert rig.dp.apply(document()).errors == []
    assert frr.running(rig.replica_ns)
    assert rig.dp.plan(document()) == []
