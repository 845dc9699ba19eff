"""Waiting for a condition with a deadline, instead of sleeping a fixed time and hoping.

A fixed sleep assumes the machine is fast enough for the awaited thing (a log line, a closed
connection, an expiry) to have happened by then; under load it has not, and the test flips. These
poll until the condition holds and fail with `what` when the deadline passes first. The deadlines are
generous on purpose: they cost nothing when the condition comes true early.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEADLINE = 10.0     # seconds: far more than anything takes on an idle machine


def wait_for(predicate: Callable[[], T], timeout: float = DEADLINE, what: str = "condition",
             interval: float = 0.005) -> T:
    """Poll predicate() until it returns something true (returned), at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)


async def async_wait_for(predicate: Callable[[], T], timeout: float = DEADLINE, what: str = "condition",
                         interval: float = 0.005) -> T:
    """wait_for() inside an event loop: the loop keeps running while it polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(interval)


def wait_steady(read: Callable[[], T], readings: int = 3, interval: float = 0.1, timeout: float = DEADLINE,
                what: str = "a steady value") -> T:
    """read()'s value once it is the same `readings` times in a row, `interval` apart: for counts
    that settle after a burst (descriptors closing) when nothing says which value they settle at."""
    deadline = time.monotonic() + timeout
    last, same = read(), 1
    while same < readings:
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last {last!r})")
        time.sleep(interval)
        now = read()
        last, same = now, (same + 1 if now == last else 1)
    return last


def wait_gone(pid: int, timeout: float = DEADLINE) -> bool:
    """Whether process `pid` (not our child: a daemon) is gone within `timeout` s; for cleanups."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.01)
    return False
