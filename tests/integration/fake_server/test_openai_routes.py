"""The fake server's OpenAI routes over real HTTP: vLLM-shaped bodies, SSE with a usage chunk, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from picker.testing.fake_server import FakeServer

pytestmark = pytest.mark.integration

OPENAI = Path(__file__).parents[2] / "data" / "openai"


def sample(name: str) -> Any:
    """A real OpenAI/vLLM body from tests/data/openai/."""
    return json.loads((OPENAI / name).read_text())


def sse_events(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [block[len("data: ") :] for block in text.split("\n\n") if block.startswith("data: ")]


async def test_completion_is_shaped_like_vllms(server: FakeServer, http: aiohttp.ClientSession) -> None:
    prompt = "What is the capital of France?" * 4  # 120 characters = 30 tokens
    async with http.post(
        f"{server.url}/v1/completions", json={"model": "acme/base-8b", "prompt": prompt, "max_tokens": 7}
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
    real = sample("vllm-completions-response.json")
    assert body.keys() == real.keys()
    assert body["choices"][0].keys() == real["choices"][0].keys()
    assert body["usage"].keys() == real["usage"].keys()
    assert body["object"] == "text_completion"
    assert body["model"] == "acme/base-8b"
    assert body["id"].startswith("cmpl-")
    assert body["usage"] == {
        "prompt_tokens": 30,
        "total_tokens": 37,
        "completion_tokens": 7,
        "prompt_tokens_details": None,
    }
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["text"].split()) == 7


async def test_chat_completion_is_shaped_like_vllms(server: FakeServer, http: aiohttp.ClientSession) -> None:
    messages = [{"role": "user", "content": "hello"}]
    async with http.post(
        f"{server.url}/v1/chat/completions", json={"model": "acme/base-8b", "messages": messages}
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    real = sample("vllm-chat-completion-response.json")
    assert body.keys() == real.keys()
    assert body["choices"][0].keys() == real["choices"][0].keys()
    assert body["choices"][0]["message"].keys() == real["choices"][0]["message"].keys()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    # no max_tokens: the server's default length, ending as if the model stopped by itself
    assert body["usage"]["completion_tokens"] == server.default_max_tokens
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("chat", [False, True])
async def test_stream_sends_one_event_per_token_then_usage_then_done(
    server: FakeServer, http: aiohttp.ClientSession, chat: bool
) -> None:
    payload: dict[str, object] = {
        "model": "acme/base-8b",
        "max_tokens": 12,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if chat:
        payload["messages"] = [{"role": "user", "content": "x" * 40}]
    else:
        payload["prompt"] = "x" * 40
    path = "/v1/chat/completions" if chat else "/v1/completions"
    async with http.post(server.url + path, json=payload) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        events = sse_events(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *tokens, usage = chunks
    if chat:
        assert tokens[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        tokens = tokens[1:]
    assert len(tokens) == 12
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 11 + ["length"]
    assert all(c["usage"] is None for c in tokens)
    assert len({c["id"] for c in chunks}) == 1
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 12
    assert usage["usage"]["prompt_tokens"] > 0
    # the usage chunk has the shape of a real one (api.openai.com recording)
    real = json.loads(sse_events((OPENAI / "openai-chat-stream-include-usage.sse").read_text())[-2])
    assert real["choices"] == usage["choices"]
    assert {"prompt_tokens", "completion_tokens", "total_tokens"} <= usage["usage"].keys() & real[
        "usage"
    ].keys()


async def test_stream_without_include_usage_has_no_usage(
    server: FakeServer, http: aiohttp.ClientSession
) -> None:
    payload = {"model": "acme/base-8b", "prompt": "hi", "max_tokens": 3, "stream": True}
    async with http.post(f"{server.url}/v1/completions", json=payload) as resp:
        events = sse_events(await resp.text())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 3
    assert all("usage" not in c for c in chunks)


async def test_a_lora_adapter_is_served_as_a_model(server: FakeServer, http: aiohttp.ClientSession) -> None:
    payload = {"model": "sql-lora", "prompt": "select", "max_tokens": 2}
    async with http.post(f"{server.url}/v1/completions", json=payload) as resp:
        assert resp.status == 200
        assert (await resp.json())["model"] == "sql-lora"


@pytest.mark.parametrize(
    ("raw", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (b"[1, 2]", 400, None, "invalid_json"),
        (b'{"prompt": "hi"}', 400, "model", "missing_required_parameter"),
        (b'{"model": "acme/base-8b"}', 400, "prompt", None),
        (
            b'{"model": "acme/base-8b", "prompt": "hi", "max_tokens": 0}',
            400,
            "max_tokens",
            "integer_below_min_value",
        ),
        (b'{"model": "gpt-4.1-nano-wrong", "prompt": "hi"}', 404, None, "model_not_found"),
    ],
)
async def test_bad_requests_get_openai_shaped_errors(  # noqa: PLR0917 - parametrized test
    server: FakeServer,
    http: aiohttp.ClientSession,
    raw: bytes,
    status: int,
    param: str | None,
    code: str | None,
) -> None:
    async with http.post(
        f"{server.url}/v1/completions", data=raw, headers={"content-type": "application/json"}
    ) as resp:
        assert resp.status == status
        body = await resp.json()
    real = sample("openai-error-404-model-not-found.json")
    assert body.keys() == real.keys()
    assert body["error"].keys() == real["error"].keys()
    assert body["error"]["param"] == param
    assert body["error"]["code"] == code
    assert body["error"]["message"]


async def test_chat_without_messages_is_a_400(server: FakeServer, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{server.url}/v1/chat/completions", json={"model": "acme/base-8b"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "messages"


async def test_a_prompt_over_the_context_length_is_refused_like_vllm(
    server: FakeServer, http: aiohttp.ClientSession
) -> None:
    payload = {"model": "acme/base-8b", "prompt": "x" * 40_000, "max_tokens": 10}  # 10,000 tokens > 8192
    async with http.post(f"{server.url}/v1/completions", json=payload) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert "maximum context length is 8192 tokens" in body["error"]["message"]
    assert server.snapshot().requests_total == 0


async def test_models_lists_base_models_and_adapters(server: FakeServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.url}/v1/models") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["object"] == "list"
    assert [(m["id"], m["parent"], m["owned_by"]) for m in body["data"]] == [
        ("acme/base-8b", None, "vllm"),
        ("sql-lora", "acme/base-8b", "vllm"),
    ]


async def test_health_is_200_with_an_empty_body(server: FakeServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.url}/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    assert server.served["health"] == 1


async def test_unknown_paths_and_wrong_methods(server: FakeServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.url}/v1/nope") as resp:
        assert resp.status == 404
    async with http.get(f"{server.url}/v1/completions") as resp:
        assert resp.status == 405
        assert resp.headers["allow"] == "POST"
    async with http.post(f"{server.url}/metrics") as resp:
        assert resp.status == 405


async def test_a_token_id_prompt_counts_its_ids(server: FakeServer, http: aiohttp.ClientSession) -> None:
    payload = {"model": "acme/base-8b", "prompt": list(range(57)), "max_tokens": 1}
    async with http.post(f"{server.url}/v1/completions", json=payload) as resp:
        assert (await resp.json())["usage"]["prompt_tokens"] == 57
