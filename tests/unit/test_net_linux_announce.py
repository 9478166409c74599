"""The gratuitous ARP the linux driver sends when a route to a new address appears."""

from __future__ import annotations

import socket
import struct

from yunhan.net.linux import ETH_P_ARP, garp_frame


def test_garp_frame_says_ip_is_at_mac_to_everyone() -> None:
    f = garp_frame("02:aa:bb:cc:dd:ee", "10.1.1.77")
    mac = bytes.fromhex("02aabbccddee")
    assert len(f) == 42
    assert f[:6] == b"\xff" * 6 and f[6:12] == mac
    assert struct.unpack("!H", f[12:14])[0] == ETH_P_ARP
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", f[14:])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)  # an ARP request
    # Sender and target are both the announced address: a gratuitous ARP, which updates
    # a neighbour entry the receiver already has and creates none.
    assert sha == mac and tha == bytes(6)
    assert spa == tpa == socket.inet_aton("10.1.1.77")
