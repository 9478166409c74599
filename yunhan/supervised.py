"""What a supervised process (the API server, an agent) knows of its supervisor.

* Why it was restarted: the lab's supervisor (yunhan.lab.supervisor) sets RESTARTS_ENV and
  CAUSE_ENV in a restarted program's environment; systemd sets none, but says how many
  times it restarted the unit in its own way (journal). `restarted()` reads ours.
* The systemd notification protocol (sd_notify(3)), without libsystemd: one datagram to the
  unix socket named by $NOTIFY_SOCKET ("READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=…").
  With `Type=notify` and `WatchdogSec=`, systemd restarts a process that stops sending
  WATCHDOG=1 (a hung loop, not only a dead process). Without $NOTIFY_SOCKET (the lab, a
  shell) every call does nothing.

Leaf module: the standard library only.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

RESTARTS_ENV = "YUNHAN_RESTARTS"  # how many times this program was restarted
CAUSE_ENV = "YUNHAN_RESTART_CAUSE"  # how its previous run ended, in words
NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"


@dataclass(frozen=True)
class Restart:
    count: int
    cause: str

    def sentence(self, what: str) -> str:
        return f"{what} was restarted ({self.count}): its previous run {self.cause}"


def restarted(env: dict[str, str] | None = None) -> Restart | None:
    """This process's restart, as its supervisor told it; None on a first start."""
    env = dict(os.environ) if env is None else env
    try:
        count = int(env.get(RESTARTS_ENV) or 0)
    except ValueError:
        return None
    if count <= 0:
        return None
    return Restart(count, (env.get(CAUSE_ENV) or "ended for an unknown reason")[:300])


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager; False when there is none.

    Errors are swallowed: a supervisor that cannot be told must not stop the process.
    """
    env = dict(os.environ) if env is None else env
    path = env.get(NOTIFY_SOCKET)
    if not path or path[0] not in "/@":
        return False
    addr = "\0" + path[1:] if path[0] == "@" else path  # "@…": the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
    except OSError:
        return False
    return True


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the manager's timeout), or None: no watchdog."""
    env = dict(os.environ) if env is None else env
    try:
        usec = int(env.get(WATCHDOG_USEC) or 0)
    except ValueError:
        return None
    pid = env.get(WATCHDOG_PID)
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


class Watchdog:
    """Pings the service manager's watchdog while `alive()` holds (a daemon thread).

    `alive` is the process's own health check (the agent's loop made progress recently,
    the server's event loop answered): a process that hangs stops pinging and is restarted.
    """

    def __init__(
        self, alive: Callable[[], bool] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self._env = dict(os.environ) if env is None else env
        self._alive = alive
        self._stop = threading.Event()
        self.interval = watchdog_interval(self._env)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval is None:
            return
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            if self._alive is None or self._alive():
                notify("WATCHDOG=1", self._env)

    def stop(self) -> None:
        self._stop.set()
