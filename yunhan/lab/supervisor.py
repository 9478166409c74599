"""The lab's supervisor: one small process per region that owns its processes (the API
server, the agents, the internet's echo server, and whatever a later feature adds).

It starts the region's programs, restarts whichever exits (after an exponential backoff),
gives up on one that keeps dying young (a crash loop), and writes what it does to one JSON
file, `<region data dir>/supervisor.json`, of which it is the only writer: `yunhan status`
shows it, `yunhan up` waits on it and revives through it, `yunhan down` kills what it lists.

* Programs arrive as JSON lines on standard input (name, role, argv, and an optional
  secret for the program's standard input: an agent's one-time bootstrap token, kept in
  memory only and handed again to a restart that has not exchanged it yet). They are saved
  without the secret, so that a restarted supervisor knows them all.
* The supervisor may itself be killed: its programs run in their own sessions and live on.
  A new supervisor adopts every recorded program that still runs (pid and start time) and
  starts the others; it cannot learn how an adopted program ended (not its child).
* A restarted program learns why through its environment (yunhan.supervised): the server
  and the agents turn that into an event (`yunhan events`).
* SIGHUP: start every program that waits or gave up, now, with a fresh streak (`yunhan up`
  on a region whose processes died). SIGTERM/SIGINT: exit, leaving the programs as they
  are (`yunhan down` removes them with the region).

`RestartPolicy` is the pure part: the delay after a run of quick exits, or None to give up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from yunhan.lab import cleanup
from yunhan.supervised import CAUSE_ENV, RESTARTS_ENV

log = logging.getLogger("yunhan.supervisor")

STATE_FILE = "supervisor.json"
TICK = 0.1

RUNNING, BACKOFF, FAILED = "running", "backoff", "failed"


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a program that exited.

    A run shorter than `stable` seconds is a quick exit; consecutive quick exits make a
    streak. The n-th exit of a streak waits `base * 2**(n-1)` seconds (at most `cap`);
    a streak longer than `limit` is a crash loop: the program is left down (`failed`)
    until `yunhan up` revives it. A run of `stable` seconds or more starts a new streak.
    """

    base: float = 0.2
    cap: float = 30.0
    stable: float = 10.0
    limit: int = 8

    def streak(self, previous: int, ran: float) -> int:
        """The streak after an exit that ended a run of `ran` seconds."""
        return previous + 1 if ran < self.stable else 1

    def delay(self, streak: int) -> float | None:
        """Seconds to wait before the next start; None: a crash loop, give up."""
        if streak > self.limit:
            return None
        return float(min(self.base * 2 ** max(streak - 1, 0), self.cap))


@dataclass
class Program:
    """One supervised program and what happened to it (saved in the state file)."""

    name: str
    role: str
    argv: list[str]
    log: str
    pid: int = 0
    started: int | None = None  # /proc start time of `pid` (tells it from a reused pid)
    started_at: float = 0.0  # wall clock of the last start
    state: str = BACKOFF  # running | backoff (waits to start) | failed (crash loop)
    restarts: int = 0
    streak: int = 0
    last_exit: str = ""  # how the last run ended, in words
    last_exit_at: float = 0.0
    next_start: float = 0.0  # wall clock; for `backoff`

    def alive(self) -> bool:
        return self.state == RUNNING and cleanup.same_process(self.pid, self.started)


