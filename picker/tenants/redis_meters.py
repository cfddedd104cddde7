"""Each tenant's meters as this process last saw them in a Redis script's reply (or a ``--workers``
worker's, passed on): what ``/metrics``, ``/debug/tenants`` and the remaining-budget headers of requests
admitted on a lease read, so nothing reads Redis at scrape time.

Redis holds one state per tenant and every script reply shows all of it (used and reserved per meter,
with ``v``, the account's change count), so the newest reply of any process is the whole truth: entries
are replaced, never added up. Bounded: at most :data:`MAX_SEEN` tenants are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from picker.tenants.backend import AccountView
from picker.tenants.lease import Lease
from picker.tenants.ledger import COST_MONTH, N_METERS, Limits, Vector, window_ids

__all__ = ["MAX_SEEN", "Seen", "SeenMeters"]

#: tenants whose last seen meters are kept
MAX_SEEN: Final = 100_000

#: used, reserved, limits, window ids, and the version of the account the script reply showed
Seen = tuple[tuple[int, ...], tuple[int, ...], Limits | None, tuple[int, ...], int]


class SeenMeters:
    """The last seen meters of every tenant, and which changed since :meth:`take_changed`."""

    __slots__ = ("_changed", "_clock", "_seen")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seen: dict[str, Seen] = {}
        self._changed: set[str] = set()

    def get(self, tenant: str) -> Seen | None:
        return self._seen.get(tenant)

    def remember(
        self,
        tenant: str,
        used: tuple[int, ...],
        reserved: tuple[int, ...],
        limits: Limits | None,
        ids: Vector,
        *,
        version: int,
    ) -> None:
        if tenant in self._seen or len(self._seen) < MAX_SEEN:
            self._seen[tenant] = (used, reserved, limits, ids, version)
            self._changed.add(tenant)

    def remaining(self, tenant: str, limits: Limits, lease: Lease) -> tuple[int | None, ...]:
        """The room left for a request admitted on ``lease``: what the last reply showed outside the
        leases, plus the lease's free part (stale by up to a report interval)."""
        seen = self._seen.get(tenant)
        free = lease.free()
        remaining: list[int | None] = [None] * N_METERS
        for i in lease.limited:
            limit = limits[i]
            assert limit is not None
            outside = 0 if seen is None else max(0, limit - seen[0][i] - seen[1][i])
            remaining[i] = outside + free[i]
        return tuple(remaining)

    def accounts(self) -> Iterator[AccountView]:
        """Each tenant's meters as the last script reply showed them, ``used`` of past windows as 0."""
        ids = window_ids(self._clock())
        for tenant, (used, reserved, limits, seen_ids, _version) in self._seen.items():
            current = tuple(u if seen_ids[i] == ids[i] else 0 for i, u in enumerate(used))
            yield AccountView(tenant, current, reserved, limits, ids)

    def take_changed(self) -> list[list[Any]]:
        """The meters of every tenant whose script reply changed them since the last call, as plain data
        for :meth:`observe` in another process: ``[tenant, used, reserved, limits, windows, version]``."""
        out = []
        for tenant in self._changed:
            seen = self._seen.get(tenant)
            if seen is not None:
                used, reserved, limits, ids, version = seen
                plain_limits = None if limits is None else list(limits)
                out.append([tenant, list(used), list(reserved), plain_limits, list(ids), version])
        self._changed.clear()
        return out

    def observe(self, views: list[list[Any]]) -> None:
        """Meters another process's replies showed (a ``--workers`` worker's :meth:`take_changed`), kept
        where they are newer than what this process saw. Newest: the later month, then the higher version
        (the account's change count in Redis; it restarts when an idle account expires, 40 days on, by
        when the month has changed)."""
        for tenant, used, reserved, limits, ids, version in views:
            seen = self._seen.get(tenant)
            if seen is None or (seen[3][COST_MONTH], seen[4]) <= (ids[COST_MONTH], version):
                lim = None if limits is None else tuple(limits)
                self.remember(tenant, tuple(used), tuple(reserved), lim, tuple(ids), version=int(version))
