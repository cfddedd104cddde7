"""A real OTLP/gRPC trace collector endpoint for tests and benchmarks: ``TraceService/Export`` served by
grpc.aio on the official ``opentelemetry.proto.collector.trace.v1`` stubs, recording every span it gets.

The EPP's exporter (the OpenTelemetry SDK's own OTLP/gRPC exporter, in a ``picker serve`` process) talks
to it exactly as to an OpenTelemetry Collector; nothing of the SDK is replaced. Bind it to 127.0.0.1 on an
ephemeral port and point ``OTEL_EXPORTER_OTLP_ENDPOINT`` at ``http://127.0.0.1:<port>``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["OtlpReceiver", "ReceivedSpan"]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    return getattr(value, kind) if kind is not None else None


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One exported span, decoded: ids as lower-case hex (``parent_span_id`` "" for a root span)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: tuple[str, ...]
    status_code: int
    status_message: str
    duration_ns: int = field(default=0)


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Serves ``opentelemetry.proto.collector.trace.v1.TraceService`` on ``host`` (an ephemeral port unless
    given); :attr:`spans` are the spans received, in order; :attr:`exports` counts Export calls."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = f"{host}:{port}"
        self._server: Any = None
        self.port = 0
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        self._arrived = asyncio.Event()

    @property
    def endpoint(self) -> str:
        """The value of ``OTEL_EXPORTER_OTLP_ENDPOINT`` that reaches this receiver (plaintext)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> int:
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        self.port = server.add_insecure_port(self._address)
        await server.start()
        self._server = server
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)

    async def Export(  # noqa: N802 - the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, _context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.exports += 1
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.spans.extend(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        resource=resource,
                        events=tuple(e.name for e in span.events),
                        status_code=span.status.code,
                        status_message=span.status.message,
                        duration_ns=span.end_time_unix_nano - span.start_time_unix_nano,
                    )
                    for span in scope.spans
                )
        self._arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, count: int, *, within: float = 30.0) -> list[ReceivedSpan]:
        """The spans once at least ``count`` arrived; fails with what did arrive at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while len(self.spans) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{len(self.spans)} of {count} spans within {within}s: {self.spans}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))
            except TimeoutError:
                continue
        return list(self.spans)
