"""Frames on a stream socket: a 4-byte big-endian length, then that many bytes of JSON.

Used between the runtime and each worker (events may be megabytes, beyond what a
SOCK_SEQPACKET record holds). Leaf module: the worker harness imports it before fork.
"""

from __future__ import annotations

import json
import socket
import struct
from collections import deque
from typing import Any

MAX_FRAME = 8 * 1024 * 1024  # above Lambda's 6 MB payload limit, with room for JSON framing
_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """The peer sent something that is not a frame, or closed mid-frame."""


def encode(msg: Any) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"message of {len(body)} bytes is above the {MAX_FRAME} byte limit")
    return _HEADER.pack(len(body)) + body


class Decoder:
    """Bytes in, whole messages out: `feed` queues every message completed so far, `len`
    counts them and `pop` hands them out in order."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._ready: deque[Any] = deque()

    def feed(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise FrameError(f"frame of {n} bytes is above the {MAX_FRAME} byte limit")
            if len(self._buf) < _HEADER.size + n:
                break
            body = bytes(self._buf[_HEADER.size : _HEADER.size + n])
            del self._buf[: _HEADER.size + n]
            try:
                self._ready.append(json.loads(body))
            except ValueError as exc:
                raise FrameError(f"frame is not JSON: {exc}") from exc

    def pop(self) -> Any:
        """The oldest whole message (which may be null); IndexError when none is ready,
        so check `len` first."""
        return self._ready.popleft()

    def __len__(self) -> int:
        return len(self._ready)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


def send(sock: socket.socket, msg: Any) -> None:
    sock.sendall(encode(msg))


def recv(sock: socket.socket, decoder: Decoder) -> Any:
    """The next message (blocking, under the socket's own timeout); FrameError when the
    peer closed first."""
    while not len(decoder):
        data = sock.recv(65536)
        if not data:
            raise FrameError("peer closed the connection")
        decoder.feed(data)
    return decoder.pop()
