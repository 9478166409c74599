"""Flow-log records from kernel data, pure: conntrack listings into ACCEPT deltas, NFLOG
messages (bytes built here as the kernel lays them out) into REJECT records."""

from __future__ import annotations

import socket
import struct

import pytest

from yunhan.net import flowcollect as fc
from yunhan.net import nftsg

# Recorded with `conntrack -L -o xml,ktimestamp,id` in a VPC namespace (two polls): a TCP
# flow from 10.0.1.5 (logged) to 10.0.1.6 on port 80 that grows then closes (TIME_WAIT),
# an ICMP flow, and a UDP flow that is gone at the second poll.
FLOW_80 = (
    '<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>10.0.1.5</src>'
    '<dst>10.0.1.6</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>49564</sport>'
    "<dport>80</dport></layer4><counters><packets>{op}</packets><bytes>{ob}</bytes></counters>"
    '</meta><meta direction="reply"><layer3 protonum="2" protoname="ipv4"><src>10.0.1.6</src>'
    '<dst>10.0.1.5</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>80</sport>'
    "<dport>49564</dport></layer4><counters><packets>{rp}</packets><bytes>{rb}</bytes>"
    '</counters></meta><meta direction="independent"><state>{state}</state>'
    "<timeout>119</timeout><mark>0</mark><use>1</use><id>2539386548</id><assured/>"
    "<timestamp><start>1796175868018077081</start></timestamp><deltatime>0</deltatime>"
    "</meta></flow>"
)
PING = (
    '<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>10.0.2.9</src>'
    '<dst>10.0.1.5</dst></layer3><layer4 protonum="1" protoname="icmp"><type>8</type>'
    "<code>0</code><id>7</id></layer4><counters><packets>1</packets><bytes>84</bytes>"
    '</counters></meta><meta direction="reply"><layer3 protonum="2" protoname="ipv4">'
    '<src>10.0.1.5</src><dst>10.0.2.9</dst></layer3><layer4 protonum="1" protoname="icmp">'
    "<type>0</type><code>0</code><id>7</id></layer4><counters><packets>1</packets>"
    '<bytes>84</bytes></counters></meta><meta direction="independent"><timeout>29</timeout>'
    "<mark>0</mark><use>1</use><id>11</id><timestamp><start>1796175869000000000</start>"
    "</timestamp></meta></flow>"
)
DNS = (
    '<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>10.0.1.5</src>'
    '<dst>10.0.9.9</dst></layer3><layer4 protonum="17" protoname="udp"><sport>5353</sport>'
    "<dport>53</dport></layer4><counters><packets>1</packets><bytes>60</bytes></counters>"
    '</meta><meta direction="reply"><layer3 protonum="2" protoname="ipv4"><src>10.0.9.9</src>'
    '<dst>10.0.1.5</dst></layer3><layer4 protonum="17" protoname="udp"><sport>53</sport>'
    "<dport>5353</dport></layer4><counters><packets>0</packets><bytes>0</bytes></counters>"
    '</meta><meta direction="independent"><timeout>28</timeout><mark>0</mark><use>1</use>'
    "<id>12</id><timestamp><start>1796175867500000000</start></timestamp></meta></flow>"
)
START_80 = 1796175868.018077081


def _xml(*flows: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<conntrack>\n'
        + "".join(flows)
        + "\n</conntrack>\n"
    )


def _80(op: int, ob: int, rp: int, rb: int, state: str = "ESTABLISHED") -> str:
    return FLOW_80.format(op=op, ob=ob, rp=rp, rb=rb, state=state)


P5 = fc.LoggedPort("inst-5", "p-5", "10.0.1.5", "ALL")
P6 = fc.LoggedPort("inst-6", "p-6", "10.0.1.6", "ALL")


def _by_ip(*ports: fc.LoggedPort) -> dict[str, fc.LoggedPort]:
    return {p.ip: p for p in ports}


