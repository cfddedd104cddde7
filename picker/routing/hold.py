"""Scale from zero: a request that finds the pool empty waits for a first replica instead of a 503.

With a ``scaling`` section that allows zero replicas (``minReplicas: 0`` outside or inside a schedule
window) and is not a dry run, the pool may really be empty. A request arriving then is *held*: the
director answers a :class:`~picker.routing.types.PendingRoute` that waits until the pool has an endpoint
again or ``scaleToZero.holdTimeout`` passes, then routes it as usual (or answers 503, as without holding).
The scaler is woken at once (``wake``) and counts held requests as a need of one replica, so a replica is
requested within one tick, not one ``interval`` later.

The proxy must let the ext_proc stream wait that long: Envoy gives each message ``message_timeout``
(200 ms by default) and then fails the request. The held stream therefore first sends
``override_message_timeout`` = ``holdTimeout`` + :data:`HOLD_MARGIN_S` (the margin lets our own 503
arrive before the proxy's timer ends a hold that found nothing). Envoy honours it only when the ext_proc
filter has ``max_message_timeout`` at least that long (see ``manifests/README.md``); without it the proxy
fails the request at ``message_timeout`` whatever we do.

Cost: nothing on the common path (the director looks at the pool's size only when the active config
holds). While requests are held one task polls the snapshot's size every :data:`POLL_S` for all of them;
``maxHeldRequests`` bounds how many wait at once (more get the 503 at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from scoring import EndpointMatrix

__all__ = ["HOLD_MARGIN_S", "POLL_S", "EmptyPoolHold"]

#: the proxy's message timer is extended by the hold timeout plus this
HOLD_MARGIN_S = 5.0
#: how often the waiting task looks at the pool's size
POLL_S = 0.05


def _nothing() -> None:
    return None


class EmptyPoolHold:
    """Requests waiting for a first replica: their count (:attr:`held`, for the scaler and
    ``picker_scaler_held_requests``) and the wait itself (:meth:`wait`). Constructing it starts nothing."""

    __slots__ = ("_held", "_on_change", "_poller", "_ready", "_snapshot", "_wake")

    def __init__(
        self,
        snapshot: Callable[[], EndpointMatrix],
        *,
        wake: Callable[[], None] = _nothing,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        """``snapshot``: the pool (its size is what is waited on); ``wake``: called when a request starts
        waiting (the scaler ticks at once); ``on_change``: called with the new count whenever it changes
        (a ``--workers`` worker tells the supervisor)."""
        self._snapshot = snapshot
        self._wake = wake
        self._on_change = on_change
        self._held = 0
        self._ready: asyncio.Future[None] | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        return self._held

    def full(self, limit: int) -> bool:
        """True when ``limit`` requests already wait: the next one is refused at once (memory bound)."""
        return self._held >= limit

    async def wait(self, hold_s: float) -> bool:
        """Wait until the pool has an endpoint (True) or ``hold_s`` seconds passed (False)."""
        if len(self._snapshot()) > 0:
            return True
        loop = asyncio.get_running_loop()
        if self._ready is None:
            self._ready = loop.create_future()
            self._poller = loop.create_task(self._poll(self._ready), name="empty-pool-hold")
        ready = self._ready
        self._count(+1)
        self._wake()
        try:
            await asyncio.wait_for(asyncio.shield(ready), hold_s)
        except TimeoutError:
            return False
        finally:
            self._count(-1)
            if self._held == 0 and self._ready is ready:
                self._stop()
        return True

    def close(self) -> None:
        """Stop the waiting task; requests still waiting stop waiting and are routed (or refused) now."""
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)
        self._stop()

    def _stop(self) -> None:
        poller, self._poller = self._poller, None
        ready, self._ready = self._ready, None
        if poller is not None:
            poller.cancel()
        if ready is not None and not ready.done():
            ready.cancel()

    async def _poll(self, ready: asyncio.Future[None]) -> None:
        while not ready.done():
            if len(self._snapshot()) > 0:
                ready.set_result(None)
                if self._ready is ready:  # the next empty spell starts a new wait
                    self._ready, self._poller = None, None
                return
            await asyncio.sleep(POLL_S)

    def _count(self, delta: int) -> None:
        self._held += delta
        if self._on_change is not None:
            self._on_change(self._held)
