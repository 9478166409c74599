"""Security groups on real namespaces and on the fake, held to the same answers (issue 10).

Two hosts in one zone, one VPC (10.3.0.0/16): client a1 and server s1 on h1 and h2, s2 on h1
(the same host as a1), and c2 (in no group at first). Every instance serves TCP on ports
7000, 22 and 80 (replying with its hostname) and echoes on 9000. Each scenario applies a
document to both hosts (the plan after it must be empty: what was written reads back the
same), then asks who answers: on linux from real connections, on the fake from its trace.
Linux alone: an established stream cut by removing its allow rule, a rule changed by hand
repaired, and two VPCs with the same addresses keeping separate conntrack state.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration import netlab
from tests.integration.columns import COLUMNS, TAG, dataplane_args
from tests.worlds import WHost, WInstance, WVpc, documents, with_groups
from yunhan.agent.dataplane import DataPlane
from yunhan.compute import netns_sandbox
from yunhan.net import nsutil
from yunhan.net.desired import AclDesired, AclRuleDesired, HostDesired, SgRuleDesired
from yunhan.net.fake import FakeFabric
from yunhan.net.naming import Naming
from yunhan.net.nftsg import zone_of

SERVER = (
    "import selectors, socket, threading\n"
    "def echo(c):\n"
    "    while (b := c.recv(100)):\n"
    "        c.sendall(b)\n"
    "sel = selectors.DefaultSelector()\n"
    "for port in (7000, 22, 80, 9000):\n"
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
    "        c.sendall(socket.gethostname().encode())\n"
    "        c.close()\n"
)
CMD = (sys.executable, "-c", SERVER)

VPC = WVpc("vpc-s", 310, ("10.3.0.0/16",), ("10.3.1.0/24", "10.3.2.0/24"))
VPC2 = WVpc("vpc-t", 311, ("10.3.0.0/16",), ("10.3.1.0/24",))  # the same addresses
A1 = WInstance("inst-0000d001", "h1", "vpc-s", "10.3.1.10", command=CMD)
S1 = WInstance("inst-0000d002", "h2", "vpc-s", "10.3.1.20", command=CMD)
S2 = WInstance("inst-0000d003", "h1", "vpc-s", "10.3.1.21", command=CMD)
C2 = WInstance("inst-0000d004", "h2", "vpc-s", "10.3.1.30", command=CMD)
D1 = WInstance("inst-0000d005", "h2", "vpc-s", "10.3.2.10", command=CMD)  # subnet 2
T1 = WInstance("inst-0000e001", "h1", "vpc-t", "10.3.1.10", command=CMD)
T2 = WInstance("inst-0000e002", "h2", "vpc-t", "10.3.1.20", command=CMD)
INSTS = [A1, S1, S2, C2, D1, T1, T2]

EGRESS_ALL = SgRuleDesired(id="r-eg", direction="egress", cidr="0.0.0.0/0")
SSH = SgRuleDesired(id="r-ssh", direction="ingress", proto="tcp", port_min=22, port_max=22,
                    cidr="0.0.0.0/0")  # fmt: skip
WEB_FROM_CLI = SgRuleDesired(id="r-web", direction="ingress", proto="tcp", port_min=7000,
                             port_max=7000, group="sg-cli")  # fmt: skip
ECHO_FROM_CLI = SgRuleDesired(id="r-echo", direction="ingress", proto="tcp", port_min=9000,
                              port_max=9000, group="sg-cli")  # fmt: skip
DENY_80 = SgRuleDesired(id="r-no80", direction="ingress", proto="tcp", port_min=80,
                        port_max=80, cidr="10.0.0.0/8", action="deny", priority=10)  # fmt: skip
ALLOW_80 = SgRuleDesired(id="r-80", direction="ingress", proto="tcp", port_min=80, port_max=80,
                         cidr="0.0.0.0/0")  # fmt: skip
CLI = (EGRESS_ALL,)
SRV = (EGRESS_ALL, SSH, WEB_FROM_CLI, ECHO_FROM_CLI)


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

    def docs(
        self,
        groups: dict[str, tuple[SgRuleDesired, ...]],
        member_of: dict[str, tuple[str, ...]],
        acl: AclDesired | None = None,
    ) -> dict[str, HostDesired]:
        docs = with_groups(documents(self.hosts, [VPC, VPC2], INSTS), INSTS, groups, member_of)
        if acl is None:
            return docs
        return {
            h: d.model_copy(
                update={
                    "vpcs": tuple(
                        v.model_copy(update={"acls": (acl,)}) if v.id == VPC.id else v
                        for v in d.vpcs
                    )
                }
            )
            for h, d in docs.items()
        }

    def apply(
        self,
        groups: dict[str, tuple[SgRuleDesired, ...]],
        member_of: dict[str, tuple[str, ...]],
        acl: AclDesired | None = None,
    ) -> None:
        docs = self.docs(groups, member_of, acl)
        for h, d in docs.items():
            rep = self.dps[h].apply(d)
            assert rep.errors == [], rep.errors
        for h, d in docs.items():
            assert self.dps[h].plan(d) == [], h

    def answer(self, src: WInstance, dst: WInstance, proto: str = "tcp", port: int = 7000) -> bool:
        if self.fabric is not None:
            t = self.fabric.trace(
                src.id, dst.ip, proto=proto, port=port if proto != "icmp" else None
            )
            return t.delivered and t.to_netns == self.inst_ns(dst)
        ns = self.inst_ns(src)
        if proto == "icmp":
            return netlab.nsexec(ns, "ping", "-c1", "-W1", dst.ip).returncode == 0
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    s = socket.create_connection((sys.argv[1], {port}), timeout=1)\n"
            "    print(s.recv(100).decode())\n"
            "except OSError:\n"
            "    pass\n"
        )
        out = netlab.nsexec(ns, sys.executable, "-c", code, dst.ip).stdout.strip()
        return out == f"vm-{dst.id.rsplit('-', 1)[-1]}"


BASE_GROUPS = {"sg-cli": CLI, "sg-srv": SRV}
BASE_MEMBERS = {A1.id: ("sg-cli",), S1.id: ("sg-srv",), S2.id: ("sg-srv",), D1.id: ("sg-srv",)}


def acl(*rules: AclRuleDesired) -> AclDesired:
    return AclDesired(id="acl-1", rules=rules, subnets=("10.3.2.0/24",))


IN_ALL = AclRuleDesired(number=100, direction="ingress", cidr="0.0.0.0/0")
OUT_ALL = AclRuleDesired(number=100, direction="egress", cidr="0.0.0.0/0")
NO_SSH = AclRuleDesired(number=10, direction="ingress", proto="tcp", port_min=22, port_max=22,
                        cidr="10.3.1.0/24", action="deny")  # fmt: skip


@pytest.fixture(scope="module", params=COLUMNS)
def world(
    request: pytest.FixtureRequest, run_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    driver = request.param
    prefix = f"{run_prefix}g{TAG[driver]}"
    state = tmp_path_factory.mktemp(f"sg-{driver}")
    if driver != "fake":
        if os.geteuid() != 0:
            pytest.fail("the linux driver needs root")
        try:
            u = netlab.build(prefix, (("h1", "h2"),))
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
        w.apply(BASE_GROUPS, BASE_MEMBERS)
        if driver != "fake":  # the servers listen before the first connection
            deadline = time.monotonic() + 10
            while not w.answer(A1, S1) and time.monotonic() < deadline:
                time.sleep(0.2)
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


def test_exactly_the_allowed_ports_answer(world: World) -> None:
    w = world
    w.apply(BASE_GROUPS, BASE_MEMBERS)
    for dst in (S1, S2):  # another host, the same host
        assert w.answer(A1, dst, "tcp", 22)
        assert w.answer(A1, dst, "tcp", 7000)
        assert not w.answer(A1, dst, "tcp", 80)
        assert not w.answer(A1, dst, "icmp")
    # Stateful: the client's group allows no ingress at all, yet the replies come back;
    # and the server cannot open a connection to the client.
    assert not w.answer(S1, A1, "tcp", 7000)
    # An instance in no group is not filtered (a port without groups).
    assert w.answer(S1, C2, "tcp", 80)
    # A deny before an allow wins; the same allow alone opens the port.
    w.apply({**BASE_GROUPS, "sg-srv": (*SRV, ALLOW_80, DENY_80)}, BASE_MEMBERS)
    assert not w.answer(A1, S1, "tcp", 80)
    w.apply({**BASE_GROUPS, "sg-srv": (*SRV, ALLOW_80)}, BASE_MEMBERS)
    assert w.answer(A1, S1, "tcp", 80)
    w.apply(BASE_GROUPS, BASE_MEMBERS)


def test_a_group_peer_admits_a_new_member_at_once(world: World) -> None:
    w = world
    assert not w.answer(C2, S2, "tcp", 7000)  # c2 (no group) is not a member of sg-cli
    assert w.answer(C2, S2, "tcp", 22)
    h1 = w.naming("h1").vpc_netns(VPC.vni)
    before = _ruleset(w, h1)
    w.apply(BASE_GROUPS, {**BASE_MEMBERS, C2.id: ("sg-cli",)})
    if w.driver != "fake":  # on s2's host, one set element changed, no rule was rewritten
        assert _ruleset(w, h1) == before
    assert w.answer(C2, S2, "tcp", 7000)
    assert w.answer(C2, S1, "tcp", 7000)
    w.apply(BASE_GROUPS, BASE_MEMBERS)
    assert not w.answer(C2, S2, "tcp", 7000)


def _fast_carried(w: World) -> int:
    """Packets the fast path carried on every host, read now."""
    return sum(
        n
        for dp in w.dps.values()
        for k, n in dp.datapath_report().packets.items()
        if k in ("local", "encap", "decap")
    )


def _ruleset(w: World, ns: str) -> list[str]:
    """The table's rules with their handles (a rewrite gives new ones); fake: none."""
    if w.driver == "fake":
        return []
    out = netlab.nsexec(ns, "nft", "-a", "list", "table", "ip", "yunhan_sg").stdout
    return [line.strip() for line in out.splitlines() if "comment" in line]


