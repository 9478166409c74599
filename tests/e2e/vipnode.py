"""What runs inside an instance that may hold a VIP, for tests/e2e/test_vips.py and
bench/vip_failover.py: `python vipnode.py RUNDIR TAG`, as the instance's `--command`.

It answers on every address the instance has (so on a VIP once it holds it), naming itself
(the instance's hostname, its UTS namespace's):

* TCP port 7000: one line, the hostname, then it closes;
* UDP port 7001: each datagram comes back prefixed with the hostname and a space, from
  the address it was sent to.

And it runs keepalived (from Debian's package) with RUNDIR/TAG.conf when told, by signal,
so that the caller decides when VRRP starts and how it ends:

* SIGUSR1: start keepalived (VRRP only, in the foreground, its pid files and log in RUNDIR)
  unless it runs;
* SIGUSR2: stop it as `systemctl stop` would (SIGTERM: it gives the VIP up and tells its
  peer, with a priority 0 advertisement);
* SIGHUP: crash it (SIGKILL to its parent and its VRRP child: the address stays on eth0
  and the peer hears nothing until its down timer fires);
* SIGTERM, SIGINT: stop keepalived, then exit.

keepalived stays in this process's group, so the agent stopping the instance's command
(a killpg) stops it too. RUNDIR/TAG.node.pid appears once both ports listen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

TCP_PORT, UDP_PORT = 7000, 7001
IP_PKTINFO = 8  # linux/in.h (not in the socket module of Python 3.11)
_PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo


def _tcp(sock: socket.socket, name: bytes) -> None:
    while True:
        conn, _ = sock.accept()
        with contextlib.suppress(OSError):
            conn.sendall(name + b"\n")
        conn.close()


def _udp(sock: socket.socket, name: bytes) -> None:
    # From the address the datagram was sent to, as a TCP answer would be: a socket bound
    # to 0.0.0.0 otherwise answers a VIP's datagram from the instance's own address.
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    while True:
        data, anc, _flags, peer = sock.recvmsg(2048, socket.CMSG_SPACE(_PKTINFO.size))
        dst = next(
            (_PKTINFO.unpack(d)[2] for lvl, typ, d in anc
             if (lvl, typ) == (socket.IPPROTO_IP, IP_PKTINFO)),
            bytes(4),
        )  # fmt: skip
        # struct in_pktinfo: ifindex, spec_dst (the source to use), addr (ignored on send)
        info = _PKTINFO.pack(0, dst, bytes(4))
        with contextlib.suppress(OSError):
            sock.sendmsg([name + b" " + data], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, peer)


SIGNALS = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}


def _unblock() -> None:
    # A child inherits the signal mask: keepalived must get its signals as usual.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


class Keepalived:
    def __init__(self, rundir: Path, tag: str) -> None:
        self.conf = rundir / f"{tag}.conf"
        self.pid = rundir / f"{tag}.kpid"
        self.vpid = rundir / f"{tag}.vpid"
        self.log = rundir / f"{tag}.klog"
        self.proc: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running():
            return
        argv = ["keepalived", "-n", "-l", "-D", "-P", "-R", "-f", str(self.conf),
                "-p", str(self.pid), "-r", str(self.vpid)]  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         preexec_fn=_unblock)  # fmt: skip

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self._kill_child()
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def crash(self) -> None:
        if self.proc is None:
            return
        self._kill_child()
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def _kill_child(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.vpid.read_text()), signal.SIGKILL)


def main() -> int:
    rundir, tag = Path(sys.argv[1]), sys.argv[2]
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # before any thread: all wait in sigwait
    name = socket.gethostname().encode()
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", TCP_PORT))
    tcp.listen(64)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", UDP_PORT))
    for target, sock in ((_tcp, tcp), (_udp, udp)):
        threading.Thread(target=target, args=(sock, name), daemon=True).start()
    ka = Keepalived(rundir, tag)
    (rundir / f"{tag}.node.pid").write_text(str(os.getpid()))
    while True:
        sig = signal.sigwait(SIGNALS)
        if sig == signal.SIGUSR1:
            ka.start()
        elif sig == signal.SIGUSR2:
            ka.stop()
        elif sig == signal.SIGHUP:
            ka.crash()
        else:
            ka.stop()
            return 0


if __name__ == "__main__":
    sys.exit(main())
