"""The tc-BPF fast path beside the kernel path (docs/datapath.md).

The kernel path (VPC namespace routing, nftables) is the reference and stays complete:
the fast path only short-cuts packets whose fate it can decide exactly as the kernel path
would, and hands every other packet to it (TCX_NEXT). What it short-cuts: instance to
instance in one VPC, when

* the source is exactly the instance (its port, its own address, its MAC): anything else
  meets the port filter of the kernel path (anti-spoofing), VIP sources included;
* the source port has no security group, network ACL or flow log, and is no route's next
  hop (an appliance); its subnet's route table has no policy route, and no custom route
  takes the destination (a custom route as long as the VPC block or longer wins over the
  direct route in the kernel too);
* the destination is an instance's own address (a VIP is not: its holder moves with the
  agents' claims, which the kernel path follows), and, on this host, its port has no
  security group, ACL or flow log either;
* neither address is in an IDC prefix whose traffic the hosts count (docs/cutover.md).

The agent fills the maps from the host document after each apply. Programs and maps are
pinned under BPFFS/<VPC namespace>/g<N>/, so a restarted agent adopts them (nothing is
reloaded: no gap), and a reload loads generation N+1, fills it, attaches it after N and
only then detaches N: packets meet one or the other, never neither.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from yunhan.errors import DriverError
from yunhan.net import bpfsys, nftsg
from yunhan.net.desired import HostDesired, Port, VpcDesired, port_flowlog
from yunhan.net.naming import VXLAN_IFNAME, Naming
from yunhan.net.state import CONNTRACK_TIMEOUTS, compile_firewall

log = logging.getLogger("yunhan.net.fastpath")

SOURCE = Path(__file__).parent / "bpf" / "fastpath.c"
BPFFS = Path(os.environ.get("YUNHAN_BPFFS", "/run/yunhan/bpf"))
CACHE = Path(os.environ.get("YUNHAN_BPF_CACHE", "/var/cache/yunhan/bpf"))
PROG_PORT, PROG_TUNNEL = "yh_from_port", "yh_from_tunnel"
FROM_TUNNEL = 0xFFFFFFFF
ZERO = b"\0\0\0\0"  # the key of an array map's only entry
NETNS_DIR = Path("/run/netns")
NEEDS_CT = 1  # fastpath.c: the flow must be one conntrack let through
ENOTSUPP = 524  # the kernel's own "not supported" (no name in Python's errno)
STATS = ("local", "encap", "decap", "slow")  # yh_stats indexes, as fastpath.c counts

MAPS = ("yh_src", "yh_dst", "yh_cfg", "yh_kernel", "yh_counted", "yh_stats")
PINS = (PROG_PORT, PROG_TUNNEL, *(f"maps/{m}" for m in MAPS))
SRC_KEY, SRC_VAL = 8, 12
DST_KEY, DST_VAL = 8, 20


class Kernel(Protocol):
    """What the fast path needs of the linux driver."""

    def links(self, ns: str) -> dict[str, tuple[int, str]]: ...

    def run_in(self, ns: str, fn: Callable[[], Any]) -> Any: ...


class Unsupported(Exception):
    """This host cannot run the fast path; the message says why and what would fix it."""


# -- what the document asks for (pure: tests/unit/test_net_fastpath.py) ------------------


@dataclass(frozen=True)
class Hop:
    """Where a destination goes: into `port` (an instance port here) or to `peer_mac`
    through vxlan0."""

    port: str | None = None
    mac: str = ""  # local: the instance's MAC; remote: the far host's VTEP MAC
    ct: bool = False  # local: its port has security groups (conntrack must have let it in)


@dataclass
class VpcPlan:
    sources: dict[tuple[str, str], tuple[str, int, bool]] = field(default_factory=dict)
    """(port, source ip) -> (instance MAC, table index, has security groups)"""
    dests: dict[tuple[int, str], Hop] = field(default_factory=dict)
    """(table index or FROM_TUNNEL, destination ip) -> hop"""
    slow: dict[str, str] = field(default_factory=dict)
    """instance id -> why its packets take the kernel path"""
    counted: tuple[str, ...] = ()
    """IDC prefixes whose traffic is counted: packets from or to them take the kernel path"""
    firewall: tuple[int, int] | None = None
    """(conntrack zone, rule generation) of the VPC's security groups (yunhan.net.nftsg)"""

    def path_of(self, instance_id: str, sgs: bool) -> str:
        """What `yunhan host datapath` says of an instance's packets."""
        why = self.slow.get(instance_id)
        if why is not None:
            return f"kernel: {why}"
        if sgs:
            return "fast: flows its security groups let through (new ones meet them first)"
        return "fast"