@pytest.mark.parametrize("world", ["linux", "fast"], indirect=True)
def test_removing_the_allow_rule_cuts_an_established_stream(world: World) -> None:
    w = world
    client = (
        "import socket, sys, time\n"
        "s = socket.create_connection((sys.argv[1], 9000), timeout=1)\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        s.sendall(b'x')\n"
        "        s.recv(1)\n"
        "    except OSError:\n"
        "        print(n, flush=True)\n"
        "        break\n"
        "    n += 1\n"
        "    if n == 20:\n"
        "        print('flowing', flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    argv = ["ip", "netns", "exec", w.inst_ns(A1), sys.executable, "-c", client, S1.ip]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "flowing"
        # Other rules change: the stream is checked again and still allowed.
        w.apply({**BASE_GROUPS, "sg-srv": (*SRV, ALLOW_80)}, BASE_MEMBERS)
        carried = _fast_carried(w)
        time.sleep(0.5)
        assert p.poll() is None
        # Its allow rule goes: the next packet from the client is dropped.
        w.apply({**BASE_GROUPS, "sg-srv": (EGRESS_ALL, SSH, WEB_FROM_CLI)}, BASE_MEMBERS)
        if w.driver == "fast":
            # Checked again under the new rules, the stream went on by the fast path (its
            # conntrack entry stamped anew) until the rule that allowed it went.
            assert _fast_carried(w) > carried
        p.wait(timeout=5)
    finally:
        p.kill()
        p.wait()
        w.apply(BASE_GROUPS, BASE_MEMBERS)


@pytest.mark.parametrize("world", ["linux", "fast"], indirect=True)
def test_overlapping_vpcs_keep_separate_conntrack_state(world: World) -> None:
    w = world
    # The same addresses in two VPCs on the same hosts (vpc-t's instances in no group).
    assert w.answer(T1, T2, "tcp", 7000) and w.answer(A1, S1, "tcp", 7000)
    ns1, ns2 = (w.naming("h1").vpc_netns(v.vni) for v in (VPC, VPC2))
    flows1 = netlab.nsexec(ns1, "conntrack", "-L", "-p", "tcp", "--dport", "7000").stdout
    flows2 = netlab.nsexec(ns2, "conntrack", "-L", "-p", "tcp", "--dport", "7000").stdout
    assert f"zone={zone_of(VPC.vni)}" in flows1 and "src=10.3.1.10" in flows1
    if w.driver == "fast":
        # vpc-t's instances have no group: the fast path carries their flow, which never
        # meets conntrack (docs/datapath.md), while vpc-s's goes through its zone above.
        assert "src=10.3.1.10" not in flows2
    else:
        assert f"zone={zone_of(VPC2.vni)}" in flows2 and "src=10.3.1.10" in flows2
    assert zone_of(VPC.vni) != zone_of(VPC2.vni)
    # vpc-s denies port 80, vpc-t does not: the state of one never admits in the other.
    assert not w.answer(A1, S1, "tcp", 80)
    assert w.answer(T1, T2, "tcp", 80)


@pytest.mark.parametrize("world", ["linux", "fast"], indirect=True)
def test_a_rule_changed_by_hand_is_repaired(world: World) -> None:
    w = world
    w.apply(BASE_GROUPS, BASE_MEMBERS)
    ns = w.naming("h2").vpc_netns(VPC.vni)
    listing = netlab.nsexec(ns, "nft", "-a", "list", "chain", "ip", "yunhan_sg", f"i_{S1.port}")
    handle = next(
        line.rsplit("handle ", 1)[1] for line in listing.stdout.splitlines() if "r-ssh" in line
    )
    netlab.nsexec(ns, "nft", "delete", "rule", "ip", "yunhan_sg", f"i_{S1.port}", "handle",
                  handle, check=True)  # fmt: skip
    assert not w.answer(A1, S1, "tcp", 22)
    docs = w.docs(BASE_GROUPS, BASE_MEMBERS)
    rep = w.dps["h2"].apply(docs["h2"])
    assert rep.errors == [] and rep.changes >= 1
    assert w.dps["h2"].plan(docs["h2"]) == []
    assert w.answer(A1, S1, "tcp", 22)


def test_an_acl_deny_beats_a_group_allow(world: World) -> None:
    w = world
    assert w.answer(A1, D1, "tcp", 22) and w.answer(A1, D1, "tcp", 7000)
    w.apply(BASE_GROUPS, BASE_MEMBERS, acl(NO_SSH, IN_ALL, OUT_ALL))
    assert not w.answer(A1, D1, "tcp", 22)  # the group allows it, the ACL denies it first
    assert w.answer(A1, D1, "tcp", 7000)
    assert w.answer(A1, S1, "tcp", 22)  # another subnet: no ACL
    # An ACL allows nothing the groups deny.
    assert not w.answer(A1, D1, "tcp", 80)
    # Without any rule of a direction, nothing crosses the subnet's edge that way.
    w.apply(BASE_GROUPS, BASE_MEMBERS, acl(OUT_ALL))
    assert not w.answer(A1, D1, "tcp", 7000)
    w.apply(BASE_GROUPS, BASE_MEMBERS)
    assert w.answer(A1, D1, "tcp", 22)


@pytest.mark.parametrize("world", ["linux", "fast"], indirect=True)
def test_acls_are_stateless(world: World) -> None:
    w = world
    # Ingress allowed, egress (the replies) not: the connection never completes, although
    # the security groups would let its replies through.
    w.apply(BASE_GROUPS, BASE_MEMBERS, acl(IN_ALL))
    assert not w.answer(A1, D1, "tcp", 7000)
    w.apply(BASE_GROUPS, BASE_MEMBERS, acl(IN_ALL, OUT_ALL))
    assert w.answer(A1, D1, "tcp", 7000)
    w.apply(BASE_GROUPS, BASE_MEMBERS)


@pytest.mark.parametrize("world", ["linux", "fast"], indirect=True)
def test_every_drop_is_logged_rate_limited_by_its_ports_reject_chain(world: World) -> None:
    w = world
    w.apply(BASE_GROUPS, BASE_MEMBERS, acl(NO_SSH, IN_ALL, OUT_ALL))
    ns = w.naming("h2").vpc_netns(VPC.vni)
    for chain, prefix in ((f"xi_{S1.port}", "yh sg i "), (f"xae_{D1.port}", "yh acl e ")):
        listing = netlab.nsexec(ns, "nft", "list", "chain", "ip", "yunhan_sg", chain).stdout
        assert f'limit rate 20/second burst 40 packets log prefix "{prefix}" group 7' in listing, (
            listing
        )
    # The port chains end in their reject chain, not in a bare drop.
    listing = netlab.nsexec(ns, "nft", "list", "chain", "ip", "yunhan_sg", f"i_{S1.port}").stdout
    assert f"goto xi_{S1.port}" in listing and "drop" not in listing
    assert not w.answer(A1, S1, "tcp", 80)  # still dropped
    w.apply(BASE_GROUPS, BASE_MEMBERS)
