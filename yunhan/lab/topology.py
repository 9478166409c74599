"""Realising a `RegionSpec` as network namespaces (the "build second" half of the lab).

Shape, for 2 zones x 2 hosts ("║" a veth pair):

    <p>-az1-h1  eth0 198.18.1.11/32 ║ az1-h1 198.18.1.1/32 ┐
    <p>-az1-h2  eth0 198.18.1.12/32 ║ az1-h2 198.18.1.1/32 │  <p>-core
    <p>-az2-h1  eth0 198.18.2.11/32 ║ az2-h1 198.18.2.1/32 ├  ip_forward, one /32
    <p>-az2-h2  eth0 198.18.2.12/32 ║ az2-h2 198.18.2.1/32 │  route per host
    <p>-internet eth0 198.19.0.2/24 ║ inet   198.19.0.1/24 ┘

Routed access, as in an L3 leaf-spine fabric: every host has one point-to-point link into
the core, its address as a /32 and a default route via its zone's gateway (`onlink`); the
core-side end of every link of a zone carries that zone's gateway address, and the core
routes each host's /32 to its link. Every host-to-host packet, and so all cross-AZ overlay
traffic, crosses exactly one L3 hop (a TTL decrement and a route lookup in the core).

The public pool (spec.public_pool) has no route of its own in the core: each address is
routed there by the agent of the host that runs its NAT gateway (`<ip>/32 via <host underlay
ip> dev <core port> onlink proto 89`, the lab's BGP announcement), so an address answers from
the internet namespace only while its gateway is in place, and follows it when it moves.

Why not a bridge per zone: a Linux bridge costs a traversal each way for every frame, and
one that routes (an address on the bridge device) has no `hw_enc_features`, so every
VXLAN GSO super-frame leaving through it is segmented in software (measured: cross-zone
throughput halved). Routed veths keep tunnel GSO end to end and cost two fewer hops.

Every veth is created with both ends directly inside lab namespaces (`ip -n A link add …
peer … netns B`), so no lab link or address ever exists in the root namespace and nothing
routes there from the root namespace. GRO/GSO/TSO stay at their defaults. The underlay MTU
is set on every link of the underlay.

Operations are ensure-style (STYLE §4): running `realise` twice changes nothing the
second time; `teardown` removes everything of the prefix and is safe to repeat.
"""

from __future__ import annotations

from collections.abc import Iterable

from yunhan.lab import cleanup
from yunhan.lab.cleanup import Removed, run
from yunhan.lab.spec import (
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


def _sysctl(ns: str, key: str, value: str) -> None:
    # /proc/sys/net is per network namespace: write it from inside the namespace (with sh,
    # not sysctl(8), which a minimal Debian lacks).
    path = "/proc/sys/" + key.replace(".", "/")
    run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"])


def realise(spec: RegionSpec) -> None:
    """Create (or complete) the region's namespaces, veths, addresses and routes.

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
        for host in zone.hosts:
            _ensure_veth(core, host.core_port, host.netns, HOST_UNDERLAY_IFNAME, mtu)
            _batch(
                core,
                [
                    f"link set {host.core_port} mtu {mtu} up",
                    f"addr replace {zone.gateway}/32 dev {host.core_port}",
                    f"route replace {host.underlay_ip}/32 dev {host.core_port}",
                ],
            )
            _batch(
                host.netns,
                [
                    f"link set {HOST_UNDERLAY_IFNAME} mtu {mtu} up",
                    f"addr replace {host.underlay_ip}/32 dev {HOST_UNDERLAY_IFNAME}",
                    f"route replace default via {host.gateway} dev {HOST_UNDERLAY_IFNAME} onlink",
                ],
            )

    inet_plen = spec.internet_cidr.split("/")[1]
    _ensure_veth(core, CORE_INTERNET_PORT, spec.internet_netns, INTERNET_IFNAME, mtu)
    _batch(
        core,
        [
            f"link set {CORE_INTERNET_PORT} mtu {mtu} up",
            f"addr replace {spec.internet_gateway}/{inet_plen} dev {CORE_INTERNET_PORT}",
        ],
    )
    _batch(
        spec.internet_netns,
        [
            f"link set {INTERNET_IFNAME} mtu {mtu} up",
            f"addr replace {spec.internet_ip}/{inet_plen} dev {INTERNET_IFNAME}",
            f"route replace default via {spec.internet_gateway} dev {INTERNET_IFNAME}",
        ],
    )


def teardown(prefix: str, spare: Iterable[str] = ()) -> Removed:
    """Remove every namespace (agents' included), process, mount and link of `prefix`,
    sparing the regions named in `spare` (see `cleanup.remove_prefix`)."""
    return cleanup.remove_prefix(prefix, spare)
