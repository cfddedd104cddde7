""" "Fewer messages" through the real service: with ``responseProcessing: WhenNeeded`` the request-headers
reply asks the proxy to skip the response phases (all of them with passive health off; the body and
trailers only with it on, which needs the status); a proxy that ignores it still gets the full behaviour;
a rewritten model always keeps its response; in-flight accounting ends when the stream ends either way."""

from __future__ import annotations

import pytest

from picker.testing.envoy import HttpRequest, UpstreamResponse
from tests.integration.mode_override.conftest import BODY, ENDPOINTS, RESPONSE, Start

pytestmark = pytest.mark.integration

WHEN_NEEDED = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {type: max-score-picker}
- {type: outlier-detector, parameters: {enabled: false}}
schedulingProfiles: [{name: default, plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]}]
---
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
responseProcessing: WhenNeeded
"""
#: the same with passive health on (its default): the response headers are still needed
WITH_HEALTH = WHEN_NEEDED.replace("- {type: outlier-detector, parameters: {enabled: false}}\n", "")


async def test_a_proxy_honouring_the_override_skips_the_response(
    start: Start,
) -> None:
    svc = await start(WHEN_NEEDED)
    client = await svc.client()
    result = await client.exchange(HttpRequest(body=BODY), RESPONSE)
    assert result.destination in ENDPOINTS
    assert result.mode_override is not None
    mode = result.mode_override
    assert (mode.response_header_mode, mode.response_body_mode, mode.response_trailer_mode) == (
        mode.SKIP,
        mode.NONE,
        mode.SKIP,
    )
    assert result.response_set_headers is None
    assert not result.response_body_chunks
    assert await svc.sample("inference_objective_request_total", model_name="m") == 1.0
    # the trade-off: no response-side metrics for a skipped response
    assert await svc.sample("inference_objective_request_duration_seconds_count", model_name="m") == 0.0
    assert await svc.sample("inference_objective_output_tokens_count", model_name="m") == 0.0
    assert await svc.total("inflight") == 0.0


async def test_with_passive_health_only_the_body_is_skipped(
    start: Start,
) -> None:
    svc = await start(WITH_HEALTH)
    client = await svc.client()
    result = await client.exchange(HttpRequest(body=BODY), UpstreamResponse(status=503, chunks=(b"{}",)))
    mode = result.mode_override
    assert mode is not None
    assert (mode.response_header_mode, mode.response_body_mode, mode.response_trailer_mode) == (
        mode.SEND,
        mode.NONE,
        mode.SKIP,
    )
    assert result.response_set_headers is not None, "the headers still come: the status is known"
    assert not result.response_body_chunks
    assert await svc.total("inflight") == 0.0
    for _ in range(4):
        await client.exchange(HttpRequest(body=BODY), UpstreamResponse(status=503, chunks=(b"{}",)))
    # five 503s from the endpoints picked: passive health saw them through the headers alone
    async with svc.http.get(f"http://127.0.0.1:{svc.ports.admin}/debug/endpoints") as resp:
        rows = (await resp.json())["endpoints"]
    failures = sum(r["health"]["consecutive_failures"] + r["health"]["ejections"] * 5 for r in rows)
    assert failures == 5


async def test_a_proxy_ignoring_the_override_gets_the_full_behaviour(
    start: Start,
) -> None:
    svc = await start(WHEN_NEEDED)
    client = await svc.client()
    result = await client.exchange(HttpRequest(body=BODY), RESPONSE, honor_mode_override=False)
    assert result.mode_override is not None
    assert result.response_set_headers is not None
    assert result.response_body == RESPONSE.chunks[0]
    assert await svc.sample("inference_objective_request_duration_seconds_count", model_name="m") == 1.0
    assert await svc.sample("inference_objective_output_tokens_sum", model_name="m") == 5.0


async def test_a_rewritten_model_keeps_its_response(start: Start) -> None:
    svc = await start(WHEN_NEEDED)
    client = await svc.client()
    result = await client.exchange(
        HttpRequest(body=BODY, headers=[("x-gateway-model-name-rewrite", "m-v2")]), RESPONSE
    )
    assert result.mode_override is None
    assert result.response_body == RESPONSE.chunks[0]  # the name was put back ("m-v2" -> "m")
    assert await svc.sample("inference_objective_request_duration_seconds_count", model_name="m") == 1.0


async def test_the_default_config_never_skips(start: Start) -> None:
    svc = await start(WHEN_NEEDED.replace("responseProcessing: WhenNeeded", "responseProcessing: Always"))
    client = await svc.client()
    result = await client.exchange(HttpRequest(body=BODY), RESPONSE)
    assert result.mode_override is None
    assert result.response_body == RESPONSE.chunks[0]


async def test_a_skipped_stream_stays_in_flight_until_the_proxy_closes_it(
    start: Start,
) -> None:
    """Envoy closes the ext_proc stream when the HTTP exchange ends, also when the response is skipped:
    the endpoint's in-flight count covers the whole exchange, not just the request phase."""
    svc = await start(WHEN_NEEDED)
    client = await svc.client()
    stream = client.stream()
    for message in HttpRequest(body=BODY).messages():
        await stream.send(message)
    kinds = []
    while len(kinds) < 2:
        reply = await stream.recv()
        assert reply is not None
        kinds.append(reply.WhichOneof("response"))
    assert kinds == ["request_headers", "request_body"]
    assert await svc.total("inflight") == 1.0
    await stream.half_close()
    assert await stream.recv() is None
    await svc.until_total("inflight", 0.0)


async def test_a_skipped_response_gives_its_prefill_charge_back_at_once(
    start: Start,
) -> None:
    """No response body will be seen, so the end of prefill cannot be: the prefill part of the charge is
    not held until the stream ends; the in-flight tokens are."""
    svc = await start(WHEN_NEEDED)
    client = await svc.client()
    stream = client.stream()
    body = b'{"model":"m","stream":true,"prompt":"' + b"p" * 2000 + b'"}'
    for message in HttpRequest(body=body).messages():
        await stream.send(message)
    for _ in range(2):
        assert await stream.recv() is not None
    async with svc.http.get(f"http://127.0.0.1:{svc.ports.admin}/debug/endpoints") as resp:
        rows = (await resp.json())["endpoints"]
    assert sum(r["prefill_tokens"] for r in rows) == 0.0
    assert sum(r["inflight_tokens"] for r in rows) == 500.0
    await stream.half_close()
    assert await stream.recv() is None
