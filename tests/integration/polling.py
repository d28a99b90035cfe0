"""Waiting for a condition on a running stack: poll it, with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.5) -> T:
    """Calls `check` until it returns a true value, and returns that value;
    fails after `timeout_s` with the last value it returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last: {value!r}")
        time.sleep(interval_s)
