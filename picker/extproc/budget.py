"""The process-wide budget of buffered body bytes.

Each stream may buffer up to the per-stream cap (``request.maxBodyBytes``, 16 MiB): a request body until
its end (the pick needs it whole), and a non-streaming response until its end. Per-stream caps alone
let 64 concurrent unfinished 15.9 MiB bodies take 1 GiB. Every stream of a process draws from one
budget; a request body that would exceed it is refused at once (503 ``ServiceUnavailable``: retry
later or elsewhere; 413 when it could never fit), and a buffered response that would exceed it is passed
through unbuffered instead (as when it outgrows the per-stream cap), so no memory is needed for it.

With several pools (``--pool``) each pool's streams draw from the pool's budget (its document's
``request.maxBufferedBytes``, else the flag) and, through it, from one process-wide budget
(``--max-buffered-body-bytes``): a take succeeds only when both have room, so the process's buffered bodies
stay within the flag whatever the pools' documents say; a document asking for more than the flag has its
pool's own limit capped at the flag too, with a warning (``picker.wiring.body_budget``).

**Replies not yet written** have a budget of their own (:attr:`BodyBudget.replies`: the same limit, and
with several pools the same chain), used by :mod:`picker.extproc.server` from the moment a stream hands its
replies to gRPC until the writes complete. A write completes only once the proxy's HTTP/2 window has taken
the reply, so a proxy that does not read left every stream one reply (the echo of a response chunk, the
forwarded request body) in gRPC's send path, up to the largest message we accept; unbounded, that was
streams x message size of memory the peer controls. A reply counts twice: it is held twice while gRPC
writes it (our bytes and gRPC's copy; a forwarded request body, the dispatch's body and the reply chunks).
A reply that does not fit waits for room instead of being refused (the response is already on its way):
its stream stops reading meanwhile, so HTTP/2 flow control holds the proxy to the stream's receive window.
A reply larger than the budget's capacity takes the whole capacity (it waits for an empty budget), so none
waits forever. Why not the bodies' budget: request bodies that never end may hold all of it, and a reply
must not wait for them (the 503 that refuses such a body is itself a reply); replies wait only for other
replies, which the proxy frees by reading.

Single-threaded (the event loop), so plain integers: no lock. Waiters are few and only while the budget
is spent; a give wakes them all at the root of the chain (every give reaches it) and each retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

__all__ = ["DEFAULT_BODY_BUDGET", "BodyBudget"]

#: 256 MiB: 16 bodies at the default per-stream cap, or thousands of typical prompts
DEFAULT_BODY_BUDGET: Final = 256 << 20


class BodyBudget:
    """Bytes of bodies buffered by all streams of a pool (or a process), against ``limit``; with a
    ``parent`` (the process's budget when it serves several pools) every take is also taken there.
    :attr:`replies` is the same for replies not yet written."""

    __slots__ = ("_waiters", "limit", "parent", "replies", "used")

    def __init__(
        self, limit: int = DEFAULT_BODY_BUDGET, *, parent: BodyBudget | None = None, of_replies: bool = False
    ) -> None:
        if limit <= 0:
            raise ValueError(f"the body budget must be positive, got {limit}")
        self.limit = limit
        self.used = 0
        self.parent = parent
        #: the budget of replies not yet written (see the module doc): the same limit, its parent the
        #: parent's; a reply budget (``of_replies``) is its own
        self.replies: BodyBudget = (
            self
            if of_replies
            else BodyBudget(limit, parent=None if parent is None else parent.replies, of_replies=True)
        )
        #: replies waiting for room (:meth:`reserve`); only the root's list is used
        self._waiters: list[asyncio.Future[None]] = []

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes here and in the parent; False (nothing reserved) when either would exceed
        its limit."""
        if self.used + n > self.limit:
            return False
        parent = self.parent
        if parent is not None and not parent.take(n):
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        """Return ``n`` bytes reserved with :meth:`take` or :meth:`reserve` (to the parent too)."""
        self.used -= n
        if self.parent is not None:
            self.parent.give(n)
        elif self._waiters:
            self._wake()

    def resize(self, limit: int) -> None:
        """A new ``limit`` (a reloaded document); replies waiting for room try again."""
        if limit <= 0:
            raise ValueError(f"the body budget must be positive, got {limit}")
        self.limit = limit
        if self.replies is not self:
            self.replies.resize(limit)
        self._root()._wake()

    async def reserve(self, n: int) -> int:
        """Take ``n`` bytes, or the whole :attr:`capacity` when ``n`` is larger, waiting until there is
        room; returns what was taken (to :meth:`give` back). The caller tries :meth:`take` first: this is
        the slow path."""
        n = min(n, self.capacity)
        root = self._root()
        loop = asyncio.get_running_loop()
        while not self.take(n):
            waiter: asyncio.Future[None] = loop.create_future()
            root._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):  # not woken: cancelled (a woken one was removed)
                    root._waiters.remove(waiter)
        return n

    @property
    def waiting(self) -> int:
        """Replies waiting for room in this budget's chain."""
        return len(self._root()._waiters)

    def _root(self) -> BodyBudget:
        budget = self
        while budget.parent is not None:
            budget = budget.parent
        return budget

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    @property
    def capacity(self) -> int:
        """The largest body that could ever be taken: the smallest limit up the chain."""
        return self.limit if self.parent is None else min(self.limit, self.parent.capacity)

    @property
    def available(self) -> int:
        """What can be taken now: the least room up the chain."""
        room = max(0, self.limit - self.used)
        return room if self.parent is None else min(room, self.parent.available)
