"""Hostile model-server responses through the whole service: a bad usage object is "no usage", never an
error in the stream, in ``/metrics`` or in a log line at ERROR."""

from __future__ import annotations

import logging

import grpc
import pytest

from picker.testing.envoy import HttpRequest, UpstreamResponse
from tests.integration.service.conftest import StartService, completion, config_text, samples

pytestmark = pytest.mark.integration

DEEP = 100_000
DEEP_USAGE = b'{"id":"x","usage":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}"
#: deep, and still within the 64 KiB tail an SSE stream keeps for its usage
SSE_DEEP_USAGE = b'{"usage":' + b'{"a":' * 8_000 + b"1" + b"}" * 8_000 + b"}"


@pytest.mark.parametrize(
    ("content_type", "chunks"),
    [
        ("application/json", [DEEP_USAGE]),
        ("text/event-stream", [b"data: " + SSE_DEEP_USAGE + b"\n\n", b"data: [DONE]\n\n"]),
        ("text/event-stream", [b'"usage":{{' * 3_000 + b"}" * 32_000, b"data: [DONE]\n\n"]),
    ],
    ids=["json-deep", "sse-deep", "sse-repeated-keys"],
)
async def test_a_hostile_usage_object_is_no_usage(
    start_service: StartService, caplog: pytest.LogCaptureFixture, content_type: str, chunks: list[bytes]
) -> None:
    h = await start_service(pods=1)
    with caplog.at_level(logging.WARNING):
        result = await h.exchange(
            HttpRequest(body=completion(model="m")),
            UpstreamResponse(headers=(("content-type", content_type),), chunks=chunks),
        )
        assert result.code == grpc.StatusCode.OK, result.details
        assert result.response_body == b"".join(chunks)
        text = await h.metrics()  # the deferred scan runs here: it must not fail the scrape
    assert samples(text, "inference_objective_input_tokens_count") in (
        [],
        [({"model_name": "m", "target_model_name": "m"}, 0.0)],
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_long_model_names_are_bounded_in_metrics(start_service: StartService) -> None:
    h = await start_service(pods=1)
    for i in range(11):
        model = f"{i}" + "m" * (1 << 20)  # one MiB each, distinct
        result = await h.exchange(HttpRequest(body=completion(model=model)), UpstreamResponse(chunks=[b"{}"]))
        assert result.code == grpc.StatusCode.OK
    text = await h.metrics()
    assert len(text) < 256 * 1024, len(text)
    models = {labels["model_name"] for labels, _ in samples(text, "inference_objective_request_total")}
    assert models == {"other"}


async def test_peer_chosen_headers_are_bounded_in_metrics(start_service: StartService) -> None:
    """Tenant ids, fairness ids and objective names come from request headers: a tenant id is a label
    bounded like the model name (picker.labels), the others never reach /metrics as they were sent."""
    h = await start_service(
        pods=1,
        config=config_text(picker_extra="tenants: {maxIdLength: 256}\n"),
        metrics_label_max_values=2,
        metrics_label_max_length=32,
    )
    usage = UpstreamResponse(
        headers=(("content-type", "application/json"),),
        chunks=[b'{"usage":{"prompt_tokens":3,"completion_tokens":2}}'],
    )
    tenants = [f"a{i}" for i in range(6)] + ["L" * 200]
    for tenant in tenants:
        headers = [
            ("x-tenant-id", tenant),
            ("x-gateway-inference-fairness-id", "f" * 100_000),
            ("x-gateway-inference-objective", "o" * 100_000),
        ]
        result = await h.exchange(HttpRequest(body=completion(model="m"), headers=headers), usage)
        assert result.code == grpc.StatusCode.OK, result.details
    text = await h.metrics()
    labels = {labels["tenant"] for labels, _ in samples(text, "ai_tokens_total")}
    assert labels == {"a0", "a1", "other"}
    for sent in ("L" * 200, "f" * 1000, "o" * 1000):
        assert sent not in text
