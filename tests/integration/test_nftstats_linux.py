"""Traffic counters in real namespaces (docs/cutover.md): a router between a client LAN and
a "line" counts real pings per prefix and direction, once per packet, on the line or inside
the site; as a host it counts at instance ports; and a packet a filter drops is not
counted as carried."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from netlab import ip, nsexec, sh, teardown

from yunhan.net import nft, nftstats
from yunhan.net.nftstats import Key

pytestmark = pytest.mark.root

A, B = "192.168.100.0/24", "192.168.101.0/24"
LINKS = (  # (far namespace, its peer's name in the router, far address, router address)
    ("c", "p-c1", "192.168.100.2", "192.168.100.1"),
    ("s", "line0", "192.168.101.2", "192.168.101.1"),
)


@pytest.fixture
def site(uniq: Callable[[str], str]) -> Iterator[dict[str, str]]:
    """client (192.168.100.2) - [p-c1 | router | line0] - server (192.168.101.2)."""
    prefix = uniq("ts")
    ns = {"c": f"{prefix}-c", "r": f"{prefix}-r", "s": f"{prefix}-s"}
    try:
        for n in ns.values():
            sh("ip", "netns", "add", n)
            ip(n, "link", "set", "lo", "up")
        for far, near, far_ip, near_ip in LINKS:
            sh("ip", "link", "add", "eth0", "netns", ns[far], "type", "veth",
               "peer", "name", near, "netns", ns["r"])  # fmt: skip
            ip(ns[far], "addr", "add", f"{far_ip}/24", "dev", "eth0")
            ip(ns[far], "link", "set", "eth0", "up")
            ip(ns[far], "route", "add", "default", "via", near_ip)
            ip(ns["r"], "addr", "add", f"{near_ip}/24", "dev", near)
            ip(ns["r"], "link", "set", near, "up")
        sh("ip", "netns", "exec", ns["r"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        yield ns
    finally:
        teardown(prefix)


def _ping(ns: dict[str, str], count: int, size: int) -> tuple[int, int]:
    p = nsexec(ns["c"], "ping", "-q", "-i", "0.01", "-W", "1", "-c", str(count), "-s",
               str(size), "192.168.101.2")  # fmt: skip
    m = re.search(r"(\d+) packets transmitted, (\d+) received", p.stdout)
    assert m, p.stdout + p.stderr
    return int(m.group(1)), int(m.group(2))


def _read(netns: str) -> dict[Key, tuple[int, int]]:
    listing = nft.run(netns, f"list counters table ip {nftstats.TABLE}")
    return {k: v for k, v in nftstats.parse_counters(listing).items() if v != (0, 0)}


def test_the_switch_counts_the_line_once_per_packet_and_prefix(site: dict[str, str]) -> None:
    nft.run(site["r"], nftstats.script("switch", [A, B]))
    sent, got = _ping(site, 40, 100)
    assert sent == got == 40
    size = 128  # IP: 20 + ICMP 8 + 100
    assert _read(site["r"]) == {
        Key("line", B, "in"): (40, 40 * size),  # requests to B, across the line
        Key("line", A, "out"): (40, 40 * size),  # ...which are from A
        Key("line", B, "out"): (40, 40 * size),  # replies
        Key("line", A, "in"): (40, 40 * size),
    }


def test_a_host_counts_at_its_ports_and_not_what_a_filter_drops(site: dict[str, str]) -> None:
    nft.run(site["r"], nftstats.script("vpc", [B]))
    assert _ping(site, 30, 200) == (30, 30)
    assert _read(site["r"]) == {
        Key("sent", B, "in"): (30, 30 * 228),  # in from p-c1
        Key("delivered", B, "out"): (30, 30 * 228),  # out to p-c1
    }
    # a security group's drop (a filter at priority 0) comes before the count
    nft.run(site["r"], "add table ip sg\n"
            "add chain ip sg f { type filter hook forward priority 0; policy accept; }\n"
            "add rule ip sg f ip daddr 192.168.101.2 icmp type echo-request drop\n")  # fmt: skip
    assert _ping(site, 10, 200) == (10, 0)
    assert _read(site["r"])[Key("sent", B, "in")] == (30, 30 * 228)
    # replacing the table with the same prefixes is what the agent never does; with none
    # it goes away
    nft.run(site["r"], nftstats.script("vpc", []))
    with pytest.raises(Exception, match="No such file"):
        _read(site["r"])
