"""`yunhan trace --live` on real namespaces: the model and the probe agree, case by case.

The scenarios of test_routing_linux (two hosts, clients, servers and appliances; every
instance serves TCP 7000/22/80) on the linux driver: for each, the model trace over the
same documents, then a live probe followed by nft tracing and `ip route get`, and
`agree(model, live)` must find nothing. Afterwards no trace table is left anywhere.

Not here: test_routing_linux's "outside" destination, an address its appliances hold on
`lo` behind the documents' back. The model cannot see inside an instance (its addresses,
ip_forward, its own firewall): it takes an instance that receives another's packet for a
forwarder. The live probe shows where that assumption fails.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.integration import netlab
from tests.integration.test_routing_linux import A1, B1, B2, FW1, FW2, World, routing, world
from tests.worlds import WInstance, WPolicy, WRoute, WRouting
from yunhan.net.naming import Naming
from yunhan.net.trace import Proto, trace
from yunhan.net.tracelive import TABLE, Lab, Watch, agree, run

__all__ = ["world"]  # the fixture, re-exported for pytest

CASES: list[tuple[str, WRouting, WInstance, str, Proto, int | None]] = [
    ("direct tcp", routing(), A1, B1.ip, "tcp", 7000),
    ("direct icmp", routing(), A1, B1.ip, "icmp", None),
    ("no member", routing(), A1, "10.2.2.99", "icmp", None),
    ("outside, no gateway", routing(), A1, "198.19.0.2", "udp", 53),
    (
        "appliance on the other host",
        routing(t1=(WRoute("10.2.2.0/24", f"instance:{FW1.id}"),)),
        A1, B1.ip, "tcp", 7000,
    ),
    (
        "appliance on the source host",
        routing(t1=(WRoute("10.2.2.0/24", f"instance:{FW2.id}"),)),
        A1, B1.ip, "tcp", 7000,
    ),
    (
        "two tables",
        routing(t1=(WRoute("10.2.2.0/24", f"instance:{FW1.id}"),)),
        B2, B1.ip, "tcp", 7000,
    ),
    (
        "blackhole",
        routing(t1=(WRoute("10.2.2.0/24", "blackhole"),)),
        A1, B1.ip, "icmp", None,
    ),
    (
        "unreachable",
        routing(t1=(WRoute("10.2.2.0/24", "unreachable"),)),
        A1, B1.ip, "tcp", 22,
    ),
    (
        "policy drop tcp/22",
        routing(policies=(WPolicy(1, 11, 10, "drop", None, "10.2.2.0/24", "tcp", (22, 22)),)),
        A1, B1.ip, "tcp", 22,
    ),
    (
        "policy drop lets icmp through",
        routing(policies=(WPolicy(1, 11, 10, "drop", None, "10.2.2.0/24", "tcp", (22, 22)),)),
        A1, B1.ip, "icmp", None,
    ),
    (
        "policy reroute tcp/80",
        routing(policies=(WPolicy(1, 12, 20, "reroute", None, "10.2.2.0/24", "tcp", (80, 80),
                                  f"instance:{FW1.id}"),)),
        A1, B1.ip, "tcp", 80,
    ),
]  # fmt: skip


def _lab(w: World) -> Lab:
    return Lab(
        prefixes={h.name: w.naming(h.name).prefix for h in w.hosts},
        host_netns={h.name: str(w.host_netns[h.name]) for h in w.hosts},
    )


@pytest.mark.root
@pytest.mark.parametrize("world", ["linux"], indirect=True)  # a live probe needs the kernel
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_the_live_probe_agrees_with_the_model(
    world: World, case: tuple[str, WRouting, WInstance, str, Proto, int | None]
) -> None:
    assert world.driver == "linux"
    _name, r, src, dst, proto, port = case
    world.apply(r)
    model = trace(world.docs(r), src.host, src.id, dst, proto, port)
    lab = _lab(world)
    extra = [
        Watch(Naming(lab.prefixes[i.host]).instance_netns(i.id), i.host, "instance")
        for i in (A1, B1, B2, FW1, FW2)
    ]
    live = run(model, lab, extra=extra)
    assert agree(model, live) == [], model.render() + live.render()
    # nothing of the trace is left behind
    for ns in netlab.list_netns():
        if netlab.owned(ns, world.prefix):
            tables = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "list", "tables"],
                capture_output=True, text=True, check=False,
            ).stdout  # fmt: skip
            assert TABLE not in tables, ns
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False)
    assert not [p for p in procs.stdout.splitlines() if "nft monitor" in p and world.prefix in p]
