"""The canonical prompt of an OpenAI-style request: what the prefix index hashes and a tokenizer counts.

The reference EPP hashes, per API (``gie-epp.md`` §3.6): completions → the prompt (an array joined by
single spaces); chat → the JSON of ``messages``; responses → the JSON of instructions, tools and input;
conversations → the JSON of the items; embeddings → the JSON of the input. What matters for prefix
caching is that two requests sharing a prompt prefix share the leading bytes, and that requests
differing early differ early. Here, from the document the parser already decoded for validation:

* **chat**: the ``tools`` first (each as compact JSON: they sit at the top of the rendered prompt, and
  agents with large tool lists otherwise miss — reference issue #2218, which hashes messages only), then
  per message ``role\\n``, its name, its content (text parts, and the URL or data of image, audio and file
  parts), its tool calls as JSON and its ``tool_call_id``, each followed by a newline;
* **responses**: ``instructions``, ``tools``, then the input (a string, or items as for chat);
* **conversations**: the items as for chat; **completions**: the prompt, an array of strings joined by
  single spaces; **embeddings**: the input, strings joined by newlines;
* token-id prompts (completions, embeddings): the ids as little-endian 32-bit words, so 16 tokens make
  one 64-byte block — the block then holds exactly ``blockSizeTokens`` tokens; several token-id prompts
  in one request are not hashed (no single prefix).

**Bounded work.** The prefix index only uses the first ``window`` bytes (``maxPrefixBlocksToMatch`` x
``blockSizeTokens`` x 4, 16 KB by default), so the text is assembled only until it is that long: a
200 KB prompt costs the same as a 16 KB one, and nothing re-serializes the whole messages array (the
reference does). No second decode: the values come from the parser's one ``orjson`` decode, which
validation needs anyway (see ``openai.py``). The text never outlives the request: the director hashes it
and drops it; it is never logged.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping
from typing import Any, Final

import orjson

from picker.routing.types import API_CHAT, API_COMPLETIONS, API_CONVERSATIONS, API_EMBEDDINGS, API_RESPONSES

__all__ = ["UNBOUNDED", "hash_input", "prompt_source"]

#: ``limit`` meaning "the whole prompt" (tokenizers count all of it)
UNBOUNDED: Final = 1 << 62
#: keys of non-text content parts whose payload identifies them (OpenAI chat and responses shapes)
_PART_PAYLOADS: Final = ("image_url", "input_audio", "file", "video_url", "input_image", "input_file")
_PAYLOAD_KEYS: Final = ("url", "data", "file_data", "file_id", "image_url", "file_url")


class _Text:
    """Parts of the canonical text, collected until ``limit`` characters (a lower bound of the bytes)."""

    __slots__ = ("left", "parts")

    def __init__(self, limit: int) -> None:
        self.parts: list[str] = []
        self.left = limit

    @property
    def full(self) -> bool:
        return self.left <= 0

    def add(self, text: str) -> None:
        if self.left > 0 and text:
            piece = text if len(text) <= self.left else text[: self.left]
            self.parts.append(piece)
            self.left -= len(piece)

    def json(self, value: object) -> None:
        if self.left > 0:
            try:
                self.add(orjson.dumps(value).decode())
            except orjson.JSONEncodeError:  # pragma: no cover - a decoded document always re-encodes
                return

    def text(self) -> str:
        return "".join(self.parts)


def _part(out: _Text, part: object) -> None:
    """One content part: its text, or the payload of an image / audio / file part."""
    if isinstance(part, str):
        out.add(part)
        return
    if not isinstance(part, dict):
        return
    text = part.get("text")
    if isinstance(text, str):
        out.add(text)
        return
    for key in _PART_PAYLOADS:
        payload = part.get(key)
        if isinstance(payload, str):
            out.add(payload)
            return
        if isinstance(payload, dict):
            for inner in _PAYLOAD_KEYS:
                value = payload.get(inner)
                if isinstance(value, str):
                    out.add(value)
                    return
    kind = part.get("type")
    if isinstance(kind, str):
        out.add(kind)


def _content(out: _Text, content: object) -> None:
    if isinstance(content, str):
        out.add(content)
    elif isinstance(content, list):
        for part in content:
            if out.full:
                return
            _part(out, part)


def _messages(out: _Text, items: object) -> None:
    """Chat messages, or responses / conversations items (the same fields where they exist)."""
    if not isinstance(items, list):
        return
    for item in items:
        if out.full:
            return
        if not isinstance(item, dict):
            _content(out, item)
            out.add("\n")
            continue
        role = item.get("role")
        out.add(role if isinstance(role, str) else str(item.get("type", "")))
        out.add("\n")
        name = item.get("name")
        if isinstance(name, str):
            out.add(name)
            out.add("\n")
        _content(out, item.get("content"))
        out.add("\n")
        calls = item.get("tool_calls")
        if calls:
            out.json(calls)
            out.add("\n")
        call_id = item.get("tool_call_id")
        if isinstance(call_id, str):
            out.add(call_id)
            out.add("\n")


def _tools(out: _Text, tools: object) -> None:
    if isinstance(tools, list):
        for tool in tools:
            if out.full:
                return
            out.json(tool)
            out.add("\n")


def _strings_or_tokens(value: object, sep: str, out: _Text) -> list[int] | None:
    """A string or an array of strings (joined by ``sep``): added, None. One token-id array: returned.
    Several token-id arrays (no single prefix): []."""
    if isinstance(value, str):
        out.add(value)
        return None
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, str):
            for i, s in enumerate(value):
                if out.full:
                    break
                if i:
                    out.add(sep)
                if isinstance(s, str):
                    out.add(s)
            return None
        if isinstance(first, int):
            return value
    return []


def prompt_source(api: str, doc: Mapping[str, Any], limit: int) -> str | list[int]:
    """The canonical prompt of a validated request: text (at least ``limit`` characters when the prompt is
    that long; the caller cuts) or token ids ([] when there is nothing to hash)."""
    out = _Text(limit)
    if api == API_CHAT:
        _tools(out, doc.get("tools"))
        _messages(out, doc.get("messages"))
    elif api == API_COMPLETIONS:
        tokens = _strings_or_tokens(doc.get("prompt"), " ", out)
        if tokens is not None:
            return tokens
    elif api == API_RESPONSES:
        instructions = doc.get("instructions")
        if isinstance(instructions, str):
            out.add(instructions)
            out.add("\n")
        _tools(out, doc.get("tools"))
        value = doc.get("input")
        if isinstance(value, str):
            out.add(value)
        else:
            _messages(out, value)
    elif api == API_CONVERSATIONS:
        _messages(out, doc.get("items"))
    elif api == API_EMBEDDINGS:
        tokens = _strings_or_tokens(doc.get("input"), "\n", out)
        if tokens is not None:
            return tokens
    return out.text()


def hash_input(api: str, doc: Mapping[str, Any], window: int) -> bytes:
    """The first ``window`` bytes of the canonical prompt (UTF-8, or token ids as 32-bit words)."""
    source = prompt_source(api, doc, window)
    if isinstance(source, str):
        return source.encode("utf-8", "surrogatepass")[:window]
    tokens = source[: -(-window // 4)]
    if not tokens or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        return b""
    words = array("I", (t & 0xFFFFFFFF for t in tokens))
    if sys.byteorder != "little":
        words.byteswap()
    return words.tobytes()[:window]
