"""What a stream asks of tracing (``--tracing``): one span per request, and its context for the upstream.

Declared here, in the consumer, and satisfied structurally by :mod:`picker.tracing` (wired by the service),
so ext_proc does not import the OpenTelemetry SDK. With tracing off the stream holds no tracer and pays one
``is None`` test per phase.

The stream calls :meth:`RequestTracer.begin` with the request headers as the request-headers message
arrives; the tracer starts the span (its parent is the incoming W3C ``traceparent``, if any) and puts the
span's context into the headers the EPP sets for the upstream request, so the model server's spans join the
trace. The stream hands the span's :attr:`RequestSpan.timings` to routing with the request, and the pick
appends each plugin's duration to it (an untraced request hands None: nothing is timed).
:class:`RequestSpan` is then told the decision (:meth:`~RequestSpan.routed`), a failure
(:meth:`~RequestSpan.failed`) and the end of the stream (:meth:`~RequestSpan.end`, from ``close``). Every
call happens on the event loop; implementations must be cheap and must never raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from picker.routing.types import Dispatch
from scoring.types import PluginTiming

__all__ = ["RequestSpan", "RequestTracer"]


class RequestSpan(Protocol):
    """The span of one request that is being recorded (a sampled one)."""

    #: the pick's per-plugin timings (``scoring.types.PluginTiming``), filled by routing before ``routed``
    timings: list[PluginTiming]

    def routed(self, dispatch: Dispatch) -> None:
        """The routing decision: pool, endpoints, profile, models, objective (never prompt text)."""

    def failed(self, error_code: str, incoming_model: str) -> None:
        """The request failed (the stream's failure code, as reported to the metrics; at most once)."""

    def end(self, status: int) -> None:
        """The stream ended; ``status`` is the response's HTTP status, 0 when none was seen."""


class RequestTracer(Protocol):
    def begin(self, headers: Mapping[str, str], echo: list[tuple[str, bytes]]) -> RequestSpan | None:
        """Start the request's span under the trace context of ``headers`` (lower-case names) and put its
        own context (``traceparent``, and ``tracestate`` / ``baggage`` when there are any) into ``echo``,
        the headers set for the upstream request, in place of the incoming values. Returns the span when
        it is recorded, None when it is not (sampled out: its context is still propagated, with the
        sampled flag off)."""
