"""Header-only mode through the real service and the Envoy-like client configured as Envoy is for it
(``request_body_mode: NONE``, ``allow_mode_override: true``): one ext_proc message per request, the
model from a header, the prompt-token estimate from another, clear 400s for bad headers, and a proxy
that sends the body anyway still gets it forwarded unchanged."""

from __future__ import annotations

import pytest

from picker.testing.envoy import HttpRequest
from tests.integration.mode_override.conftest import BODY, ENDPOINTS, RESPONSE, Start

pytestmark = pytest.mark.integration

HEADER = "x-ai-eg-model"
CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {type: token-load-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: token-load-scorer}, {pluginRef: max-score-picker}]
"""


async def test_one_message_per_request(start: Start) -> None:
    svc = await start(CONFIG, model_header=HEADER)
    client = await svc.client("NONE")
    request = HttpRequest(
        body=BODY, request_id="r-1", headers=[(HEADER, "m"), ("x-picker-prompt-tokens", "500")]
    )
    result = await client.exchange(request, RESPONSE)
    assert [r.WhichOneof("response") for r in result.replies] == ["request_headers"]
    assert result.destination in ENDPOINTS
    assert result.metadata_destination == result.destination
    assert result.clear_route_cache
    # nothing echoed: the proxy has the headers; the body goes upstream untouched (no content-length)
    assert result.request_set_headers == {"x-gateway-destination-endpoint": result.destination}
    mode = result.mode_override
    assert mode is not None
    assert (
        mode.request_body_mode,
        mode.request_trailer_mode,
        mode.response_header_mode,
        mode.response_body_mode,
        mode.response_trailer_mode,
    ) == (mode.NONE, mode.SKIP, mode.SKIP, mode.NONE, mode.SKIP)
    assert result.immediate is None
    assert result.code is not None
    assert result.code.name == "OK"
    assert await svc.sample("inference_objective_request_total", model_name="m", target_model_name="m") == 1.0
    # nothing of the response is seen: no response-side metric, no passive-health outcome
    assert await svc.sample("inference_objective_request_duration_seconds_count", model_name="m") == 0.0
    assert await svc.total("inflight") == 0.0


async def test_in_flight_and_the_token_estimate_last_until_the_proxy_closes_the_stream(
    start: Start,
) -> None:
    svc = await start(CONFIG, model_header=HEADER)
    client = await svc.client("NONE")
    stream = client.stream()
    request = HttpRequest(body=BODY, headers=[(HEADER, "m"), ("x-picker-prompt-tokens", "500")])
    (message,) = request.messages(send_body=False)
    assert not message.request_headers.end_of_stream  # a body follows upstream
    await stream.send(message)
    reply = await stream.recv()
    assert reply is not None
    assert reply.WhichOneof("response") == "request_headers"
    assert await svc.total("inflight") == 1.0
    assert await svc.total("inflight_tokens") == 500.0
    assert await svc.total("prefill_tokens") == 0.0  # no first response byte will be seen
    await stream.half_close()
    assert await stream.recv() is None
    await svc.until_total("inflight", 0.0)
    assert await svc.total("inflight_tokens") == 0.0


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([], b"inference error: BadRequest - model not found in header x-ai-eg-model"),
        ([(HEADER, "")], b"inference error: BadRequest - model not found in header x-ai-eg-model"),
        (
            [(HEADER, "m" * 300)],
            b"inference error: BadRequest - model name longer than 256 characters in header x-ai-eg-model",
        ),
        (
            [(HEADER, "m"), ("x-picker-prompt-tokens", "-3")],
            (
                b"inference error: BadRequest - header x-picker-prompt-tokens must be a non-negative "
                b"integer (a prompt-token estimate)"
            ),
        ),
    ],
)
async def test_a_missing_or_invalid_header_is_a_400(
    start: Start, headers: list[tuple[str, str]], message: bytes
) -> None:
    svc = await start(CONFIG, model_header=HEADER)
    client = await svc.client("NONE")
    result = await client.exchange(HttpRequest(body=BODY, headers=headers), RESPONSE)
    assert result.immediate is not None
    assert (result.immediate.status, result.immediate.body) == (400, message)
    assert result.destination is None
    assert await svc.total("inflight") == 0.0


async def test_a_request_without_body_or_model_header_goes_to_a_pool_endpoint(
    start: Start,
) -> None:
    svc = await start(CONFIG, model_header=HEADER)
    client = await svc.client("NONE")
    result = await client.exchange(HttpRequest(method="GET", path="/v1/models", body=None), RESPONSE)
    assert [r.WhichOneof("response") for r in result.replies] == ["request_headers"]
    assert result.destination in ENDPOINTS
    assert result.mode_override is not None
    # the one header set besides the destination: the x-request-id generated for a request without one
    assert set(result.request_set_headers) == {"x-gateway-destination-endpoint", "x-request-id"}
    assert len(result.request_set_headers["x-request-id"]) == 36


async def test_a_proxy_that_still_sends_the_body_gets_it_back_unchanged(
    start: Start,
) -> None:
    """A proxy left on FULL_DUPLEX_STREAMED (which an override cannot lower) and ignoring the override:
    routed at the headers all the same, each body chunk echoed as it comes, the response handled."""
    svc = await start(CONFIG, model_header=HEADER)
    client = await svc.client("FULL_DUPLEX_STREAMED")
    body = BODY + b" " * 100
    result = await client.exchange(
        HttpRequest(body=body, chunk_size=16, headers=[(HEADER, "m")]), RESPONSE, honor_mode_override=False
    )
    assert result.destination in ENDPOINTS
    assert result.request_body == body
    assert result.request_body_chunks == (len(body) + 15) // 16
    assert result.response_body == RESPONSE.chunks[0]
    assert result.code is not None
    assert result.code.name == "OK"


async def test_explain_shows_what_a_header_only_stream_would_get(
    start: Start,
) -> None:
    svc = await start(CONFIG, model_header=HEADER)
    url = f"http://127.0.0.1:{svc.ports.admin}/debug/explain"
    payload = {"path": "/v1/chat/completions", "headers": {"X-AI-EG-Model": "m"}, "body": ""}
    async with svc.http.post(url, json=payload) as resp:
        doc = await resp.json()
    assert doc["destination"] in ENDPOINTS
    assert doc["target_model"] == "m"
    async with svc.http.post(url, json={**payload, "headers": {}}) as resp:
        doc = await resp.json()
    assert doc["error"]["status"] == 400
    assert doc["error"]["message"] == "model not found in header x-ai-eg-model"
    assert await svc.total("inflight") == 0.0  # explaining routes nothing
