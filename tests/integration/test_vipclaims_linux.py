"""A VIP follows gratuitous ARP on real namespaces: the agent's part of issue 9 item 2.

Two hosts. r (h1) and b (h2) may hold VIP 10.7.1.100, delivered to r at epoch 4; c (h2),
not allowed, is the client. Every instance answers TCP on 7000 with its hostname; r has
the VIP on its `lo` from the start (it was master).

h1 is a data plane given its document directly; h2 runs the real `Agent` (its watch loop,
its apply, its VIP claims with the kernel's ARP socket) against a fake control plane on an
`httpx.MockTransport`: it serves h2's document (as the engine's entries, long-polled) and
decides claims as `controller.vips` does. The real API and controller are not in the loop
(their side is tested in tests/unit/test_api_vips.py and test_controller_vips.py); the
client is on the claimant's host, whose re-pointing is the agent's own: the other hosts
follow when the controller publishes the claim, which is the engine's business.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.integration import netlab
from tests.polling import wait_for
from tests.worlds import WHost, WInstance, WVpc, documents
from yunhan.agent.dataplane import DataPlane
from yunhan.agent.main import STORE_HEADER, Agent, AgentConfig
from yunhan.compute import netns_sandbox
from yunhan.controller.netcompile import VipIn
from yunhan.net import nsutil
from yunhan.net.arpwatch import ARP_REQUEST, Arp, encode_arp
from yunhan.net.desired import HostDesired
from yunhan.net.docentries import Delta, entries_of
from yunhan.net.naming import Naming, short_id

pytestmark = pytest.mark.root

SERVER = (
    "import socket\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 7000))\n"
    "s.listen(16)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(socket.gethostname().encode())\n"
    "    c.close()\n"
)
CMD = (sys.executable, "-c", SERVER)
ASK = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], 7000), timeout=1)\n"
    "    print(s.recv(100).decode())\n"
    "except OSError:\n"
    "    pass\n"
)
# A raw frame out of the instance's eth0 (hex in argv[1]), as keepalived sends it.
SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
    "s.bind(('eth0', 0))\n"
    "for _ in range(3):\n"  # keepalived repeats itself
    "    s.send(bytes.fromhex(sys.argv[1]))\n"
)

VIP = "10.7.1.100"
VIP_ID = "vip-0000e0"
VPC = WVpc("vpc-e", 350, ("10.7.0.0/16",), ("10.7.1.0/24",))
R = WInstance("inst-0000e001", "h1", "vpc-e", "10.7.1.10", command=CMD)
B = WInstance("inst-0000e002", "h2", "vpc-e", "10.7.1.20", command=CMD)
C = WInstance("inst-0000e003", "h2", "vpc-e", "10.7.1.30", command=CMD)


def _docs(hosts: list[WHost], holder: WInstance, epoch: int) -> dict[str, HostDesired]:
    insts = [
        WInstance(i.id, i.host, i.vpc, i.ip, allowed_ips=(VIP,) if i is holder else (),
                  command=i.command)
        for i in (R, B, C)
    ]  # fmt: skip
    return documents(hosts, [VPC], insts, vips=[VipIn(VIP_ID, VPC.id, VIP, (R.id, B.id), epoch)])


class FakeControlPlane:
    """h2's side of the agent protocol: registration, status, a long-polled document, VIP
    claims decided like `controller.vips.decide_claim` (no damping)."""

    def __init__(self, doc: HostDesired) -> None:
        self.cond = threading.Condition()
        self.doc, self.revision = doc, 1
        self.holder, self.epoch = R.id, 4
        self.claims: list[dict[str, Any]] = []

    def publish(self, doc: HostDesired, holder: WInstance, epoch: int) -> None:
        """A new document: the controller moved the VIP to `holder` at `epoch`."""
        with self.cond:
            self.doc, self.revision = doc, self.revision + 1
            self.holder, self.epoch = holder.id, epoch
            self.cond.notify_all()

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v1/agent/hosts/h2")
        headers = {STORE_HEADER: "store-1"}
        if path == "/desired":
            after = int(request.url.params.get("after", "0"))
            wait = min(float(request.url.params.get("timeout", "0")), 0.5)
            with self.cond:
                self.cond.wait_for(lambda: self.revision > after, timeout=wait)
                if self.revision <= after:
                    return httpx.Response(204, headers=headers)
                body = Delta("h2", self.revision, True, (), entries_of(self.doc)).to_json()
            return httpx.Response(200, json=body, headers=headers)
        if path == "/vip-claims":
            with self.cond:
                claims = json.loads(request.content)["claims"]
                self.claims.extend(claims)
                return httpx.Response(200, json={"results": [self._decide(c) for c in claims]})
        return httpx.Response(200, json={})  # registration, status, flow records

    def _decide(self, c: dict[str, Any]) -> dict[str, Any]:
        if c["instance"] not in (R.id, B.id):
            result = "not_allowed"
        elif c["epoch_seen"] < self.epoch:
            result = "stale"
        elif c["instance"] == self.holder:
            result = "held"
        elif c.get("how") == "traffic" and self.holder is not None:
            result = "taken"
        else:
            result = "won"
            self.holder, self.epoch = c["instance"], self.epoch + 1
        return {**c, "result": result, "vip": VIP_ID, "epoch": self.epoch}


@dataclass
class World:
    prefix: str
    hosts: list[WHost]
    api: FakeControlPlane
    agent: Agent

    def ns(self, inst: WInstance) -> str:
        return Naming(f"{self.prefix}-{inst.host}-").instance_netns(inst.id)

    def who(self, src: WInstance, dst: str) -> str | None:
        """The instance answering TCP 7000 at `dst` from `src`, or None."""
        out = netlab.nsexec(self.ns(src), sys.executable, "-c", ASK, dst).stdout.strip()
        return next((i.id for i in (R, B, C) if out == f"vm-{short_id(i.id)}"), None)

    def announce(self, inst: WInstance) -> None:
        frame = encode_arp(Arp(ARP_REQUEST, inst.mac_or_default(), VIP, "00:00:00:00:00:00", VIP))
        p = netlab.nsexec(self.ns(inst), sys.executable, "-c", SEND, frame.hex())
        assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module", params=["kernel", "fast"])
def world(
    request: pytest.FixtureRequest, run_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """Both data paths: the kernel path alone, and with the tc-BPF fast path beside it
    (docs/datapath.md; packets to a VIP always take the kernel path)."""
    if os.geteuid() != 0:
        pytest.fail("the linux driver needs root")
    datapath = request.param
    prefix = f"{run_prefix}vc{datapath[0]}"
    state = tmp_path_factory.mktemp("vipclaims")
    dps: list[DataPlane] = []
    agent: Agent | None = None
    runner: threading.Thread | None = None
    try:
        u = netlab.build(prefix, (("h1", "h2"),))
        hosts = [WHost(h.name, h.underlay_ip, h.vtep_index) for h in u.hosts.values()]
        docs = _docs(hosts, R, 4)
        h1, h2 = u.hosts["h1"], u.hosts["h2"]
        dp1 = DataPlane(naming=Naming(h1.prefix), host_netns=h1.netns, driver="linux",
                        state_dir=state / "h1", datapath=datapath)  # fmt: skip
        dps.append(dp1)
        rep = dp1.apply(docs["h1"])
        assert rep.errors == [], rep.errors
        dp2 = DataPlane(naming=Naming(h2.prefix), host_netns=h2.netns, driver="linux",
                        state_dir=state / "h2", datapath=datapath)  # fmt: skip
        dps.append(dp2)
        api = FakeControlPlane(docs["h2"])
        config = AgentConfig(
            api_url="http://control-plane.invalid",
            token="test-token",
            host_name="h2",
            zone="az1",
            underlay_ip=h2.underlay_ip,
            mtu=netlab.UNDERLAY_MTU,
            host_netns=h2.netns,
            prefix=h2.prefix,
            state_dir=state / "h2-agent",
        )
        config.state_dir.mkdir()
        agent = Agent(config, dp2, transport=httpx.MockTransport(api.handle))
        runner = threading.Thread(target=agent.run, name="agent-h2", daemon=True)
        runner.start()
        w = World(prefix, hosts, api, agent)
        wait_for(lambda: agent.applied_revision == 1, 30.0, "h2's agent to apply its document")
        assert agent.report is not None and agent.report.errors == [], agent.report
        netlab.ip(w.ns(R), "addr", "add", f"{VIP}/32", "dev", "lo")  # r is master
        wait_for(lambda: w.who(C, VIP) == R.id, 20.0, "c to reach the VIP at r")
        yield w
    finally:
        try:
            if agent is not None:
                agent.stop()
            if runner is not None:
                runner.join(timeout=10.0)
            for dp in dps:
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


def test_a_standby_that_announces_the_vip_gets_its_traffic_then_the_controller_decides(
    world: World,
) -> None:
    w = world
    assert w.agent.vips is not None
    # b becomes master (keepalived: the address, then gratuitous ARP, several times)
    netlab.ip(w.ns(B), "addr", "add", f"{VIP}/32", "dev", "lo")
    w.announce(B)
    wait_for(lambda: w.who(C, VIP) == B.id, 10.0, "c to reach the VIP at b")
    # reported once (the repeats deduplicated), with the epoch the agent knew; it won
    wait_for(lambda: w.agent.vips is not None and w.agent.vips.epoch(VIP_ID) == 5, 10.0,
             "the claim's result")  # fmt: skip
    assert [(c["vip_ip"], c["vpc"], c["instance"], c["epoch_seen"]) for c in w.api.claims] == [
        (VIP, VPC.id, B.id, 4)
    ]
    # The controller decides otherwise (a `vip move` back to r, epoch 6; b's keepalived
    # steps down and drops the address): its document wins, the head start is gone.
    netlab.ip(w.ns(B), "addr", "del", f"{VIP}/32", "dev", "lo")
    w.api.publish(_docs(w.hosts, R, 6)["h2"], R, 6)
    wait_for(lambda: w.who(C, VIP) == R.id, 10.0, "c to reach the VIP at r again")
    assert w.agent.vips.heads == {}


def test_an_instance_not_allowed_is_reported_and_followed_by_nobody(world: World) -> None:
    w = world
    assert w.agent.vips is not None
    before = len(w.api.claims)
    w.announce(C)
    wait_for(lambda: len(w.api.claims) > before, 10.0, "c's claim to be reported")
    assert [(c["instance"], c["vip_ip"]) for c in w.api.claims[before:]] == [(C.id, VIP)]
    assert w.agent.vips.heads == {}
    assert w.who(C, VIP) == R.id


SEND_FROM = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1], 0))\n"
    "for _ in range(5):\n"
    "    s.sendto(b'hello', (sys.argv[2], 9))\n"
)


def test_a_standby_sending_from_the_vip_is_reported_and_the_holder_s_traffic_is_not(
    world: World,
) -> None:
    """The socket filter on the real kernel: b sending from the VIP (no announcement) is
    seen and claimed as traffic, which the control plane refuses while r holds it; r's own
    replies from the VIP, arriving over the overlay, are no news."""
    w = world
    assert w.agent.vips is not None
    before = len(w.api.claims)
    assert w.who(C, VIP) == R.id  # r answers from the VIP, over the overlay: no claim
    netlab.ip(w.ns(B), "addr", "add", f"{VIP}/32", "dev", "lo")
    try:
        p = netlab.nsexec(w.ns(B), sys.executable, "-c", SEND_FROM, VIP, C.ip)
        assert p.returncode == 0, p.stderr
        wait_for(lambda: len(w.api.claims) > before, 10.0, "b's traffic claim to be reported")
        got = [(c["instance"], c["how"]) for c in w.api.claims[before:]]
        assert got == [(B.id, "traffic")]  # once (deduplicated), and nothing of r
        assert w.agent.vips.heads == {}  # no head start for traffic
        assert w.who(C, VIP) == R.id  # taken: r keeps it
    finally:
        netlab.ip(w.ns(B), "addr", "del", f"{VIP}/32", "dev", "lo")