def _counted(vpc: VpcDesired) -> list[ipaddress.IPv4Network]:
    """The IDC prefixes whose traffic hosts count (docs/cutover.md): in nftables."""
    return [ipaddress.IPv4Network(p) for h in vpc.hybrids for p in h.prefixes]


def slow_reason(vpc: VpcDesired, port: Port) -> str | None:
    """Why a port's traffic must meet the kernel path (None: the fast path may take it)."""
    addr = ipaddress.IPv4Address(port.ip)
    if any(addr in n for n in _counted(vpc)):
        return "traffic statistics of an IDC prefix (counted in nftables)"
    if port.forwarder:
        return "a next hop of a route (an appliance forwards others' packets)"
    if port_flowlog(vpc, port) is not None:
        return "flow logs (read from conntrack)"
    subnet = str(ipaddress.IPv4Network(f"{port.ip}/{port.prefixlen}", strict=False))
    if any(subnet in a.subnets for a in vpc.acls):
        return "a network ACL on its subnet"
    return None


def _table_of(vpc: VpcDesired, port: Port) -> tuple[int, str | None]:
    """The route table index the port's packets are routed by (0: main only), or why
    their routing needs the kernel."""
    addr = ipaddress.IPv4Address(port.ip)
    sub = next((s for s in vpc.subnets if addr in ipaddress.IPv4Network(s.cidr)), None)
    if sub is None:
        return 0, None
    if any(p.table == sub.table for p in vpc.policies):
        return sub.table, "policy routes in its subnet's route table"
    return sub.table, None


def _custom_takes(vpc: VpcDesired, table: int, ip: ipaddress.IPv4Address) -> bool:
    """Does a custom route of `table` win over the direct route to `ip`? In the kernel the
    table throws each VPC block to main unless a custom route is that block; the longest
    prefix wins, so a custom route as long as the block holding `ip`, or longer, takes it."""
    t = next((t for t in vpc.tables if t.index == table), None)
    if t is None or not t.routes:
        return False
    block = max(
        (n.prefixlen for c in vpc.cidrs if ip in (n := ipaddress.IPv4Network(c))), default=0
    )
    return any(
        ip in (n := ipaddress.IPv4Network(r.dst, strict=False)) and n.prefixlen >= block
        for r in t.routes
    )


def plan_vpc(desired: HostDesired, vpc: VpcDesired) -> VpcPlan:
    out = VpcPlan()
    peers = {p.host: p for p in vpc.peers}
    vips = {v.ip for v in vpc.vips} | {ip for p in vpc.ports for ip in p.allowed_ips}
    counted = _counted(vpc)
    out.counted = tuple(sorted({str(n) for n in counted}))
    if vpc.groups or vpc.acls:  # as compile_state: the firewall exists
        fw = compile_firewall("", vpc)
        out.firewall = (fw.zone, nftsg.generation(fw.zone, fw.ports, fw.acls))
    fast_local: dict[str, Port] = {}
    tables: set[int] = set()
    for p in vpc.ports:
        why = slow_reason(vpc, p)
        if p.sgs and out.firewall is None:
            why = why or "security groups of a document without the VPC's groups"
        table, routing = _table_of(vpc, p)
        if why is None:
            fast_local[p.ifname] = p  # a destination here it may be, whatever its table
        why = why or routing
        if why is not None:
            out.slow[p.instance_id] = why
            continue
        out.sources[(p.ifname, p.ip)] = (p.mac, table, bool(p.sgs))
        tables.add(table)
    for r in vpc.routes:
        if r.table != 254 or not r.dst.endswith("/32") or r.kind not in ("local", "remote"):
            continue
        ip = r.dst.removesuffix("/32")
        if ip in vips or any(ipaddress.IPv4Address(ip) in n for n in counted):
            continue
        if r.kind == "local":
            local = fast_local.get(r.port or "")
            if local is None or local.ip != ip:
                continue  # not an instance's own address, or its port needs the kernel
            hop = Hop(port=local.ifname, mac=local.mac, ct=bool(local.sgs))
            out.dests[(FROM_TUNNEL, ip)] = hop
        else:
            peer = peers.get(r.peer or "")
            if peer is None:
                continue
            hop = Hop(mac=peer.mac)
        addr = ipaddress.IPv4Address(ip)
        for t in tables:
            if not _custom_takes(vpc, t, addr):
                out.dests[(t, ip)] = hop
    return out


