"""The runtime's end of the zygote: starts it, sends spawn requests, hears exits.

One reader thread owns the receiving side of the control socket and files each record
as a reply (to the request that waits for it) or an exit (pid -> how it ended); it ends
when the zygote closes the socket. Callers never read the socket themselves.
"""

from __future__ import annotations

import array
import contextlib
import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yunhan
from yunhan.errors import FunctionRuntimeError
from yunhan.functions.zygote import MAX_RECORD

ZYGOTE_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# Not `-m yunhan.functions.zygote`: runpy would import the package (and the zygote module,
# through it) before running the module again as __main__.
_MAIN = "import sys; from yunhan.functions.zygote import main; main(sys.argv)"


@dataclass(frozen=True)
class Exit:
    code: int | None  # exit status, when it exited
    signal: int | None  # the signal that killed it, when one did


class ZygoteClient:
    def __init__(self, python: str, log: Path) -> None:
        self._python = python
        self._log = log
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self._exits: dict[int, Exit] = {}
        self._next = 0
        self._closed = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        with self._cond:
            return self._sock is not None and not self._closed

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> None:
        """Start the zygote and wait until it answers (its imports are done)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Only what the zygote needs: none of the agent's environment (its tokens) may
        # reach a worker, whose /proc/<pid>/environ still shows the block it was born with.
        env = {
            "PATH": ZYGOTE_ENV_PATH,
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(Path(yunhan.__file__).resolve().parent.parent),
        }
        self._log.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log, "ab") as out:
            self._proc = subprocess.Popen(
                [self._python, "-s", "-c", _MAIN, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        theirs.close()
        self._sock = mine
        self._reader = threading.Thread(target=self._read, name="fn-zygote-reader", daemon=True)
        self._reader.start()
        self.request({"op": "ping"}, [], timeout=timeout)

    def _read(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(MAX_RECORD)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._closed = True
                    self._cond.notify_all()
                    return
                msg = json.loads(data)
                if "exit" in msg:
                    self._exits[int(msg["exit"])] = Exit(msg["code"], msg["signal"])
                else:
                    self._replies[int(msg["re"])] = msg
                self._cond.notify_all()

    def request(self, msg: dict[str, Any], fds: list[int], timeout: float) -> dict[str, Any]:
        """Send one request (with descriptors) and wait for its reply."""
        if self._sock is None or self._closed:
            raise FunctionRuntimeError("the function zygote is not running")
        with self._send_lock:
            self._next += 1
            req = self._next
            body = json.dumps({**msg, "req": req}).encode()
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            self._sock.sendmsg([body], anc)
        deadline = time.monotonic() + timeout
        with self._cond:
            while req not in self._replies:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    raise FunctionRuntimeError(
                        "the function zygote "
                        + ("exited" if self._closed else f"did not answer in {timeout:g} s"),
                        zygote_pid=self.pid,
                    )
                self._cond.wait(left)
            reply = self._replies.pop(req)
        if "error" in reply:
            raise FunctionRuntimeError(f"zygote: {reply['error']}", zygote_pid=self.pid)
        return reply

    def spawn(self, setup: dict[str, Any], fds: list[int], *, netns: bool) -> int:
        reply = self.request({"op": "spawn", "setup": setup, "netns": netns}, fds, timeout=10)
        return int(reply["pid"])

    def wait_exit(self, pid: int, timeout: float) -> Exit | None:
        """How worker `pid` ended, once the zygote has reaped it; None if it has not in
        `timeout` seconds (or the zygote is gone, which kills it anyway)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while pid not in self._exits:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    return None
                self._cond.wait(left)
            return self._exits.pop(pid)

    def exited(self, pid: int) -> bool:
        with self._cond:
            return pid in self._exits

    def stop(self, timeout: float = 5.0) -> None:
        """Close the control socket: the zygote kills its workers and exits. Waits."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._reader is not None:
            self._reader.join()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
