"""What one benchmark stream sends: the chat body, the SSE response, the prebuilt messages."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
SMALL_BODY = 1024
LARGE_BODY = 200 * 1024
#: what one stream is: the four-phase exchange of the reference setup, or header-only mode's one message
FULL, HEADER_ONLY = "full", "header_only"
#: header-only mode's model header (Envoy AI Gateway's) and the model every stream names
MODEL_HEADER = "x-ai-eg-model"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
#: the prompt-token estimate a header-only stream carries (about a 1 KB prompt)
PROMPT_TOKENS = "256"


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def chat_body(size: int) -> bytes:
    """A chat-completions body of about ``size`` bytes (one long user message), streaming with usage."""
    head = (
        b'{"model":"meta-llama/Llama-3.1-8B-Instruct","stream":true,"stream_options":{"include_usage":true},'
    )
    head += b'"max_tokens":64,"messages":[{"role":"system","content":"You are a helpful assistant."},'
    head += b'{"role":"user","content":"'
    tail = b'"}]}'
    filler = (b"The quick brown fox jumps over the lazy dog. " * (size // 45 + 1))[
        : max(0, size - len(head) - len(tail))
    ]
    return head + filler + tail


SSE_BODY = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"meta-llama/Llama-3.1-8B-'
    b'Instruct","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"meta-llama/Llama-3.1-8B-'
    b'Instruct","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"meta-llama/Llama-3.1-8B-'
    b'Instruct","choices":[],"usage":{"prompt_tokens":212,"completion_tokens":2,"total_tokens":214}}\n\n'
    b"data: [DONE]\n\n"
)


@dataclass
class Workload:
    """Prebuilt messages of one stream shape (built once per load process, reused for every stream)."""

    request: list[Any]
    response: list[Any]

    @classmethod
    def build(cls, body_bytes: int, shape: str = FULL) -> Workload:
        """``shape`` FULL: request headers, the body, response headers, an SSE body (``request_body_mode``
        FULL_DUPLEX_STREAMED); HEADER_ONLY: the request headers alone, with the model header and the
        prompt-token estimate a gateway in front of header-only mode sets (``request_body_mode: NONE``)."""
        from picker.testing.envoy import HttpRequest, response_body, response_headers

        extra = [
            ("content-length", str(len(chat_body(body_bytes)))),
            ("user-agent", "OpenAI/Python 1.54.0"),
            ("accept", "application/json"),
            ("x-forwarded-proto", "http"),
            (MODEL_HEADER, MODEL),
        ]
        if shape == HEADER_ONLY:
            extra.append(("x-picker-prompt-tokens", PROMPT_TOKENS))
        request = HttpRequest(
            path="/v1/chat/completions",
            body=chat_body(body_bytes),
            authority="inference-gateway.example.com",
            request_id="6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",
            headers=extra,
        ).messages(send_body=shape != HEADER_ONLY)
        if shape == HEADER_ONLY:
            return cls(request, [])
        response = [
            response_headers([(":status", "200"), ("content-type", "text/event-stream; charset=utf-8")]),
            response_body(SSE_BODY, end_of_stream=True),
        ]
        return cls(request, response)