def test_the_listing_parses_with_counters_start_state_and_id() -> None:
    flows = fc.parse_conntrack_xml(_xml(_80(4, 216, 4, 1216, "TIME_WAIT"), PING))
    f80, ping = flows
    assert f80.id == 2539386548 and f80.proto == 6 and f80.state == "TIME_WAIT"
    assert f80.orig == fc.CtSide("10.0.1.5", "10.0.1.6", 49564, 80, 4, 216)
    assert f80.reply == fc.CtSide("10.0.1.6", "10.0.1.5", 80, 49564, 4, 1216)
    assert f80.start == pytest.approx(START_80)
    assert ping.proto == 1 and ping.orig.sport is None and ping.state is None
    assert fc.parse_conntrack_xml("") == []  # no flows: conntrack prints nothing


def test_each_poll_gives_the_deltas_per_port_and_direction() -> None:
    t = fc.AcceptTracker()
    now1 = START_80 + 3
    recs = t.poll(fc.parse_conntrack_xml(_xml(_80(3, 164, 2, 112), PING, DNS)), now1,
                  _by_ip(P5, P6))  # fmt: skip
    got = {(r.interface, r.flow_direction, r.srcaddr, r.dstport): r for r in recs}
    # The 80 flow: on p-5 (its client) orig is egress, reply ingress; on p-6 the opposite.
    out5 = got[("p-5", "egress", "10.0.1.5", 80)]
    assert (out5.packets, out5.bytes, out5.srcport, out5.protocol) == (3, 164, 49564, 6)
    assert (out5.start, out5.end, out5.action) == (pytest.approx(START_80), now1, "ACCEPT")
    in5 = got[("p-5", "ingress", "10.0.1.6", 49564)]
    assert (in5.packets, in5.bytes, in5.srcport) == (2, 112, 80)
    assert (got[("p-6", "ingress", "10.0.1.5", 80)].packets,
            got[("p-6", "egress", "10.0.1.6", 49564)].bytes) == (3, 112)  # fmt: skip
    # ICMP: no ports; the DNS reply direction has not moved: no record for it.
    ping = got[("p-5", "ingress", "10.0.2.9", None)]
    assert (ping.srcport, ping.protocol, ping.bytes) == (None, 1, 84)
    assert ("p-5", "ingress", "10.0.9.9", 5353) not in got
    assert got[("p-5", "egress", "10.0.1.5", 53)].packets == 1
    assert len(recs) == 7
    # Second poll: the 80 flow moved on and closed; DNS is gone (forgotten), ping idle.
    now2 = now1 + 5
    recs = t.poll(fc.parse_conntrack_xml(_xml(_80(5, 268, 4, 1216, "TIME_WAIT"), PING)), now2,
                  _by_ip(P5, P6))  # fmt: skip
    got = {(r.interface, r.flow_direction): r for r in recs}
    assert len(recs) == 4
    assert (got[("p-5", "egress")].packets, got[("p-5", "egress")].bytes) == (2, 104)
    assert (got[("p-5", "ingress")].packets, got[("p-5", "ingress")].bytes) == (2, 1104)
    assert all(r.start == now1 and r.end == now2 for r in recs)  # max(flow start, last poll)
    assert t.tracked == 2
    assert t.poll([], now2 + 5, _by_ip(P5, P6)) == [] and t.tracked == 0


def test_a_flow_first_seen_closed_gives_its_full_counters() -> None:
    t = fc.AcceptTracker()
    t.poll([], START_80 - 10, _by_ip(P5))
    recs = t.poll(fc.parse_conntrack_xml(_xml(_80(4, 216, 4, 1216, "TIME_WAIT"))),
                  START_80 + 2, _by_ip(P5))  # fmt: skip
    assert sorted((r.flow_direction, r.packets, r.bytes) for r in recs) == [
        ("egress", 4, 216), ("ingress", 4, 1216)]  # fmt: skip
    assert all(r.start == pytest.approx(START_80) for r in recs)


def test_ports_logging_rejects_only_get_no_accept_records() -> None:
    t = fc.AcceptTracker()
    reject_only = fc.LoggedPort("inst-6", "p-6", "10.0.1.6", "REJECT")
    recs = t.poll(fc.parse_conntrack_xml(_xml(_80(3, 164, 2, 112))), START_80 + 1,
                  _by_ip(reject_only))  # fmt: skip
    assert recs == []