# -- map encoding ---------------------------------------------------------------------------


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def _ip(a: str) -> bytes:
    return socket.inet_aton(a)


def encode(
    p: VpcPlan, links: Mapping[str, tuple[int, str]]
) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """The yh_src and yh_dst entries of a plan, with the namespace's ifindexes and MACs.
    A port not (yet) in the kernel gets no entry: its packets take the kernel path."""
    src: dict[bytes, bytes] = {}
    dst: dict[bytes, bytes] = {}
    for (port, ip), (mac, table, ct) in p.sources.items():
        if port in links:
            key = struct.pack("<I", links[port][0]) + _ip(ip)
            src[key] = _mac(mac) + struct.pack("<HI", NEEDS_CT if ct else 0, table)
    vx = links.get(VXLAN_IFNAME)
    for (table, ip), hop in p.dests.items():
        key = struct.pack("<I", table) + _ip(ip)
        if hop.port is not None:
            if hop.port not in links:
                continue
            idx, own = links[hop.port]
            flags = 1 | (NEEDS_CT << 1 if hop.ct else 0)
            dst[key] = struct.pack("<II", idx, flags) + _mac(hop.mac) + _mac(own)
        elif vx is not None:
            dst[key] = struct.pack("<II", vx[0], 0) + _mac(hop.mac) + _mac(vx[1])
    return src, dst


def counted_keys(p: VpcPlan) -> dict[bytes, bytes]:
    """yh_counted: an LPM trie key (prefix length, network address) per counted prefix."""
    out = {}
    for c in p.counted:
        n = ipaddress.IPv4Network(c)
        out[struct.pack("<I", n.prefixlen) + n.network_address.packed] = b"\1\0\0\0"
    return out


def cfg_value(firewall: tuple[int, int] | None) -> bytes:
    """yh_cfg: the firewall's zone and generation, and the timeouts conntrack gives
    established TCP and UDP streams in a VPC namespace with one (state.CONNTRACK_TIMEOUTS)."""
    zone, gen = firewall or (0, 0)
    tcp = int(CONNTRACK_TIMEOUTS["net/netfilter/nf_conntrack_tcp_timeout_established"])
    udp = int(CONNTRACK_TIMEOUTS["net/netfilter/nf_conntrack_udp_timeout_stream"])
    return struct.pack("<IIII", zone, gen, tcp * 1000, udp * 1000)


# -- the host ---------------------------------------------------------------------------------


@dataclass
class Status:
    """What `yunhan host datapath` shows: which path the host uses and why."""

    mode: str  # "fast" | "kernel"
    reason: str
    instances: dict[str, str] = field(default_factory=dict)  # id -> "fast" | kernel reason
    packets: dict[str, int] = field(default_factory=dict)  # STATS -> sum over VPCs
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "instances": dict(sorted(self.instances.items())),
            "packets": self.packets,
            "errors": self.errors,
        }


