"""ARP frames: parse and encode round-trip, and what is not an IPv4-over-Ethernet ARP is
refused (None), never an exception; the socket filters, run by a small interpreter."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from yunhan.net.arpwatch import (
    ARP_ONLY,
    ARP_REPLY,
    ARP_REQUEST,
    ETH_P_ARP,
    MAX_WATCHED,
    PACKET_OUTGOING,
    SKF_AD_IFINDEX,
    SKF_AD_OFF,
    SKF_AD_PKTTYPE,
    Arp,
    Sent,
    encode_arp,
    parse_arp,
    parse_sent,
    watch_program,
)

# A gratuitous ARP request as keepalived sends it (captured shape): broadcast, sender and
# target 10.0.1.100, target MAC zero, padded to the 60-byte Ethernet minimum.
KEEPALIVED_GARP = bytes.fromhex(
    "ffffffffffff" "020000000102" "0806"
    "0001" "0800" "06" "04" "0001"
    "020000000102" "0a000164"
    "000000000000" "0a000164"
) + bytes(18)  # fmt: skip


def test_a_keepalived_announcement_parses() -> None:
    arp = parse_arp(KEEPALIVED_GARP)
    assert arp == Arp(ARP_REQUEST, "02:00:00:00:01:02", "10.0.1.100", "00:00:00:00:00:00",
                      "10.0.1.100")  # fmt: skip
    assert arp is not None and arp.gratuitous


@pytest.mark.parametrize("op", [ARP_REQUEST, ARP_REPLY])
def test_encode_then_parse_gives_the_packet_back(op: int) -> None:
    arp = Arp(op, "02:aa:bb:cc:dd:ee", "192.168.7.9", "02:11:22:33:44:55", "192.168.7.1")
    frame = encode_arp(arp, dst_mac="02:11:22:33:44:55")
    assert len(frame) == 42
    assert parse_arp(frame) == arp
    assert not arp.gratuitous
    assert parse_arp(frame + bytes(18)) == arp  # padding is ignored


def test_what_is_not_ipv4_arp_is_none() -> None:
    good = bytearray(encode_arp(Arp(ARP_REQUEST, "02:00:00:00:00:01", "10.0.0.1",
                                    "00:00:00:00:00:00", "10.0.0.1")))  # fmt: skip
    assert parse_arp(bytes(good[:41])) is None  # truncated
    ipv4 = bytearray(good)
    ipv4[12:14] = b"\x08\x00"
    assert parse_arp(bytes(ipv4)) is None  # another ethertype
    for offset, value in ((14, b"\x00\x06"), (16, b"\x86\xdd"), (18, b"\x08"), (20, b"\x00\x03")):
        bad = bytearray(good)  # hardware type, protocol type, hardware length, op
        bad[offset : offset + len(value)] = value
        assert parse_arp(bytes(bad)) is None, offset
    assert parse_arp(b"") is None


def test_the_socket_filter_keeps_arp_and_nothing_else() -> None:
    """A tiny interpreter of the four instructions, on frames of both kinds."""

    def run(frame: bytes) -> int:
        pc, acc = 0, 0
        while True:
            code, jt, jf, k = ARP_ONLY[pc]
            if code == 0x28:  # ldh [k]
                acc = struct.unpack_from("!H", frame, k)[0]
                pc += 1
            elif code == 0x15:  # jeq #k
                pc += 1 + (jt if acc == k else jf)
            else:  # ret #k
                return k

    arp = encode_arp(Arp(ARP_REPLY, "02:00:00:00:00:01", "10.0.0.1", "02:00:00:00:00:02",
                         "10.0.0.2"))  # fmt: skip
    assert run(arp) >= len(arp)
    assert run(arp[:12] + b"\x08\x00" + arp[14:]) == 0
    assert ETH_P_ARP == 0x0806


def _ipv4(src: str, dst: str = "10.0.0.9", mac: str = "02:00:00:00:00:01") -> bytes:
    eth = bytes.fromhex("ffffffffffff") + bytes.fromhex(mac.replace(":", "")) + b"\x08\x00"
    ip = bytes([0x45, 0]) + (28).to_bytes(2, "big") + bytes(4) + bytes([64, 1, 0, 0])
    ip += ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    return eth + ip + bytes(8)


def _run(program: tuple[tuple[int, int, int, int], ...], frame: bytes, ifindex: int,
         pkttype: int = 0) -> int:  # fmt: skip
    """A tiny interpreter of the instructions `watch_program` uses, with the two pieces of
    ancillary data it loads."""
    anc = {(SKF_AD_OFF + SKF_AD_IFINDEX) & 0xFFFFFFFF: ifindex,
           (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF: pkttype}  # fmt: skip
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0x28:  # ldh [k]
            acc = struct.unpack_from("!H", frame, k)[0]
        elif code == 0x20:  # ld [k]: a packet word, or ancillary data
            acc = anc[k] if k in anc else struct.unpack_from("!I", frame, k)[0]
        elif code == 0x15:  # jeq #k
            pc += 1 + (jt if acc == k else jf)
            continue
        else:
            assert code == 0x06
            return k
        pc += 1


def test_the_watch_filter_keeps_arp_and_news_of_vip_sources_only() -> None:
    prog = watch_program([("10.0.1.100", [3, 7]), ("10.0.1.101", [3])])
    arp = encode_arp(Arp(ARP_REQUEST, "02:00:00:00:00:01", "10.0.1.100", "00:00:00:00:00:00",
                         "10.0.1.100"))  # fmt: skip
    assert _run(prog, arp, ifindex=3) == 64  # ARP from anywhere
    assert _run(prog, _ipv4("10.0.1.100"), ifindex=5) == 64  # a standby's port: news
    assert _run(prog, _ipv4("10.0.1.100"), ifindex=7) == 0  # the holder's port
    assert _run(prog, _ipv4("10.0.1.100"), ifindex=3) == 0  # the overlay
    assert _run(prog, _ipv4("10.0.1.101"), ifindex=7) == 64
    assert _run(prog, _ipv4("10.0.1.101"), ifindex=5, pkttype=PACKET_OUTGOING) == 0
    assert _run(prog, _ipv4("10.0.1.50"), ifindex=5) == 0  # not a VIP
    assert _run(prog, arp[:12] + b"\x86\xdd" + arp[14:], ifindex=5) == 0  # IPv6
    assert all(0 <= jt < 256 and 0 <= jf < 256 for _c, jt, jf, _k in prog)
    many = watch_program([(f"10.0.2.{i}", [1, 2]) for i in range(200)])
    assert len(many) == 8 + MAX_WATCHED * 8 + 1  # the rest is left to ARP only
    assert _run(watch_program([]), _ipv4("10.0.1.100"), ifindex=5) == 0


def test_an_ipv4_frame_gives_its_source() -> None:
    assert parse_sent(_ipv4("10.0.1.100", mac="02:aa:00:00:00:01")) == Sent(
        "10.0.1.100", "02:aa:00:00:00:01"
    )
    arp = encode_arp(Arp(ARP_REQUEST, "02:00:00:00:00:01", "10.0.0.1", "00:00:00:00:00:00",
                         "10.0.0.1"))  # fmt: skip
    assert parse_sent(arp) is None
    assert parse_sent(_ipv4("10.0.1.100")[:30]) is None
