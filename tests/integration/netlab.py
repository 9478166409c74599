"""A tiny underlay for data-plane integration tests: hosts as namespaces, two zones, a router.

    <p>-h1 eth0 198.18.1.11 ─┐                                      ┌─ eth0 198.18.2.13 <p>-h3
    <p>-h2 eth0 198.18.1.12 ─┴ br1 ─ gw1 198.18.1.1 <p>-rt gw2 198.18.2.1 ─ br2 ┘

Zone 1 is one L2 segment (a bridge in the router namespace); zone 2 is reached through
the router's forwarding, so overlay traffic to h3 crosses a routed hop. Every link is
created with both ends directly in our namespaces: nothing touches the root namespace.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

UNDERLAY_MTU = 1500


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def ip(ns: str, *args: str) -> str:
    return sh("ip", "-n", ns, *args)


def nsexec(ns: str, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check
    )


def list_netns() -> list[str]:
    out = sh("ip", "netns", "list")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class Host:
    name: str  # the host name in the documents
    netns: str  # the namespace playing the host
    underlay_ip: str
    vtep_index: int
    prefix: str  # Naming prefix of its agent


@dataclass
class Underlay:
    prefix: str
    router: str
    hosts: dict[str, Host] = field(default_factory=dict)

    def all_netns(self) -> list[str]:
        return [self.router, *(h.netns for h in self.hosts.values())]


def build(prefix: str, zones: Sequence[Sequence[str]] = (("h1", "h2"), ("h3",))) -> Underlay:
    """Create the router and the host namespaces (see the module docstring)."""
    u = Underlay(prefix, f"{prefix}-rt")
    sh("ip", "netns", "add", u.router)
    ip(u.router, "link", "set", "lo", "up")
    nsexec(u.router, "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
    index = 0
    for z, names in enumerate(zones, start=1):
        br = f"br{z}"
        ip(u.router, "link", "add", br, "mtu", str(UNDERLAY_MTU), "type", "bridge")
        ip(u.router, "link", "set", br, "up")
        # The zone gateway sits on a veth plugged into the bridge, not on the bridge: the
        # bridge device has no hw_enc_features, so VXLAN GSO super-frames routed out of it
        # would be segmented in software (about half the cross-zone throughput).
        ip(u.router, "link", "add", f"gw{z}", "mtu", str(UNDERLAY_MTU), "type", "veth",
           "peer", "name", f"gwp{z}", "mtu", str(UNDERLAY_MTU))  # fmt: skip
        ip(u.router, "link", "set", f"gwp{z}", "master", br, "up")
        ip(u.router, "addr", "add", f"198.18.{z}.1/24", "dev", f"gw{z}")
        ip(u.router, "link", "set", f"gw{z}", "up")
        for name in names:
            index += 1
            ns = f"{prefix}-{name}"
            host = Host(name, ns, f"198.18.{z}.{10 + index}", index, f"{prefix}-{name}-")
            sh("ip", "netns", "add", ns)
            ip(ns, "link", "set", "lo", "up")
            ip(u.router, "link", "add", f"to-{name}", "mtu", str(UNDERLAY_MTU), "type", "veth",
               "peer", "name", "eth0", "mtu", str(UNDERLAY_MTU), "netns", ns)  # fmt: skip
            ip(u.router, "link", "set", f"to-{name}", "master", br, "up")
            ip(ns, "addr", "add", f"{host.underlay_ip}/24", "dev", "eth0")
            ip(ns, "link", "set", "eth0", "up")
            ip(ns, "route", "add", "default", "via", f"198.18.{z}.1")
            u.hosts[name] = host
    return u


def owned(name: str, prefix: str) -> bool:
    """`name` is `prefix` or "<prefix>-…" (never "<prefix>0-…", another run's)."""
    return name == prefix or name.startswith(f"{prefix}-")


def teardown(prefix: str) -> list[str]:
    """Delete every namespace of `prefix` (see `owned`); returns what was removed."""
    gone = [n for n in list_netns() if owned(n, prefix)]
    for n in gone:
        sh("ip", "netns", "del", n, check=False)
    return gone
