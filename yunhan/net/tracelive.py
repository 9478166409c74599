"""`yunhan trace --live`: a real probe, followed through the lab's namespaces.

The model trace (`yunhan.net.trace`) says where a packet should go. This module sends one
(a TCP connect, a UDP datagram or an ICMP echo) from inside the source instance's
namespace and watches it:

* nftables tracing: in every namespace on the model's path (and in every other VPC
  namespace of the same VNI, to catch a path the model missed) a temporary table
  `ip yunhan_trace` sets `meta nftrace` on the probe (matched by its source port, or its
  ICMP id) before anything else sees it, and has empty base chains on the forward, input
  and postrouting hooks, so that `nft monitor` reports where the probe came in, whether
  it was forwarded and by which device it left, or delivered, and any rule that dropped
  it. The trace flag does not cross namespaces, hence a table in each;
* the kernel's own routing decision: ip rule blackholes and route lookups are not nft
  rules, so in each VPC namespace on the path `ip route get DST from SRC iif IIF mark M
  ipproto P dport N` asks the kernel what it does with the packet as the model says it
  arrives there.

Pure pieces (the watch plan, the nft script, parsing, the comparison `agree`) are
separate from `run`, which does the I/O and removes every table and monitor process it
started, whatever happens.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from yunhan.errors import YunhanError
from yunhan.net import fastpath
from yunhan.net.naming import Naming, short_id
from yunhan.net.trace import Hop, Trace

TABLE = "yunhan_trace"  # the temporary table (our prefix: a sweep recognises it)
READY_CHAIN = "ready"
SETTLE = 0.5  # seconds after the probe during which late trace events are still read


class LiveError(YunhanError):
    """The live trace cannot run here (not the lab's machine, not root, no nft)."""

    code = "live_unavailable"
    http_status = 409


@dataclass(frozen=True)
class Lab:
    """Where a region's namespaces are on this machine: each host's agent prefix (its
    namespaces are named by `Naming(prefix)`) and host namespace, and the internet's."""

    prefixes: Mapping[str, str]
    host_netns: Mapping[str, str] = field(default_factory=dict)
    internet_netns: str = ""

    def netns_of(self, hop: Hop) -> str:
        """The namespace a model hop happens in ("" when this lab cannot name it)."""
        prefix = self.prefixes.get(hop.host)
        if hop.place == "internet":
            return self.internet_netns
        if hop.place == "host":
            return self.host_netns.get(hop.host, "")
        if prefix is None:
            return ""
        n = Naming(prefix)
        if hop.place == "instance":
            return n.instance_netns(hop.ref)
        if hop.place == "vpc" and hop.vni is not None:
            return n.vpc_netns(hop.vni)
        if hop.place == "natgw":
            return f"{prefix}g-{short_id(hop.ref)}"
        return ""


@dataclass(frozen=True)
class Probe:
    """The packet sent: its source port (tcp/udp) or ICMP id identifies it everywhere."""

    proto: str
    src: str
    dst: str
    port: int | None
    ident: int  # tcp/udp: source port; icmp: echo id

    def nft_match(self) -> str:
        if self.proto == "icmp":
            return f"icmp type echo-request icmp id {self.ident}"
        return f"{self.proto} sport {self.ident}"

    def __str__(self) -> str:
        if self.proto == "icmp":
            return f"icmp echo id {self.ident} {self.src} -> {self.dst}"
        return f"{self.proto} {self.src}:{self.ident} -> {self.dst}:{self.port}"


def new_probe(model: Trace, rng: random.Random | None = None) -> Probe:
    r = rng or random.Random()
    ident = r.randint(1024, 65535) if model.proto == "icmp" else r.randint(40000, 59999)
    return Probe(model.proto, model.src_ip, model.dst, model.port, ident)


def trace_script(probe: Probe) -> str:
    """The nft script of the temporary table: the probe is flagged as it enters (or is
    sent from) the namespace, before conntrack and NAT; the other base chains only make
    the kernel report where the flagged packet goes. (Chain names avoid nft keywords:
    `fwd`, `in` are some.)"""
    m = probe.nft_match()
    # add + delete first: a table a killed run left behind is replaced, never doubled
    return (
        f"add table ip {TABLE}\ndelete table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        f"  chain t_pre {{ type filter hook prerouting priority -350; policy accept; "
        f"{m} meta nftrace set 1; }}\n"
        f"  chain t_out {{ type filter hook output priority -350; policy accept; "
        f"{m} meta nftrace set 1; }}\n"
        "  chain t_fwd { type filter hook forward priority -350; policy accept; }\n"
        "  chain t_in { type filter hook input priority -350; policy accept; }\n"
        "  chain t_post { type filter hook postrouting priority -350; policy accept; }\n"
        "}\n"
    )


@dataclass(frozen=True)
class Watch:
    """A namespace to watch, and the model hops that happen there (none: the model says
    the probe never comes here)."""

    netns: str
    host: str
    place: str
    hops: tuple[int, ...] = ()


def watch_plan(model: Trace, lab: Lab, extra: Sequence[Watch] = ()) -> list[Watch]:
    """Every namespace to trace, in the model's order, then the extra ones (the other VPC
    namespaces of the VNI, the intended destination)."""
    order: list[str] = []
    by_ns: dict[str, Watch] = {}
    for i, h in enumerate(model.hops):
        ns = lab.netns_of(h)
        if not ns:
            continue
        if ns in by_ns:
            w = by_ns[ns]
            by_ns[ns] = Watch(ns, w.host, w.place, (*w.hops, i))
        else:
            order.append(ns)
            by_ns[ns] = Watch(ns, h.host, h.place, (i,))
    for w in extra:
        if w.netns and w.netns not in by_ns:
            order.append(w.netns)
            by_ns[w.netns] = Watch(w.netns, w.host, w.place, ())
    return [by_ns[ns] for ns in order]


def vpc_watches(model: Trace, lab: Lab) -> list[Watch]:
    """The VPC namespace of the model's VNI on every lab host."""
    vni = next((h.vni for h in model.hops if h.place == "vpc" and h.vni is not None), None)
    if vni is None:
        return []
    return [
        Watch(Naming(p).vpc_netns(vni), host, "vpc") for host, p in sorted(lab.prefixes.items())
    ]


# -- reading nft monitor -----------------------------------------------------------------

_TRACE_RE = re.compile(r"^trace id (\w+) (\w+) (\S+) (\S+) (.*)$")
_VERDICT_RE = re.compile(r"^(.*?)\s*\(verdict (\w+)(?: [^)]*)?\)\s*$")


@dataclass(frozen=True)
class TraceEvent:
    """One line of `nft monitor trace` about the probe."""

    id: str
    table: str
    chain: str
    kind: str  # packet | rule | policy
    verdict: str = ""
    rule: str = ""
    iif: str = ""
    oif: str = ""


def parse_events(lines: Sequence[str]) -> list[TraceEvent]:
    out = []
    for line in lines:
        m = _TRACE_RE.match(line.strip())
        if m is None:
            continue
        tid, _family, table, chain, rest = m.groups()
        if rest.startswith("packet:"):
            iif = re.search(r'\biif "([^"]+)"', rest)
            oif = re.search(r'\boif "([^"]+)"', rest)
            out.append(
                TraceEvent(
                    tid,
                    table,
                    chain,
                    "packet",
                    iif=iif.group(1) if iif else "",
                    oif=oif.group(1) if oif else "",
                )
            )
        elif rest.startswith("policy "):
            out.append(TraceEvent(tid, table, chain, "policy", verdict=rest.split()[1]))
        else:
            v = _VERDICT_RE.match(rest)
            rule, verdict = (v.group(1), v.group(2)) if v else (rest, "")
            rule = rule.removeprefix("rule ")
            out.append(TraceEvent(tid, table, chain, "rule", verdict=verdict, rule=rule))
    return out


@dataclass(frozen=True)
class LiveHop:
    """What the probe did in one namespace (over all its visits there)."""

    netns: str
    host: str
    place: str
    model_hops: tuple[int, ...]
    seen: bool
    iifs: tuple[str, ...] = ()  # the devices it came in by (none when sent from here)
    oifs: tuple[str, ...] = ()  # the devices it left by (none: delivered, or dropped)
    delivered: bool = False  # reached the input hook: delivered here
    dropped_by: str = ""  # "table chain: rule" whose verdict was drop
    events: tuple[TraceEvent, ...] = ()


def summarise(w: Watch, events: Sequence[TraceEvent]) -> LiveHop:
    """The fate of the probe in namespace `w` from its trace events."""
    iifs: list[str] = []
    oifs: list[str] = []
    dropped = ""
    delivered = False
    for e in events:
        if e.kind == "packet" and e.table == TABLE:
            if e.chain == "t_pre" and e.iif and e.iif not in iifs:
                iifs.append(e.iif)
            if e.chain == "t_post" and e.oif and e.oif not in oifs:
                oifs.append(e.oif)
            if e.chain == "t_in":
                delivered = True
        if e.verdict == "drop":
            dropped = dropped or f"{e.table} {e.chain}: {e.rule or 'policy drop'}"
    return LiveHop(
        w.netns,
        w.host,
        w.place,
        w.hops,
        bool(events),
        tuple(iifs),
        tuple(oifs),
        delivered,
        dropped,
        tuple(events),
    )


# -- the kernel's routing decision -----------------------------------------------------


@dataclass(frozen=True)
class RouteGet:
    """`ip route get` in a VPC namespace for the packet as model hop `hop` has it."""

    netns: str
    hop: int
    argv: tuple[str, ...]
    dev: str = ""
    gateway: str = ""
    type: str = ""  # unicast, local, ... as ip prints it
    error: str = ""  # "Invalid argument" (blackhole), "No route to host", ...


def route_get_argv(h: Hop) -> tuple[str, ...] | None:
    """The `ip -j route get` arguments for a VPC hop (None: not a VPC hop)."""
    if h.place != "vpc" or not h.src or not h.dst or not h.iif:
        return None
    argv = ["ip", "-j", "route", "get", h.dst, "from", h.src, "iif", h.iif]
    argv += ["mark", f"{h.mark or 0:#x}", "ipproto", h.proto or "icmp"]
    if h.dport is not None and h.proto in ("tcp", "udp"):
        argv += ["dport", str(h.dport)]
    return tuple(argv)


def parse_route_get(
    netns: str, hop: int, argv: Sequence[str], rc: int, out: str, err: str
) -> RouteGet:
    if rc != 0:
        msg = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
        return RouteGet(netns, hop, tuple(argv), error=msg.removeprefix("RTNETLINK answers: "))
    try:
        r = json.loads(out)[0]
    except (ValueError, IndexError, KeyError, TypeError):
        return RouteGet(netns, hop, tuple(argv), error=f"unreadable answer: {out.strip()[:200]}")
    return RouteGet(
        netns,
        hop,
        tuple(argv),
        dev=str(r.get("dev", "")),
        gateway=str(r.get("gateway", "")),
        type=str(r.get("type", "unicast")),
    )


# -- the result and the comparison ---------------------------------------------------------


@dataclass(frozen=True)
class Live:
    probe: str
    outcome: str  # what the sender saw: connected, refused, timeout, sent, reply, error …
    hops: tuple[LiveHop, ...]
    routes: tuple[RouteGet, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        lines = [f"live probe {self.probe}: {self.outcome}"]
        for h in self.hops:
            if not h.seen:
                what = "not seen" + ("" if h.model_hops else " (as the model says)")
            else:
                parts = [f"in {','.join(h.iifs)}" if h.iifs else "sent here"]
                if h.oifs:
                    parts.append(f"out {','.join(h.oifs)}")
                if h.delivered:
                    parts.append("delivered")
                if h.dropped_by:
                    parts.append(f"dropped by {h.dropped_by}")
                if not h.oifs and not h.delivered and not h.dropped_by:
                    parts.append("went no further")
                what = ", ".join(parts)
            lines.append(f"  {h.netns}: {what}")
        for r in self.routes:
            said = [
                r.type,
                f"dev {r.dev}" if r.dev else "",
                f"via {r.gateway}" if r.gateway else "",
            ]
            got = r.error or " ".join(x for x in said if x)
            lines.append(f"  kernel (hop {r.hop + 1}) {r.netns}: {' '.join(r.argv[4:])} -> {got}")
        return "\n".join(lines) + "\n"


# the kernel's answers to a lookup that ends without a route
_KERNEL_DROP = {
    "blackhole": ("Invalid argument",),  # a blackhole route or an ip rule blackhole
    "unreachable": ("No route to host",),
    "noroute": ("Network is unreachable",),
}


def agree(model: Trace, live: Live, internet: Sequence[str] | None = None) -> list[str]:
    """Where the live probe and the model disagree (empty: they agree).

    Checked, per watched namespace: it saw the probe iff the model crosses it; the probe
    left it by exactly the devices the model says (none where the model drops it or
    delivers it); it was delivered there iff the model delivers it there. Per VPC hop:
    the kernel's route lookup says what the model says (the device, or the error of a
    blackhole, an unreachable route or no route at all). A model that lets the packet
    leave for the internet (the API does not know the lab's) is held to where it ends
    beyond the region's uplink only when `internet` (the lab's networks there) is given:
    delivered there if the destination is in one, seen nowhere there otherwise.
    """
    out: list[str] = []
    last = len(model.hops) - 1
    if model.verdict == "internet" and internet is not None:
        reach = any(ipaddress.IPv4Address(model.dst) in ipaddress.IPv4Network(c) for c in internet)
        if reach:
            model = replace(model, verdict="delivered")
        else:
            model = replace(model, verdict="dropped", reason="outside", hops=model.hops[:-1])
            last -= 1
    for h in live.hops:
        if h.model_hops and h.model_hops[0] > last:  # the internet, out of the lab's reach
            if h.seen:
                out.append(f"{h.netns}: the probe came here, it is outside the lab's internet")
            continue
        hops = [model.hops[i] for i in h.model_hops]
        if not hops:
            if h.seen:
                out.append(f"{h.netns}: the probe came here, the model says it does not")
            continue
        if hops[0].place == "internet" and model.verdict == "internet":
            continue
        if not h.seen:
            out.append(f"{h.netns}: the model says the probe comes here, it did not")
            continue
        want: set[str] = set()
        for i in h.model_hops:
            hop = model.hops[i]
            dropped_here = model.verdict == "dropped" and i == last
            # a packet dropped after it left (on-link ARP, beyond the uplink) did leave
            if hop.oif and (not dropped_here or hop.place == "instance" or hop.oif == "uplink"):
                want.add(hop.oif)
        if "uplink" not in want and set(h.oifs) != want:
            out.append(
                f"{h.netns}: the probe left by {sorted(h.oifs) or 'nothing'}, "
                f"the model says {sorted(want) or 'nothing'}"
            )
        delivered_here = model.verdict == "delivered" and last in h.model_hops
        if delivered_here and not h.delivered:
            out.append(f"{h.netns}: the model delivers the probe here, it was not delivered")
        if h.delivered and not delivered_here:
            out.append(f"{h.netns}: the probe was delivered here, the model says it is not")
    routes = {r.hop: r for r in live.routes}
    for i, hop in enumerate(model.hops):
        r = routes.get(i)
        if r is not None:
            out += _route_agrees(model, i, hop, r)
    return out


def _route_agrees(model: Trace, i: int, hop: Hop, r: RouteGet) -> list[str]:
    route = hop.route
    where = f"{r.netns} (hop {i + 1})"
    dropped_here = model.verdict == "dropped" and i == len(model.hops) - 1
    if dropped_here:
        if model.reason in ("policy-drop", "blackhole"):
            want = _KERNEL_DROP["blackhole"]
        elif model.reason in ("unreachable-next-hop", "no-member"):
            want = _KERNEL_DROP["unreachable"]
        elif model.reason in ("no-natgw", "no-route"):
            want = _KERNEL_DROP["noroute"]
        else:
            return []
        if r.error not in want:
            got = r.error or f"dev {r.dev}"
            return [f"{where}: the kernel says {got!r}, the model says {model.reason} ({want[0]})"]
        return []
    if route is None:
        return []
    if route.via == "deliver":
        return [] if r.type == "local" else [f"{where}: the kernel does not deliver it locally"]
    if r.error:
        return [f"{where}: the kernel refuses it ({r.error}), the model routes it"]
    want_dev = route.port if route.via == "local" else "vxlan0" if route.via == "remote" else ""
    if want_dev and r.dev != want_dev:
        return [f"{where}: the kernel routes it out {r.dev}, the model out {want_dev}"]
    return []


# -- running it ----------------------------------------------------------------------------


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)


def _nsexec(netns: str, *argv: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", netns, *argv)


def existing_netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except OSError:
        return set()


class _Lines:
    """Complete lines from a process's stdout, read without blocking past a timeout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def read(self, timeout: float) -> list[str]:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            chunk = os.read(self.fd, 65536)
            self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        return [d.decode(errors="replace") for d in done]


@contextlib.contextmanager
def _monitors(
    watches: Sequence[Watch], probe: Probe, deadline: float
) -> Iterator[dict[str, list[str]]]:
    """Our table in every watched namespace, and a monitor reading each; all removed on
    the way out, whatever happened."""
    lines: dict[str, list[str]] = {w.netns: [] for w in watches}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    readers: dict[str, _Lines] = {}
    tabled: list[str] = []
    try:
        script = trace_script(probe)
        for w in watches:
            r = subprocess.run(
                list(_nsexec(w.netns, "nft", "-f", "-")),
                input=script,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if r.returncode != 0:
                raise LiveError(f"cannot add the trace table in {w.netns}: {r.stderr.strip()}")
            tabled.append(w.netns)
        # Monitors start after the table exists, so that they know its rules; each is
        # ready once it reports the marker chain added after it started.
        for w in watches:
            procs[w.netns] = subprocess.Popen(
                list(_nsexec(w.netns, "nft", "monitor")),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            readers[w.netns] = _Lines(procs[w.netns])
        # A monitor subscribes some time after it starts: a marker added before that is
        # never reported, so each try adds a new one until the monitor reports one.
        waiting = set(procs)
        tries = 0
        while waiting:
            if time.monotonic() > deadline:
                raise LiveError(f"nft monitor did not start in {sorted(waiting)}")
            tries += 1
            for ns in waiting:
                _run(_nsexec(ns, "nft", "add", "chain", "ip", TABLE, f"{READY_CHAIN}{tries}"))
            until = time.monotonic() + 0.2
            while waiting and time.monotonic() < until:
                for ns in list(waiting):
                    if any(
                        f"add chain ip {TABLE} {READY_CHAIN}" in x for x in readers[ns].read(0.01)
                    ):
                        waiting.discard(ns)
        yield lines
        settle = time.monotonic() + SETTLE
        while time.monotonic() < settle:
            for ns, rd in readers.items():
                lines[ns] += [x for x in rd.read(0.01) if x.startswith("trace id")]
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        for ns in tabled:
            _run(_nsexec(ns, "nft", "delete", "table", "ip", TABLE))


def _send(probe: Probe, netns: str, timeout: float) -> str:
    """Send the probe from inside `netns` (the source instance); what the sender saw."""
    from yunhan.net import nsutil

    def body() -> str:
        if probe.proto == "icmp":
            return _icmp(probe, timeout)
        kind = socket.SOCK_STREAM if probe.proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", probe.ident))
            s.settimeout(timeout)
            assert probe.port is not None
            if probe.proto == "udp":
                s.sendto(b"yunhan trace\n", (probe.dst, probe.port))
                return "sent"
            try:
                rc = s.connect_ex((probe.dst, probe.port))
            except TimeoutError:
                return "timeout"
            if rc in (errno.EAGAIN, errno.EINPROGRESS, errno.ETIMEDOUT):
                return "timeout"  # connect_ex under a timeout reports it as EAGAIN
            return "connected" if rc == 0 else os.strerror(rc)

    return nsutil.run_in(body, net=netns)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _icmp(probe: Probe, timeout: float) -> str:
    payload = b"yunhan trace"
    head = struct.pack("!BBHHH", 8, 0, 0, probe.ident, 1)
    pkt = struct.pack("!BBHHH", 8, 0, _checksum(head + payload), probe.ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.sendto(pkt, (probe.dst, 0))
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([s], [], [], left)
            if not ready:
                break
            data, _addr = s.recvfrom(2048)
            ihl = (data[0] & 0xF) * 4
            typ, _code, _ck, ident, _seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if ident == probe.ident and typ == 0:
                return "reply"
            if typ in (3, 11):
                return "icmp error"
    return "timeout"


def run(
    model: Trace,
    lab: Lab,
    *,
    extra: Sequence[Watch] = (),
    timeout: float = 1.0,
    probe: Probe | None = None,
) -> Live:
    """Send one probe as the model describes it and watch it (needs root and the lab's
    namespaces on this machine; LiveError otherwise). Every table and monitor it adds is
    removed before it returns or raises."""
    if os.geteuid() != 0:
        raise LiveError("--live needs root: it enters the lab's namespaces")
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        raise LiveError(f"--live needs {' and '.join(missing)} (iproute2, nftables) on the PATH")
    have = existing_netns()
    src_hop = model.hops[0] if model.hops else None
    if src_hop is None or lab.netns_of(src_hop) not in have:
        raise LiveError(
            f"--live needs the namespaces of host {model.src_host} on this machine "
            "(the lab region); they are not here"
        )
    probe = probe or new_probe(model)
    watches = [
        w for w in watch_plan(model, lab, [*extra, *vpc_watches(model, lab)]) if w.netns in have
    ]
    routes: list[RouteGet] = []
    for i, h in enumerate(model.hops):
        argv = route_get_argv(h)
        ns = lab.netns_of(h)
        if argv is None or ns not in have:
            continue
        r = _run(_nsexec(ns, *argv))
        routes.append(parse_route_get(ns, i, argv, r.returncode, r.stdout, r.stderr))
    deadline = time.monotonic() + 10
    # The fast path (docs/datapath.md) would carry the probe past the hooks watched here:
    # for the probe's addresses, the hosts on its way use the kernel path meanwhile.
    vpcs = {w.netns for w in watches}
    with (
        fastpath.kernel_path_for(vpcs, [(probe.src, probe.dst)]),
        _monitors(watches, probe, deadline) as lines,
    ):
        outcome = _send(probe, lab.netns_of(model.hops[0]), timeout)
    hops = tuple(summarise(w, parse_events(lines[w.netns])) for w in watches)
    return Live(str(probe), outcome, hops, tuple(routes))


def lab_from_record(record: Any) -> Lab:
    """The Lab of a `yunhan.lab.region.RegionRecord`."""
    spec = record.region_spec
    return Lab(
        prefixes={h.name: h.agent_prefix for h in spec.hosts},
        host_netns={h.name: h.netns for h in spec.hosts},
        internet_netns=spec.internet_netns,
    )


def internet_of(record: Any) -> tuple[str, ...]:
    spec = record.region_spec
    return (str(ipaddress.IPv4Network(spec.internet_cidr)),)