# -- NFLOG ---------------------------------------------------------------------------------


def _nla(atype: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), atype) + data
    return raw + b"\0" * (-len(raw) % 4)


def _ipv4(src: str, dst: str, proto: int, sport: int, dport: int, total: int) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return head + struct.pack("!HH", sport, dport) + b"\0" * 16


def _nflog_msg(prefix: str, payload: bytes, *, indev: int | None = None,
               outdev: int | None = None, ts: tuple[int, int] | None = None) -> bytes:  # fmt: skip
    attrs = _nla(1, struct.pack("!HBB", 0x0800, 2, 0))  # NFULA_PACKET_HDR, forward hook
    if indev is not None:
        attrs += _nla(fc.NFULA_IFINDEX_INDEV, struct.pack("!I", indev))
    if outdev is not None:
        attrs += _nla(fc.NFULA_IFINDEX_OUTDEV, struct.pack("!I", outdev))
    if ts is not None:
        attrs += _nla(fc.NFULA_TIMESTAMP, struct.pack("!QQ", *ts))
    attrs += _nla(fc.NFULA_PREFIX, prefix.encode() + b"\0")
    attrs += _nla(fc.NFULA_PAYLOAD, payload)
    body = struct.pack("!BBH", socket.AF_INET, 0, nftsg.LOG_GROUP) + attrs
    return struct.pack("=IHHII", 16 + len(body), (4 << 8) | 0, 0, 0, 0) + body


def test_nflog_messages_parse_into_packets() -> None:
    syn = _ipv4("10.0.1.5", "10.0.1.6", 6, 40000, 22, 60)
    buf = _nflog_msg("yh sg i ", syn, indev=3, outdev=4, ts=(1796175900, 250000))
    buf += _nflog_msg("yh acl e ", _ipv4("10.0.1.6", "10.0.2.7", 17, 5000, 53, 76), indev=4)
    a, b = fc.parse_nflog(buf)
    assert a == fc.LoggedPacket("yh sg i ", 3, 4, "10.0.1.5", "10.0.1.6", 6, 40000, 22, 60,
                                1796175900.25)  # fmt: skip
    assert (b.prefix, b.proto, b.dport, b.length, b.outdev, b.time) == (
        "yh acl e ", 17, 53, 76, None, None)  # fmt: skip
    # An ack is skipped; an error is raised.
    ack = struct.pack("=IHHIIi", 36, fc.NLMSG_ERROR, 0, 1, 0, 0) + b"\0" * 16
    assert fc.parse_nflog(ack) == []
    nack = struct.pack("=IHHIIi", 36, fc.NLMSG_ERROR, 0, 1, 0, -16) + b"\0" * 16
    with pytest.raises(fc.CollectError, match="EBUSY"):
        fc.parse_nflog(nack)


