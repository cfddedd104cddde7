"""The reservation arithmetic of one tenant's budget: pure, integer-only, no clock and no I/O of its own.

Six meters per tenant, each checked against an optional limit:

====  ===================  ==========  =============================================
 #     limit (config)       counts      window
====  ===================  ==========  =============================================
 0     tokensPerMinute      tokens      UTC minute (``floor(t / 60)``)
 1     tokensPerHour        tokens      UTC hour
 2     requestsPerMinute    requests    UTC minute
 3     concurrent           requests    none: open requests
 4     costPerDay           nano-units  UTC day
 5     costPerMonth         nano-units  UTC calendar month
====  ===================  ==========  =============================================

Each meter holds ``used`` (settled in the current window) and ``reserved`` (held by admitted requests
that have not settled). The rules:

* **Admit** a request asking ``a[i]`` of every meter iff for every limited meter
  ``used[i] + reserved[i] + a[i] <= limit[i]``; then ``reserved += a``. A request asking more than a limit
  by itself (``a[i] > limit[i]``) is refused as too large, as OpenAI refuses it; it could never fit.
* **Settle** at the end: ``reserved -= a`` (what it reserved) and ``used += u`` (what it used: the actual
  usage, or for a cancelled request the part it consumed).
* **Roll**: when a meter's window changes, ``used`` restarts at 0 and ``reserved`` stays: requests admitted
  in the last window and still running keep holding their reservation in the new one, so a minute boundary
  with 64 streams open cannot admit 64 more against an empty window.

Hence the invariant: at every admission ``used + reserved <= limit``; the total a window settles can pass
its limit only by what requests used beyond what they reserved (an input estimate below the real count, or
an output longer than the reservation when the request sets no ``max_tokens``). With every request's usage
within its reservation, nothing passes the limit, however many streams run at once; that is checked by
``tests/property/tenants`` over arbitrary interleavings.

Costs are integers in nano-units of the configured currency (1e-9), so every backend (this module in one
process, a Lua script in Redis) adds exactly the same numbers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "COST",
    "LIMIT_NAMES",
    "METERS",
    "N_METERS",
    "REQUESTS",
    "TOKENS",
    "WINDOW_NAMES",
    "Account",
    "Denial",
    "actual_vector",
    "reservation_vector",
    "window_end",
    "window_ids",
]

N_METERS: Final = 6
TOKENS_MINUTE, TOKENS_HOUR, REQUESTS_MINUTE, CONCURRENT, COST_DAY, COST_MONTH = range(N_METERS)
#: the config names of the limits, by meter index
LIMIT_NAMES: Final = (
    "tokensPerMinute",
    "tokensPerHour",
    "requestsPerMinute",
    "concurrent",
    "costPerDay",
    "costPerMonth",
)
TOKENS: Final = "tokens"
REQUESTS: Final = "requests"
COST: Final = "cost"
#: what each meter counts
METERS: Final = (TOKENS, TOKENS, REQUESTS, REQUESTS, COST, COST)
#: the window of each meter (the ``window`` label of ``ai_tokens_used``)
WINDOW_NAMES: Final = ("minute", "hour", "minute", "concurrent", "day", "month")
_SPANS: Final = (60, 3600, 60, 0, 86400, 0)

Vector = tuple[int, int, int, int, int, int]
Limits = tuple[int | None, int | None, int | None, int | None, int | None, int | None]


def window_ids(now: float) -> Vector:
    """The window of every meter at wall-clock time ``now`` (epoch seconds, UTC)."""
    return _window_ids(int(now // 1))


@functools.lru_cache(maxsize=4)
def _window_ids(second: int) -> Vector:
    # memoized per second: the calendar month costs a datetime, and every admission asks
    day = datetime.fromtimestamp(second, UTC)
    return (second // 60, second // 3600, second // 60, 0, second // 86400, day.year * 12 + day.month - 1)


@functools.lru_cache(maxsize=64)
def window_end(meter: int, window_id: int) -> float:
    """Epoch seconds at which ``window_id`` of ``meter`` ends (``inf`` for the concurrency meter).
    Memoized: response headers ask for it on every admitted request."""
    span = _SPANS[meter]
    if span:
        return float((window_id + 1) * span)
    if meter == CONCURRENT:
        return float("inf")
    year, month = divmod(window_id + 1, 12)
    return datetime(year, month + 1, 1, tzinfo=UTC).timestamp()


def reservation_vector(tokens: int, cost_nano: int) -> Vector:
    """What an admitted request holds: its tokens in both token windows, one request, one open slot and
    its cost in both cost windows."""
    return (tokens, tokens, 1, 1, cost_nano, cost_nano)


def actual_vector(tokens: int, cost_nano: int, *, counted: bool = True) -> Vector:
    """What a finished request used. ``counted``: it reached a model server and counts as a request
    (False for one released before it was sent, e.g. timed out in a queue)."""
    return (tokens, tokens, 1 if counted else 0, 0, cost_nano, cost_nano)


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a request was refused: the meter, its limit, what was in use, what was asked, and when the
    window resets (epoch seconds; ``inf`` for the concurrency meter, which frees up as requests end)."""

    meter: int
    limit: int
    in_use: int
    requested: int
    reset_at: float

    @property
    def too_large(self) -> bool:
        """The request alone asks more than the limit: it cannot fit in any window."""
        return self.requested > self.limit

    def retry_after(self, now: float) -> float:
        """Seconds a client should wait: to the window's end; 1 s for concurrency."""
        if self.meter == CONCURRENT:
            return 1.0
        return max(0.0, self.reset_at - now)


