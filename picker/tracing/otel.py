"""OpenTelemetry tracing of routing decisions: the tracer provider, the OTLP exporter, the request spans.

:class:`Tracing` satisfies :class:`picker.extproc.spans.RequestTracer` (structurally: ext_proc and this
package do not import each other). Per request (``begin``): the W3C
trace context (``traceparent``, ``tracestate``) and ``baggage`` are extracted from the request headers, a
``gateway.request`` span (kind SERVER, as the reference EPP names its per-request span) is started under
them, and its context is injected into the headers the EPP sets for the upstream request, replacing the
incoming values, so the model server's spans are children of the EPP's. A request the sampler drops gets a
non-recording span: its context is still propagated (sampled flag off) and nothing else is done.

Sampling is the standard set (``OTEL_TRACES_SAMPLER``; default ``parentbased_traceidratio`` at 0.1, the
reference's): a request whose ``traceparent`` says "sampled" is recorded under a parent-based sampler
whatever the ratio. Spans go through the SDK's batch processor (one export thread per process, started by
:meth:`Tracing.start`, never by the constructor) to the OTLP/gRPC exporter. A process serving several
pools has one :class:`Tracing` (one provider, one exporter, one connection to the collector); each pool's
streams begin their spans through a :class:`PoolTracer`, which names the pool in ``picker.pool`` (an
attribute, not the resource: the resource is the provider's, shared by the pools).

**Quiet when no collector listens.** The exporter logs a warning per retry and an error per dropped batch;
with no collector that is a line every second or so for as long as the process runs. Those lines are
filtered out of its logger (:class:`_ExportLog`) and the export's state is logged once per change
instead (failing, with the exporter's last reason; working again). Batches that fail are dropped (the
exporter's own retries, bounded by ``OTEL_EXPORTER_OTLP_TIMEOUT``), never held.

**What a span carries** (``routed``, ``failed``, ``end``): the pool, the chosen endpoint and the fallbacks,
the scheduling profile and why it was chosen, the incoming and target model, the objective and its
priority, failover and external spill-over when they happened, an event at the moment of the decision, the
failure code and the response status. Never prompt or response text; model names and the request id come
from the request and are cut to :data:`MAX_ATTRIBUTE_CHARS`.

**Per-plugin timings** are attributes, one per plugin that ran in the pick,
``picker.plugin.<point>.<name>.duration_ns`` (an integer; ``point`` is ``prepare`` for the prefix index's
match, ``filter``, ``scorer``, ``picker``; ``name`` the plugin's configured name, from the configuration
document). Attributes rather than one event per plugin: a backend can query and aggregate them
(``span.picker.plugin.scorer.queue-scorer.duration_ns > 20000``), an event per plugin would add timestamps
nobody reads to every sampled span, and a span's attributes are one flat map the SDK already holds. Only a
recorded span asks for them (``RoutingRequest.timings``): an unsampled request is not timed at all. How
each is measured (a scorer is timed on its own over the pick's candidates): ``scoring.scheduler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from picker.errors import MODEL_SERVER_ERROR
from picker.logs import peer_text
from picker.routing.types import Dispatch
from picker.settings import TracingSettings
from scoring.types import PluginTiming

__all__ = ["MAX_ATTRIBUTE_CHARS", "SPAN_NAME", "PoolTracer", "Tracing", "exporter_problem"]

log = logging.getLogger(__name__)

#: the reference EPP's name of its per-request span
SPAN_NAME: Final = "gateway.request"
#: longest model name or request id recorded (they come from the request)
MAX_ATTRIBUTE_CHARS: Final = 256
#: the parent of a span whose request carries no trace context: a new trace (never the ambient context)
_NO_CONTEXT: Final = Context()
#: the logger of the OTLP/gRPC exporter's retries and failures (:class:`_ExportLog`)
_EXPORTER_LOGGER: Final = "opentelemetry.exporter.otlp.proto.grpc.exporter"


def exporter_problem() -> str | None:
    """Why the OTLP/gRPC exporter cannot be used in this installation (None: it can). Imported only here
    and by :meth:`Tracing.start`, so a process without ``--tracing`` never loads it: xds-protos (the Envoy
    stubs) ships an old copy of opentelemetry-proto's modules at the same paths (grpc/grpc#42926), and an
    install that put it last breaks the exporter's import; the Makefile and the Dockerfile install
    opentelemetry-proto last."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc import trace_exporter  # noqa: F401
    except ImportError as exc:
        return (
            f"the OTLP exporter cannot be imported ({exc}): xds-protos overwrote opentelemetry-proto's "
            "modules with an old copy (grpc/grpc#42926); install it again after xds-protos: pip install "
            "--no-deps --force-reinstall opentelemetry-proto==<the locked version>"
        )
    return None


