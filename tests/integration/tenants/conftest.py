"""Helpers of the Redis tenants tests."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def observed_until(
    observe: Callable[[], T | Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within_s: float,
    what: str,
    explain: Callable[[], str] | None = None,
    interval_s: float = 0.05,
) -> T:
    """Poll ``observe()`` (sync or async) until ``done`` holds for what it returned; that value.

    ``within_s`` is a bound on the loop's clock, not a timing: a wait whose condition never comes fails
    with the last value observed (what the caller needs to tell a slow recovery from a wrong one), rather
    than running out at a count of polls whose length depends on the machine's load, or at the test's
    timeout with nothing said. ``explain``: more to say then (the processes' last log lines, say)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        value = observe()
        seen = await value if inspect.isawaitable(value) else value
        if done(seen):
            return seen
        if loop.time() > deadline:
            more = f"; {explain()}" if explain is not None else ""
            raise AssertionError(f"not within {within_s:g} s: {what}; last observed: {seen!r}{more}")
        await asyncio.sleep(interval_s)
