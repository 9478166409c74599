"""The kernel's process-event connector: which processes just exec'ed (needs root).

The proc connector (drivers/connector/cn_proc.c) multicasts one message per fork, exec,
exit, ... of every task of the machine to the netlink sockets (NETLINK_CONNECTOR) bound to
group CN_IDX_PROC that asked for them with PROC_CN_MCAST_LISTEN. It is the cheap way to
notice a process started after a scan: the agent checks the pid a few times over the next
second (its libraries are mapped by the dynamic loader after the exec).

Layout of one datagram (host byte order; several messages may share one datagram, each
aligned to 4 bytes):

    struct nlmsghdr  (16)   u32 len, u16 type (NLMSG_DONE), u16 flags, u32 seq, u32 pid
    struct cn_msg    (20)   u32 idx (CN_IDX_PROC), u32 val (CN_VAL_PROC), u32 seq, u32 ack,
                            u16 len (of what follows), u16 flags
    struct proc_event (16+) u32 what, u32 cpu, u64 timestamp_ns, then a union by `what`:
        PROC_EVENT_NONE  (0)  u32 err                   (the answer to a subscription)
        PROC_EVENT_EXEC  (2)  i32 process_pid, i32 process_tgid

The subscription is the same header pair sent to the kernel with a u32 payload
PROC_CN_MCAST_LISTEN (the old form of `struct proc_input`, still accepted: every event
type). The connector lives in the initial network namespace only: the agent's own.
Messages are dropped by the kernel when the socket's buffer is full (recv fails with
ENOBUFS): the caller must then rescan.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_NONE = 0
PROC_EVENT_EXEC = 2
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3

NLMSGHDR = struct.Struct("=IHHII")
CN_MSG = struct.Struct("=IIIIHH")
PROC_EVENT = struct.Struct("=IIQ")
EXEC_DATA = struct.Struct("=ii")
ACK_DATA = struct.Struct("=I")
RCVBUF = 4 << 20  # a burst of execs (a build, a boot) must not overrun at once


class ConnectorError(OSError):
    """The connector cannot be used (not root, no CONFIG_PROC_EVENTS, not the initial
    network namespace) or its socket failed."""


@dataclass(frozen=True)
class Exec:
    pid: int  # the thread that exec'ed
    tgid: int  # its process: the pid to look at


@dataclass(frozen=True)
class Ack:
    err: int  # the answer to a subscription: 0, or an errno


Event = Exec | Ack


def _align(n: int) -> int:
    return (n + 3) & ~3


def subscribe_message(op: int = PROC_CN_MCAST_LISTEN, port: int = 0, seq: int = 0) -> bytes:
    """The datagram that subscribes (or, with PROC_CN_MCAST_IGNORE, unsubscribes)."""
    payload = struct.pack("=I", op)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, 0, len(payload), 0) + payload
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, seq, port) + cn


def parse(data: bytes) -> list[Event]:
    """The exec events and subscription answers in one datagram; other events (fork,
    exit, uid changes, ...), other connectors' messages and truncated tails are skipped."""
    out: list[Event] = []
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > len(data):
            break  # truncated or corrupt: nothing after it can be trusted
        body = data[off + NLMSGHDR.size : off + length]
        off += _align(length)
        if mtype in (NLMSG_NOOP, NLMSG_ERROR) or len(body) < CN_MSG.size:
            continue
        idx, val, _s, _a, clen, _f = CN_MSG.unpack_from(body)
        if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
            continue
        ev = body[CN_MSG.size : CN_MSG.size + clen]
        if len(ev) < PROC_EVENT.size:
            continue
        what, _cpu, _ts = PROC_EVENT.unpack_from(ev)
        rest = ev[PROC_EVENT.size :]
        if what == PROC_EVENT_EXEC and len(rest) >= EXEC_DATA.size:
            pid, tgid = EXEC_DATA.unpack_from(rest)
            out.append(Exec(pid, tgid))
        elif what == PROC_EVENT_NONE and len(rest) >= ACK_DATA.size:
            out.append(Ack(ACK_DATA.unpack_from(rest)[0]))
    return out


class ProcConnector:
    """A subscribed proc-connector socket. `receive(timeout)` returns the exec events seen
    (empty on timeout); ConnectorError("overrun") with errno ENOBUFS when events were lost.
    Raises ConnectorError at construction when the kernel refuses."""

    def __init__(self) -> None:
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise ConnectorError(exc.errno, f"proc connector: {exc.strerror}") from exc
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self._sock.bind((0, CN_IDX_PROC))  # port 0: the kernel picks one
            port = self._sock.getsockname()[0]
            self._sock.send(subscribe_message(PROC_CN_MCAST_LISTEN, port))
        except OSError as exc:
            self._sock.close()
            raise ConnectorError(exc.errno, f"proc connector: {exc.strerror}") from exc

    def receive(self, timeout: float) -> list[Exec]:
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            return []
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise ConnectorError(errno.ENOBUFS, "proc connector: events lost") from exc
            raise ConnectorError(exc.errno, f"proc connector: {exc.strerror}") from exc
        events = parse(data)
        for ev in events:
            if isinstance(ev, Ack) and ev.err:
                raise ConnectorError(ev.err, f"proc connector refused: {os.strerror(ev.err)}")
        return [ev for ev in events if isinstance(ev, Exec)]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.send(subscribe_message(PROC_CN_MCAST_IGNORE))
        self._sock.close()
