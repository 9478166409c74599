"""The connectivity matrix's pure parts: probe packets, answers, pairs, rendering."""

from __future__ import annotations

import socket
import struct

import pytest

from yunhan.net import probes
from yunhan.net.connectivity import (
    Endpoint,
    Explanation,
    Matrix,
    Pair,
    PairsError,
    Result,
    default_pairs,
    read_pairs,
)

A = Endpoint("a", "instance", "10.0.1.2", "ns-a", vpc="v1", ref="instance-aaaa")
B = Endpoint("b", "instance", "10.0.1.3", "ns-b", vpc="v1", ref="instance-bbbb")
S = Endpoint("idc:dc1/s1", "idc-server", "192.168.100.10", "ns-s1", vpc="v1")
G1 = Endpoint("gw:h/1", "replica", "198.19.33.11", "ns-g1", "198.19.33.11", "v1")
G2 = Endpoint("gw:h/2", "replica", "198.19.33.12", "ns-g2", "198.19.33.12", "v1")
OTHER = Endpoint("x", "instance", "10.9.0.2", "ns-x", vpc="v2", ref="instance-xxxx")


def _ip_header(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return (
        struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0)
        + socket.inet_aton(src)
        + socket.inet_aton(dst)
    )


def test_an_echo_request_has_a_valid_checksum() -> None:
    pkt = probes.echo_request(0x1234, probes.seq_of(5, 2))
    assert probes.checksum(pkt) == 0  # a packet with its checksum sums to zero
    typ, code, _, ident, seq = struct.unpack("!BBHHH", pkt[:8])
    assert (typ, code, ident) == (8, 0, 0x1234)
    assert probes.dest_of(seq) == (5, 2)


def test_a_reply_and_an_error_are_matched_to_the_echo_they_answer() -> None:
    reply_icmp = struct.pack("!BBHHH", 0, 0, 0, 77, probes.seq_of(3, 1)) + probes.PAYLOAD
    reply = _ip_header("10.0.1.3", "10.0.1.2", 1, reply_icmp) + reply_icmp
    a = probes.parse(reply)
    assert a == probes.Answer("reply", "10.0.1.3", 77, probes.seq_of(3, 1))

    echo = probes.echo_request(77, probes.seq_of(9, 0))
    quoted = _ip_header("10.0.1.2", "10.0.9.9", 1, echo) + echo[:8]
    err_icmp = struct.pack("!BBHI", 3, 1, 0, 0) + quoted
    err = _ip_header("10.0.1.1", "10.0.1.2", 1, err_icmp) + err_icmp
    e = probes.parse(err)
    assert e is not None and e.kind == "error" and e.sender == "10.0.1.1"
    assert (e.ident, probes.dest_of(e.seq)) == (77, (9, 0))
    assert e.detail == "host unreachable"


def test_other_icmp_is_ignored() -> None:
    req = probes.echo_request(1, 1)
    assert probes.parse(_ip_header("1.1.1.1", "2.2.2.2", 1, req) + req) is None  # a request
    udp = b"\0" * 8
    quoted = _ip_header("10.0.1.2", "10.0.9.9", 17, udp) + udp
    err_icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
    assert probes.parse(_ip_header("10.0.1.1", "10.0.1.2", 1, err_icmp) + err_icmp) is None
    assert probes.parse(b"\x45\x00") is None  # truncated


def test_default_pairs_stay_in_a_vpc_and_replicas_face_the_idc() -> None:
    pairs = {(p.src.name, p.dst.name) for p in default_pairs([A, B, S, G1, G2, OTHER])}
    assert ("a", "b") in pairs and ("b", "a") in pairs
    assert ("a", "idc:dc1/s1") in pairs and ("idc:dc1/s1", "a") in pairs
    assert ("gw:h/1", "idc:dc1/s1") in pairs and ("idc:dc1/s1", "gw:h/2") in pairs
    assert not {p for p in pairs if "x" in p}  # another VPC
    assert ("a", "gw:h/1") not in pairs and ("gw:h/1", "a") not in pairs
    assert ("gw:h/1", "gw:h/2") not in pairs
    assert not {p for p in pairs if p[0] == p[1]}
    assert len(pairs) == 2 + 4 + 4


def test_a_pairs_file_names_endpoints_ids_or_addresses() -> None:
    text = "# checks\na b\ninstance-aaaa idc:dc1/s1 reach  # by id\nb 198.18.0.1 drop\n"
    pairs = read_pairs(text, [A, B, S])
    assert [(p.src.name, p.dst.name, p.expect) for p in pairs] == [
        ("a", "b", "reach"),
        ("a", "idc:dc1/s1", "reach"),
        ("b", "198.18.0.1", "drop"),
    ]
    assert pairs[2].dst.kind == "address"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\n", "line 1: want `SRC DST"),
        ("a b maybe\n", "reach or drop"),
        ("zz b\n", "no endpoint 'zz'"),
        ("a nowhere\n", "neither an endpoint nor an IPv4 address"),
        ("a a\n", "to itself"),
        ("a b\na b\n", "line 2: a -> b is already listed"),
        ("# nothing\n", "lists no pair"),
    ],
)
def test_a_bad_pairs_file_is_refused_whole(text: str, message: str) -> None:
    with pytest.raises(PairsError, match=message.replace("(", r"\(")):
        read_pairs(text, [A, B])


def test_the_matrix_shows_every_pair_and_explains_the_unexpected() -> None:
    drop = Explanation(
        "vpc v100 on h1", "security-group", "ingress rule sgr-1 denies it", "security groups"
    )
    m = Matrix(
        [
            Result(Pair(A, B), True, 0.31, 1),
            Result(Pair(B, A), False, None, 3, why=drop),
            Result(Pair(A, S, "drop"), False, None, 3),
        ],
        0.8,
    )
    text = m.render()
    assert "3 pairs in 0.80 s: 1 reached, 2 not" in text and "1 not as expected" in text
    assert "b -> a (10.0.1.2): not reached, should reach" in text
    assert "rule: ingress rule sgr-1 denies it" in text
    assert "a -> idc:dc1/s1" not in text  # an expected drop needs no explanation
    data = m.to_json()
    assert data["not_as_expected"] == 1
    assert data["results"][1]["why"]["reason"] == "security-group"
    assert [r["as_expected"] for r in data["results"]] == [True, False, True]


def test_inject_refuses_a_bad_address_and_a_repeated_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("yunhan.net.probes.os.geteuid", lambda: 0)
    src = [probes.Source("nowhere")]
    with pytest.raises(ValueError):
        probes.inject(src, [(0, "10.0.0.300")])
    with pytest.raises(ValueError, match="repeats"):
        probes.inject(src, [(0, "10.0.0.3"), (0, "10.0.0.3")])


def test_the_rule_a_model_detail_names() -> None:
    from yunhan.cli.check import rule_of

    sg = "security groups of h-1: ingress rule sgr-7f3a denies it (the first packet of a flow)"
    assert rule_of(sg) == "ingress rule sgr-7f3a"
    assert rule_of("table main drops it: ip rule 10100 blackhole") == "ip rule 10100"
    assert rule_of("network ACL of web: egress rule 3 denies it") == "egress rule 3"
    assert rule_of("no member holds 10.0.1.9") == ""
