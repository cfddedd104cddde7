"""Wall clocks for tests of what is counted in UTC windows: the tenants' and the external endpoints' budgets
(``picker.tenants.ledger``: minute, hour, day, calendar month).

A test that counts requests or tokens against such a window fails when it straddles the window's end: the
count restarts at 0 and one request more is let out (a CI run failed so at a minute's turn). Three ways out,
in order of preference:

* the code takes the clock (``Service(wall_clock=...)``, ``TenantService``, ``MemoryBackend``,
  ``ExternalCapacity``): give it :func:`standing_still`, a time in the middle of every window that does
  not move, or, where expiries measured on the same clock must still pass (Redis holds and leases),
  :func:`from_the_day_start`, which runs but starts at the current UTC day's first second;
* a ``picker serve`` subprocess measures its windows on the real clock: :func:`clear_of_the_hour` waits
  (rarely, and at most ``needed_s``) so that the test starts with enough of the current hour left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["MID_WINDOWS", "clear_of_the_hour", "from_the_day_start", "standing_still"]

#: 2026-01-15 12:30:30 UTC: the middle of a minute, an hour, a day and a month
MID_WINDOWS = 1_768_480_230.0


def standing_still(at: float = MID_WINDOWS) -> Callable[[], float]:
    """A wall clock that always says ``at``: no budget window ever ends while a test runs."""
    return lambda: at


def from_the_day_start() -> Callable[[], float]:
    """Wall time shifted back to the start of the current UTC day (the month stays the same): every window
    is fresh and none ends in the minute after this call, while the clock still runs (so that holds and
    leases kept on it expire as they would). Take it when the test starts, not at import."""
    offset = time.time() % 86400
    return lambda: time.time() - offset


async def clear_of_the_hour(needed_s: float) -> None:
    """Return when at least ``needed_s`` (under half an hour) of the current UTC hour is left, sleeping into
    the next hour if less is. The hour's end is also the day's and the month's, so a test that counts in
    hours, days or months and lasts under ``needed_s`` does not straddle any of their ends. (A minute
    window cannot be waited off this way: pass the code a clock instead.)"""
    if not 0 < needed_s < 1800:
        raise ValueError("needed_s must be in (0, 1800)")
    left = 3600 - time.time() % 3600
    if left < needed_s:
        await asyncio.sleep(left + 0.5)
