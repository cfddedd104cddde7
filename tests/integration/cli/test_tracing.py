"""``--tracing`` end to end: ``picker serve`` as a child process, configured by the standard ``OTEL_*``
variables, exporting with the OpenTelemetry SDK's own OTLP/gRPC exporter to a real OTLP collector endpoint
in the test (:class:`picker.testing.otlp.OtlpReceiver` on 127.0.0.1), driven by the Envoy-like client.

Nothing of the SDK is replaced. Waits are bounded conditions (spans arriving, the process exiting after
SIGTERM, which flushes what is queued); nothing is timed.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Sequence

import pytest

from picker.testing.envoy import EnvoyClient, ExchangeResult, HttpRequest, UpstreamResponse
from picker.testing.net import free_port
from picker.testing.otlp import OtlpReceiver, ReceivedSpan
from tests.integration.conftest import LOCAL, PICKER, Ports, Process, Spawn, serving_ports

pytestmark = pytest.mark.integration

ENDPOINT = "127.0.0.2:8000"
PROMPT = "the secret plan for the quarterly numbers"
BODY = json.dumps({"model": "m", "prompt": PROMPT}).encode()
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = OtlpReceiver()
    await r.start()
    yield r
    await r.stop()


def _otel_env(env: dict[str, str], endpoint: str, *, sampler_arg: str = "0") -> None:
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        # 0: only requests whose traceparent says "sampled" are recorded, so each test chooses which
        OTEL_TRACES_SAMPLER_ARG=sampler_arg,
        OTEL_SERVICE_NAME="picker-under-test",
        OTEL_BSP_SCHEDULE_DELAY="50",  # ms: export soon after a span ends
        OTEL_EXPORTER_OTLP_TIMEOUT="2",  # s: a shutdown without a collector gives up soon
    )


async def _serve(spawn: Spawn, *args: str) -> tuple[Process, Ports]:
    process = await spawn(
        [PICKER, "serve", f"--static-endpoints={ENDPOINT}", *LOCAL, "--secure-serving=false", *args]
    )
    # a bounded wait for the "serving" line: on a loaded machine a --workers supervisor has taken over 30 s
    return process, await serving_ports(process, deadline_s=90.0)


def _traceparent(sampled: bool) -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-{'01' if sampled else '00'}"


async def _send(
    ports: Ports,
    headers: Sequence[tuple[str, str]] = (),
    *,
    body: bytes | None = BODY,
    request_body_mode: str = "FULL_DUPLEX_STREAMED",
) -> ExchangeResult:
    async with EnvoyClient(
        f"127.0.0.1:{ports.grpc}", timeout=10, request_body_mode=request_body_mode
    ) as client:
        return await client.exchange(HttpRequest(body=body, headers=headers), UpstreamResponse())


def _upstream_context(result: ExchangeResult) -> tuple[str, str, bool]:
    """(trace id, parent span id, sampled) of the traceparent the EPP set for the upstream request (the
    other flag bits, such as W3C level 2's "random trace id", are not the EPP's choice)."""
    match = TRACEPARENT.match(result.request_set_headers.get("traceparent", ""))
    assert match is not None, result.request_set_headers
    return match[1], match[2], bool(int(match[3], 16) & 1)


def _no_prompt(spans: Sequence[ReceivedSpan]) -> None:
    assert PROMPT not in repr(spans)


async def test_a_sampled_request_is_one_span_under_the_incoming_trace_and_the_upstream_joins_it(
    spawn: Spawn, cli_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    _otel_env(cli_env, receiver.endpoint)
    process, ports = await _serve(spawn, "--tracing")

    trace_id, parent, header = _traceparent(sampled=True)
    routed = await _send(ports, [("traceparent", header), ("tracestate", "vendor=x"), ("baggage", "team=a")])
    assert routed.destination == ENDPOINT
    upstream_trace, upstream_parent, flags = _upstream_context(routed)
    assert (upstream_trace, flags) == (trace_id, True)
    assert upstream_parent != parent  # the EPP's own span is the model server's parent
    assert routed.request_set_headers["tracestate"] == "vendor=x"
    assert routed.request_set_headers["baggage"] == "team=a"

    # sampled out by the parent, and a new trace at ratio 0: the context goes on, nothing is recorded
    dropped_trace, _, dropped_header = _traceparent(sampled=False)
    dropped = await _send(ports, [("traceparent", dropped_header)])
    assert _upstream_context(dropped)[0::2] == (dropped_trace, False)
    fresh = await _send(ports)
    fresh_trace, _, fresh_sampled = _upstream_context(fresh)
    assert not fresh_sampled

    # a request the EPP refuses (no model: 400) is recorded with its error
    failed_trace, failed_parent, failed_header = _traceparent(sampled=True)
    refused = await _send(ports, [("traceparent", failed_header)], body=b'{"prompt": "no model"}')
    assert refused.immediate is not None
    assert refused.immediate.status == 400

    spans = await receiver.wait_for(2)
    assert await process.stop() == 0  # flushes whatever is still queued
    by_trace = {s.trace_id: s for s in receiver.spans}
    assert len(receiver.spans) == 2
    assert dropped_trace not in by_trace
    assert fresh_trace not in by_trace
    span = by_trace[trace_id]
    assert span.name == "gateway.request"
    assert span.kind == 2  # SERVER
    assert (span.parent_span_id, span.span_id) == (parent, upstream_parent)
    assert span.resource["service.name"] == "picker-under-test"
    attributes = span.attributes
    assert attributes["picker.pool"] == "static"
    assert attributes["gen_ai.request.model"] == "m"
    assert attributes["picker.model.target"] == "m"
    assert attributes["picker.endpoint"] == ENDPOINT
    assert attributes["picker.endpoints"] == (ENDPOINT,)
    assert attributes["picker.profile"]
    assert attributes["http.response.status_code"] == 200
    assert attributes["picker.request_id"]
    assert span.events == ("routed",)
    assert span.status_code == 0  # unset: a success
    # the built-in profile's plugins, each timed (their durations: the test below)
    assert "picker.plugin.prepare.approx-prefix-cache-producer.duration_ns" in attributes
    assert "picker.plugin.scorer.queue-scorer.duration_ns" in attributes
    assert "picker.plugin.picker.max-score-picker.duration_ns" in attributes
    error = by_trace[failed_trace]
    assert error.parent_span_id == failed_parent
    assert error.attributes["error.type"] == "BadRequest"
    assert error.status_code == 2  # ERROR
    assert "picker.endpoint" not in error.attributes
    _no_prompt(spans)


TIMED_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {name: room-for-adapters, type: lora-capacity-filter}
- {name: short-queue, type: queue-scorer}
- {name: cool-cache, type: kv-cache-utilization-scorer}
- {name: best, type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: room-for-adapters}
  - {pluginRef: short-queue, weight: 2}
  - {pluginRef: cool-cache}
  - {pluginRef: best}
"""


