"""Probe injection: ICMP echoes sent from inside many namespaces at once, for the
connectivity matrix (`yunhan check connectivity`).

What OVS does with PacketOut (a packet handed to a virtual port as if the machine behind
it had sent it) is done here with a raw ICMP socket opened inside the source's own network
namespace: the echo leaves by that namespace's routing and device, exactly as the
instance's (or IDC server's, or gateway replica's) own traffic would, and nothing is
installed anywhere. One process, one thread: each source's socket is opened on a
short-lived thread that entered its namespace (a socket stays in the namespace it was made
in), then a single select loop sends every pair's echo, retries the unanswered ones, and
reads every answer. A thousand pairs take one round trip plus the retry schedule, not a
thousand pings.

Matching: each source socket has its own ICMP identifier; the sequence number carries the
destination's index and the attempt. An echo reply counts only from the address asked
for; an ICMP error (unreachable, time exceeded) is matched by the echo it quotes and
recorded with who sent it. Pure pieces (building and parsing packets, the schedule) are
separate from `inject`, which does the I/O.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import select
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

ATTEMPTS = (0.0, 0.25, 0.6)  # send times of each pair's echoes, seconds after the start
MAX_DESTS = 1 << 14  # per source: the sequence number keeps 2 bits for the attempt
PAYLOAD = b"yunhan-connectivity"
ECHO_REQUEST, ECHO_REPLY = 8, 0
UNREACHABLE_CODES = {
    0: "net unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    4: "fragmentation needed",
    9: "net administratively prohibited",
    10: "host administratively prohibited",
    13: "communication administratively prohibited",
}


@dataclass(frozen=True)
class Source:
    """Where probes start: a network namespace, and the address to send from (None: the
    one the namespace's routing picks, as an application that does not bind would)."""

    netns: str
    bind: str | None = None


@dataclass
class Outcome:
    """What became of one pair's echoes."""

    reached: bool = False
    rtt_ms: float | None = None  # of the first echo answered, from its own send time
    sent: int = 0
    error: str = ""  # "host unreachable from 10.0.1.1", "cannot send: …", "" none
    reply_from: str = ""  # an echo reply from another address than asked (a NAT, a VIP)


@dataclass
class _Plan:
    source: int
    dest: str
    sent_at: list[float] = field(default_factory=list)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return int(~s & 0xFFFF)


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    c = checksum(head + payload)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, c, ident, seq) + payload


def seq_of(dest: int, attempt: int) -> int:
    return (dest << 2) | attempt


def dest_of(seq: int) -> tuple[int, int]:
    return seq >> 2, seq & 3


@dataclass(frozen=True)
class Answer:
    """One ICMP packet a raw socket read, as far as probes care."""

    kind: str  # "reply" or "error"
    sender: str  # the IP source of the answer
    ident: int
    seq: int
    detail: str = ""  # error: what it says


