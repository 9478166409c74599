"""Waiting in tests: poll a condition with a deadline, never a fixed sleep (STYLE §12)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `cond` until it returns something true and return that; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
