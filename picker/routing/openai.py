"""Request-body understanding: the reference ``openai-parser`` and ``passthrough-parser``.

What this module decides, and why:

* **API by path suffix.** The caller passes the request path (``:path``, or the ``x-original-path`` /
  ``x-forwarded-path`` fallback the ext_proc adapter applies). The query string and a trailing slash are
  ignored; ``/chat/completions`` is tested before ``/completions``; anything else is treated as
  completions, as the reference does.
* **One full parse, with orjson.** Measured on our 2-core machines: a 200 KB chat body with a few long
  messages costs about 80 µs (orjson about 75 µs of it; about 140 µs with CJK text), inside the 500 µs
  budget for large bodies, so there is no "cheap scan" shortcut: a scan would find the model but could
  not reject malformed bodies, which the reference rejects with 400. The cost that does grow is per
  message: about 0.23 µs for orjson to build each message object plus about 0.23 µs for the checks, so
  a 1,000-message agent conversation of 226 KB costs about 0.48 ms. If that matters, the order checks
  (not the JSON validation) are what could be made optional. The parsed document is dropped right after
  validation; only derived values survive in :class:`RequestInfo`.
* **Body bytes are not re-serialized** unless the model changes (:func:`rewrite_model`): the reference
  always re-serializes (sorted keys, Go escaping), we forward the client's bytes untouched.
* **No prompt text is kept**: with prefix scoring on, the first ``prefix_window`` bytes of the canonical
  prompt (``prompt.py``) go to ``RequestInfo.prefix_input``, which the director hashes and clears before
  the decision leaves routing.

Validation rules (the reference's, plus type checks it lacks):

* the body must be a JSON object in UTF-8; ``model`` must be a string (empty is allowed, as in the
  reference);
* ``/completions``: ``prompt`` is a non-empty string, or a non-empty array of strings, token ids, or
  arrays of token ids;
* ``/chat/completions``: ``messages`` is a non-empty array of objects with a string ``role`` and a
  ``content`` that is a string, an array of parts, or null/absent. **Order rule**: (1) the first
  ``assistant`` message must come after at least one ``system``, ``developer`` or ``user`` message; (2) a
  ``tool`` (or legacy ``function``) message must directly follow an assistant message that has non-empty
  ``tool_calls`` (or ``function_call``), or another tool message answering the same assistant turn. Other
  role names (``ipython`` in Llama templates, for instance) are accepted and left to the model server;
* ``/responses``: ``input`` is a string or an array; ``/conversations``: ``items`` is a non-empty array;
  ``/embeddings``: ``input`` is a non-empty string or a non-empty array;
* when present and not null: ``stream`` is a boolean, ``stream_options`` an object whose
  ``include_usage`` is a boolean, ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` a
  non-negative integer, ``cache_salt`` a string.

Why one module of this size: the rules above are one parser's contract (the reference's ``openai-parser``);
the path → API decision, the per-API validation and the model rewrite (and its reverse in responses) all
key on it and change together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from picker.errors import BadRequest, Internal
from picker.routing.prompt import UNBOUNDED, hash_input, prompt_source
from picker.routing.types import (
    API_CHAT,
    API_COMPLETIONS,
    API_CONVERSATIONS,
    API_EMBEDDINGS,
    API_RESPONSES,
    RequestInfo,
)

__all__ = [
    "ModelRestorer",
    "Parser",
    "api_for_path",
    "parse_passthrough",
    "parse_request",
    "prompt_text",
    "reverse_rewrite",
    "rewrite_model",
]

#: A body parser as the director uses it: ``(path, body) -> RequestInfo``, raising BadRequest.
Parser = Callable[[str, bytes], RequestInfo]

#: Reference-compatible prefix of every JSON decoding error (integration row 8 checks only the prefix).
_UNMARSHAL = "error unmarshaling request bodyMap: "

# Tested in order: "/chat/completions" also ends with "/completions".
_SUFFIXES = (
    ("/chat/completions", API_CHAT),
    ("/completions", API_COMPLETIONS),
    ("/responses", API_RESPONSES),
    ("/conversations", API_CONVERSATIONS),
    ("/embeddings", API_EMBEDDINGS),
)

_PROMPT_ROLES = frozenset({"system", "developer", "user"})
_TOOL_ROLES = frozenset({"tool", "function"})
_MAX_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
#: Rough characters per token, used only to size token-id prompts for ``prompt_chars``.
_CHARS_PER_TOKEN = 4


def api_for_path(path: str) -> str:
    """The OpenAI API family of a request path; completions when nothing matches (reference default)."""
    end = len(path)
    for sep in ("?", "#"):
        cut = path.find(sep)
        if 0 <= cut < end:
            end = cut
    trimmed = path[:end].rstrip("/")
    for suffix, api in _SUFFIXES:
        if trimmed.endswith(suffix):
            return api
    return API_COMPLETIONS


def _load_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object or raise BadRequest with a reference-style message."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if text.startswith("str is not valid UTF-8"):
            # orjson reports every invalid byte sequence as a surrogate problem; say what it is.
            raise BadRequest(f"{_UNMARSHAL}request body is not valid UTF-8") from exc
        raise BadRequest(f"{_UNMARSHAL}{text}") from exc
    if not isinstance(doc, dict):
        raise BadRequest(f"{_UNMARSHAL}request body must be a JSON object, got {_json_type(doc)}")
    return doc


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _text_len(value: object) -> int:
    """Characters of a string, or of the text parts of a content-part array (images count zero)."""
    if isinstance(value, str):
        return len(value)
    total = 0
    if isinstance(value, list):
        for part in value:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
            elif isinstance(part, str):
                total += len(part)
    return total


def _is_token_list(value: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in value)


# --------------------------------------------------------------------------------------- per-API shapes
# Each validator checks the shape of one API's body and returns the prompt size in characters.


def _validate_completions(doc: Mapping[str, Any]) -> int:
    prompt = doc.get("prompt")
    missing = "invalid completions request: must have prompt field"
    if isinstance(prompt, str):
        if not prompt:
            raise BadRequest(missing)
        return len(prompt)
    if not isinstance(prompt, list) or not prompt:
        if prompt is None:
            raise BadRequest(missing)
        raise BadRequest(
            "invalid completions request: prompt must be a string, an array of strings, "
            "an array of token ids or an array of token-id arrays"
        )
    first = prompt[0]
    if isinstance(first, str):
        if not all(isinstance(p, str) for p in prompt):
            raise BadRequest("invalid completions request: prompt array must hold only strings")
        return sum(len(p) for p in prompt)
    if isinstance(first, list):
        if not all(isinstance(p, list) and p and _is_token_list(p) for p in prompt):
            raise BadRequest("invalid completions request: prompt token arrays must hold only integers")
        return sum(len(p) for p in prompt) * _CHARS_PER_TOKEN
    if not _is_token_list(prompt):
        raise BadRequest("invalid completions request: prompt token array must hold only integers")
    return len(prompt) * _CHARS_PER_TOKEN


def _chat_error(i: int, problem: str) -> BadRequest:
    return BadRequest(f"invalid chat completions request: messages[{i}]{problem}")


def _validate_chat(doc: Mapping[str, Any]) -> int:
    # Agent conversations reach thousands of messages, so the loop is written for speed: exact type
    # checks, no call per message for string content, the index counted by hand.
    messages = doc.get("messages")
    if messages.__class__ is not list or not messages:
        raise BadRequest("invalid chat completions request: must have valid messages field")
    prompt_roles = _PROMPT_ROLES
    tool_roles = _TOOL_ROLES
    chars = 0
    seen_prompt_role = False
    # True while we are inside the answers to an assistant turn that requested tool calls.
    tool_answers_allowed = False
    i = -1
    for message in messages:
        i += 1
        if message.__class__ is not dict:
            raise _chat_error(i, " must be an object")
        role = message.get("role")
        if role.__class__ is not str:
            raise _chat_error(i, " must have a string role")
        content = message.get("content")
        if content.__class__ is str:
            chars += len(content)
        elif content is not None:
            if content.__class__ is not list:
                raise _chat_error(i, ".content must be a string, an array of content parts or null")
            chars += _text_len(content)
        if role in prompt_roles:
            seen_prompt_role = True
            tool_answers_allowed = False
        elif role == "assistant":
            if not seen_prompt_role:
                raise _chat_error(i, ' has role "assistant" before any system, developer or user message')
            calls = message.get("tool_calls")
            if calls is not None and calls.__class__ is not list:
                raise _chat_error(i, ".tool_calls must be an array")
            tool_answers_allowed = bool(calls) or bool(message.get("function_call"))
        elif role in tool_roles:
            if not tool_answers_allowed:
                raise _chat_error(
                    i, f' has role "{role}" but does not answer an assistant message with tool_calls'
                )
        else:
            tool_answers_allowed = False
    return chars


def _validate_responses(doc: Mapping[str, Any]) -> int:
    value = doc.get("input")
    if isinstance(value, str):
        return len(value)
    if not isinstance(value, list):
        raise BadRequest("invalid responses request: must have input field (a string or an array)")
    return sum(_text_len(item.get("content") if isinstance(item, dict) else item) for item in value)


def _validate_conversations(doc: Mapping[str, Any]) -> int:
    items = doc.get("items")
    if not isinstance(items, list) or not items:
        raise BadRequest("invalid conversations request: must have items field (a non-empty array)")
    return sum(_text_len(item.get("content")) for item in items if isinstance(item, dict))


def _validate_embeddings(doc: Mapping[str, Any]) -> int:
    value = doc.get("input")
    if isinstance(value, str) and value:
        return len(value)
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return sum(len(v) for v in value)
        if _is_token_list(value):
            return len(value) * _CHARS_PER_TOKEN
        if all(isinstance(v, list) and _is_token_list(v) for v in value):
            return sum(len(v) for v in value) * _CHARS_PER_TOKEN
        raise BadRequest(
            "invalid embeddings request: input must be a string, an array of strings, "
            "an array of token ids or an array of token-id arrays"
        )
    raise BadRequest("invalid embeddings request: must have input field (non-empty)")


_VALIDATORS: Mapping[str, Callable[[Mapping[str, Any]], int]] = {
    API_COMPLETIONS: _validate_completions,
    API_CHAT: _validate_chat,
    API_RESPONSES: _validate_responses,
    API_CONVERSATIONS: _validate_conversations,
    API_EMBEDDINGS: _validate_embeddings,
}


# --------------------------------------------------------------------------------------- optional fields


def _optional_bool(doc: Mapping[str, Any], key: str, where: str = "") -> bool:
    value = doc.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"invalid request: {where}{key} must be a boolean")
    return value


def _max_tokens(doc: Mapping[str, Any]) -> int | None:
    for key in _MAX_TOKEN_FIELDS:
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequest(f"invalid request: {key} must be a non-negative integer")
        return value
    return None


def parse_request(path: str, body: bytes, *, prefix_window: int = 0) -> RequestInfo:
    """Validate an OpenAI-style request body and return what routing needs from it.

    Raises :class:`picker.errors.BadRequest` with a reference-compatible message (see the module
    docstring for the rules). With ``prefix_window`` > 0 (prefix scoring on), ``RequestInfo.prefix_input``
    holds the first ``prefix_window`` bytes of the canonical prompt (:mod:`picker.routing.prompt`: what
    the prefix index hashes) and ``cache_salt`` the request's salt; the director hashes and clears it.
    """
    api = api_for_path(path)
    doc = _load_object(body)
    model = doc.get("model")
    if not isinstance(model, str):
        raise BadRequest("model not found in request body")
    prompt_chars = _VALIDATORS[api](doc)
    stream = _optional_bool(doc, "stream")
    options = doc.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise BadRequest("invalid request: stream_options must be an object")
        include_usage = _optional_bool(options, "include_usage", "stream_options.")
    max_tokens = _max_tokens(doc)
    salt = doc.get("cache_salt")
    if salt is not None and not isinstance(salt, str):
        raise BadRequest("invalid request: cache_salt must be a string")
    return RequestInfo(
        api=api,
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        prompt_chars=prompt_chars,
        prefix_input=hash_input(api, doc, prefix_window) if prefix_window > 0 else b"",
        cache_salt=salt or "",
    )


def prompt_text(path: str, body: bytes) -> str:
    """The whole canonical prompt text of a request body (:mod:`picker.routing.prompt`), for tokenizers.

    Decodes the body again (the caller has already validated it with :func:`parse_request`); "" for
    token-id prompts and bodies that are not a JSON object.
    """
    try:
        doc = _load_object(body)
    except BadRequest:
        return ""
    source = prompt_source(api_for_path(path), doc, UNBOUNDED)
    return source if isinstance(source, str) else ""


def parse_passthrough(path: str, body: bytes) -> RequestInfo:
    """The reference ``passthrough-parser``: no parsing, no model, the body is opaque bytes."""
    return RequestInfo(api=api_for_path(path), model=None, prompt_chars=len(body))


# --------------------------------------------------------------------------------------- model rewrites


def rewrite_model(body: bytes, new_model: str) -> bytes:
    """Return ``body`` with its top-level ``model`` set to ``new_model``, as compact JSON.

    Only called when the model actually changes: otherwise the original bytes are forwarded untouched.
    Key order and raw UTF-8 are kept (orjson); unlike the reference we do not sort keys or HTML-escape.
    Integers beyond 64 bits lose precision (orjson reads them as floats; the reference's float64 decoding
    already loses integers beyond 2**53).
    """
    doc = _load_object(body)
    doc["model"] = new_model
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError as exc:  # pragma: no cover - a decoded document always re-encodes
        raise Internal(f"failed to marshal request body: {exc}") from exc


class ModelRestorer:
    """Puts the client's model name back into response bytes (reference §1.9), for one stream.

    Built once per stream because the needles are per-stream constants and every streamed chunk is
    scanned. Candidates are tried in order and the first that occurs is replaced everywhere:
    ``"model":"<target>"`` (what most servers write), ``"model": "<target>"`` (Python ``json.dumps``
    style), then, for non-ASCII names, the same two with ``\\uXXXX`` escapes. A field split across two
    streamed chunks is not rewritten.
    """

    __slots__ = ("_pairs",)

    def __init__(self, target: str, incoming: str) -> None:
        pairs: list[tuple[bytes, bytes]] = []
        if target != incoming:
            encodings = [(orjson.dumps(target), orjson.dumps(incoming))]
            ascii_pair = (json.dumps(target).encode(), json.dumps(incoming).encode())
            if ascii_pair != encodings[0]:
                encodings.append(ascii_pair)
            for t, i in encodings:
                pairs.append((b'"model":' + t, b'"model":' + i))
                pairs.append((b'"model": ' + t, b'"model": ' + i))
        self._pairs = tuple(pairs)

    @property
    def active(self) -> bool:
        """False when target and incoming are the same name: nothing will ever be replaced."""
        return bool(self._pairs)

    def __call__(self, chunk: bytes) -> bytes:
        for needle, replacement in self._pairs:
            if needle in chunk:
                return chunk.replace(needle, replacement)
        return chunk


def reverse_rewrite(chunk: bytes, target: str, incoming: str) -> bytes:
    """Put the client's model name back into a response chunk; see :class:`ModelRestorer`."""
    return ModelRestorer(target, incoming)(chunk)
