"""One response body on its way back through the EPP: how it is passed on, what is read from it, and
what it is rewritten to.

Three modes, chosen at the response headers (:class:`BodyMode`): an SSE stream (``text/event-stream``,
or a request that asked for ``stream: true``) is echoed chunk by chunk with the same end_of_stream flag,
its usage scanned from the chunks and the time of each chunk noted (first byte, spacing: the latency
signals of passive health); ``application/grpc`` is buffered until trailers (or end_of_stream) and never
rewritten (the model name inside protobuf bytes must not change length); anything else is buffered to the
end, usage-parsed and returned in chunks. A buffered body over ``max_body`` is not refused: what was
buffered is flushed and the rest is echoed chunk by chunk, the usage then read from its last 64 KiB as for
SSE; so is one the process-wide body budget (:mod:`picker.extproc.budget`) cannot hold any more of, and
the buffered bytes are given back to it as soon as they are passed on. When the model was rewritten,
``restore`` puts the client's model name back into every byte passed on (not into gRPC). A tenant's
reservation (``ticket``) is told every echoed chunk.

The ext_proc stream (:mod:`picker.extproc.stream`) owns the phases and the request's dispatch; this owns
the body bytes between the response headers and the end of the response.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Final

from picker.extproc import wire
from picker.extproc.budget import BodyBudget
from picker.extproc.usage import SSEUsageScanner, UsageReport, usage_from_json
from picker.routing.types import Reservation

__all__ = ["NO_TIMING", "BodyMode", "ResponseBody"]

#: (time to first byte, time per output token of a streamed response, of a non-streamed one), NaN: unknown
Timing = tuple[float, float, float]
NO_TIMING: Final[Timing] = (math.nan, math.nan, math.nan)
_NO_REPLIES: tuple[bytes, ...] = ()


class BodyMode(IntEnum):
    """How a response body is handled (see the module doc)."""

    BUFFERED = 0  # collected to the end, usage-parsed, returned in chunks
    STREAMING = 1  # SSE: echoed chunk by chunk
    GRPC = 2  # collected to trailers, never rewritten


class ResponseBody:
    """The body of one response. :meth:`chunk` and :meth:`trailers` return the replies to send; once
    :attr:`done`, :attr:`usage` (and :attr:`unparsed`: a buffered body without usage, for the tenant's
    estimate) say what it came to. Not thread-safe; one per response."""

    __slots__ = (
        "_budget",
        "_chunks",
        "_clock",
        "_first_at",
        "_held",
        "_last_at",
        "_max_body",
        "_parts",
        "_scanner",
        "_ticket",
        "done",
        "echoing",
        "mode",
        "restore",
        "size",
        "unparsed",
        "usage",
    )

    def __init__(
        self,
        content_type: bytes,
        *,
        streamed: bool,
        restore: Callable[[bytes], bytes] | None,
        ticket: Reservation | None,
        max_body: int,
        budget: BodyBudget,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``content_type`` lower-cased; ``streamed``: the request asked for a streamed response;
        ``budget``: what buffered bytes are taken from (and given back to, :meth:`release`)."""
        self._max_body = max_body
        self._budget = budget
        self._held = 0
        self._clock = clock
        self._ticket = ticket
        self._scanner: SSEUsageScanner | None = None
        self._parts: list[bytes] = []
        self._chunks = 0
        self._first_at = self._last_at = 0.0
        self.size = 0
        self.done = False
        self.usage: UsageReport | None = None
        self.unparsed: bytes | None = None
        #: chunks are echoed as they come (SSE, or a buffered body that outgrew the cap)
        self.echoing = False
        #: what passes on is rewritten by this (the client's model name put back); None for gRPC
        self.restore = restore
        if content_type.startswith(b"application/grpc"):
            self.mode = BodyMode.GRPC
            self.restore = None
        elif b"text/event-stream" in content_type or streamed:
            self.mode = BodyMode.STREAMING
            self.echoing = True
            self._scanner = SSEUsageScanner()
        else:
            self.mode = BodyMode.BUFFERED

    def chunk(self, chunk: bytes, end_of_stream: bool) -> Sequence[bytes]:
        """One ``response_body`` message."""
        if chunk:
            self.size += len(chunk)
        if self.echoing:
            # The per-token path of a streamed response: kept short on purpose.
            if chunk:
                now = self._clock()
                if not self._chunks:
                    self._first_at = now
                self._last_at = now
                self._chunks += 1
                scanner = self._scanner
                if scanner is not None:
                    scanner.feed(chunk)
                ticket = self._ticket
                if ticket is not None:
                    ticket.chunk(chunk)
                restore = self.restore
                if restore is not None:
                    chunk = restore(chunk)
            if end_of_stream:
                self._finish_echo()
            return (wire.response_body_reply(chunk, end_of_stream),)
        if chunk:
            self._parts.append(chunk)
            if self.size > self._max_body or not self._budget.take(len(chunk)):
                return self._start_passthrough(end_of_stream)
            self._held += len(chunk)
        if not end_of_stream:
            return _NO_REPLIES
        return self._flush(end_of_stream=True)

    def trailers(self) -> Sequence[bytes]:
        """``response_trailers``: the end of the body (gRPC, or an HTTP response with trailers)."""
        if self.echoing:
            self._finish_echo()
            return (wire.RESPONSE_TRAILERS_REPLY,)
        replies = self._flush(end_of_stream=False)
        replies.append(wire.RESPONSE_TRAILERS_REPLY)
        return replies

    def timing(self, started: float, latency: float) -> Timing:
        """The latency signals of a complete body, for a request that started at ``started`` and took
        ``latency``: first byte and chunk spacing of a stream; time per output token of a buffered
        answer (from its usage)."""
        if self.mode == BodyMode.STREAMING:
            if not self._chunks:
                return NO_TIMING
            first, chunks = self._first_at, self._chunks
            tpot = (self._last_at - first) / (chunks - 1) if chunks > 1 else math.nan
            return (first - started, tpot, math.nan)
        usage = self.usage
        if self.mode == BodyMode.BUFFERED and not self.echoing and usage is not None:
            tokens = usage.completion_tokens
            if tokens > 0:
                # a non-streamed answer: its time per output token is the latency signal it gives
                return (math.nan, math.nan, latency / tokens)
        return NO_TIMING

    def release(self) -> None:
        """Give back what is held of the body budget (the body was passed on, or the stream ended)."""
        if self._held:
            self._budget.give(self._held)
            self._held = 0

    def _finish_echo(self) -> None:
        self.done = True
        self.usage = self._scanner.finish_deferred() if self._scanner is not None else None

    def _start_passthrough(self, end_of_stream: bool) -> Sequence[bytes]:
        """A buffered body outgrew the cap: flush it and echo the rest chunk by chunk, reading the usage
        from the tail at the end (as for SSE)."""
        self.echoing = True
        body = b"".join(self._parts)
        self._parts = []
        self.release()
        if self.mode != BodyMode.GRPC:
            self._scanner = SSEUsageScanner(json_body=True)
            self._scanner.feed(body)
            if self.restore is not None:
                body = self.restore(body)
        if end_of_stream:
            self._finish_echo()
        return wire.response_body_replies(body, end_of_stream=end_of_stream)

    def _flush(self, *, end_of_stream: bool) -> list[bytes]:
        parts = self._parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts = []
        self.release()
        self.done = True
        if self.mode != BodyMode.GRPC:
            raw = body
            self.usage = usage_from_json(body) if body else None
            if self.usage is None:
                self.unparsed = raw
            if self.restore is not None:
                body = self.restore(body)
        return wire.response_body_replies(body, end_of_stream=end_of_stream)
