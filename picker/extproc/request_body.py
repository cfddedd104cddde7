"""The request body while it is buffered (FULL_DUPLEX_STREAMED: nothing goes back before its end).

Two limits, checked against a declared ``content-length`` at the request headers and against every chunk
as it comes, so the rest of an oversized body is never read: the per-request cap (``max_body_bytes``: 413
``PayloadTooLarge``) and the process-wide body budget (:mod:`picker.extproc.budget`: 413 when the body could
never fit, 503 while the budget is spent). The buffered bytes are given back to the budget once handed
on to routing or dropped.
"""

from __future__ import annotations

from typing import Final

from picker.errors import PayloadTooLarge, ServiceUnavailable
from picker.extproc.budget import BodyBudget

__all__ = ["MSG_BUDGET", "RequestBody", "declared_length"]

#: 503 body when the process-wide body budget (:mod:`picker.extproc.budget`) is spent
MSG_BUDGET: Final = "buffered request bodies exceed the EPP's memory budget; retry later"


def declared_length(value: str) -> int | None:
    """A ``content-length`` value as a number, or None when it is none: ASCII digits only (``str.isdigit``
    also accepts ``¹`` and other Unicode digits, some of which ``int`` refuses) and at most 18 of them
    (``int`` refuses more than 4,300 digits, and no body comes near 10**18 bytes). A peer's header must
    never raise here: a raise ended the stream with an error logged."""
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


class RequestBody:
    """One request's buffered body. Not thread-safe; one per stream."""

    __slots__ = ("_budget", "_chunks", "_held", "_max_body", "size")

    def __init__(self, max_body: int, budget: BodyBudget) -> None:
        self._max_body = max_body
        self._budget = budget
        self._chunks: list[bytes] = []
        self._held = 0
        #: bytes received so far
        self.size = 0

    def declared(self, content_length: str) -> None:
        """Refuse at once a body its ``content-length`` says cannot be buffered."""
        size = declared_length(content_length)
        if size is None:
            return
        if size > self._max_body:
            raise PayloadTooLarge(f"request body of {size} bytes exceeds the limit of {self._max_body} bytes")
        capacity = self._budget.capacity
        if size > capacity:
            raise PayloadTooLarge(
                f"request body of {size} bytes exceeds the body buffer budget of {capacity} bytes"
            )
        if size > self._budget.available:
            raise ServiceUnavailable(MSG_BUDGET)

    def add(self, chunk: bytes) -> None:
        """Buffer one chunk; over a limit, drop what was buffered and raise."""
        self.size += len(chunk)
        if self.size > self._max_body:
            self.release()
            raise PayloadTooLarge(
                f"request body exceeds the limit of {self._max_body} bytes "
                f"({self.size} bytes received so far)"
            )
        if not self._budget.take(len(chunk)):
            self.release()
            raise ServiceUnavailable(MSG_BUDGET)
        self._held += len(chunk)
        self._chunks.append(chunk)

    def take(self) -> bytes:
        """The whole body, handed on: its bytes go back to the budget (the replies carry them on)."""
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.release()
        return body

    def release(self) -> None:
        """Drop what is buffered and give it back to the budget. Idempotent."""
        self._chunks = []
        if self._held:
            self._budget.give(self._held)
            self._held = 0
