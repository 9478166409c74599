"""The pure parts of yunhan.net.frr: rendering, reading back and diffing a session (apply
then revert returns to the start; a diff applied to `old` gives what a fresh render of
`new` holds), validation. The daemons themselves: tests/integration/test_frr_linux.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from yunhan.errors import ValidationError
from yunhan.net import frr

S = frr.Session(
    router_id="198.19.33.11",
    asn=64512,
    peer_ip="198.19.33.1",
    peer_asn=65001,
    md5_secret="s3cret",
    bfd=True,
    announce=("10.20.0.0/16",),
)


def _apply(config: str, commands: list[str]) -> str:
    """A tiny model of bgpd for the diff commands: enough to check that applying
    `session_commands(old, new)` to render(old) holds exactly what render(new) holds."""
    old = frr.parse_session(config)
    s = replace(old) if old else replace(S, asn=1, peer_ip="0.0.0.0", announce=())
    announce = list(s.announce)
    for c in commands:
        w = c.split()
        if w[:2] == ["no", "router"]:
            s, announce = replace(s, md5_secret=None, bfd=False), []
        elif w[:2] == ["router", "bgp"]:
            s = replace(s, asn=int(w[2]))
        elif w[:2] == ["bgp", "router-id"]:
            s = replace(s, router_id=w[2])
        elif w[:2] == ["no", "neighbor"] and len(w) == 3:
            s = replace(s, md5_secret=None, bfd=False)
        elif w[0] == "neighbor" and w[2] == "remote-as":
            s = replace(s, peer_ip=w[1], peer_asn=int(w[3]))
        elif w[0] == "neighbor" and w[2] == "password":
            s = replace(s, md5_secret=w[3])
        elif w[:1] == ["no"] and w[3:4] == ["password"]:
            s = replace(s, md5_secret=None)
        elif w[0] == "neighbor" and w[2] == "bfd":
            s = replace(s, bfd=True)
        elif w[:1] == ["no"] and w[3:4] == ["bfd"]:
            s = replace(s, bfd=False)
        elif w[0] == "network":
            announce.append(w[1])
        elif w[:2] == ["no", "network"]:
            announce.remove(w[2])
    return frr.render_session(replace(s, announce=tuple(announce)))


def test_render_and_parse_round_trip() -> None:
    text = frr.render_session(S)
    assert frr.parse_session(text) == S
    for line in (
        "router bgp 64512",
        " bgp router-id 198.19.33.11",
        " no bgp ebgp-requires-policy",
        " no bgp network import-check",
        " timers bgp 3 9",
        " neighbor 198.19.33.1 remote-as 65001",
        " neighbor 198.19.33.1 password s3cret",
        " neighbor 198.19.33.1 bfd",
        " neighbor 198.19.33.1 advertisement-interval 0",
        "  network 10.20.0.0/16",
    ):
        assert line in text.splitlines()
    bare = replace(S, md5_secret=None, bfd=False, announce=())
    assert frr.parse_session(frr.render_session(bare)) == bare
    assert "password" not in frr.render_session(bare) and " bfd" not in frr.render_session(bare)
    assert frr.parse_session("frr defaults traditional\n!\n") is None


def test_announce_change_is_network_lines_only() -> None:
    more = replace(S, announce=("10.20.0.0/16", "10.30.0.0/24"))
    assert frr.session_commands(S, more) == [
        "router bgp 64512",
        "address-family ipv4 unicast",
        "network 10.30.0.0/24",
        "exit-address-family",
        "exit",
    ]
    assert frr.session_commands(more, S) == [
        "router bgp 64512",
        "address-family ipv4 unicast",
        "no network 10.30.0.0/24",
        "exit-address-family",
        "exit",
    ]
    assert frr.session_commands(S, S) == []


CHANGES = [
    replace(S, announce=()),
    replace(S, announce=("10.20.0.0/16", "10.40.0.0/16")),
    replace(S, md5_secret=None),
    replace(S, md5_secret="other"),
    replace(S, bfd=False),
    replace(S, router_id="198.19.33.12"),
    replace(S, peer_ip="198.19.34.1", peer_asn=65002),
    replace(S, asn=64513),
]


@pytest.mark.parametrize("new", CHANGES)
def test_incremental_equals_full_and_reverts(new: frr.Session) -> None:
    cmds = frr.session_commands(S, new)
    assert cmds
    if new.asn == S.asn:
        assert cmds[0] == f"router bgp {S.asn}" and cmds[-1] == "exit"
        assert not any(c.startswith("no router bgp") for c in cmds)
    assert _apply(frr.render_session(S), cmds) == frr.render_session(new)
    back = frr.session_commands(new, S)
    assert _apply(frr.render_session(new), back) == frr.render_session(S)


def test_a_session_from_nothing_is_its_whole_config() -> None:
    cmds = frr.session_commands(None, S)
    assert cmds[0] == "router bgp 64512" and "network 10.20.0.0/16" in cmds
    assert _apply("", cmds) == frr.render_session(S)


@pytest.mark.parametrize(
    "bad",
    [
        {"md5_secret": "two words"},
        {"md5_secret": "line\n router bgp 1"},
        {"md5_secret": "x" * 81},
        {"md5_secret": ""},
        {"asn": 0},
        {"peer_asn": 4294967295},
        {"peer_ip": "198.19.33"},
        {"router_id": "::1"},
        {"announce": ("10.0.0.1/8",)},
    ],
)
def test_bad_sessions_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        replace(S, **bad)  # type: ignore[arg-type]


def test_no_secret_in_command_errors() -> None:
    assert frr._show(["vtysh", "-c", "neighbor 1.2.3.4 password s3cret"]) == (
        "vtysh -c neighbor 1.2.3.4 password ***"
    )
