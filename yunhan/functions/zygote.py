"""The fork server: one long-lived, single-threaded process per runtime, with Python and
the worker harness already imported, that forks a worker per request.

    python -c 'import sys; from yunhan.functions.zygote import main; main(sys.argv)' FD

CONTROL_FD is a SOCK_SEQPACKET socket to the runtime; each record is one JSON message.

    runtime -> zygote  {"op": "spawn", "req": N, "setup": {...}, "netns": bool}
                       with SCM_RIGHTS [channel, log] (+ [netns] when "netns" is true)
    zygote -> runtime  {"re": N, "pid": P} | {"re": N, "error": "..."}
                       {"exit": P, "code": C | null, "signal": S | null}

It never outlives the runtime: end of file on the control socket (the runtime closed it
or died) kills every worker and exits. A pipe, not PR_SET_PDEATHSIG, because the parent
death signal follows the *thread* that forked us, and the runtime may start us from a
thread that ends long before it does. Workers do use PR_SET_PDEATHSIG (the zygote has
one thread), so a zygote killed outright takes them along.

No threads here, ever: a fork copies only the calling thread, and a lock another thread
held would stay locked in every worker. Children are watched through pidfds in the one
selector loop, not SIGCHLD.
"""

from __future__ import annotations

import array
import contextlib
import gc
import json
import os
import selectors
import signal
import socket
import sys
import threading
from typing import Any

from yunhan.functions import worker

# Preloaded so that a cold start imports only the user's code: modules handlers commonly
# use, imported once here and shared copy-on-write by every fork.
PRELOAD = (
    "base64",
    "collections",
    "dataclasses",
    "datetime",
    "decimal",
    "hashlib",
    "json",
    "logging",
    "math",
    "random",
    "re",
    "traceback",
    "typing",
    "urllib.parse",
    "uuid",
)
MAX_RECORD = 1 << 20  # the largest control record (a spawn request with its env)
MAX_FDS = 3


def _recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    fds = array.array("i")
    data, anc, _flags, _ = sock.recvmsg(MAX_RECORD, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.send(json.dumps(msg).encode())


class Zygote:
    def __init__(self, control: socket.socket, imports: dict[str, int]) -> None:
        self.control = control
        self.imports = imports
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, int] = {}  # pid -> pidfd
        self.sel.register(control, selectors.EVENT_READ, None)

    def spawn(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        want = 3 if msg.get("netns") else 2
        if len(fds) != want:
            return {"error": f"spawn needs {want} descriptors, got {len(fds)}"}
        setup = worker.Setup.from_json(msg["setup"])
        channel, log, netns = fds[0], fds[1], fds[2] if want == 3 else -1
        sys.stdout.flush()
        sys.stderr.flush()
        me = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never comes back here
            worker.run(setup, channel, log, netns, me, self.imports)
        pidfd = os.pidfd_open(pid)
        self.children[pid] = pidfd
        self.sel.register(pidfd, selectors.EVENT_READ, pid)
        return {"pid": pid}

    def handle(self, msg: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if msg.get("op") == "spawn":
            return self.spawn(msg, fds)
        if msg.get("op") == "ping":
            return {"pong": True}
        return {"error": f"unknown op {msg.get('op')!r}"}

    def reap(self, pid: int) -> None:
        pidfd = self.children.pop(pid)
        self.sel.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        _send(
            self.control,
            {
                "exit": pid,
                "code": code if code >= 0 else None,
                "signal": -code if code < 0 else None,
            },
        )

    def serve(self) -> None:
        assert threading.active_count() == 1, "the zygote must stay single-threaded"
        while True:
            for key, _ in self.sel.select():
                if key.data is not None:
                    self.reap(key.data)
                    continue
                msg, fds = _recv(self.control)
                if msg is None:
                    return
                try:
                    reply = self.handle(msg, fds)
                except Exception as exc:  # a bad request must not end the server
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                finally:
                    for fd in fds:
                        os.close(fd)
                _send(self.control, {"re": msg.get("req"), **reply})

    def end(self) -> None:
        """Kill and reap every worker (the runtime is gone, or closed us)."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid, pidfd in list(self.children.items()):
            os.waitpid(pid, 0)
            os.close(pidfd)
        self.children.clear()


def main(argv: list[str]) -> None:
    control = socket.socket(fileno=int(argv[1]))
    control.set_inheritable(False)
    for name in PRELOAD:
        __import__(name)
    imports = {p: os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in worker.import_dirs(sys.path)}
    gc.freeze()  # objects made so far stay out of GC passes: fewer copied pages per fork
    z = Zygote(control, imports)
    try:
        z.serve()
    except (ConnectionError, OSError):
        pass  # the runtime is gone
    finally:
        z.end()
