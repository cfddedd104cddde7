"""What a replica has in flight to Redis for each tenant, which its lease loop and its requests must know
of each other so that a lease never refuses its own replica's request (``redis_backend``; README,
"Leases").

* The RESERVEs of requests the lease did not cover, summed per tenant while unanswered: a LEASE sent
  meanwhile leaves that room (its ``leave`` argument), so a refill Redis runs first cannot take it.
* The requests waiting for a change of their lease's hold (a sync, or another request's give-back) to be
  answered: a RESERVE that looked while that change was in flight may have missed room on its way into or
  out of the lease, and tries again once it is answered.

Pure bookkeeping on the event loop; the lease's own ``syncing`` flag says whether a change is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from picker.tenants.lease import Lease
from picker.tenants.ledger import N_METERS, Vector

__all__ = ["SETTLE_WAITS", "Inflight"]

_ZERO: Final = (0,) * N_METERS
#: changes of a lease's hold a refused request waits out before it gives up trying again
SETTLE_WAITS: Final = 4


class Inflight:
    """Per tenant: what its RESERVEs in flight ask, and who waits for its lease's hold to settle."""

    __slots__ = ("_asking", "_waiters")

    def __init__(self) -> None:
        self._asking: dict[str, list[int]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    def asking(self, tenant: str) -> tuple[int, ...]:
        """What the tenant's RESERVEs in flight ask, per meter (the room a LEASE leaves)."""
        asking = self._asking.get(tenant)
        return _ZERO if asking is None else tuple(asking)

    def add(self, tenant: str, amounts: Vector, sign: int) -> None:
        """A RESERVE asking ``amounts`` was sent (``sign`` 1) or answered, failed or dropped (-1)."""
        asking = self._asking.setdefault(tenant, [0] * N_METERS)
        for i in range(N_METERS):
            asking[i] += sign * amounts[i]
        if not any(asking):
            del self._asking[tenant]

    async def settled(self, tenant: str, lease: Lease, timeout_s: float) -> bool:
        """Wait until no change of ``lease``'s hold is in flight (each waited for at most ``timeout_s``,
        the bound of its command); False when :data:`SETTLE_WAITS` changes followed each other."""
        for _ in range(SETTLE_WAITS):
            if not lease.syncing:
                return True
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(tenant, []).append(waiter)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await waiter
        return not lease.syncing

    def changed(self, tenant: str, lease: Lease) -> None:
        """The change of ``lease``'s hold in flight was answered (or failed, or was never sent): the next
        may start, and the requests waiting in :meth:`settled` go on."""
        lease.syncing = False
        for waiter in self._waiters.pop(tenant, ()):
            if not waiter.done():
                waiter.set_result(None)