async def test_a_sampled_span_carries_each_plugins_duration_and_an_unsampled_one_nothing(
    spawn: Spawn, cli_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    _otel_env(cli_env, receiver.endpoint)
    process, ports = await _serve(spawn, "--tracing", "--config-text", TIMED_CONFIG)

    trace_id, _, header = _traceparent(sampled=True)
    assert (await _send(ports, [("traceparent", header)])).destination == ENDPOINT
    _, _, unsampled = _traceparent(sampled=False)
    assert (await _send(ports, [("traceparent", unsampled)])).destination == ENDPOINT

    await receiver.wait_for(1)
    assert await process.stop() == 0
    assert [s.trace_id for s in receiver.spans] == [trace_id]  # the unsampled request: no span at all
    attributes = receiver.spans[0].attributes
    timings = {key: value for key, value in attributes.items() if key.startswith("picker.plugin.")}
    # one per plugin of the profile, under its configured name and its extension point (no prefix
    # scorer in this profile: no prefix match to time)
    assert set(timings) == {
        "picker.plugin.filter.room-for-adapters.duration_ns",
        "picker.plugin.scorer.short-queue.duration_ns",
        "picker.plugin.scorer.cool-cache.duration_ns",
        "picker.plugin.picker.best.duration_ns",
    }
    assert all(isinstance(value, int) and value >= 0 for value in timings.values())
    assert attributes["picker.endpoint"] == ENDPOINT


async def test_header_only_mode_under_workers_each_worker_exports_its_own_spans(
    spawn: Spawn, cli_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    _otel_env(cli_env, receiver.endpoint, sampler_arg="1")
    process, ports = await _serve(spawn, "--tracing", "--model-header=x-ai-eg-model", "--workers=2")
    for index in (0, 1):
        await process.wait_for(re.compile(rf"worker {index} serving ext_proc"))
    traces: set[str] = set()
    pids: set[int] = set()
    for _ in range(40):  # one connection per request: SO_REUSEPORT spreads them over the workers
        result = await _send(ports, [("x-ai-eg-model", "m")], request_body_mode="NONE")
        assert result.destination == ENDPOINT
        trace_id, _, sampled = _upstream_context(result)  # set at the request headers, the only message
        assert sampled
        traces.add(trace_id)
        spans = await receiver.wait_for(len(traces))
        pids = {s.resource["process.pid"] for s in spans}
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"spans from one worker only after {len(traces)} requests"
    assert {s.trace_id for s in receiver.spans} == traces
    assert all(s.attributes["gen_ai.request.model"] == "m" for s in receiver.spans)
    assert all(s.parent_span_id == "" for s in receiver.spans)  # no incoming context: new traces
    assert await process.stop() == 0


async def test_tracing_off_sets_no_trace_headers_and_exports_nothing(
    spawn: Spawn, cli_env: dict[str, str], receiver: OtlpReceiver
) -> None:
    _otel_env(cli_env, receiver.endpoint, sampler_arg="1")
    process, ports = await _serve(spawn)  # the variables are there, --tracing is not
    _, _, header = _traceparent(sampled=True)
    full = await _send(ports, [("traceparent", header)])
    assert full.request_set_headers["traceparent"] == header  # the request's own, echoed as ever
    header_only = await _send(ports, request_body_mode="NONE", body=None)
    assert "traceparent" not in header_only.request_set_headers
    assert await process.stop() == 0
    assert (receiver.exports, receiver.spans) == (0, [])


async def test_no_collector_is_one_warning_not_a_line_per_retry(
    spawn: Spawn, cli_env: dict[str, str]
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    _otel_env(cli_env, nobody, sampler_arg="1")
    process, ports = await _serve(spawn, "--tracing")
    for _ in range(3):
        assert (await _send(ports)).destination == ENDPOINT
    await process.wait_for(re.compile(r"trace export to .* is failing"))
    for _ in range(3):
        assert (await _send(ports)).destination == ENDPOINT
    assert await process.stop() == 0
    failing = [line for line in process.lines if "is failing" in line]
    assert len(failing) == 1, process.output
    assert nobody in failing[0]
    exporter_lines = [line for line in process.lines if "opentelemetry" in line or "Transient error" in line]
    assert exporter_lines == []  # the exporter's own line per retry and per dropped batch
    assert "Traceback" not in process.output


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_TRACES_SAMPLER", "jaeger_remote", "OTEL_TRACES_SAMPLER='jaeger_remote'"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "OTEL_TRACES_SAMPLER_ARG='1.5': a ratio from 0 to 1"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER='zipkin'"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317", "expected http://host:port"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "grpc only"),
    ],
)
async def test_a_bad_otel_variable_is_a_one_line_start_error(
    spawn: Spawn, cli_env: dict[str, str], variable: str, value: str, message: str
) -> None:
    cli_env[variable] = value
    process = await spawn([PICKER, "serve", f"--static-endpoints={ENDPOINT}", *LOCAL, "--tracing"])
    assert await process.proc.wait() == 2
    assert process.reader is not None
    await process.reader
    assert message in process.output
    assert "Traceback" not in process.output
