"""Tracing (``--tracing``): OpenTelemetry spans of routing decisions, exported over OTLP/gRPC (L3 adapter).

The only package that imports the OpenTelemetry SDK. The service (and each ``--workers`` worker) builds
one :class:`Tracing` per process, starts it with the process and closes it at shutdown; each pool's
ext_proc server gets its :class:`PoolTracer` (``Tracing.for_pool``), the
:class:`picker.extproc.spans.RequestTracer` it asks for. What is traced and why, the defaults and their
cost: ``README.md`` here.
"""

from picker.tracing.otel import MAX_ATTRIBUTE_CHARS, SPAN_NAME, PoolTracer, Tracing, exporter_problem

__all__ = ["MAX_ATTRIBUTE_CHARS", "SPAN_NAME", "PoolTracer", "Tracing", "exporter_problem"]
