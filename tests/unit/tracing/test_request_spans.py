"""``picker.tracing.Tracing`` in process, with the SDK's own in-memory exporter behind the real batch
processor: what ``begin`` does to the upstream headers, and what a recorded span carries."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from picker.routing.types import Dispatch
from picker.settings import TracingSettings
from picker.tracing import SPAN_NAME, Tracing, exporter_problem

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class _Lease:
    def first_byte(self) -> None: ...

    def report(self, outcome: object, /) -> None: ...

    def release(self) -> None: ...


def _dispatch() -> Dispatch:
    return Dispatch(
        endpoints=("10.0.0.1:8000", "10.0.0.2:8000"),
        body=b"",
        lease=_Lease(),
        restore=None,
        incoming_model="m" * 300,
        target_model="m-v2",
        priority=5,
        objective="critical",
        profile="latency",
        profile_reason="rule 0",
    )


@pytest.fixture
async def traced() -> AsyncIterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    settings = TracingSettings(sampler="parentbased_traceidratio", ratio=0.0)
    tracing = Tracing(settings, exporter=exporter)
    tracing.start()
    yield tracing, exporter
    await tracing.close()


async def test_a_sampled_parent_gets_a_recorded_child_whose_context_replaces_the_incoming_headers(
    traced: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = traced
    incoming = f"00-{TRACE}-{PARENT}-01"
    headers = {"traceparent": incoming, "x-request-id": "r-1", "baggage": "team=a"}
    echo = [("Traceparent", incoming.encode()), ("x-request-id", b"r-1"), ("baggage", b"team=a")]
    span = tracing.for_pool(lambda: "pool-a").begin(headers, echo)
    assert span is not None
    names = [key.lower() for key, _ in echo]
    assert names.count("traceparent") == 1
    assert names.count("baggage") == 1
    upstream = {k.lower(): v.decode() for k, v in echo}["traceparent"]
    assert upstream.startswith(f"00-{TRACE}-")
    assert upstream != incoming
    span.routed(_dispatch())
    span.failed("ModelServerError", "m")
    span.end(503)
    await tracing.close()  # flushes
    (recorded,) = exporter.get_finished_spans()
    assert recorded.name == SPAN_NAME
    assert recorded.kind == SpanKind.SERVER
    assert recorded.parent is not None
    assert format(recorded.parent.span_id, "016x") == PARENT
    assert upstream.split("-")[2] == format(recorded.context.span_id, "016x")
    attributes = dict(recorded.attributes or {})
    assert attributes["picker.pool"] == "pool-a"
    assert attributes["picker.endpoint"] == "10.0.0.1:8000"
    assert attributes["picker.endpoints"] == ("10.0.0.1:8000", "10.0.0.2:8000")
    assert attributes["picker.profile"] == "latency"
    assert attributes["picker.objective"] == "critical"
    assert attributes["gen_ai.request.model"] == "m"  # the failure's label came last
    assert attributes["http.response.status_code"] == 503
    assert attributes["error.type"] == "ModelServerError"
    assert attributes["picker.request_id"] == "r-1"
    assert recorded.status.status_code == StatusCode.ERROR
    assert [e.name for e in recorded.events] == ["routed"]


async def test_a_dropped_request_still_propagates_and_records_nothing(
    traced: tuple[Tracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = traced
    echo: list[tuple[str, bytes]] = []
    assert tracing.begin({}, echo) is None  # ratio 0, no parent
    ((key, value),) = echo
    assert key == "traceparent"
    assert int(value.decode().split("-")[3], 16) & 1 == 0
    await tracing.close()
    assert exporter.get_finished_spans() == ()


async def test_before_start_and_after_close_nothing_is_touched() -> None:
    tracing = Tracing(TracingSettings(), exporter=InMemorySpanExporter())
    echo = [("traceparent", b"x")]
    assert tracing.begin({"traceparent": "x"}, echo) is None
    tracing.start()
    await tracing.close()
    assert tracing.begin({}, echo) is None
    assert echo == [("traceparent", b"x")]


async def test_a_long_model_name_is_cut(traced: tuple[Tracing, InMemorySpanExporter]) -> None:
    tracing, exporter = traced
    span = tracing.begin({"traceparent": f"00-{TRACE}-{PARENT}-01"}, [])
    assert span is not None
    span.routed(_dispatch())
    span.end(200)
    await tracing.close()
    (recorded,) = exporter.get_finished_spans()
    assert recorded.attributes is not None
    assert recorded.attributes["gen_ai.request.model"] == "m" * 256
    assert recorded.status.status_code == StatusCode.UNSET


def test_the_otlp_exporter_imports_in_this_installation() -> None:
    """``make`` installs opentelemetry-proto after xds-protos, whose old copy of its modules would break the
    exporter (grpc/grpc#42926); a fresh CI machine checks it here."""
    assert exporter_problem() is None
