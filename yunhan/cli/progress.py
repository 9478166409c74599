"""A one-line progress display on stderr for waits (`--wait`, `up`, `down`).

It appears only once a wait has lasted a second, only when stderr is a terminal (scripts
and pipes see nothing), names what is awaited, and counts the seconds; the line is erased
when the wait ends, so that what the command prints next starts on a clean line.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

_FRAMES = "|/-\\"
SHOW_AFTER = 1.0


class Progress:
    """`with Progress("waiting for …") as p: … p.say("waiting for 3 hosts: …")`.

    A daemon-free ticker thread redraws the line every `tick` seconds; leaving the block
    stops and joins it. `enabled` defaults to "stderr is a terminal".
    """

    def __init__(
        self,
        what: str,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 0.1,
        show_after: float = SHOW_AFTER,
    ) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self._what = what
        self._clock = clock
        self._tick = tick
        self._show_after = show_after
        self._start = clock()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._frame = 0
        self._shown = False

    def say(self, what: str) -> None:
        """Change what the line says is awaited."""
        with self._lock:
            self._what = what

    def line(self) -> str:
        """The line as it would be drawn now (without the carriage return)."""
        elapsed = self._clock() - self._start
        frame = _FRAMES[self._frame % len(_FRAMES)]
        return f"{frame} {self._what} ({elapsed:.0f}s)"

    def draw(self) -> None:
        """Redraw the line if the wait has lasted long enough to deserve one."""
        if not self.enabled or self._clock() - self._start < self._show_after:
            return
        with self._lock:
            self._frame += 1
            text = self.line()
            self._stream.write("\r\x1b[K" + text)
            self._stream.flush()
            self._shown = True

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            self.draw()

    def __enter__(self) -> Progress:
        self._start = self._clock()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="yunhan-progress")
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def hosts_phrase(hosts: list[str], revision: int, limit: int = 4) -> str:
    """ "waiting for 3 hosts to apply revision 42: az1-h1, az1-h2, az2-h1"."""
    if not hosts:
        return f"waiting for revision {revision} to be applied"
    names = ", ".join(hosts[:limit]) + (", …" if len(hosts) > limit else "")
    noun = "host" if len(hosts) == 1 else "hosts"
    return f"waiting for {len(hosts)} {noun} to apply revision {revision}: {names}"