def test_rejects_aggregate_per_port_direction_and_tuple_by_filter() -> None:
    agg = fc.RejectAggregator(max_keys=2)
    ifnames = {3: "p-5", 4: "p-6", 5: "p-7"}
    ports = {"p-5": P5, "p-6": P6, "p-7": fc.LoggedPort("inst-7", "p-7", "10.0.1.7", "ACCEPT")}
    syn = _ipv4("10.0.1.5", "10.0.1.6", 6, 40000, 22, 60)
    for i in range(3):  # three SYNs denied at p-6's ingress
        pkt = fc.parse_nflog(_nflog_msg("yh sg i ", syn, indev=3, outdev=4, ts=(100 + i, 0)))[0]
        assert agg.add(pkt, 999.0, ifnames, ports)
    # Denied at p-5's egress by an ACL (the port is the input device), no timestamp.
    out = fc.parse_nflog(_nflog_msg("yh acl e ", syn, indev=3, outdev=4))[0]
    assert agg.add(out, 500.0, ifnames, ports)
    # p-7 keeps ACCEPT records only: known, not kept.
    to7 = fc.parse_nflog(_nflog_msg("yh sg i ", syn, indev=3, outdev=5))[0]
    assert agg.add(to7, 1.0, ifnames, ports)
    # A third key does not fit (max_keys=2): counted as skipped for its instance.
    other = _ipv4("10.0.1.9", "10.0.1.6", 6, 40001, 22, 60)
    assert agg.add(fc.parse_nflog(_nflog_msg("yh sg i ", other, outdev=4))[0], 1.0, ifnames,
                   ports)  # fmt: skip
    # An unknown device is reported (the collector refreshes its links and tries again).
    assert not agg.add(fc.parse_nflog(_nflog_msg("yh sg i ", syn, outdev=9))[0], 1.0,
                       ifnames, ports)  # fmt: skip
    recs, skipped = agg.flush()
    got = {(r.interface, r.flow_direction): r for r in recs}
    assert len(recs) == 2 and dict(skipped) == {"inst-6": 1}
    r = got[("p-6", "ingress")]
    assert (r.instance, r.srcaddr, r.dstaddr, r.srcport, r.dstport, r.protocol) == (
        "inst-6", "10.0.1.5", "10.0.1.6", 40000, 22, 6)  # fmt: skip
    assert (r.packets, r.bytes, r.start, r.end, r.action) == (3, 180, 100, 102, "REJECT")
    e = got[("p-5", "egress")]
    assert (e.instance, e.packets, e.start, e.end) == ("inst-5", 1, 500.0, 500.0)
    assert agg.flush() == ([], {})


def test_the_bind_messages_say_group_copy_mode_and_range() -> None:
    bind, mode = fc.bind_messages(nftsg.LOG_GROUP, fc.COPY_RANGE)
    length, mtype, flags = struct.unpack_from("=IHH", bind)
    assert (length, mtype, flags) == (len(bind), (4 << 8) | 1, 0x5)
    assert struct.unpack_from("!BBH", bind, 16) == (socket.AF_UNSPEC, 0, nftsg.LOG_GROUP)
    assert bind[20:] == _nla(fc.NFULA_CFG_CMD, b"\x01")
    assert mode[20:28] == struct.pack("=HH", 10, fc.NFULA_CFG_MODE) + struct.pack(
        "!I", fc.COPY_RANGE)  # fmt: skip
    assert mode[28] == fc.NFULNL_COPY_PACKET


class _Lister:
    def __init__(self) -> None:
        self.listings: list[str] = []
        self.fail: str | None = None

    def __call__(self, netns: str) -> list[fc.CtFlow]:
        if self.fail:
            raise fc.CollectError(self.fail)
        return fc.parse_conntrack_xml(self.listings.pop(0))


def test_a_collector_that_cannot_list_logs_and_carries_on() -> None:
    lister = _Lister()
    clock = iter([START_80 + 1.0, START_80 + 6.0, START_80 + 11.0]).__next__
    c = fc.NamespaceCollector("ns", {"p-5": P5}, clock=clock, lister=lister,
                              links=lambda ns: {3: "p-5"})  # fmt: skip
    lister.fail = "conntrack in ns: No such file or directory"
    assert c.poll() == ([], {}) and c.errors == 1
    lister.fail = None
    lister.listings = [_xml(_80(3, 164, 2, 112)), _xml(_80(3, 164, 2, 112))]
    recs, _ = c.poll()
    assert sorted(r.packets for r in recs) == [2, 3]
    assert c.poll() == ([], {})  # nothing moved


def test_a_flow_to_a_vip_is_its_holders() -> None:
    holder = fc.LoggedPort("inst-9", "p-9", "10.0.1.9", "ALL", extra=("10.0.1.6",))
    recs = fc.AcceptTracker().poll(
        fc.parse_conntrack_xml(_xml(_80(3, 164, 2, 112))),
        START_80 + 1,
        fc.by_address({"p-9": holder}),
    )
    assert {(r.interface, r.flow_direction, r.dstaddr, r.packets) for r in recs} == {
        ("p-9", "ingress", "10.0.1.6", 3),
        ("p-9", "egress", "10.0.1.5", 2),
    }
