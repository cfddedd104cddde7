"""Tracing (``--tracing``): OpenTelemetry spans of routing decisions, exported over OTLP/gRPC (L3 adapter).

The only package that imports the OpenTelemetry SDK. :class:`Tracing` satisfies the
:class:`picker.extproc.spans.RequestTracer` the ext_proc server asks for; the service (and each
``--workers`` worker) builds one, starts it with the process and closes it at shutdown. What is traced and
why, the defaults and their cost: ``README.md`` here.
"""

from picker.tracing.otel import MAX_ATTRIBUTE_CHARS, SPAN_NAME, Tracing, exporter_problem

__all__ = ["MAX_ATTRIBUTE_CHARS", "SPAN_NAME", "Tracing", "exporter_problem"]
