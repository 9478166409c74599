"""Probe injection in real namespaces: echoes sent from inside each source's namespace,
answers matched per pair, and the ways a probe fails told apart.

    <p>-a eth0 10.77.0.1/24 ── eth0 10.77.0.2/24 <p>-b (250 more addresses on lo,
    <p>-c eth0 10.77.0.3/24 ──┘ (a bridge in b)        an nft drop, an unreachable route)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from netlab import ip, sh, teardown

from yunhan.net import probes

pytestmark = pytest.mark.root
EXTRA = [f"10.78.{i // 250}.{i % 250 + 1}" for i in range(250)]


def _nft(ns: str, rule: str) -> None:
    sh("ip", "netns", "exec", ns, "nft", "add", "table", "ip", "t", check=False)
    chain = "{ type filter hook input priority 0 ; }"
    sh("ip", "netns", "exec", ns, "nft", "add", "chain", "ip", "t", "in", chain, check=False)
    sh("ip", "netns", "exec", ns, "nft", "add", "rule", "ip", "t", "in", *rule.split())


@pytest.fixture
def nets(uniq: Callable[[str], str]) -> Iterator[dict[str, str]]:
    prefix = uniq("probe")
    ns = {k: f"{prefix}-{k}" for k in ("a", "b", "c")}
    try:
        for n in ns.values():
            sh("ip", "netns", "add", n)
            ip(n, "link", "set", "lo", "up")
        b = ns["b"]
        ip(b, "link", "add", "br0", "type", "bridge")
        for k, addr in (("a", "10.77.0.1/24"), ("c", "10.77.0.3/24")):
            ip(b, "link", "add", f"p{k}", "type", "veth", "peer", "name", "eth0", "netns", ns[k])
            ip(b, "link", "set", f"p{k}", "master", "br0", "up")
            ip(ns[k], "addr", "add", addr, "dev", "eth0")
            ip(ns[k], "link", "set", "eth0", "up")
            ip(ns[k], "route", "add", "default", "via", "10.77.0.2")
        ip(b, "addr", "add", "10.77.0.2/24", "dev", "br0")
        ip(b, "link", "set", "br0", "up")
        batch = "".join(f"addr add {x}/32 dev lo\n" for x in EXTRA)
        sh("ip", "-n", b, "-batch", "-", input=batch)
        sh("ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ip(b, "route", "add", "unreachable", "10.79.0.0/16")
        _nft(b, "ip saddr 10.77.0.3 ip daddr 10.78.0.7 drop")
        yield ns
    finally:
        teardown(prefix)


def test_every_pair_is_answered_or_says_why(nets: dict[str, str]) -> None:
    srcs = [probes.Source(nets["a"]), probes.Source(nets["c"]), probes.Source(nets["b"])]
    pairs = [(0, x) for x in EXTRA] + [(1, x) for x in EXTRA]
    pairs += [(0, "10.77.0.3"), (1, "10.79.1.1"), (2, "10.80.0.1"), (0, "10.77.0.99")]
    out = probes.inject(srcs, pairs, timeout=0.8)
    by = dict(zip(pairs, out, strict=True))
    # 500 pairs through one router, all answered, each with its own round trip.
    for x in EXTRA:
        assert by[(0, x)].reached and by[(0, x)].rtt_ms is not None, x
        if x != "10.78.0.7":
            assert by[(1, x)].reached, x
    # The nft rule drops c's echo to 10.78.0.7 silently: retried, never answered.
    drop = by[(1, "10.78.0.7")]
    assert not drop.reached and drop.sent == len(probes.ATTEMPTS) and not drop.error
    # A neighbour on the segment answers directly.
    assert by[(0, "10.77.0.3")].reached
    # The router's unreachable route answers with an ICMP error, and who sent it.
    err = by[(1, "10.79.1.1")]
    assert not err.reached and err.error == "host unreachable from 10.77.0.2"
    # b has no route to 10.80/16: its own routing refuses the send.
    own = by[(2, "10.80.0.1")]
    assert not own.reached and "routing refuses it" in own.error and own.sent == 0
    # Nobody holds 10.77.0.99: ARP fails, no answer.
    assert not by[(0, "10.77.0.99")].reached


def test_a_source_bound_to_an_address_sends_from_it(nets: dict[str, str]) -> None:
    sh("ip", "-n", nets["a"], "addr", "add", "10.77.0.11/24", "dev", "eth0")
    # b answers 10.77.0.11 only if it was the source; a drop for the primary shows it.
    _nft(nets["b"], "ip saddr 10.77.0.1 icmp type echo-request drop")
    plain, bound = probes.inject(
        [probes.Source(nets["a"]), probes.Source(nets["a"], "10.77.0.11")],
        [(0, "10.77.0.2"), (1, "10.77.0.2")],
        timeout=0.5,
    )
    assert not plain.reached and bound.reached


def test_a_missing_namespace_fails_its_pairs_only(nets: dict[str, str]) -> None:
    out = probes.inject(
        [probes.Source(nets["a"] + "-gone"), probes.Source(nets["a"])],
        [(0, "10.77.0.2"), (1, "10.77.0.2")],
        timeout=0.5,
    )
    assert not out[0].reached and out[0].error.startswith("cannot open a socket in")
    assert out[1].reached
