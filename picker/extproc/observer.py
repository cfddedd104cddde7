"""What a stream reports about itself, for metrics and accounting.

Declared here, in the consumer, and satisfied structurally by ``picker.telemetry`` (wired by the app), so
ext_proc does not import the metrics layer. Every call happens on the event loop, synchronously, from the
stream's state machine; implementations must be cheap and must not raise.
"""

from __future__ import annotations

from typing import Protocol

from picker.extproc.usage import UsageReport
from picker.routing.types import Dispatch

__all__ = ["NullObserver", "StreamObserver"]


class StreamObserver(Protocol):
    """Outcome hooks of one ext_proc stream. Order: ``routed`` → ``response_complete`` →
    ``stream_closed``, with ``failed`` at most once anywhere before ``stream_closed``."""

    def routed(self, dispatch: Dispatch, request_bytes: int) -> None:
        """The request was routed; its replies are built and written right after this call returns.
        ``request_bytes`` = size of the forwarded body (after a model rewrite)."""

    def failed(self, error_code: str, incoming_model: str, target_model: str) -> None:
        """The stream failed: a PickerError code, ``ModelServerError`` (upstream status ≠ 200, reported
        in addition to ``response_complete``) or ``Unknown`` (our bug, or a proxy protocol violation).
        Called at most once per stream. A client cancel is not a failure."""

    def response_complete(
        self,
        dispatch: Dispatch | None,
        *,
        latency_s: float,
        response_bytes: int,
        usage: UsageReport | None,
        status_ok: bool,
    ) -> None:
        """The response finished (body end_of_stream, trailers, or headers with end_of_stream).
        ``dispatch`` is None for a response-only stream (nothing was routed on it).
        ``latency_s`` runs from the request headers to this moment; ``response_bytes`` counts the body
        received from the model server. ``usage``: None when the response reported none; for a streamed
        response a :class:`~picker.extproc.usage.DeferredUsage`, scanned when first read (all counts
        zero if the stream reported none), so read it later rather than on the stream's path."""

    def stream_closed(self, dispatch: Dispatch | None) -> None:
        """Exactly once per stream, for any reason, after the dispatch's lease was released."""


class NullObserver:
    """Discards everything: for tests, benchmarks of the bare protocol path, and tools."""

    __slots__ = ()

    def routed(self, dispatch: Dispatch, request_bytes: int) -> None:
        pass

    def failed(self, error_code: str, incoming_model: str, target_model: str) -> None:
        pass

    def response_complete(
        self,
        dispatch: Dispatch | None,
        *,
        latency_s: float,
        response_bytes: int,
        usage: UsageReport | None,
        status_ok: bool,
    ) -> None:
        pass

    def stream_closed(self, dispatch: Dispatch | None) -> None:
        pass
