"""Waiting in tests: poll a condition with a deadline, never a fixed sleep (STYLE §12)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from yunhan.polling import poll_until

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `cond` until it returns something true and return that; fail after `timeout` s."""
    value = poll_until(cond, timeout)
    if not value:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
    return value
