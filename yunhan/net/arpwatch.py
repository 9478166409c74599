"""ARP seen on the instance ports of one VPC namespace: how the agent notices gratuitous
ARP, the signal that an instance (its keepalived) has taken a VIP (docs/vips.md).

A pure core and a thin shell: `parse_arp` reads an Ethernet frame (and `encode_arp` writes
one, its inverse); `ArpSocket` is an AF_PACKET socket made inside the VPC namespace (a
socket stays in the namespace it was made in) that receives the ARP frames of every
interface there. The caller keeps the frames of the instance ports it knows and ignores the
rest (the VXLAN device, gateway ports, and what the namespace sends itself: the proxy ARP
answers of the host side).

The socket also sees an instance **sending from a VIP** (an IPv4 packet whose source is
the VIP), the sign of an instance that took the address without announcing it: `watch`
makes the kernel keep, besides ARP, the IPv4 packets whose source is one of the VIPs given,
except those received on the interfaces given for it (the port the VIP is delivered to, and
the VXLAN device: the holder's own traffic, local or remote, is no news) and those the
namespace sends. Everything else stays in the kernel, so the holder's traffic costs nothing.

Why ETH_P_ALL with a filter, not an ETH_P_ARP socket: the port's anti-spoofing chain
(`net.nft`, netdev ingress) drops ARP whose sender address the port may not use, and the
announcement of a standby that takes a VIP is exactly such ARP until the VIP is delivered
to it. The kernel hands a frame to ETH_P_ALL sockets (taps) before the ingress hooks and
to protocol sockets after them, so only a tap sees it. A classic BPF program on the socket
(`ARP_ONLY`) keeps everything but ARP in the kernel: the tap costs the data plane nothing
else.
"""

from __future__ import annotations

import array
import ipaddress
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from yunhan.net import nsutil

ETH_P_ARP = 0x0806
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26  # asm-generic/socket.h (not in the socket module)
ARP_REQUEST, ARP_REPLY = 1, 2
PACKET_OUTGOING = 4  # sll_pkttype of a frame this namespace sent (linux/if_packet.h)
BROADCAST = "ff:ff:ff:ff:ff:ff"
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
# Classic BPF, (code, jt, jf, k): load the ethertype (half word at 12); ARP: keep 64 bytes
# (an Ethernet header and an ARP packet are 42); anything else: keep nothing.
ARP_ONLY = (
    (0x28, 0, 0, 12),  # ldh [12]
    (0x15, 0, 1, ETH_P_ARP),  # jeq #0x806, next, drop
    (0x06, 0, 0, 64),  # ret #64
    (0x06, 0, 0, 0),  # ret #0
)


SKF_AD_OFF = -0x1000  # linux/filter.h: ancillary data, loaded at negative offsets
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8
ETH_P_IP = 0x0800
MAX_WATCHED = 64  # VIP sources per namespace the filter checks (the rest: ARP only)
Insn = tuple[int, int, int, int]


def _ld_abs(k: int) -> Insn:
    return (0x20, 0, 0, k & 0xFFFFFFFF)  # ld [k] (a word; k < 0: ancillary data)


def watch_program(sources: Sequence[tuple[str, Sequence[int]]]) -> tuple[Insn, ...]:
    """A classic BPF program keeping ARP, and IPv4 packets whose source is one of the
    addresses of `sources` received on an interface other than the ifindexes given with it
    (and not sent by this namespace). At most MAX_WATCHED addresses are checked.

    Every jump stays inside its address's block (offsets are 8 bits): each block reloads
    the source address, and ends with its own return.
    """
    prog: list[Insn] = [
        (0x28, 0, 0, 12),  # ldh [12]: the ethertype
        (0x15, 0, 1, ETH_P_ARP),  # jeq ARP, next, +1
        (0x06, 0, 0, 64),  # ret #64
        (0x15, 1, 0, ETH_P_IP),  # jeq IPv4, +1, next
        (0x06, 0, 0, 0),  # ret #0
        _ld_abs(SKF_AD_OFF + SKF_AD_PKTTYPE),
        (0x15, 0, 1, PACKET_OUTGOING),  # jeq outgoing, next, +1
        (0x06, 0, 0, 0),  # ret #0
    ]
    for ip, excluded in list(sources)[:MAX_WATCHED]:
        block: list[Insn] = [_ld_abs(SKF_AD_OFF + SKF_AD_IFINDEX)]
        for ifindex in excluded:
            block += [(0x15, 0, 1, ifindex), (0x06, 0, 0, 0)]  # jeq ifindex, next, +1; ret #0
        block.append((0x06, 0, 0, 64))  # ret #64
        prog += [
            _ld_abs(26),  # ld [26]: the IPv4 source address
            (0x15, 0, len(block), int(ipaddress.IPv4Address(ip))),  # jeq src, next, skip block
            *block,
        ]
    prog.append((0x06, 0, 0, 0))
    return tuple(prog)


@dataclass(frozen=True)
class Sent:
    """An IPv4 packet an instance sent from `src_ip` (the frame's source MAC `src_mac`)."""

    src_ip: str
    src_mac: str


