"""Tenants end to end: the whole service over real gRPC, an Envoy-like client, real response bodies.

The token limit per user header (the seed's first scenario): every id in ``x-tenant-id`` gets the default
tier's tokens per hour; the reservation is taken at the request, settled from the response's usage,
released on cancel; over the limit the client gets OpenAI's 429.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pytest

from picker.testing.envoy import HttpRequest, UpstreamResponse

from .conftest import ServiceHarness, StartService, config_text, finish, hold, sample, samples

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / "data" / "openai"
SSE = (DATA / "openai-chat-stream-include-usage.sse").read_bytes()  # usage 12 + 100
CHAT = (DATA / "openai-chat-stream-include-usage.request.json").read_bytes()  # max_completion_tokens 100

TENANTS = """
tenants:
  defaultTier: per-user
  defaultOutputTokens: 100
  estimation: {learn: false}        # fixed estimates: 23 characters of prompt = 6 tokens
  tiers:
  - {name: per-user, limits: {tokensPerHour: %d}}
  prices:
  - {model: gpt-5-nano, inputPer1M: 0.05, outputPer1M: 0.4}
"""


def chat(tenant: str, body: bytes = CHAT) -> HttpRequest:
    return HttpRequest(path="/v1/chat/completions", body=body, headers=[("x-tenant-id", tenant)])


def sse_response() -> UpstreamResponse:
    return UpstreamResponse(headers=[("content-type", "text/event-stream")], chunks=[SSE[:300], SSE[300:]])


async def start(start_service: StartService, limit: int = 10_000) -> ServiceHarness:
    return await start_service(config=config_text(picker_extra=TENANTS % limit))


async def test_without_a_tenants_section_nothing_is_metered(start_service: StartService) -> None:
    h = await start_service()
    result = await h.exchange(chat("acme"), sse_response())
    assert result.immediate is None
    assert not any(k.startswith("x-ratelimit") for k in result.response_set_headers)
    text = await h.metrics()
    assert samples(text, "ai_tokens_total") == []
    assert samples(text, "ai_tokens_used") == []
    assert (await h.get_json("/debug/tenants")) == {"enabled": False, "tenants": []}


async def test_usage_is_settled_exactly_and_the_budget_shown(start_service: StartService) -> None:
    h = await start(start_service)
    result = await h.exchange(chat("alice"), sse_response())
    assert result.immediate is None
    headers = result.response_set_headers
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    # at admission: 10000 - (23 chars / 4 → 6 input + 100 output)
    assert headers["x-ratelimit-remaining-tokens"] == str(10_000 - 106)
    text = await h.metrics()
    assert sample(text, "ai_tokens_total", tenant="alice", model="gpt-5-nano", kind="input") == 12
    assert sample(text, "ai_tokens_total", tenant="alice", model="gpt-5-nano", kind="output") == 100
    assert sample(text, "ai_cost_total", tenant="alice", model="gpt-5-nano") == pytest.approx(
        (12 * 0.05 + 100 * 0.4) / 1e6
    )
    assert sample(text, "ai_tokens_used", tenant="alice", window="hour") == 112
    assert sample(text, "ai_tokens_limit", tenant="alice", window="hour") == 10_000
    debug = await h.get_json("/debug/tenants")
    (row,) = debug["tenants"]
    assert row["tenant"] == "alice"
    assert row["meters"]["tokensPerHour"] == {
        "limit": 10000,
        "used": 112,
        "reserved": 0,
        "remaining": 10000 - 112,
        "resetsInSeconds": row["meters"]["tokensPerHour"]["resetsInSeconds"],
    }
    assert 0 < row["meters"]["tokensPerHour"]["resetsInSeconds"] <= 3600


async def test_over_the_limit_the_client_gets_openais_429(start_service: StartService) -> None:
    h = await start(start_service, limit=250)
    first = await h.exchange(chat("bob"), sse_response())  # 112 used
    assert first.immediate is None
    second = await h.exchange(chat("bob"), sse_response())  # 112 + 106 <= 250
    assert second.immediate is None
    third = await h.exchange(chat("bob"), sse_response())  # 224 + 106 > 250
    assert third.immediate is not None
    assert third.immediate.status == 429
    error = json.loads(third.immediate.body)["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "tokens"
    assert "Limit 250, Used 224, Requested 106" in error["message"]
    assert third.immediate.headers["content-type"] == "application/json"
    assert int(third.immediate.headers["retry-after"]) >= 1
    assert third.immediate.headers["x-ratelimit-remaining-tokens"] == "26"
    other = await h.exchange(chat("carol"), sse_response())  # another user keeps its own budget
    assert other.immediate is None
    text = await h.metrics()
    assert sample(text, "picker_tenant_rejections_total", tenant="bob", reason="tokens_per_hour") == 1
    assert (
        sample(
            text,
            "inference_objective_request_error_total",
            model_name="gpt-5-nano",
            target_model_name="gpt-5-nano",
            error_code="ResourceExhausted",
        )
        == 1
    )


async def test_64_concurrent_streams_of_one_tenant_overshoot_by_at_most_one_reservation(
    start_service: StartService,
) -> None:
    """64 streams held open at once: admission stops at the limit; when they settle (each using at most
    its reservation: 5 + 100 of 6 + 100) the window ends within the limit plus one request's reservation."""
    reservation = 106
    limit = 20 * reservation + 50
    h = await start(start_service, limit=limit)
    clients = [await h.new_client() for _ in range(4)]

    async def one(i: int) -> tuple[object, str] | None:
        stream, destination = await hold(clients[i % 4], chat("swarm"))
        return (stream, destination) if destination else None

    results = await asyncio.gather(*(one(i) for i in range(64)), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, tuple)]
    assert len(admitted) == limit // reservation == 20
    debug = await h.get_json("/debug/tenants")
    assert debug["tenants"][0]["meters"]["tokensPerHour"]["reserved"] == 20 * reservation
    body = orjson.dumps(
        {"object": "chat.completion", "usage": {"prompt_tokens": 5, "completion_tokens": 100}}
    )
    await asyncio.gather(*(finish(stream, body) for stream, _ in admitted))  # type: ignore[arg-type]
    debug = await h.get_json("/debug/tenants")
    meters = debug["tenants"][0]["meters"]["tokensPerHour"]
    assert meters["reserved"] == 0
    assert meters["used"] == 20 * 105
    assert meters["used"] <= limit + reservation
    text = await h.metrics()
    assert sample(text, "picker_tenant_rejections_total", tenant="swarm", reason="tokens_per_hour") == 44


async def test_a_cancelled_stream_gives_its_reservation_back(start_service: StartService) -> None:
    h = await start(start_service)
    stream, destination = await hold(h.client, chat("dave"))
    assert destination
    debug = await h.get_json("/debug/tenants")
    assert debug["tenants"][0]["meters"]["tokensPerHour"]["reserved"] == 106
    stream.cancel()

    async def released() -> bool:
        doc = await h.get_json("/debug/tenants")
        return bool(doc["tenants"][0]["meters"]["tokensPerHour"]["reserved"] == 0)

    for _ in range(500):
        if await released():
            break
        await asyncio.sleep(0.01)
    doc = await h.get_json("/debug/tenants")
    assert doc["tenants"][0]["meters"]["tokensPerHour"] == {
        **doc["tenants"][0]["meters"]["tokensPerHour"],
        "reserved": 0,
        "used": 0,
    }