def _sampler(settings: TracingSettings) -> Sampler:
    name, ratio = settings.sampler, settings.ratio
    if name == "parentbased_traceidratio":
        return ParentBasedTraceIdRatio(ratio)
    if name == "traceidratio":
        return TraceIdRatioBased(ratio)
    root = ALWAYS_ON if name.endswith("always_on") else ALWAYS_OFF
    return ParentBased(root) if name.startswith("parentbased_") else root


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ATTRIBUTE_CHARS else text[:MAX_ATTRIBUTE_CHARS]


class _ExportLog(logging.Filter):
    """Keeps the exporter's per-retry and per-batch lines out of the log, remembering the last one's text
    for :class:`_ReportingExporter`'s single line."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.last = record.getMessage()
        return False


class _ReportingExporter(SpanExporter):
    """The OTLP exporter, whose failing and recovering are logged once per change."""

    def __init__(self, inner: SpanExporter, endpoint: str, reasons: _ExportLog) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._reasons = reasons
        self._failing = False
        #: batches whose export failed (dropped), for tests and /debug
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            if self._failing:
                self._failing = False
                log.info("trace export to %s works again", self._endpoint)
            return result
        self.failures += 1
        if not self._failing:
            self._failing = True
            log.warning(
                "trace export to %s is failing (%s); spans are dropped until it works again, which is "
                "logged (nothing more until then)",
                self._endpoint,
                peer_text(self._reasons.last or "no answer"),  # the collector's answer may be in it
            )
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _RequestSpan:
    """:class:`picker.extproc.spans.RequestSpan` over a recording SDK span."""

    __slots__ = ("_error", "_pool", "_span", "timings")

    def __init__(self, span: Span, pool: str) -> None:
        self._span = span
        self._pool = pool
        self._error = ""
        self.timings: list[PluginTiming] = []

    def routed(self, dispatch: Dispatch) -> None:
        span = self._span
        span.add_event("routed")
        endpoints = dispatch.endpoints
        attributes: dict[str, str | int | bool | Sequence[str]] = {
            "picker.pool": self._pool,
            "gen_ai.request.model": _cut(dispatch.incoming_model),
            "picker.model.target": _cut(dispatch.target_model),
            "picker.endpoint": endpoints[0] if endpoints else "",
            "picker.endpoints": endpoints,
            "picker.priority": dispatch.priority,
            "picker.streamed": dispatch.streamed,
        }
        if dispatch.profile:
            attributes["picker.profile"] = dispatch.profile
            attributes["picker.profile.reason"] = dispatch.profile_reason
        if dispatch.objective:
            attributes["picker.objective"] = _cut(dispatch.objective)
        if dispatch.failover:
            attributes["picker.failover"] = dispatch.failover
        if dispatch.external:
            attributes["picker.external"] = dispatch.external
        for point, name, duration_ns in self.timings:
            attributes[f"picker.plugin.{point}.{name}.duration_ns"] = duration_ns
        span.set_attributes(attributes)

    def failed(self, error_code: str, incoming_model: str) -> None:
        self._error = error_code
        self._span.set_attribute("error.type", error_code)
        if incoming_model:
            self._span.set_attribute("gen_ai.request.model", _cut(incoming_model))

    def end(self, status: int) -> None:
        span = self._span
        if status:
            span.set_attribute("http.response.status_code", status)
        error = self._error
        if status >= 500 or (error and error != MODEL_SERVER_ERROR):
            # the EPP refused the request, or the model server failed it (a 4xx is the client's)
            span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status}"))
        span.end()


def _no_pool() -> str:
    return ""


class PoolTracer:
    """One pool's :class:`picker.extproc.spans.RequestTracer` over the process's :class:`Tracing`: its
    spans carry the pool's name (``picker.pool``), read per recorded span."""

    __slots__ = ("_pool", "_tracing")

    def __init__(self, tracing: Tracing, pool: Callable[[], str]) -> None:
        self._tracing = tracing
        self._pool = pool

    def begin(self, headers: Mapping[str, str], echo: list[tuple[str, bytes]]) -> _RequestSpan | None:
        return self._tracing.begin(headers, echo, self._pool)


