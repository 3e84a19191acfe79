"""Waiting for a condition with a deadline: the only way tests (and the benchmarks) synchronise with
other processes.

Python 3.8 syntax and the standard library only: tests/dvic_log/compat_check.py loads this file by
its path under python3.8, where there is no pytest and no project on the path.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition still did not hold at the deadline (an AssertionError: a test fails with it)."""


def _timed_out(timeout: float, what: str) -> WaitTimeout:
    return WaitTimeout(f"timed out after {timeout:g} s waiting for {what}")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.05) -> T:
    """Call `condition` every `interval` s until it returns something truthy, and return that.

    WaitTimeout after `timeout` s. `condition` may raise to give up early (a process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            raise TypeError(f"wait_for({what!r}) got a coroutine: use async_wait_for")
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        time.sleep(interval)


async def async_wait_for(condition: Callable[[], T | Awaitable[T]], timeout: float = 10.0,
                         what: str = "condition", interval: float = 0.05) -> T:
    """wait_for on the event loop: `condition` may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value: Any = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise _timed_out(timeout, what)
        await asyncio.sleep(interval)
