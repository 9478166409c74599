"""Flow-log records from the kernel of one VPC namespace (docs/flowlogs.md).

Two sources, each with a pure core and a thin shell:

* accepted flows: conntrack of the namespace, listed every interval (`list_conntrack`, the
  Debian `conntrack` tool run inside it). `AcceptTracker` keeps the counters last seen per
  flow and turns each listing into one record per port, direction and flow whose counters
  moved: the delta since the previous listing. conntrack keeps a closed TCP flow for
  10 s (CLOSE) to 120 s (TIME_WAIT), longer than an interval (5 s by default), so the last
  packets of a flow are still read; a flow first seen already closed gives its full
  counters. What a flow did between the last listing and its removal (a UDP flow's last
  packets, then 30 s of idling) is already counted, since idle flows do not move; only a
  flow removed by hand or by table pressure within one interval loses its last delta.
* rejected packets: the reject chains of `net.nftsg` log every dropped packet (rate-limited
  per port and direction) to NFLOG group `nftsg.LOG_GROUP`. `NflogSocket` is an
  nfnetlink_log socket made inside the namespace (a socket stays in the namespace it was
  made in) that receives the first COPY_RANGE bytes of each (enough for the IPv4 and TCP or
  UDP headers); `parse_nflog` reads the kernel's messages and `RejectAggregator` sums them
  per (port, direction, 5-tuple) between two flushes.

`NamespaceCollector` ties both to one namespace: a reader thread for the NFLOG socket and a
`poll(now)` its owner (`agent.flowlogs`) calls every interval. Nothing here raises past a
poll: a missing conntrack, a namespace gone, a socket error is logged and retried.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from yunhan.net import nftsg, nsutil
from yunhan.net.desired import FlowFilter
from yunhan.nsexec import nsenter_argv

log = logging.getLogger("yunhan.net.flowcollect")

Direction = Literal["ingress", "egress"]
Action = Literal["ACCEPT", "REJECT"]

# Bytes of each rejected packet copied to us: a 20-byte IPv4 header with options (up to
# 60) and the ports of TCP/UDP (the first 4 bytes of L4). The byte count comes from the IP
# header's total length, not from the copy.
COPY_RANGE = 64
# Distinct (port, direction, 5-tuple) keys of rejected packets kept between two flushes; a
# scan of many ports beyond it is counted as skipped, not kept.
MAX_REJECT_KEYS = 10_000
CONNTRACK_TIMEOUT = 10.0  # seconds one listing may take


class CollectError(Exception):
    """A source of records failed (conntrack missing or failing, a namespace gone)."""


@dataclass(frozen=True)
class LoggedPort:
    """A local port that a flow log covers, and which records of it are kept."""

    instance: str
    ifname: str
    ip: str
    filter: FlowFilter
    # the other addresses it holds (VIPs delivered to it): their flows are its flows too
    extra: tuple[str, ...] = ()


def by_address(ports: Mapping[str, LoggedPort]) -> dict[str, LoggedPort]:
    """The ports by every address they hold."""
    return {ip: p for p in ports.values() for ip in (p.ip, *p.extra)}


@dataclass(frozen=True)
class Record:
    """One direction of one flow on one instance's interface in one window (the ingest
    protocol's record, specs/flowlogs-common.md)."""

    instance: str
    interface: str
    flow_direction: Direction
    srcaddr: str
    dstaddr: str
    srcport: int | None
    dstport: int | None
    protocol: int
    packets: int
    bytes: int
    start: float
    end: float
    action: Action

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "interface": self.interface,
            "flow_direction": self.flow_direction,
            "srcaddr": self.srcaddr,
            "dstaddr": self.dstaddr,
            "srcport": self.srcport,
            "dstport": self.dstport,
            "protocol": self.protocol,
            "packets": self.packets,
            "bytes": self.bytes,
            "start": self.start,
            "end": self.end,
            "action": self.action,
        }


# -- accepted flows: conntrack ------------------------------------------------------------


@dataclass(frozen=True)
class CtSide:
    """One direction of a conntrack entry: its tuple and its counters."""

    src: str
    dst: str
    sport: int | None
    dport: int | None
    packets: int
    bytes: int


@dataclass(frozen=True)
class CtFlow:
    id: int
    proto: int
    orig: CtSide
    reply: CtSide
    start: float | None  # unix seconds (nf_conntrack_timestamp), None when not kept
    state: str | None  # TCP state (ESTABLISHED, TIME_WAIT, ...), None for others