def parse(packet: bytes) -> Answer | None:
    """An echo reply, or an ICMP error quoting an echo request; None for anything else
    (other ICMP, requests, truncated packets)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    sender = socket.inet_ntoa(packet[12:16])
    icmp = packet[ihl:]
    if len(icmp) < 8:
        return None
    typ, code = icmp[0], icmp[1]
    if typ == ECHO_REPLY:
        ident, seq = struct.unpack("!HH", icmp[4:8])
        return Answer("reply", sender, ident, seq)
    if typ in (3, 11):
        inner = icmp[8:]
        if len(inner) < 20 or inner[9] != socket.IPPROTO_ICMP:
            return None
        iihl = (inner[0] & 0x0F) * 4
        quoted = inner[iihl:]
        if len(quoted) < 8 or quoted[0] != ECHO_REQUEST:
            return None
        ident, seq = struct.unpack("!HH", quoted[4:8])
        if typ == 3:
            what = UNREACHABLE_CODES.get(code, f"destination unreachable (code {code})")
        else:
            what = "time exceeded (a routing loop?)"
        return Answer("error", sender, ident, seq, what)
    return None


@contextlib.contextmanager
def _sockets(sources: Sequence[Source]) -> Iterator[list[socket.socket | OSError]]:
    from yunhan.net.nsutil import run_in

    socks: list[socket.socket | OSError] = []
    try:
        for s in sources:

            def make(s: Source = s) -> socket.socket:
                sk = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                try:
                    if s.bind:
                        sk.bind((s.bind, 0))
                    sk.setblocking(False)
                    sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
                except OSError:
                    sk.close()
                    raise
                return sk

            try:
                socks.append(run_in(make, net=s.netns))
            except OSError as exc:
                socks.append(exc)
        yield socks
    finally:
        for sk in socks:
            if isinstance(sk, socket.socket):
                sk.close()


def inject(
    sources: Sequence[Source],
    pairs: Sequence[tuple[int, str]],
    *,
    timeout: float = 1.5,
    attempts: Sequence[float] = ATTEMPTS,
    rng: random.Random | None = None,
) -> list[Outcome]:
    """Send an ICMP echo for each pair (source index, destination address) from its
    source's namespace, re-sending the unanswered ones at the times of `attempts`, and wait
    until `timeout` seconds after the last send at most (less when all are answered).
    Returns one Outcome per pair, in order. Needs root (raw sockets, setns)."""
    if os.geteuid() != 0:
        raise PermissionError("probe injection needs root: it enters the namespaces")
    rng = rng or random.Random()
    idents = rng.sample(range(1, 0xFFFF), len(sources))
    out = [Outcome() for _ in pairs]
    plans: dict[tuple[int, int], int] = {}  # (source, dest index) -> pair index
    dests: list[dict[str, int]] = [{} for _ in sources]
    rows: list[_Plan] = []
    for i, (src, dst) in enumerate(pairs):
        ipaddress.IPv4Address(dst)  # ValueError for a bad one, before anything is sent
        d = dests[src].setdefault(dst, len(dests[src]))
        if d >= MAX_DESTS:
            raise ValueError(f"at most {MAX_DESTS} destinations per source")
        if (src, d) in plans:
            raise ValueError(f"pair {i} repeats pair {plans[(src, d)]}")
        plans[(src, d)] = i
        rows.append(_Plan(src, dst))
    by_ident = {ident: n for n, ident in enumerate(idents)}
    with _sockets(sources) as socks:
        for i, p in enumerate(rows):
            sk = socks[p.source]
            if isinstance(sk, OSError):
                out[i].error = f"cannot open a socket in {sources[p.source].netns}: {sk.strerror}"
        start = time.monotonic()
        schedule = sorted(attempts)
        last_send = start + schedule[-1]
        deadline = last_send + timeout
        next_attempt = 0
        live = [s for s in socks if isinstance(s, socket.socket)]
        while True:
            now = time.monotonic()
            if next_attempt < len(schedule) and now >= start + schedule[next_attempt]:
                _send_round(socks, idents, dests, rows, out, next_attempt)
                next_attempt += 1
                continue
            pending = any(not o.reached and not o.error.startswith("cannot") for o in out)
            if not pending or now >= deadline:
                break
            wake = deadline
            if next_attempt < len(schedule):
                wake = min(wake, start + schedule[next_attempt])
            ready, _, _ = select.select(live, [], [], max(0.0, wake - now))
            t = time.monotonic()
            for sk in ready:
                _drain(sk, t, by_ident, dests, plans, rows, out)
    return out


def _send_round(
    socks: Sequence[socket.socket | OSError],
    idents: Sequence[int],
    dests: Sequence[dict[str, int]],
    rows: Sequence[_Plan],
    out: Sequence[Outcome],
    attempt: int,
) -> None:
    for i, p in enumerate(rows):
        sk, o = socks[p.source], out[i]
        if o.reached or isinstance(sk, OSError):
            continue
        pkt = echo_request(idents[p.source], seq_of(dests[p.source][p.dest], attempt))
        try:
            sk.sendto(pkt, (p.dest, 0))
        except OSError as exc:
            # EHOSTUNREACH, ENETUNREACH, EINVAL (a blackhole route): the source's own
            # routing refuses it; later attempts may find a route.
            o.error = f"the source's routing refuses it: {exc.strerror}"
            p.sent_at.append(time.monotonic())
            continue
        p.sent_at.append(time.monotonic())
        o.sent += 1


def _drain(
    sk: socket.socket,
    t: float,
    by_ident: dict[int, int],
    dests: Sequence[dict[str, int]],
    plans: dict[tuple[int, int], int],
    rows: Sequence[_Plan],
    out: Sequence[Outcome],
) -> None:
    while True:
        try:
            packet = sk.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        a = parse(packet)
        if a is None or a.ident not in by_ident:
            continue
        src = by_ident[a.ident]
        d, attempt = dest_of(a.seq)
        i = plans.get((src, d))
        if i is None:
            continue
        o, p = out[i], rows[i]
        if o.reached:
            continue
        if a.kind == "reply":
            if a.sender != p.dest:
                o.reply_from = a.sender
                continue
            o.reached, o.error = True, ""
            if attempt < len(p.sent_at):
                o.rtt_ms = round((t - p.sent_at[attempt]) * 1000, 3)
        else:
            o.error = f"{a.detail} from {a.sender}"
