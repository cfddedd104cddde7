"""Waiting in tests for something another task or process does: poll a condition until a deadline.

One helper for every such wait, so each says the same things when it fails: what was awaited, the bound,
and the last value observed (what tells a slow recovery from a wrong one). The bound is on the event
loop's clock, not a count of polls (whose length would depend on the machine's load), and it is a bound,
not a timing: a condition that holds returns at once, whatever ``within`` says. Its default, 30 s, is the
longest any of the tests' former helpers allowed, so no wait became tighter on a loaded machine.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["eventually"]

T = TypeVar("T")


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    what: str = "",
    *,
    within: float = 30.0,
    interval: float = 0.02,
    done: Callable[[T], object] = bool,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll ``check()`` (sync or async) every ``interval`` seconds until ``done`` holds for what it
    returned (by default: until it is truthy); return that value.

    Past ``within`` seconds, fail with an :class:`AssertionError` naming ``what`` (``check`` itself when
    empty) and the last value observed, and ``explain()`` when given (a process's last log lines, say).
    ``done`` is for a value that may be falsy when it is the one awaited (a count of 0)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = check()
        seen: T = await value if inspect.isawaitable(value) else value
        if done(seen):
            return seen
        if loop.time() > deadline:
            more = f"; {explain()}" if explain is not None else ""
            label = what or repr(check)
            raise AssertionError(f"not within {within:g} s: {label}; last observed: {seen!r}{more}")
        await asyncio.sleep(interval)
