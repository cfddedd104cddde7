"""OpenAI-compatible request parsing and response bodies for the fake model server.

Shapes follow what vLLM returns (``tests/data/openai/``): ``id``/``object``/``created``/``model`` (the
request's model)/``choices``/``usage`` with ``prompt_tokens_details: null``; streams send one ``data:`` event
per output token, a usage-only chunk (``choices: []``) when ``stream_options.include_usage`` is true, then
``data: [DONE]``. Errors use the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``
(``tests/data/openai/openai-error-404-model-not-found.json``), which the EPP's response parser must tolerate.

Token counts are estimates (no tokenizer): a prompt is ``ceil(characters / 4)`` tokens, the usual rule of
thumb for English text. Output text is made of words from a small fixed list, one word per token.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

CHARS_PER_TOKEN = 4

_WORDS = (
    " the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", " while", " seven",
    " tired", " engines", " route", " every", " request", " to", " whichever", " replica", " has", " room",
    " left", " in", " its", " cache", " and", " the", " queue", " stays", " short",
)  # fmt: skip


class OpenAIError(Exception):
    """A request the server refuses: HTTP status plus an OpenAI-shaped error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> bytes:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return error_body(self.message, kind, self.param, self.code)

    @property
    def message(self) -> str:
        return str(self.args[0])


def error_body(message: str, kind: str, param: str | None, code: str | int | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


@dataclass(frozen=True, slots=True)
class CompletionCall:
    """What the fake needs from a ``/v1/completions`` or ``/v1/chat/completions`` body."""

    chat: bool
    model: str
    #: the prompt as one string (chat: each message's role and content), for token estimates and prefix hashes
    prompt: str
    #: set when the prompt came as token ids
    prompt_token_ids: int | None
    max_tokens: int | None
    stream: bool
    include_usage: bool

    @property
    def prompt_tokens(self) -> int:
        if self.prompt_token_ids is not None:
            return max(1, self.prompt_token_ids)
        return max(1, -(-len(self.prompt) // CHARS_PER_TOKEN))


def _message_text(message: Any) -> str:
    if not isinstance(message, dict):
        raise OpenAIError(400, "each message must be an object", param="messages", code="invalid_type")
    content = message.get("content")
    if isinstance(content, list):
        # multi-part content: only the text parts count towards the prompt
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    elif content is None:
        content = ""
    elif not isinstance(content, str):
        raise OpenAIError(400, "message content must be a string or a list of parts", param="messages")
    return f"{message.get('role', '')}\n{content}\n"


def parse_call(raw: bytes, *, chat: bool) -> CompletionCall:
    """Validate a request body; :class:`OpenAIError` (400) names the offending parameter."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise OpenAIError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(
            400, "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    token_ids: int | None = None
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError(
                400,
                "'messages' must be a non-empty array",
                param="messages",
                code="missing_required_parameter",
            )
        prompt = "".join(_message_text(m) for m in messages)
    else:
        value = body.get("prompt")
        if isinstance(value, str):
            prompt = value
        elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            prompt, token_ids = "", len(value)
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            prompt = "".join(value)  # a batch of prompts is served as one (one choice)
        else:
            raise OpenAIError(
                400, "'prompt' must be a string, a list of strings or a list of token ids", param="prompt"
            )
    limit_name = (
        "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    )
    limit = body.get(limit_name)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise OpenAIError(
            400,
            f"Invalid '{limit_name}': expected an integer >= 1, got {limit!r}.",
            param=limit_name,
            code="integer_below_min_value",
        )
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return CompletionCall(chat, model, prompt, token_ids, limit, stream, include_usage)


def prefix_hashes(text: str, block_chars: int) -> tuple[int, ...]:
    """Chained hashes of the text's full blocks of ``block_chars`` characters (a KV block's worth of prompt):
    equal prefixes give equal leading hashes, which the load model's prefix cache matches."""
    out: list[int] = []
    h = 0
    data = text.encode("utf-8", "surrogatepass")
    for start in range(0, len(data) - block_chars + 1, block_chars):
        h = zlib.crc32(data[start : start + block_chars], h)  # seeded with the previous block's hash
        out.append(h)
    return tuple(out)


def token_text(request_no: int, index: int) -> str:
    return _WORDS[(request_no + index) % len(_WORDS)]


def output_text(request_no: int, tokens: int) -> str:
    return "".join(token_text(request_no, i) for i in range(tokens))


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


@dataclass(frozen=True, slots=True)
class ResponseIdentity:
    """The fields every body of one response shares."""

    id: str
    created: int
    model: str


def completion_body(
    call: CompletionCall, ident: ResponseIdentity, request_no: int, tokens: int, finish_reason: str
) -> bytes:
    """The non-streaming response once ``tokens`` tokens were generated."""
    text = output_text(request_no, tokens)
    total = usage(call.prompt_tokens, tokens)
    if call.chat:
        return orjson.dumps(
            {
                "id": ident.id,
                "object": "chat.completion",
                "created": ident.created,
                "model": ident.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "reasoning_content": None,
                            "content": text,
                            "tool_calls": [],
                        },
                        "logprobs": None,
                        "finish_reason": finish_reason,
                        "stop_reason": None,
                    }
                ],
                "usage": total,
                "prompt_logprobs": None,
                "kv_transfer_params": None,
            }
        )
    return orjson.dumps(
        {
            "id": ident.id,
            "object": "text_completion",
            "created": ident.created,
            "model": ident.model,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    "stop_reason": None,
                    "prompt_logprobs": None,
                }
            ],
            "usage": total,
        }
    )


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def stream_start(call: CompletionCall, ident: ResponseIdentity) -> bytes:
    """What a stream sends before any token: chat announces the assistant role; completions send nothing."""
    if not call.chat:
        return b""
    chunk: dict[str, Any] = {
        "id": ident.id,
        "object": "chat.completion.chunk",
        "created": ident.created,
        "model": ident.model,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    if call.include_usage:
        chunk["usage"] = None
    return _event(chunk)


def stream_token(
    call: CompletionCall, ident: ResponseIdentity, request_no: int, index: int, finish_reason: str | None
) -> bytes:
    """The event for output token ``index``; the last one carries the finish reason."""
    text = token_text(request_no, index)
    choice: dict[str, Any]
    if call.chat:
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    if finish_reason is not None:
        choice["stop_reason"] = None
    chunk: dict[str, Any] = {
        "id": ident.id,
        "object": obj,
        "created": ident.created,
        "model": ident.model,
        "choices": [choice],
    }
    if call.include_usage:
        chunk["usage"] = None
    return _event(chunk)


def stream_end(call: CompletionCall, ident: ResponseIdentity, tokens: int) -> bytes:
    """The usage chunk (when asked for) and ``[DONE]``."""
    tail = b"data: [DONE]\n\n"
    if not call.include_usage:
        return tail
    chunk: dict[str, Any] = {
        "id": ident.id,
        "object": "chat.completion.chunk" if call.chat else "text_completion",
        "created": ident.created,
        "model": ident.model,
        "choices": [],
        "usage": usage(call.prompt_tokens, tokens),
    }
    return _event(chunk) + tail


def models_body(
    models: list[tuple[str, str | None]], *, owned_by: str, created: int, max_model_len: int
) -> bytes:
    """``/v1/models`` as vLLM lists base models and LoRA adapters: (id, parent or None)."""
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": owned_by,
            "root": name,
            "parent": parent,
            "max_model_len": max_model_len,
        }
        for name, parent in models
    ]
    return orjson.dumps({"object": "list", "data": data})