def parse_sent(frame: bytes) -> Sent | None:
    """The source of the IPv4 packet an Ethernet frame carries; None for anything else."""
    if len(frame) < _ETH.size + 20:
        return None
    _dst, src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_IP or frame[_ETH.size] >> 4 != 4:
        return None
    return Sent(str(ipaddress.IPv4Address(frame[26:30])), _mac(src))


class ArpError(Exception):
    """The ARP socket of a namespace could not be made or read (a namespace gone)."""


@dataclass(frozen=True)
class Arp:
    """An IPv4-over-Ethernet ARP packet. A gratuitous one announces `sender_ip` (keepalived
    sends requests with `target_ip` == `sender_ip`; some send replies)."""

    op: int  # ARP_REQUEST or ARP_REPLY
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str

    @property
    def gratuitous(self) -> bool:
        return self.sender_ip == self.target_ip


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse_arp(frame: bytes) -> Arp | None:
    """The ARP packet an Ethernet frame carries; None for anything else (another
    ethertype, a truncated frame, an ARP not of IPv4 over Ethernet, an unknown op)."""
    if len(frame) < _ETH.size + _ARP.size:
        return None
    _dst, _src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH.size)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4) or op not in (ARP_REQUEST, ARP_REPLY):
        return None
    return Arp(
        op,
        _mac(sha),
        str(ipaddress.IPv4Address(spa)),
        _mac(tha),
        str(ipaddress.IPv4Address(tpa)),
    )


def encode_arp(arp: Arp, dst_mac: str = BROADCAST) -> bytes:
    """The Ethernet frame (no FCS) of `arp`, from `arp.sender_mac` to `dst_mac`:
    `parse_arp(encode_arp(a)) == a`."""

    def mac(s: str) -> bytes:
        return bytes.fromhex(s.replace(":", ""))

    return _ETH.pack(mac(dst_mac), mac(arp.sender_mac), ETH_P_ARP) + _ARP.pack(
        1,
        0x0800,
        6,
        4,
        arp.op,
        mac(arp.sender_mac),
        ipaddress.IPv4Address(arp.sender_ip).packed,
        mac(arp.target_mac),
        ipaddress.IPv4Address(arp.target_ip).packed,
    )


def _attach(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    """Attach a classic BPF program (SO_ATTACH_FILTER: a struct sock_fprog, its length and
    the address of its instructions, which must stay alive only during the call)."""
    insns = array.array("B", b"".join(struct.pack("HBBI", *i) for i in program))
    fprog = struct.pack("HL", len(program), insns.buffer_info()[0])
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class ArpSocket:
    """The ARP frames received by the interfaces of netns `netns`. Raises ArpError."""

    def __init__(self, netns: str) -> None:
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            try:
                _attach(sock, ARP_ONLY)
            except OSError:
                sock.close()
                raise
            return sock

        try:
            self._sock = nsutil.run_in(make, net=netns)
        except OSError as exc:
            raise ArpError(f"ARP socket in {netns}: {exc}") from exc
        self.netns = netns
        # What was queued before the filter was attached is parsed and dropped by
        # `receive` like anything that is not ARP.

    def watch(self, sources: Mapping[str, Sequence[str]]) -> None:
        """Keep, besides ARP, IPv4 packets from the addresses of `sources` (VIP address ->
        the interface names whose packets from it are no news); replaces the last call's.
        Interfaces not there (yet) are left out. Raises ArpError."""

        def resolve() -> tuple[Insn, ...]:
            watched = []
            for ip, names in sources.items():
                excluded = []
                for name in names:
                    try:
                        excluded.append(socket.if_nametoindex(name))
                    except OSError:
                        continue
                watched.append((ip, excluded))
            return watch_program(watched)

        try:
            program = nsutil.run_in(resolve, net=self.netns)
            _attach(self._sock, program)
        except OSError as exc:
            raise ArpError(f"ARP socket in {self.netns}: {exc}") from exc

    def receive(self, timeout: float) -> list[tuple[str, Arp | Sent]]:
        """(interface name, ARP or IPv4 source) of what arrived within `timeout` seconds,
        what this namespace sent left out; [] when nothing did. Raises ArpError."""
        self._sock.settimeout(timeout)
        out: list[tuple[str, Arp | Sent]] = []
        try:
            data, addr = self._sock.recvfrom(256)
            while True:
                # The name is resolved by the kernel through the socket (SIOCGIFNAME on
                # its fd), so in the socket's namespace, not the reading thread's.
                ifname, _proto, pkttype = addr[0], addr[1], addr[2]
                seen = parse_arp(data) or parse_sent(data)
                if seen is not None and pkttype != PACKET_OUTGOING:
                    out.append((ifname, seen))
                self._sock.settimeout(0.0)  # drain what is queued, then return
                data, addr = self._sock.recvfrom(256)
        except (TimeoutError, BlockingIOError):
            return out
        except OSError as exc:
            raise ArpError(f"ARP socket in {self.netns}: {exc}") from exc

    def close(self) -> None:
        self._sock.close()