@dataclass
class SupervisorState:
    """The state file: the supervisor itself, its policy and its programs."""

    pid: int = 0
    started: int | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    programs: list[Program] = field(default_factory=list)

    def alive(self) -> bool:
        return bool(self.pid) and cleanup.same_process(self.pid, self.started)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SupervisorState | None:
        """The state file, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads(path.read_text())
            return cls(
                pid=int(data.get("pid") or 0),
                started=data.get("started"),
                policy=RestartPolicy(**data.get("policy") or {}),
                programs=[Program(**p) for p in data.get("programs") or []],
            )
        except (OSError, ValueError, TypeError):
            return None


def describe_exit(returncode: int | None) -> str:
    """How a run ended, in words (None: not our child, its status is unknown)."""
    if returncode is None:
        return "exited (status unknown: started by an earlier supervisor)"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Supervisor:
    """The supervision loop over one state file (see the module docstring)."""

    def __init__(
        self,
        state_file: Path,
        *,
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = state_file
        old = SupervisorState.load(state_file)
        self.state = old or SupervisorState()
        if policy is not None:
            self.state.policy = policy
        me = os.getpid()
        self.state.pid, self.state.started = me, cleanup.start_time(me)
        self.clock = clock
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._secrets: dict[str, str] = {}
        self._incoming: list[tuple[Program, str | None]] = []
        self._lock = threading.Lock()
        self._revive = threading.Event()
        self._stop = threading.Event()
        now = clock()
        for p in self.state.programs:
            # A new supervisor is a revival: a fresh streak for everyone.
            p.streak = 0
            if p.state == RUNNING and cleanup.same_process(p.pid, p.started):
                log.info("adopted %s %s (pid %d)", p.role, p.name, p.pid)
                continue
            if p.state == RUNNING:
                p.last_exit, p.last_exit_at = describe_exit(None), now
            p.state, p.next_start = BACKOFF, now
        self.state.save(self.path)

    # -- inputs ------------------------------------------------------------------------

    def add(self, program: Program, secret: str | None = None) -> None:
        """Supervise `program` (started at the next tick); thread-safe."""
        with self._lock:
            self._incoming.append((program, secret))

    def read_programs(self, stream: IO[str]) -> None:
        """Add the programs `stream` describes, one JSON object a line, until EOF."""
        for line in stream:
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                prog = Program(name=d["name"], role=d["role"], argv=list(d["argv"]), log=d["log"])
            except (ValueError, KeyError, TypeError) as exc:
                log.error("ignored a bad program line: %s", exc)
                continue
            self.add(prog, d.get("stdin"))

    def revive(self) -> None:
        self._revive.set()

    def stop(self) -> None:
        self._stop.set()

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Supervise until `stop()`."""
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(TICK)
        self.state.save(self.path)

    def tick(self) -> bool:
        """One pass: take new programs, notice exits, start what is due; the state file is
        written when anything changed (and then True is returned)."""
        changed = False
        now = self.clock()
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for prog, secret in incoming:
            if secret is not None:
                self._secrets[prog.name] = secret
            old = next((p for p in self.state.programs if p.name == prog.name), None)
            if old is not None and old.alive():
                continue  # already supervised and running
            if old is not None:
                self.state.programs.remove(old)
            prog.state, prog.next_start = BACKOFF, now
            self.state.programs.append(prog)
            changed = True
        if self._revive.is_set():
            self._revive.clear()
            for p in self.state.programs:
                if p.state != RUNNING:
                    p.state, p.streak, p.next_start = BACKOFF, 0, now
                    changed = True
        for p in self.state.programs:
            if p.state == RUNNING and self._exited(p, now):
                changed = True
            if p.state == BACKOFF and now >= p.next_start and not self._stop.is_set():
                self._start(p, now)
                changed = True
        if changed:
            self.state.save(self.path)
        return changed

    def _exited(self, p: Program, now: float) -> bool:
        child = self._children.get(p.name)
        if child is not None and child.pid == p.pid:
            code = child.poll()
            if code is None:
                return False
            del self._children[p.name]
            cause = describe_exit(code)
        elif cleanup.same_process(p.pid, p.started):
            return False
        else:
            cause = describe_exit(None)
        p.last_exit, p.last_exit_at = cause, now
        p.streak = self.state.policy.streak(p.streak, now - p.started_at)
        delay = self.state.policy.delay(p.streak)
        if delay is None:
            p.state = FAILED
            log.error(
                "%s %s %s; %d quick exits in a row: a crash loop, left down",
                p.role,
                p.name,
                cause,
                p.streak,
            )
        else:
            p.state, p.next_start = BACKOFF, now + delay
            log.warning("%s %s %s; restarting in %.1f s", p.role, p.name, cause, delay)
        return True

    def _start(self, p: Program, now: float) -> None:
        first = not p.started_at
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if not first:
            p.restarts += 1
            env[RESTARTS_ENV] = str(p.restarts)
            env[CAUSE_ENV] = p.last_exit or "unknown"
        secret = self._secrets.get(p.name)
        Path(p.log).parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(p.log, "ab") as out:
                popen = subprocess.Popen(
                    p.argv,
                    stdin=subprocess.DEVNULL if secret is None else subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            p.last_exit, p.last_exit_at = f"could not start: {exc}", now
            p.streak += 1
            delay = self.state.policy.delay(p.streak)
            p.state = FAILED if delay is None else BACKOFF
            p.next_start = now + (delay or 0.0)
            return
        if secret is not None and popen.stdin is not None:
            with popen.stdin, contextlib.suppress(OSError):
                popen.stdin.write(secret.encode() + b"\n")
        self._children[p.name] = popen
        p.pid, p.started, p.started_at = popen.pid, cleanup.start_time(popen.pid), now
        p.state = RUNNING
        # Written down at once: a supervisor killed right now must not leave a program
        # that its successor does not know of (and would start a second time).
        self.state.save(self.path)
        if not first:
            log.info("restarted %s %s (pid %d, restart %d)", p.role, p.name, p.pid, p.restarts)


def program_line(name: str, role: str, argv: Iterable[str], log: Path, secret: str | None) -> str:
    """The JSON line that hands a program to a supervisor's standard input."""
    d: dict[str, Any] = {"name": name, "role": role, "argv": list(argv), "log": str(log)}
    if secret is not None:
        d["stdin"] = secret
    return json.dumps(d) + "\n"


def main(state_file: Path) -> None:
    """Run a supervisor on `state_file` until SIGTERM/SIGINT (the hidden command)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s"
    )
    sup = Supervisor(state_file)
    signal.signal(signal.SIGTERM, lambda s, f: sup.stop())
    signal.signal(signal.SIGINT, lambda s, f: sup.stop())
    signal.signal(signal.SIGHUP, lambda s, f: sup.revive())
    reader = threading.Thread(
        target=sup.read_programs, args=(sys.stdin,), name="programs", daemon=True
    )
    reader.start()
    log.info("supervising %d programs (pid %d)", len(sup.state.programs), os.getpid())
    sup.run()
