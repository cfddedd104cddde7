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

Single-threaded (the event loop), so plain integers: no lock.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_BODY_BUDGET", "BodyBudget"]

#: 256 MiB: 16 bodies at the default per-stream cap, or thousands of typical prompts
DEFAULT_BODY_BUDGET: Final = 256 << 20


class BodyBudget:
    """Bytes of bodies buffered by all streams of a pool (or a process), against ``limit``; with a
    ``parent`` (the process's budget when it serves several pools) every take is also taken there."""

    __slots__ = ("limit", "parent", "used")

    def __init__(self, limit: int = DEFAULT_BODY_BUDGET, *, parent: BodyBudget | None = None) -> None:
        if limit <= 0:
            raise ValueError(f"the body budget must be positive, got {limit}")
        self.limit = limit
        self.used = 0
        self.parent = parent

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
        """Return ``n`` bytes reserved with :meth:`take` (to the parent too)."""
        self.used -= n
        if self.parent is not None:
            self.parent.give(n)

    @property
    def capacity(self) -> int:
        """The largest body that could ever be taken: the smallest limit up the chain."""
        return self.limit if self.parent is None else min(self.limit, self.parent.capacity)

    @property
    def available(self) -> int:
        """What can be taken now: the least room up the chain."""
        room = max(0, self.limit - self.used)
        return room if self.parent is None else min(room, self.parent.available)