def _side(meta: ET.Element) -> tuple[str, str, int, int | None, int | None, int, int]:
    l3 = meta.find("layer3")
    l4 = meta.find("layer4")
    if l3 is None or l4 is None:
        raise ValueError("a conntrack tuple without layer3 or layer4")
    src, dst = l3.findtext("src"), l3.findtext("dst")
    if src is None or dst is None:
        raise ValueError("a conntrack tuple without addresses")
    sport, dport = l4.findtext("sport"), l4.findtext("dport")
    return (
        src,
        dst,
        int(l4.get("protonum", "0")),
        int(sport) if sport is not None else None,
        int(dport) if dport is not None else None,
        int(meta.findtext("counters/packets") or 0),
        int(meta.findtext("counters/bytes") or 0),
    )


def parse_conntrack_xml(text: str) -> list[CtFlow]:
    """The IPv4 flows of `conntrack -L -o xml,ktimestamp,id` (an empty listing is "")."""
    if not text.strip():
        return []
    root = ET.fromstring(text)  # the kernel's own listing, through conntrack: trusted
    out: list[CtFlow] = []
    for flow in root.iter("flow"):
        metas = {m.get("direction"): m for m in flow.findall("meta")}
        orig, reply, ind = metas.get("original"), metas.get("reply"), metas.get("independent")
        if orig is None or reply is None or ind is None:
            continue
        l3 = orig.find("layer3")
        if l3 is None or l3.get("protoname") != "ipv4":
            continue
        o, r = _side(orig), _side(reply)
        start_ns = ind.findtext("timestamp/start")
        out.append(
            CtFlow(
                id=int(ind.findtext("id") or 0),
                proto=o[2],
                orig=CtSide(o[0], o[1], o[3], o[4], o[5], o[6]),
                reply=CtSide(r[0], r[1], r[3], r[4], r[5], r[6]),
                start=int(start_ns) / 1e9 if start_ns else None,
                state=ind.findtext("state"),
            )
        )
    return out


def list_conntrack(netns: str) -> list[CtFlow]:
    """The conntrack entries of `netns` now (all zones). Raises CollectError."""
    argv = nsenter_argv(["conntrack", "-L", "-o", "xml,ktimestamp,id"], net=netns)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=CONNTRACK_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CollectError(f"conntrack in {netns}: {exc}") from exc
    if p.returncode != 0:
        raise CollectError(f"conntrack in {netns}: {p.stderr.strip()[:300]}")
    try:
        return parse_conntrack_xml(p.stdout)
    except (ET.ParseError, ValueError) as exc:
        raise CollectError(f"conntrack in {netns}: unreadable listing: {exc}") from exc


_FlowKey = tuple[int, float | None, int, str, str, int | None, int | None]


def _l4_port(proto: int, port: int | None) -> int | None:
    return port if proto in (6, 17, 132) else None  # icmp's "ports" are its type/id


class AcceptTracker:
    """Turns successive conntrack listings of one namespace into ACCEPT records (pure)."""

    def __init__(self) -> None:
        self._last: dict[_FlowKey, tuple[int, int, int, int]] = {}
        self._polled: float | None = None

    @property
    def tracked(self) -> int:
        return len(self._last)

    def poll(
        self, flows: Iterable[CtFlow], now: float, ports: Mapping[str, LoggedPort]
    ) -> list[Record]:
        """The records of what moved since the last poll, for the ports in `ports` (by ip)
        that keep ACCEPT records. A flow not in `flows` is forgotten: it ended."""
        out: list[Record] = []
        last: dict[_FlowKey, tuple[int, int, int, int]] = {}
        prev_poll = self._polled
        for f in flows:
            touched = [
                (p, first)
                for addr, first in ((f.orig.src, "egress"), (f.orig.dst, "ingress"))
                if (p := ports.get(addr)) is not None and p.filter != "REJECT"
            ]
            if not touched:
                continue
            key = (f.id, f.start, f.proto, f.orig.src, f.orig.dst, f.orig.sport, f.orig.dport)
            now_c = (f.orig.packets, f.orig.bytes, f.reply.packets, f.reply.bytes)
            seen = self._last.get(key)
            if seen is None or any(n < s for n, s in zip(now_c, seen, strict=True)):
                seen = (0, 0, 0, 0)  # new (or its counters were reset): all it has
                start = f.start if f.start is not None else (prev_poll or now)
            else:
                start = max(f.start or 0.0, prev_poll or 0.0)
            last[key] = now_c
            for p, first in touched:
                second: Direction = "ingress" if first == "egress" else "egress"
                for side, direction, packets, nbytes in (
                    (f.orig, first, now_c[0] - seen[0], now_c[1] - seen[1]),
                    (f.reply, second, now_c[2] - seen[2], now_c[3] - seen[3]),
                ):
                    if packets <= 0:
                        continue
                    out.append(
                        Record(
                            instance=p.instance,
                            interface=p.ifname,
                            flow_direction=direction,  # type: ignore[arg-type]
                            srcaddr=side.src,
                            dstaddr=side.dst,
                            srcport=_l4_port(f.proto, side.sport),
                            dstport=_l4_port(f.proto, side.dport),
                            protocol=f.proto,
                            packets=packets,
                            bytes=nbytes,
                            start=min(start, now),
                            end=now,
                            action="ACCEPT",
                        )
                    )
        self._last = last
        self._polled = now
        return out


