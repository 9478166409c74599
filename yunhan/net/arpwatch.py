"""ARP seen on the instance ports of one VPC namespace: how the agent notices gratuitous
ARP, the signal that an instance (its keepalived) has taken a VIP (docs/vips.md).

A pure core and a thin shell: `parse_arp` reads an Ethernet frame (and `encode_arp` writes
one, its inverse); `ArpSocket` is an AF_PACKET socket made inside the VPC namespace (a
socket stays in the namespace it was made in) that receives the ARP frames of every
interface there. The caller keeps the frames of the instance ports it knows and ignores the
rest (the VXLAN device, gateway ports, and what the namespace sends itself: the proxy ARP
answers of the host side).

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

    def receive(self, timeout: float) -> list[tuple[str, Arp]]:
        """(interface name, ARP) of what arrived within `timeout` seconds, what this
        namespace sent left out; [] when nothing did. Raises ArpError."""
        self._sock.settimeout(timeout)
        out: list[tuple[str, Arp]] = []
        try:
            data, addr = self._sock.recvfrom(256)
            while True:
                # The name is resolved by the kernel through the socket (SIOCGIFNAME on
                # its fd), so in the socket's namespace, not the reading thread's.
                ifname, _proto, pkttype = addr[0], addr[1], addr[2]
                arp = parse_arp(data)
                if arp is not None and pkttype != PACKET_OUTGOING:
                    out.append((ifname, arp))
                self._sock.settimeout(0.0)  # drain what is queued, then return
                data, addr = self._sock.recvfrom(256)
        except (TimeoutError, BlockingIOError):
            return out
        except OSError as exc:
            raise ArpError(f"ARP socket in {self.netns}: {exc}") from exc

    def close(self) -> None:
        self._sock.close()