class Tracing:
    """The process's tracing: one tracer provider with one OTLP/gRPC exporter and its export thread, however
    many pools the process serves (each pool's streams get a :class:`PoolTracer` from :meth:`for_pool`),
    and the per-request spans. Constructing it starts nothing; :meth:`start` builds the provider and its
    export thread, :meth:`close` flushes and stops them. Before :meth:`start` and after :meth:`close`,
    :meth:`begin` does nothing (None, headers untouched)."""

    def __init__(self, settings: TracingSettings, *, exporter: SpanExporter | None = None) -> None:
        """``exporter``: for tests of this module (default: the OTLP/gRPC exporter to
        ``settings.endpoint``)."""
        self.settings = settings
        self._given_exporter = exporter
        self._tracecontext = TraceContextTextMapPropagator()
        self._propagator = CompositePropagator([self._tracecontext, W3CBaggagePropagator()])
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        self._export_log = _ExportLog()
        self._begin_failed = False
        self._owns_filter = False
        #: the exporter as the processor sees it (after start)
        self.exporter: _ReportingExporter | None = None

    def start(self) -> None:
        """Build the provider, the exporter and the batch processor (which starts its export thread)."""
        if self._provider is not None:
            return
        s = self.settings
        inner = self._given_exporter
        if inner is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            inner = OTLPSpanExporter(endpoint=s.endpoint, insecure=s.insecure)
        exporter_log = logging.getLogger(_EXPORTER_LOGGER)
        # one filter per logger: several tracers in a process (tests, benchmarks) share the first one's,
        # since a logger stops at the first filter that drops a record
        shared = next((f for f in exporter_log.filters if isinstance(f, _ExportLog)), None)
        self._owns_filter = shared is None
        if shared is None:
            exporter_log.addFilter(self._export_log)
        else:
            self._export_log = shared
        self.exporter = _ReportingExporter(inner, s.endpoint, self._export_log)
        provider = TracerProvider(
            # close() shuts it down, bounded; the SDK's own atexit hook would wait up to 30 s more
            shutdown_on_exit=False,
            sampler=_sampler(s),
            # process.pid tells the --workers processes apart (each exports its own streams' spans)
            resource=Resource.create({SERVICE_NAME: s.service_name, "process.pid": os.getpid()}),
        )
        provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self._provider = provider
        self._tracer = provider.get_tracer("picker.extproc")
        log.info(
            "tracing: spans to %s (OTLP/gRPC), sampler %s%s, service.name %s",
            s.endpoint,
            s.sampler,
            f" {s.ratio:g}" if "ratio" in s.sampler else "",
            s.service_name,
        )

    async def close(self, timeout_s: float = 5.0) -> None:
        """Export what is queued and stop, waiting at most ``timeout_s`` (the SDK's shutdown blocks, so it
        runs on a daemon thread: a collector that does not answer cannot hold the process)."""
        provider, self._provider, self._tracer = self._provider, None, None
        if provider is None:
            return
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def shutdown() -> None:
            try:
                provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=shutdown, name="tracing-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout_s)
        if self._owns_filter:
            logging.getLogger(_EXPORTER_LOGGER).removeFilter(self._export_log)

    def for_pool(self, pool: Callable[[], str]) -> PoolTracer:
        """The tracer of one pool's streams (``pool``: its name, read per recorded span)."""
        return PoolTracer(self, pool)

    def begin(
        self, headers: Mapping[str, str], echo: list[tuple[str, bytes]], pool: Callable[[], str] = _no_pool
    ) -> _RequestSpan | None:
        """:meth:`picker.extproc.spans.RequestTracer.begin`, the span's ``picker.pool`` from ``pool``."""
        tracer = self._tracer
        if tracer is None:
            return None
        # Most requests carry no trace context (a gateway that does not trace): then there is nothing to
        # extract, no baggage to carry on and no incoming header to replace, and the W3C traceparent is the
        # whole injection (measured: a third of begin's cost for such a request, bench_stream --tracing).
        incoming = "traceparent" in headers or "baggage" in headers or "tracestate" in headers
        try:
            parent = self._propagator.extract(headers) if incoming else _NO_CONTEXT
            span = tracer.start_span(SPAN_NAME, context=parent, kind=SpanKind.SERVER)
            carrier: dict[str, str] = {}
            propagator = self._propagator if incoming else self._tracecontext
            propagator.inject(carrier, context=set_span_in_context(span, parent))
        except Exception:  # the SDK logs rather than raises; a request is never failed by its span
            if not self._begin_failed:
                self._begin_failed = True
                log.exception("tracing: a span could not be started, the request went untraced (said once)")
            return None
        if incoming:
            echo[:] = [item for item in echo if item[0].lower() not in carrier]
        echo.extend((key, value.encode()) for key, value in carrier.items())
        if not span.is_recording():
            return None
        span.set_attribute("picker.request_id", _cut(headers.get("x-request-id", "")))
        return _RequestSpan(span, pool())