# -- rejected packets: nfnetlink_log ---------------------------------------------------------

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
# NFULA_* (linux/netfilter/nfnetlink_log.h)
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_OUTDEV = 5
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
# NFULA_CFG_*
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
RCVBUF = 1 << 20


@dataclass(frozen=True)
class LoggedPacket:
    """One packet an NFLOG rule reported (IPv4 only)."""

    prefix: str
    indev: int | None
    outdev: int | None
    src: str
    dst: str
    proto: int
    sport: int | None
    dport: int | None
    length: int  # the IP total length: the packet's size, whatever was copied
    time: float | None  # the kernel's receive time, when the packet carried one


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", buf, off)
        if alen < 4 or off + alen > end:
            break
        out[atype & NLA_TYPE_MASK] = buf[off + 4 : off + alen]
        off += (alen + 3) & ~3
    return out


def _packet(attrs: dict[int, bytes]) -> LoggedPacket | None:
    payload = attrs.get(NFULA_PAYLOAD)
    if payload is None or len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    total = struct.unpack_from("!H", payload, 2)[0]
    proto = payload[9]
    sport = dport = None
    if proto in (6, 17) and len(payload) >= ihl + 4:
        sport, dport = struct.unpack_from("!HH", payload, ihl)
    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode(errors="replace")
    indev = attrs.get(NFULA_IFINDEX_INDEV)
    outdev = attrs.get(NFULA_IFINDEX_OUTDEV)
    ts = attrs.get(NFULA_TIMESTAMP)
    when = None
    if ts is not None and len(ts) >= 16:
        sec, usec = struct.unpack_from("!QQ", ts)
        when = sec + usec / 1e6
    return LoggedPacket(
        prefix=prefix,
        indev=struct.unpack("!I", indev)[0] if indev and len(indev) >= 4 else None,
        outdev=struct.unpack("!I", outdev)[0] if outdev and len(outdev) >= 4 else None,
        src=str(ipaddress.IPv4Address(payload[12:16])),
        dst=str(ipaddress.IPv4Address(payload[16:20])),
        proto=proto,
        sport=sport,
        dport=dport,
        length=total,
        time=when,
    )


def parse_nflog(buf: bytes) -> list[LoggedPacket]:
    """The IPv4 packets in one datagram of an nfnetlink_log socket (it may hold several
    messages); anything else in it (acks, other messages) is skipped. Raises
    CollectError for an error message (a refused configuration)."""
    out: list[LoggedPacket] = []
    off = 0
    while off + 16 <= len(buf):
        mlen, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", buf, off)
        if mlen < 16 or off + mlen > len(buf):
            break
        if mtype == NLMSG_ERROR:
            code = struct.unpack_from("=i", buf, off + 16)[0]
            if code != 0:
                raise CollectError(f"nfnetlink_log: {errno.errorcode.get(-code, -code)}")
        elif mtype == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            # nlmsghdr (16) + nfgenmsg (4: family, version, group) + attributes
            p = _packet(_attrs(buf, off + 20, off + mlen))
            if p is not None:
                out.append(p)
        off += (mlen + 3) & ~3
    return out


def _nla(atype: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), atype) + data
    return raw + b"\0" * (-len(raw) % 4)


