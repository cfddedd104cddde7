"""The process-wide budget of buffered body bytes.

Each stream may buffer up to the per-stream cap (``request.maxBodyBytes``, 16 MiB): a request body until
its end (the pick needs it whole), and a non-streaming response until its end. Per-stream caps alone
let 64 concurrent unfinished 15.9 MiB bodies take 1 GiB. Every stream of a process draws from one
budget; a request body that would exceed it is refused at once (503 ``ServiceUnavailable``: retry
later or elsewhere; 413 when it could never fit), and a buffered response that would exceed it is passed
through unbuffered instead (as when it outgrows the per-stream cap), so no memory is needed for it.

Single-threaded (the event loop), so plain integers: no lock.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_BODY_BUDGET", "BodyBudget"]

#: 256 MiB: 16 bodies at the default per-stream cap, or thousands of typical prompts
DEFAULT_BODY_BUDGET: Final = 256 << 20


class BodyBudget:
    """Bytes of bodies buffered by all streams of a process, against ``limit``."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int = DEFAULT_BODY_BUDGET) -> None:
        if limit <= 0:
            raise ValueError(f"the body budget must be positive, got {limit}")
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) when that would exceed the limit."""
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        """Return ``n`` bytes reserved with :meth:`take`."""
        self.used -= n

    @property
    def available(self) -> int:
        return max(0, self.limit - self.used)