def compile_object(cache: Path = CACHE) -> Path:
    """The BPF object of SOURCE, compiled by clang once per source (cached by its hash)."""
    text = SOURCE.read_bytes()
    out = cache / f"fastpath-{hashlib.sha256(text).hexdigest()[:16]}.o"
    if out.exists():
        return out
    clang = shutil.which("clang")
    if clang is None:
        raise Unsupported(
            "clang is not installed (scripts/install.sh installs clang and libbpf-dev)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    arch = os.uname().machine
    cmd = [clang, "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}-linux-gnu"]
    r = subprocess.run([*cmd, "-c", str(SOURCE), "-o", str(tmp)], capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise Unsupported(f"clang could not compile {SOURCE.name}: {r.stderr.strip()[-300:]}")
    tmp.rename(out)
    return out


def ensure_bpffs(root: Path = BPFFS) -> None:
    """A bpffs of our own at `root` (the machine's /sys/fs/bpf may not be mounted)."""
    root.mkdir(parents=True, exist_ok=True)
    if _is_bpffs(root):
        return
    r = subprocess.run(
        ["mount", "-t", "bpf", "yunhan-bpf", str(root)], capture_output=True, text=True
    )
    if r.returncode != 0 or not _is_bpffs(root):
        raise Unsupported(f"cannot mount a BPF filesystem at {root}: {r.stderr.strip()}")


def _is_bpffs(p: Path) -> bool:
    """Is a bpffs mounted right at `p` (the last mount there wins)?"""
    kind = ""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == str(p):
                kind = parts[2]
    return kind == "bpf"


class FastPath:
    """The fast path of one host's VPC namespaces (linux driver only)."""

    def __init__(self, naming: Naming, kernel: Kernel, root: Path = BPFFS) -> None:
        self.naming = naming
        self.kernel = kernel
        self.root = root
        self._obj: Path | None = None
        self._unsupported: str | None = None

    # -- loading -----------------------------------------------------------------------

    def _object(self) -> Path:
        if self._unsupported is not None:
            raise Unsupported(self._unsupported)
        try:
            if self._obj is None:
                if not hasattr(os, "geteuid") or os.geteuid() != 0:
                    raise Unsupported("the agent is not root (bpf(2) needs CAP_BPF, CAP_NET_ADMIN)")
                if shutil.which("bpftool") is None:
                    raise Unsupported("bpftool is not installed (scripts/install.sh installs it)")
                ensure_bpffs(self.root)
                self._obj = compile_object()
            return self._obj
        except Unsupported as exc:
            self._unsupported = str(exc)
            raise

    def _gens(self, ns: str) -> list[Path]:
        """Its generations, oldest first: g<N>-<object hash>."""
        d = self.root / ns
        if not d.is_dir():
            return []
        gens = [g for g in d.iterdir() if _GEN.fullmatch(g.name)]
        return sorted(gens, key=_gen_number)

    def _current(self, ns: str, obj: Path | None = None) -> Path | None:
        """The newest complete generation (of object `obj`, if given: a generation of an
        older object is replaced, as after an upgrade)."""
        for g in reversed(self._gens(ns)):
            if obj is not None and not obj.stem.endswith(g.name.split("-", 1)[1]):
                continue
            if all((g / n).exists() for n in PINS):  # bpftool pins one by one: all, or none
                return g
        return None

    def _load(self, ns: str) -> Path:
        obj = self._object()
        gens = self._gens(ns)
        n = _gen_number(gens[-1]) + 1 if gens else 1
        g = self.root / ns / f"g{n}-{obj.stem.rsplit('-', 1)[1]}"
        g.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["bpftool", "prog", "loadall", str(obj), str(g), "pinmaps", str(g / "maps")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            _remove_tree(g)
            msg = (r.stderr or r.stdout).strip().splitlines()
            # The same object for every VPC: the whole host falls back, once, and says why.
            self._unsupported = (
                f"the kernel refused the fast path's programs: {msg[-1] if msg else r.returncode}"
            )
            raise Unsupported(self._unsupported)
        return g

    # -- the host ----------------------------------------------------------------------

    def restrict(self, desired: HostDesired) -> None:
        """Before the kernel path applies `desired`: take out of the maps every entry it
        drops or changes, and a firewall generation it changes, so that for the length of
        the apply the fast path carries only what both the old and the new document allow
        (a port gaining a security group meets it from its first new flow). Never raises."""
        if self._unsupported is not None or self._obj is None:
            return
        for vpc in desired.vpcs:
            ns = self.naming.vpc_netns(vpc.vni)
            gen = self._current(ns, self._obj)
            if gen is None:
                continue
            p = plan_vpc(desired, vpc)
            try:
                links = self.kernel.links(ns)
                src, dst = encode(p, links)
                _set_cfg(gen, cfg_value(p.firewall), widen=False)
                _fill(gen / "maps" / "yh_src", SRC_KEY, SRC_VAL, src, widen=False)
                _fill(gen / "maps" / "yh_dst", DST_KEY, DST_VAL, dst, widen=False)
                _fill(gen / "maps" / "yh_counted", 8, 4, counted_keys(p))  # more: stricter
            except (OSError, DriverError) as exc:
                log.warning("fast path of %s: could not restrict before the apply: %s", ns, exc)
                self._detach_ns(ns)

    def sync(self, desired: HostDesired, *, reload: bool = False, widen: bool = True) -> Status:
        """Fill, load and attach what `desired` calls for; detach and unpin what it no
        longer does. Never raises: a failure sends the VPC (or the host) to the kernel path.
        `widen` False (the kernel path's apply had errors): entries are only removed, never
        added, and no VPC gains a fast path: the kernel may not hold what `desired` says."""
        st = Status("fast", "")
        try:
            self._object()
        except Unsupported as exc:
            self.disable(desired)
            return Status(
                "kernel",
                str(exc),
                {i.id: "kernel: this host has no fast path" for i in desired.instances},
            )
        wanted = {self.naming.vpc_netns(v.vni) for v in desired.vpcs}
        for vpc in desired.vpcs:
            ns = self.naming.vpc_netns(vpc.vni)
            p = plan_vpc(desired, vpc)
            try:
                self._sync_vpc(ns, vpc, p, reload, widen)
            except (OSError, Unsupported, DriverError) as exc:
                st.errors.append(f"{vpc.id}: {exc}")
                self._detach_ns(ns)
                for port in vpc.ports:
                    st.instances[port.instance_id] = f"kernel: the fast path failed here: {exc}"
                continue
            for port in vpc.ports:
                st.instances[port.instance_id] = p.path_of(port.instance_id, bool(port.sgs))
        st.packets = self.packets()
        for d in self._ours():
            if d.name not in wanted:
                self._detach_ns(d.name)  # its VPC left this host: unpinned once detached
        if st.errors:
            st.reason = "some VPCs fell back to the kernel path: " + "; ".join(st.errors)
        elif not widen:
            st.reason = (
                "the last apply had errors: the fast path carries only what the kernel path "
                "surely holds (nothing new) until an apply succeeds"
            )
        else:
            st.reason = "tcx programs on every instance port and vxlan0 (per instance: below)"
        return st

    def _sync_vpc(
        self, ns: str, vpc: VpcDesired, p: VpcPlan, reload: bool, widen: bool = True
    ) -> None:
        links = self.kernel.links(ns)
        if VXLAN_IFNAME not in links:
            raise Unsupported(f"{ns} has no {VXLAN_IFNAME} yet")
        cur = self._current(ns, self._object())
        if not widen and (cur is None or reload):
            return  # nothing new while the kernel path may not hold the document
        gen = self._load(ns) if cur is None or reload else cur
        src, dst = encode(p, links)
        _fill(gen / "maps" / "yh_counted", 8, 4, counted_keys(p))
        _set_cfg(gen, cfg_value(p.firewall), widen=widen)
        _fill(gen / "maps" / "yh_src", SRC_KEY, SRC_VAL, src, widen=widen)
        _fill(gen / "maps" / "yh_dst", DST_KEY, DST_VAL, dst, widen=widen)
        ports = [port.ifname for port in vpc.ports if port.ifname in links]
        fds: dict[str, int] = {}
        try:
            for n in (PROG_PORT, PROG_TUNNEL):
                fds[n] = bpfsys.obj_get(str(gen / n))
            keep = {bpfsys.prog_id(fd) for fd in fds.values()}
            targets = [(links[VXLAN_IFNAME][0], fds[PROG_TUNNEL])]
            targets += [(links[n][0], fds[PROG_PORT]) for n in ports]
            try:
                self.kernel.run_in(ns, lambda: _attach_all(targets, keep))
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP):
                    self._unsupported = (
                        f"this kernel cannot attach tcx programs (Linux 6.6+): {exc}"
                    )
                    raise Unsupported(self._unsupported) from exc
                raise
        finally:
            for fd in fds.values():
                os.close(fd)
        for old in self._gens(ns):
            if old != gen:
                _remove_tree(old)

    def _detach_ns(self, ns: str) -> None:
        """Detach our programs in `ns`, then unpin them. A namespace that is gone took its
        attachments along; one whose programs could not be detached keeps its pins (so a
        later pass finds them and tries again)."""
        if (NETNS_DIR / ns).exists():
            try:
                links = self.kernel.links(ns)
                self.kernel.run_in(ns, lambda: _detach_all([i for i, _m in links.values()]))
            except (OSError, DriverError) as exc:
                if (NETNS_DIR / ns).exists():
                    log.warning("fast path of %s: could not detach, kept pinned: %s", ns, exc)
                    return
        _remove_tree(self.root / ns)

    def disable(self, desired: HostDesired | None = None) -> None:
        """Send every packet of this host to the kernel path: detach and unpin all ours."""
        names = {d.name for d in self._ours()}
        if desired is not None:
            names |= {self.naming.vpc_netns(v.vni) for v in desired.vpcs}
        for ns in sorted(names):
            self._detach_ns(ns)

    def packets(self) -> dict[str, int]:
        """The counters now, summed over this host's VPC namespaces (cheap: map reads)."""
        total: dict[str, int] = {}
        for d in self._ours():
            try:
                for k, v in self._packets(d.name).items():
                    total[k] = total.get(k, 0) + v
            except OSError:
                continue  # a generation being replaced: counted at the next report
        return total

    def loaded(self) -> bool:
        """Is anything of this host's fast path pinned (an earlier run's)?"""
        return bool(self._ours())

    def _ours(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [d for d in self.root.iterdir() if d.is_dir() and self.naming.owns(d.name)]

    def _packets(self, ns: str) -> dict[str, int]:
        g = self._current(ns)
        if g is None:
            return {}
        try:
            with bpfsys.Map(str(g / "maps" / "yh_stats"), 4, 8, percpu=True) as m:
                return {name: m.percpu_sum(struct.pack("<I", i)) for i, name in enumerate(STATS)}
        except OSError:
            return {}  # a generation being replaced: counted at the next report


_GEN = re.compile(r"g(\d+)-[0-9a-f]+")


def _gen_number(g: Path) -> int:
    m = _GEN.fullmatch(g.name)
    return int(m.group(1)) if m else 0


@contextlib.contextmanager
def kernel_path_for(
    namespaces: Iterable[str], pairs: Iterable[tuple[str, str]], root: Path = BPFFS
) -> Iterator[None]:
    """While the block runs, packets between these addresses (both ways) take the kernel
    path in these VPC namespaces: `yunhan trace --live` watches its probe in the kernel
    path's hooks, which the fast path would skip. Namespaces without a fast path are left
    as they are."""
    keys = {_ip(a) + _ip(b) for x, y in pairs for a, b in ((x, y), (y, x))}
    maps: list[bpfsys.Map] = []
    try:
        for ns in namespaces:
            d = root / ns
            for gen in d.iterdir() if d.is_dir() else ():
                path = gen / "maps" / "yh_kernel"
                if path.exists():
                    m = bpfsys.Map(str(path), 8, 4)
                    maps.append(m)
                    for k in keys:
                        m.update(k, b"\1\0\0\0")
        yield
    finally:
        for m in maps:
            for k in keys:
                m.delete(k)
            m.close()


def _set_cfg(gen: Path, want: bytes, *, widen: bool) -> None:
    """yh_cfg (an array: its entry cannot be deleted). Not widening, a changed firewall is
    written as none (generation 0): flows of ports with groups then take the kernel path."""
    with bpfsys.Map(str(gen / "maps" / "yh_cfg"), 4, 16) as m:
        if m.lookup(ZERO) != want:
            m.update(ZERO, want if widen else cfg_value(None))


def _fill(
    path: Path, ksize: int, vsize: int, want: Mapping[bytes, bytes], *, widen: bool = True
) -> None:
    """Make the map hold exactly `want`: update what differs, then delete the rest (a key
    is never absent while it is wanted). `widen` False: only delete what is not wanted as
    it is (a changed value goes too; the next widening pass writes it)."""
    with bpfsys.Map(str(path), ksize, vsize) as m:
        have = m.items()
        for k, v in want.items():
            if have.get(k) != v:
                if widen:
                    m.update(k, v)
                elif k in have:
                    m.delete(k)
        for k in have.keys() - want.keys():
            m.delete(k)


def _attach_all(targets: Iterable[tuple[int, int]], keep: set[int]) -> None:
    """On each (ifindex, program): attach it unless there, then detach any other of ours
    (an older generation): packets meet the old one until the new one is in place."""
    for ifindex, fd in targets:
        ids = bpfsys.tcx_query(ifindex)
        if not keep & set(ids):
            bpfsys.tcx_attach(ifindex, fd)
        _detach_ours(ifindex, keep)


def _detach_all(ifindexes: Iterable[int]) -> None:
    """Detach every program of ours; raises if one stays attached."""
    for i in ifindexes:
        try:
            _detach_ours(i, set())
        except OSError as exc:
            if exc.errno not in (errno.ENODEV, errno.ENOENT):  # the device went meanwhile
                raise


def _detach_ours(ifindex: int, keep: set[int]) -> None:
    for pid in bpfsys.tcx_query(ifindex):
        if pid in keep:
            continue
        try:
            fd = bpfsys.prog_fd_by_id(pid)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise
        try:
            if bpfsys.prog_name(fd) in (PROG_PORT, PROG_TUNNEL):
                bpfsys.tcx_detach(ifindex, fd)
        finally:
            os.close(fd)


def _remove_tree(d: Path) -> None:
    """Unpin: bpffs files are removed one by one (no rmtree of a mount's contents races)."""
    if not d.exists():
        return
    for root, dirs, files in os.walk(d, topdown=False):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root, f))
        for sub in dirs:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(os.path.join(root, sub))
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(d)
