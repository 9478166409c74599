"""The description of a lab region: plain, frozen data, validated before anything is built.

Mininet style (STYLE §2): `RegionSpec.build(...)` computes the whole address plan and every
name up front, so that a region can be printed (`yunhan up --dry-run`), stored in the region
record, compared, and only then realised by `yunhan.lab.topology`.

Address plan (all inside the benchmarking range 198.18.0.0/15, never routed from the root
namespace):

    zone z (1-based)     198.18.z.0/24, gateway 198.18.z.1 in the core (see topology)
    host h of zone z     198.18.z.(10+h)/32 on a point-to-point link into the core;
                         .2-.10 stay free for zone services (NAT, LB …)
    internet link        198.19.0.0/24: core 198.19.0.1, "internet" namespace 198.19.0.2
    public pool          198.19.128.0/24: NAT gateway and elastic IP addresses, given to the
                         API server; the core routes each one only to the host announcing it

Names: every namespace is "<prefix>-<something>" so that `down` and `sweep` find all of it,
including what the agents create under "<host netns>-" (VPC and instance namespaces).
Interface names only ever exist inside our namespaces and are short and fixed.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

from yunhan.errors import ValidationError

UNDERLAY = ipaddress.IPv4Network("198.18.0.0/15")
INTERNET_CIDR = ipaddress.IPv4Network("198.19.0.0/24")
PUBLIC_POOL = ipaddress.IPv4Network("198.19.128.0/24")
ECHO_PORT = 80  # the internet namespace's HTTP server (yunhan.lab.echo)
HOST_OFFSET = 10
MAX_ZONES = 200
MAX_HOSTS_PER_ZONE = 240
MIN_MTU = 1280
MAX_MTU = 9000
# Names of the fixed interfaces; every one lives inside a lab namespace.
HOST_UNDERLAY_IFNAME = "eth0"
INTERNET_IFNAME = "eth0"
CORE_INTERNET_PORT = "inet"

# A region prefix: "yh" + 4 hex digits by default; tests pass their own run prefix
# ("t3fa2-7"). Lowercase letters, digits and inner dashes; short enough that namespace
# names stay readable.
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
MAX_PREFIX_LEN = 24
REGION_PREFIX_RE = re.compile(r"^yh[0-9a-f]{4}$")


def new_prefix() -> str:
    """A fresh region prefix, "yh" + 4 hex digits."""
    return f"yh{secrets.token_hex(2)}"


DATAPATHS = ("fast", "kernel")


@dataclass(frozen=True)
class HostSpec:
    """One lab host: a namespace with one routed link into the core (its "top of rack")."""

    name: str  # the host's name in the API ("az1-h1")
    zone: str  # zone name ("az1")
    netns: str  # "<prefix>-az1-h1"
    underlay_ip: str
    prefixlen: int
    gateway: str
    core_port: str  # the core-side veth end; carries the zone gateway address

    @property
    def agent_prefix(self) -> str:
        """What the agent puts in front of its own namespaces ("<host netns>-")."""
        return f"{self.netns}-"


@dataclass(frozen=True)
class ZoneSpec:
    """One availability zone: an underlay address range, its gateway, and its hosts."""

    name: str
    index: int
    cidr: str
    gateway: str
    hosts: tuple[HostSpec, ...]


@dataclass(frozen=True)
class RegionSpec:
    """A whole lab region. Build it with `RegionSpec.build`, check it with `validate`."""

    prefix: str
    mtu: int
    underlay: str
    zones: tuple[ZoneSpec, ...]
    core_netns: str
    internet_netns: str
    internet_cidr: str
    internet_gateway: str
    internet_ip: str
    public_pool: str = str(PUBLIC_POOL)
    # The agents' data path (docs/datapath.md): "fast" adds the tc-BPF fast path where the
    # host supports it; "kernel" keeps every packet on the kernel path.
    datapath: str = "fast"

    @classmethod
    def build(
        cls,
        prefix: str | None = None,
        zones: int = 2,
        hosts_per_zone: int = 2,
        mtu: int = 1500,
        datapath: str = "fast",
    ) -> RegionSpec:
        """Compute the full plan for `zones` x `hosts_per_zone`; raises ValidationError."""
        prefix = prefix or new_prefix()
        _check_counts(prefix, zones, hosts_per_zone, mtu)
        zone_specs = []
        for z in range(1, zones + 1):
            net = ipaddress.IPv4Network(f"198.18.{z}.0/24")
            gw = str(net.network_address + 1)
            zname = f"az{z}"
            hosts = tuple(
                HostSpec(
                    name=f"{zname}-h{h}",
                    zone=zname,
                    netns=f"{prefix}-{zname}-h{h}",
                    underlay_ip=str(net.network_address + HOST_OFFSET + h),
                    prefixlen=net.prefixlen,
                    gateway=gw,
                    core_port=f"{zname}-h{h}",
                )
                for h in range(1, hosts_per_zone + 1)
            )
            zone_specs.append(
                ZoneSpec(
                    name=zname,
                    index=z,
                    cidr=str(net),
                    gateway=gw,
                    hosts=hosts,
                )
            )
        spec = cls(
            prefix=prefix,
            mtu=mtu,
            underlay=str(UNDERLAY),
            zones=tuple(zone_specs),
            core_netns=f"{prefix}-core",
            internet_netns=f"{prefix}-internet",
            internet_cidr=str(INTERNET_CIDR),
            internet_gateway=str(INTERNET_CIDR.network_address + 1),
            internet_ip=str(INTERNET_CIDR.network_address + 2),
            public_pool=str(PUBLIC_POOL),
            datapath=datapath,
        )
        spec.validate()
        return spec

    # -- views ---------------------------------------------------------------------------

    @property
    def hosts(self) -> tuple[HostSpec, ...]:
        return tuple(h for z in self.zones for h in z.hosts)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace the topology itself creates (agents add more under the prefix)."""
        return (self.core_netns, self.internet_netns, *(h.netns for h in self.hosts))

    def owns(self, name: str) -> bool:
        """True for any namespace of this region, the agents' ones included."""
        return name.startswith(f"{self.prefix}-")

    def validate(self) -> None:
        """Check that the plan is consistent: names, sizes, addresses; raises ValidationError."""
        _check_counts(self.prefix, len(self.zones), max(len(z.hosts) for z in self.zones), self.mtu)
        if self.datapath not in DATAPATHS:
            raise ValidationError(f"--datapath must be fast or kernel, not {self.datapath!r}")
        underlay = ipaddress.IPv4Network(self.underlay)
        seen_ips: set[str] = set()
        seen_ns: set[str] = set()
        cidrs: list[ipaddress.IPv4Network] = [ipaddress.IPv4Network(self.internet_cidr)]
        for ns in self.namespaces:
            if not self.owns(ns):
                raise ValidationError(f"namespace {ns!r} does not carry the prefix {self.prefix!r}")
            if ns in seen_ns:
                raise ValidationError(f"namespace {ns!r} appears twice")
            seen_ns.add(ns)
        for z in self.zones:
            net = ipaddress.IPv4Network(z.cidr)
            if not net.subnet_of(underlay):
                raise ValidationError(
                    f"zone {z.name} cidr {net} is outside the underlay {underlay}"
                )
            for other in cidrs:
                if net.overlaps(other):
                    raise ValidationError(f"zone {z.name} cidr {net} overlaps {other}")
            cidrs.append(net)
            for h in z.hosts:
                ip = ipaddress.IPv4Address(h.underlay_ip)
                if ip not in net or ip in (net.network_address, net.broadcast_address):
                    raise ValidationError(f"host {h.name} address {ip} is not usable in {net}")
                if h.underlay_ip in seen_ips or h.underlay_ip == z.gateway:
                    raise ValidationError(f"address {ip} is used twice")
                seen_ips.add(h.underlay_ip)
                if len(h.core_port) > 15:
                    raise ValidationError(f"interface name {h.core_port!r} is over 15 characters")
        inet = ipaddress.IPv4Network(self.internet_cidr)
        if not inet.subnet_of(underlay):
            raise ValidationError(f"internet link {inet} is outside the underlay {underlay}")
        pool = ipaddress.IPv4Network(self.public_pool)
        if not pool.subnet_of(underlay):
            raise ValidationError(f"public pool {pool} is outside the underlay {underlay}")
        for other in cidrs:
            if pool.overlaps(other):
                raise ValidationError(f"public pool {pool} overlaps {other}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegionSpec:
        """Inverse of `to_dict` (the region record stores the spec as JSON)."""
        zones = tuple(
            ZoneSpec(**{**z, "hosts": tuple(HostSpec(**h) for h in z["hosts"])})
            for z in data["zones"]
        )
        spec = cls(**{**data, "zones": zones})
        spec.validate()
        return spec

    def render(self) -> str:
        """A human-readable plan, as `yunhan up --dry-run` prints it."""
        n_hosts = len(self.hosts)
        lines = [
            f"region {self.prefix}: {len(self.zones)} zones, {n_hosts} hosts, "
            f"underlay {self.underlay} MTU {self.mtu}, {self.datapath} data path",
            f"  core      netns {self.core_netns} (routes between zones, ip_forward on)",
            f"  internet  netns {self.internet_netns} {self.internet_ip}/"
            f"{ipaddress.IPv4Network(self.internet_cidr).prefixlen} "
            f"via {self.internet_gateway} ({CORE_INTERNET_PORT} in core), "
            f"HTTP echo on port {ECHO_PORT}",
            f"  public    pool {self.public_pool} (NAT gateways and EIPs; the core routes each "
            "address to the host that announces it)",
        ]
        for z in self.zones:
            lines.append(
                f"  zone {z.name:<5} {z.cidr:<16} gateway {z.gateway} "
                "(in core, on each host's link)"
            )
            for h in z.hosts:
                lines.append(f"    host {h.name:<10} {h.underlay_ip:<14} netns {h.netns}")
        return "\n".join(lines)


def _check_counts(prefix: str, zones: int, hosts_per_zone: int, mtu: int) -> None:
    if len(prefix) > MAX_PREFIX_LEN or not _PREFIX_RE.match(prefix):
        raise ValidationError(
            f"region prefix {prefix!r} is invalid: use up to {MAX_PREFIX_LEN} characters "
            "a-z, 0-9 and inner '-', starting with a letter (default: 'yh' + 4 hex digits)"
        )
    if not 1 <= zones <= MAX_ZONES:
        raise ValidationError(f"--zones must be between 1 and {MAX_ZONES}, not {zones}")
    if not 1 <= hosts_per_zone <= MAX_HOSTS_PER_ZONE:
        raise ValidationError(
            f"--hosts-per-zone must be between 1 and {MAX_HOSTS_PER_ZONE}, not {hosts_per_zone}"
        )
    if not MIN_MTU <= mtu <= MAX_MTU:
        # The overlay subtracts 50 bytes of VXLAN; below 1280 instances could not carry IPv6.
        raise ValidationError(f"--mtu must be between {MIN_MTU} and {MAX_MTU}, not {mtu}")