def config_message(group: int, seq: int, attrs: bytes) -> bytes:
    """An NFULNL_MSG_CONFIG request for `group` (acked) carrying `attrs`."""
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, group) + attrs
    head = struct.pack(
        "=IHHII",
        16 + len(body),
        (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        0,
    )
    return head + body


def bind_messages(group: int, copy_range: int) -> list[bytes]:
    """Bind to `group`, then ask for the first `copy_range` bytes of each packet and a
    flush every 0.1 s (the default second would delay a record across an interval)."""
    return [
        config_message(group, 1, _nla(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND))),
        config_message(
            group,
            2,
            _nla(NFULA_CFG_MODE, struct.pack("!IBB", copy_range, NFULNL_COPY_PACKET, 0))
            + _nla(NFULA_CFG_TIMEOUT, struct.pack("!I", 10)),  # in 1/100 s
        ),
    ]


class NflogSocket:
    """An nfnetlink_log socket bound to `group` inside netns `netns`. Raises CollectError."""

    def __init__(
        self, netns: str, group: int = nftsg.LOG_GROUP, copy_range: int = COPY_RANGE
    ) -> None:
        def make() -> socket.socket:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

        try:
            self._sock = nsutil.run_in(make, net=netns)
        except OSError as exc:
            raise CollectError(f"nflog socket in {netns}: {exc}") from exc
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self._sock.bind((0, 0))
            self._sock.settimeout(2.0)
            for msg in bind_messages(group, copy_range):
                self._sock.send(msg)
                parse_nflog(self._sock.recv(65536))  # the ack; raises on a refusal
        except (OSError, CollectError) as exc:
            self._sock.close()
            raise CollectError(f"nflog group {group} in {netns}: {exc}") from exc

    def receive(self, timeout: float) -> list[LoggedPacket]:
        """What arrived within `timeout` seconds ([] if nothing). Raises OSError(ENOBUFS)
        when the kernel dropped messages that did not fit the socket's buffer."""
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(1 << 17)
        except TimeoutError:
            return []
        return parse_nflog(data)

    def close(self) -> None:
        self._sock.close()


_RejectKey = tuple[str, str, str, str, int | None, int | None, int, str]


class RejectAggregator:
    """Sums logged packets per (port, direction, 5-tuple) until `flush` (thread-safe).

    Keeps at most `max_keys` keys; a packet of a new key beyond that is counted in
    `skipped` (per instance) and dropped."""

    def __init__(self, max_keys: int = MAX_REJECT_KEYS) -> None:
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._agg: dict[_RejectKey, list[float]] = {}  # packets, bytes, first, last
        self.skipped: Counter[str] = Counter()

    def add(
        self,
        pkt: LoggedPacket,
        now: float,
        ifnames: Mapping[int, str],
        ports: Mapping[str, LoggedPort],
    ) -> bool:
        """Count `pkt`; False when its port is unknown (not logged, or an ifindex
        `ifnames` does not know yet)."""
        found = nftsg.LOG_PREFIXES.get(pkt.prefix)
        if found is None:
            return False
        _check, direction = found
        dev = pkt.indev if direction == "egress" else pkt.outdev
        port = ports.get(ifnames.get(dev, "")) if dev is not None else None
        if port is None or port.filter == "ACCEPT":
            return port is not None
        key = (port.ifname, direction, pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto,
               port.instance)  # fmt: skip
        when = pkt.time if pkt.time is not None else now
        with self._lock:
            cur = self._agg.get(key)
            if cur is None:
                if len(self._agg) >= self.max_keys:
                    self.skipped[port.instance] += 1
                    return True
                self._agg[key] = [1, pkt.length, when, when]
            else:
                cur[0] += 1
                cur[1] += pkt.length
                cur[2] = min(cur[2], when)
                cur[3] = max(cur[3], when)
        return True

    def flush(self) -> tuple[list[Record], Counter[str]]:
        """The REJECT records since the last flush, and the packets skipped meanwhile."""
        with self._lock:
            agg, self._agg = self._agg, {}
            skipped, self.skipped = self.skipped, Counter()
        out = [
            Record(
                instance=instance,
                interface=ifname,
                flow_direction=direction,  # type: ignore[arg-type]
                srcaddr=src,
                dstaddr=dst,
                srcport=sport,
                dstport=dport,
                protocol=proto,
                packets=int(v[0]),
                bytes=int(v[1]),
                start=v[2],
                end=v[3],
                action="REJECT",
            )
            for (ifname, direction, src, dst, sport, dport, proto, instance), v in agg.items()
        ]
        return out, skipped


