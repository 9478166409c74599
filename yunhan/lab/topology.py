"""Realising a `RegionSpec` as network namespaces (the "build second" half of the lab).

Shape, for 2 zones x 1 host ("║" a veth pair, "─" a bridge port):

    <p>-az1-h1    eth0 198.18.1.11/24, default via 198.18.1.1
                   ║
    <p>-core      az1-h1 ─ br-az1  ─ gwp-az1  ║ gw-az1  198.18.1.1/24  ┐
                  az2-h1 ─ br-az2  ─ gwp-az2  ║ gw-az2  198.18.2.1/24  ├ ip_forward
                  inet   ─ br-inet ─ gwp-inet ║ gw-inet 198.19.0.1/24  ┘
                   ║ (az2-h1)        ║ (inet)
    <p>-az2-h1    eth0 198.18.2.11/24, default via 198.18.2.1
    <p>-internet  eth0 198.19.0.2/24, default via 198.19.0.1

Each zone is one L2 segment, a Linux bridge inside the core namespace: hosts of a zone
reach each other over the bridge, hosts of different zones through the core's IP
forwarding, so cross-AZ overlay traffic really crosses an L3 hop (TTL decrement, a route
lookup) without the cost of a namespace per zone router.

The zone's gateway address sits on a veth whose peer is a bridge port, not on the bridge
device itself. That is for throughput: the bridge device has no `hw_enc_features`, so an
encapsulated GSO packet (a VXLAN super-frame) routed out through it is segmented in
software, ~45 small packets that then also reach the far host one by one (measured: VXLAN
across zones at about half the speed). A veth keeps tunnel GSO end to end, and the bridge
only ever forwards port to port, which keeps the super-frame whole.

Every veth is created with both ends directly inside lab namespaces (`ip -n A link add …
peer … netns B`), so no lab link or address ever exists in the root namespace and nothing
routes there from the root namespace. GRO/GSO/TSO stay at their defaults. The underlay MTU
is set on every link of the underlay.

Operations are ensure-style (STYLE §4): running `realise` twice changes nothing the
second time; `teardown` removes everything of the prefix and is safe to repeat.
"""

from __future__ import annotations

from yunhan.lab import cleanup
from yunhan.lab.cleanup import Removed, run
from yunhan.lab.spec import (
    CORE_INTERNET_BRIDGE,
    CORE_INTERNET_GW,
    CORE_INTERNET_GW_PORT,
    CORE_INTERNET_PORT,
    HOST_UNDERLAY_IFNAME,
    INTERNET_IFNAME,
    RegionSpec,
)


def _ip(ns: str, *args: str) -> None:
    run(["ip", "-n", ns, *args])


def _batch(ns: str, lines: list[str]) -> None:
    """Several idempotent `ip` commands in one process (replace/set only, never add)."""
    run(["ip", "-n", ns, "-batch", "-"], input="".join(f"{line}\n" for line in lines))


def _links(ns: str) -> set[str]:
    out = run(["ip", "-n", ns, "-o", "link", "show"])
    return {line.split(":", 2)[1].strip().split("@", 1)[0] for line in out.splitlines()}


def _ensure_netns(names: list[str]) -> None:
    existing = set(cleanup.list_netns())
    for name in names:
        if name not in existing:
            run(["ip", "netns", "add", name])


def _ensure_veth(ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int) -> None:
    """A veth pair with one end in each namespace, created in place (never in the root ns)."""
    if name_a in _links(ns_a):
        return
    if name_b in _links(ns_b):
        # Half of a pair whose peer vanished (or a stray link): replace it.
        _ip(ns_b, "link", "del", name_b)
    _ip(ns_a, "link", "add", name_a, "mtu", str(mtu), "type", "veth",
        "peer", "name", name_b, "mtu", str(mtu), "netns", ns_b)  # fmt: skip


def _ensure_segment(ns: str, bridge: str, gw_if: str, gw_port: str, mtu: int, addr: str) -> None:
    """A bridge (an L2 segment) with the core's routed interface `gw_if` plugged into it."""
    if bridge not in _links(ns):
        # STP off (the default) lets a port forward at once; a lab zone has no loops.
        _ip(ns, "link", "add", bridge, "mtu", str(mtu), "type", "bridge")
    _ensure_veth(ns, gw_if, ns, gw_port, mtu)
    _batch(
        ns,
        [
            f"link set {bridge} mtu {mtu} up",
            f"link set {gw_port} master {bridge} mtu {mtu} up",
            f"link set {gw_if} mtu {mtu} up",
            f"addr replace {addr} dev {gw_if}",
        ],
    )


def _sysctl(ns: str, key: str, value: str) -> None:
    # /proc/sys/net is per network namespace: write it from inside the namespace (with sh,
    # not sysctl(8), which a minimal Debian lacks).
    path = "/proc/sys/" + key.replace(".", "/")
    run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"])


def realise(spec: RegionSpec) -> None:
    """Create (or complete) the region's namespaces, bridges, veths, addresses and routes.

    Raises DriverError naming the command the kernel refused; what was built stays, and
    `teardown(spec.prefix)` removes it.
    """
    spec.validate()
    _ensure_netns(list(spec.namespaces))
    core, mtu = spec.core_netns, spec.mtu
    for ns in spec.namespaces:
        _ip(ns, "link", "set", "lo", "up")
    _sysctl(core, "net.ipv4.ip_forward", "1")

    for zone in spec.zones:
        plen = zone.cidr.split("/")[1]
        _ensure_segment(
            core, zone.bridge, zone.gateway_if, zone.gateway_port, mtu, f"{zone.gateway}/{plen}"
        )
        for host in zone.hosts:
            _ensure_veth(core, host.core_port, host.netns, HOST_UNDERLAY_IFNAME, mtu)
            _batch(core, [f"link set {host.core_port} master {zone.bridge} mtu {mtu} up"])
            _batch(
                host.netns,
                [
                    f"link set {HOST_UNDERLAY_IFNAME} mtu {mtu} up",
                    f"addr replace {host.underlay_ip}/{host.prefixlen} dev {HOST_UNDERLAY_IFNAME}",
                    f"route replace default via {host.gateway} dev {HOST_UNDERLAY_IFNAME}",
                ],
            )

    inet_plen = spec.internet_cidr.split("/")[1]
    inet_gw = f"{spec.internet_gateway}/{inet_plen}"
    _ensure_segment(
        core, CORE_INTERNET_BRIDGE, CORE_INTERNET_GW, CORE_INTERNET_GW_PORT, mtu, inet_gw
    )
    _ensure_veth(core, CORE_INTERNET_PORT, spec.internet_netns, INTERNET_IFNAME, mtu)
    _batch(core, [f"link set {CORE_INTERNET_PORT} master {CORE_INTERNET_BRIDGE} mtu {mtu} up"])
    _batch(
        spec.internet_netns,
        [
            f"link set {INTERNET_IFNAME} mtu {mtu} up",
            f"addr replace {spec.internet_ip}/{inet_plen} dev {INTERNET_IFNAME}",
            f"route replace default via {spec.internet_gateway} dev {INTERNET_IFNAME}",
        ],
    )


def teardown(prefix: str) -> Removed:
    """Remove every namespace (agents' included), process, mount and link of `prefix`."""
    return cleanup.remove_prefix(prefix)
