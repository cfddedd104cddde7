"""Who a request belongs to: the tenant id from its headers, bounded in length, characters and count.

Order: the configured header (default ``x-tenant-id``), then the reference's flow-control header
``x-gateway-inference-fairness-id``, else the configured anonymous id. The value is peer-supplied and
becomes a metric label, a log field and a key in a budget table, so:

* an id longer than ``maxIdLength`` or with characters outside ``[A-Za-z0-9._:@/+=-]`` is not trusted: it
  counts as ``other``;
* at most ``maxTenants`` distinct ids are tracked besides the listed ones; when the table is full, ids not
  seen for :data:`IDLE_S` are forgotten to make room, and a new id that still finds no room counts as
  ``other`` (one shared budget, one label value).

So a flood of distinct ids costs a bounded table and a bounded number of series, never more.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from picker.config.tenants import TENANT_ID_PATTERN

__all__ = ["FAIRNESS_HEADER", "IDLE_S", "OTHER", "TenantIds"]

#: the reference EPP's flow-control tenant header
FAIRNESS_HEADER: Final = "x-gateway-inference-fairness-id"
#: the id of every request whose own id is not tracked
OTHER: Final = "other"
#: an id not seen for this long may give its place to a new one (only when the table is full)
IDLE_S: Final = 3600.0
#: a full table is swept for idle ids at most this often
_SWEEP_S: Final = 10.0


class TenantIds:
    """Maps header values to tracked tenant ids. One per process, kept across config reloads; a request
    costs one dict lookup and one store."""

    __slots__ = (
        "_anonymous",
        "_clock",
        "_header",
        "_listed",
        "_max_length",
        "_max_tenants",
        "_next_sweep",
        "_seen",
    )

    def __init__(
        self,
        *,
        header: str,
        anonymous: str,
        max_tenants: int,
        max_length: int,
        listed: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._header = header
        self._anonymous = anonymous
        self._max_tenants = max_tenants
        self._max_length = max_length
        self._listed = listed | {anonymous, OTHER}
        self._clock = clock
        #: tracked id → when it was last seen (monotonic seconds)
        self._seen: dict[str, float] = {}
        self._next_sweep = 0.0

    def configure(
        self, *, header: str, anonymous: str, max_tenants: int, max_length: int, listed: frozenset[str]
    ) -> None:
        """Apply a reloaded policy; ids tracked so far stay (up to the new bound)."""
        self._header = header
        self._anonymous = anonymous
        self._max_tenants = max_tenants
        self._max_length = max_length
        self._listed = listed | {anonymous, OTHER}
        if len(self._seen) > max_tenants:
            keep = sorted(self._seen.items(), key=lambda kv: kv[1])[-max_tenants:]
            self._seen = dict(keep)

    def resolve(self, headers: Mapping[str, str]) -> str:
        """The tracked id of a request with these (lowercase-keyed) headers."""
        raw = headers.get(self._header) or headers.get(FAIRNESS_HEADER)
        if not raw:
            return self._anonymous
        if raw in self._listed:
            return raw
        seen = self._seen
        if raw in seen:
            seen[raw] = self._clock()
            return raw
        if len(raw) > self._max_length or not TENANT_ID_PATTERN.fullmatch(raw):
            return OTHER
        now = self._clock()
        if len(seen) >= self._max_tenants and not self._sweep(now):
            return OTHER
        self._seen[raw] = now  # not ``seen``: a sweep replaces the dict
        return raw

    def _sweep(self, now: float) -> bool:
        """Forget ids idle for :data:`IDLE_S`; True if there is room now. Bounded to one pass per
        :data:`_SWEEP_S`, so a flood of new ids against a full table costs one dict scan per 10 s."""
        if now < self._next_sweep:
            return False
        self._next_sweep = now + _SWEEP_S
        cutoff = now - IDLE_S
        self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
        return len(self._seen) < self._max_tenants

    def tracked(self) -> int:
        """Ids tracked besides the listed ones."""
        return len(self._seen)