def interfaces(netns: str) -> dict[int, str]:
    """ifindex -> ifname of the links in `netns` (read from inside it)."""
    try:
        return dict(nsutil.run_in(socket.if_nameindex, net=netns))
    except OSError as exc:
        raise CollectError(f"links of {netns}: {exc}") from exc


# -- one namespace ------------------------------------------------------------------------


class NamespaceCollector:
    """The collector of one VPC namespace: an NFLOG reader thread, and `poll` for its
    owner to call every interval. `ports`: the logged ports of the namespace by ifname.

    The sources are injected (`lister`, `nflog`, `links`) so that tests can drive the
    record logic without a kernel; by default they are the kernel's."""

    def __init__(
        self,
        netns: str,
        ports: Mapping[str, LoggedPort],
        *,
        clock: Callable[[], float] = time.time,
        lister: Callable[[str], list[CtFlow]] = list_conntrack,
        nflog: Callable[[str], NflogSocket] = NflogSocket,
        links: Callable[[str], dict[int, str]] = interfaces,
        max_reject_keys: int = MAX_REJECT_KEYS,
    ) -> None:
        self.netns = netns
        self._clock = clock
        self._lister = lister
        self._nflog = nflog
        self._links = links
        self._ports: Mapping[str, LoggedPort] = dict(ports)
        self._by_ip = by_address(ports)
        self._ifnames: dict[int, str] = {}
        self._links_at = -1e18
        self.tracker = AcceptTracker()
        self.rejects = RejectAggregator(max_reject_keys)
        self.overruns = 0  # NFLOG messages the kernel dropped (ENOBUFS)
        self.errors = 0
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def set_ports(self, ports: Mapping[str, LoggedPort]) -> None:
        self._ports = dict(ports)
        self._by_ip = by_address(ports)

    @property
    def ports(self) -> Mapping[str, LoggedPort]:
        return self._ports

    def start(self) -> None:
        """Start the NFLOG reader (once)."""
        if self._reader is None:
            self._reader = threading.Thread(
                target=self._read_loop, name=f"nflog:{self.netns}", daemon=True
            )
            self._reader.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5.0)

    def _refresh_links(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._links_at < 1.0:
            return
        self._links_at = now
        try:
            self._ifnames = self._links(self.netns)
        except CollectError as exc:
            log.warning("flow logs: %s", exc)

    def _read_loop(self) -> None:
        sock: NflogSocket | None = None
        backoff = 1.0
        try:
            while not self._stop.is_set():
                if sock is None:
                    try:
                        sock = self._nflog(self.netns)
                        backoff = 1.0
                    except CollectError as exc:
                        self.errors += 1
                        log.warning("flow logs: %s; retrying in %.0f s", exc, backoff)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, 30.0)
                        continue
                try:
                    packets = sock.receive(0.5)
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        # The kernel dropped messages: we cannot know whose; counted.
                        self.overruns += 1
                        continue
                    self.errors += 1
                    log.warning("flow logs: nflog in %s: %s; reopening", self.netns, exc)
                    sock.close()
                    sock = None
                    continue
                except CollectError as exc:
                    self.errors += 1
                    log.warning("flow logs: %s", exc)
                    continue
                now = self._clock()
                for p in packets:
                    if not self.rejects.add(p, now, self._ifnames, self._ports):
                        self._refresh_links()  # a port made since the last look
                        self.rejects.add(p, now, self._ifnames, self._ports)
        finally:
            if sock is not None:
                sock.close()

    def poll(self) -> tuple[list[Record], Counter[str]]:
        """The records since the last poll (ACCEPT from conntrack, REJECT from NFLOG) and
        the records skipped meanwhile, per instance. Never raises: a failing source is
        logged and gives nothing this time (its flows are read at the next poll)."""
        now = self._clock()
        self._refresh_links(force=True)
        out: list[Record] = []
        try:
            flows = self._lister(self.netns)
            out.extend(self.tracker.poll(flows, now, self._by_ip))
        except CollectError as exc:
            self.errors += 1
            log.warning("flow logs: %s", exc)
        rejected, skipped = self.rejects.flush()
        out.extend(rejected)
        return out, skipped
