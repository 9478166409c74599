"""Frames between the runtime and a worker: round trips, split reads, limits."""

from __future__ import annotations

import socket

import pytest

from yunhan.functions import framing


def test_messages_round_trip_whatever_the_chunking() -> None:
    msgs = [{"id": "a", "event": {"x": [1, 2]}}, "plain", None, {"big": "é" * 40000}]
    wire = b"".join(framing.encode(m) for m in msgs)
    for step in (1, 3, 4, 5, 4096, len(wire)):
        d = framing.Decoder()
        got = []
        for i in range(0, len(wire), step):
            d.feed(wire[i : i + step])
            while len(d):
                got.append(d.pop())
        assert got == msgs
        assert d.pending == 0


def test_an_oversized_frame_is_refused_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framing, "MAX_FRAME", 10)
    with pytest.raises(framing.FrameError):
        framing.encode("x" * 20)
    with pytest.raises(framing.FrameError):
        framing.Decoder().feed((1000).to_bytes(4, "big") + b"{}")


def test_a_frame_that_is_not_json_is_an_error() -> None:
    with pytest.raises(framing.FrameError, match="not JSON"):
        framing.Decoder().feed((3).to_bytes(4, "big") + b"{x}")


def test_recv_over_a_socket_and_eof_mid_frame() -> None:
    a, b = socket.socketpair()
    with a, b:
        framing.send(a, {"n": 1})
        framing.send(a, {"n": 2})
        d = framing.Decoder()
        assert framing.recv(b, d) == {"n": 1}
        assert framing.recv(b, d) == {"n": 2}
        a.sendall(framing.encode({"n": 3})[:5])
        a.close()
        with pytest.raises(framing.FrameError, match="closed"):
            framing.recv(b, d)