class Account:
    """One tenant's six meters. Not thread-safe: a backend serializes access (one event loop, a lock,
    or a Redis script)."""

    __slots__ = ("reserved", "used", "window")

    def __init__(self) -> None:
        self.window: list[int] = [-1] * N_METERS
        self.used: list[int] = [0] * N_METERS
        self.reserved: list[int] = [0] * N_METERS

    def roll(self, ids: Sequence[int]) -> None:
        """Move every meter to the windows ``ids``: a new window restarts ``used``; ``reserved`` stays."""
        window = self.window
        if window[0] == ids[0] and window[1] == ids[1] and window[4] == ids[4] and window[5] == ids[5]:
            return  # the common case: nothing rolled (meters 2 and 3 share 0's window or have none)
        used = self.used
        for i in range(N_METERS):
            if window[i] != ids[i]:
                window[i] = ids[i]
                used[i] = 0

    def admit(self, amounts: Sequence[int], limits: Limits, ids: Sequence[int]) -> Denial | None:
        """Reserve ``amounts`` if every limited meter has room; else return the first meter that has none
        (nothing is reserved then)."""
        self.roll(ids)
        used = self.used
        reserved = self.reserved
        for i in range(N_METERS):
            limit = limits[i]
            if limit is not None and used[i] + reserved[i] + amounts[i] > limit:
                return Denial(i, limit, used[i] + reserved[i], amounts[i], window_end(i, ids[i]))
        for i in range(N_METERS):
            reserved[i] += amounts[i]
        return None

    def settle(self, reserved_amounts: Sequence[int], actual: Sequence[int], ids: Sequence[int]) -> None:
        """A request ends: give back what it reserved and count what it used (in the current windows)."""
        self.roll(ids)
        used = self.used
        reserved = self.reserved
        for i in range(N_METERS):
            left = reserved[i] - reserved_amounts[i]
            reserved[i] = max(0, left)
            used[i] += actual[i]

    def remaining(self, limits: Limits, ids: Sequence[int]) -> tuple[int | None, ...]:
        """Room left in every limited meter (never negative); None where there is no limit."""
        self.roll(ids)
        used = self.used
        reserved = self.reserved
        out: list[int | None] = [None] * N_METERS
        for i in range(N_METERS):
            limit = limits[i]
            if limit is not None:
                left = limit - used[i] - reserved[i]
                out[i] = max(0, left)
        return tuple(out)

    def idle(self, ids: Sequence[int]) -> bool:
        """Nothing reserved and nothing used in the current windows: the account can be forgotten."""
        self.roll(ids)
        return not any(self.reserved) and not any(self.used)


def now_wall() -> float:
    """The clock windows are measured on (UTC epoch seconds); a backend takes it as an injectable."""
    return time.time()
