"""Poll a condition until a deadline: the one loop for "wait until X" where nothing can
tell us X happened (a process we did not start exits, a server comes up).

STYLE §12: never a fixed sleep to wait for a condition. Leaf module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(
    cond: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.01,
    max_interval: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T | None:
    """Call `cond` until it returns something true, and return that; None when `timeout`
    seconds pass first. `cond` is called at least once, and once more after the last pause
    that reaches the deadline; its exceptions propagate. The pause starts at `interval` and
    doubles up to `max_interval`.
    """
    deadline = clock() + timeout
    delay = interval
    while True:
        value = cond()
        if value:
            return value
        left = deadline - clock()
        if left <= 0:
            return None
        sleep(min(delay, left))
        delay = min(delay * 2, max_interval)
