"""Token usage from model-server responses: whole JSON bodies and Server-Sent Events streams.

Only numbers leave this module; response text is never logged or kept.

* **JSON bodies** (:func:`usage_from_json`): the top-level ``usage`` object sits at the end of every
  OpenAI-style response (chat, completions, embeddings, responses), so we look for the last ``"usage":``
  key with ``bytes.rfind`` and decode only that object. A 1 MB embeddings response costs a few
  microseconds instead of a full parse. Inside a JSON string a quote is always escaped, so an unescaped
  ``"usage"`` followed by ``:`` can only be a key. Unlike the reference, a body that is not valid JSON as
  a whole may still yield its usage; it is forwarded unchanged either way.
* **SSE streams** (:class:`SSEUsageScanner`): the usage is in the last events of every OpenAI-style
  stream, so chunks are only kept (by reference, the last 64 KiB) and scanned once at the end the same
  way. That is cheap per streamed token, finds usage split across chunks (the reference misses it),
  skips ``"usage":null`` (sent on every chunk when ``include_usage`` is on) and ``[DONE]``, and takes
  the **last** usage, which is right for vLLM's continuous usage stats (a growing total on every chunk;
  the reference keeps the first) and for the Responses API's ``response.completed`` event.
* Field names: ``prompt_tokens``/``completion_tokens`` (chat, completions) or ``input_tokens``/
  ``output_tokens`` (responses, conversations); cached prompt tokens from OpenAI's
  ``prompt_tokens_details``, the reference's misspelled ``prompt_token_details``, or the Responses API's
  ``input_tokens_details``.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "SSE_TAIL_BYTES",
    "DeferredUsage",
    "SSEUsageScanner",
    "Usage",
    "UsageReport",
    "usage_from_json",
    "usage_from_mapping",
]


@dataclass(slots=True)
class Usage:
    """Token counts of one response. Zero means "not reported". Read-only by convention: not ``frozen``
    because that costs about 1 µs per construction, and every streamed response builds one."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class DeferredUsage:
    """The usage of a finished stream, read from its kept tail when first asked for.

    Why: the stream ends between two gRPC messages, with caches the gRPC stack has cooled, where the scan
    and decode cost about 12 µs; the metrics read it later in a batch (``picker.telemetry``), warm. The
    counts are those :func:`usage_from_json` rules give, and all zero when the tail reports none.
    """

    __slots__ = ("_skip_null", "_tail", "_usage")

    def __init__(self, tail: bytes, *, skip_null: bool) -> None:
        self._tail = tail
        self._skip_null = skip_null
        self._usage: Usage | None = None

    def resolve(self) -> Usage | None:
        """The usage reported, or None; scanned once, then the tail is dropped."""
        if self._tail:
            self._usage = _last_usage(self._tail, skip_null=self._skip_null)
            self._tail = b""
        return self._usage

    def _counts(self) -> Usage:
        return self.resolve() or _NO_USAGE

    @property
    def prompt_tokens(self) -> int:
        return self._counts().prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._counts().completion_tokens

    @property
    def total_tokens(self) -> int:
        return self._counts().total_tokens

    @property
    def cached_tokens(self) -> int:
        return self._counts().cached_tokens


_NO_USAGE = Usage()

#: what a finished response reports: a :class:`Usage`, or a :class:`DeferredUsage` read when needed
UsageReport = Usage | DeferredUsage


def _int(value: object) -> int:
    # type() rather than isinstance(): bool is an int subclass and must not count
    return value if type(value) is int and value > 0 else 0


_DETAIL_KEYS = ("prompt_tokens_details", "prompt_token_details", "input_tokens_details")


def usage_from_mapping(usage: Mapping[str, Any]) -> Usage:
    """Read a ``usage`` object in either naming scheme."""
    get = usage.get
    prompt = _int(get("prompt_tokens")) or _int(get("input_tokens"))
    completion = _int(get("completion_tokens")) or _int(get("output_tokens"))
    total = _int(get("total_tokens")) or prompt + completion
    cached = 0
    for key in _DETAIL_KEYS:
        details = get(key)
        if details.__class__ is dict:
            cached = _int(details.get("cached_tokens"))
            if cached:
                break
    return Usage(prompt, completion, total, cached)


_USAGE_KEY = b'"usage"'
_WHITESPACE = re.compile(rb"[ \t\r\n]*+")
_WS_BYTES = frozenset(b" \t\r\n")
#: A usage object is a few hundred bytes; one larger than this is not read (bounded work per object).
_MAX_USAGE_OBJECT = 16 * 1024
#: Nesting allowed inside a usage object (``usage`` → ``*_details`` → value is 2): deeper is not a usage
#: object, and is never handed to a decoder (a deep document is how decoders are made to recurse).
_MAX_USAGE_DEPTH = 8
#: ``"usage": {`` candidates whose object does not decode before the scan gives up: a stream repeating
#: ``"usage":{{`` must not cost one object scan per repetition. Real streams succeed on the first
#: candidate that has an object (the last usage is the one wanted).
_MAX_CANDIDATES = 8
#: JSON structure that matters for finding an object's end: strings (and their escapes) and brackets
_STRUCTURE = re.compile(rb'["\\{}\[\]]')


def _object_end(data: bytes, start: int) -> int:
    """The end of the ``{...}`` object starting at ``start``, or -1 when it is not closed within
    :data:`_MAX_USAGE_OBJECT` bytes or nests deeper than :data:`_MAX_USAGE_DEPTH`.

    One pass over the structural characters (quotes, backslashes, brackets), string-aware, so the cost is
    linear in the bytes looked at and never more than the object bound. Brackets are counted, not
    matched: the decoder validates the slice.
    """
    limit = min(len(data), start + _MAX_USAGE_OBJECT)
    depth = 0
    in_string = False
    skip = -1  # the position after a backslash inside a string: an escaped character
    for m in _STRUCTURE.finditer(data, start, limit):
        at = m.start()
        if at == skip:
            continue
        c = data[at]
        if in_string:
            if c == 0x5C:  # backslash
                skip = at + 1
            elif c == 0x22:  # quote
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x7B, 0x5B):  # { [
            depth += 1
            if depth > _MAX_USAGE_DEPTH:
                return -1
        elif c in (0x7D, 0x5D):  # } ]
            depth -= 1
            if depth == 0:
                return at + 1
        else:  # a backslash outside a string: not JSON
            return -1
    return -1


#: closing braces tried by the quick count before the exact scan (a usage object nests at most 2 levels)
_QUICK_BRACES = 3


def _quick_end(data: bytes, start: int, limit: int) -> int:
    """The end of the object at ``start`` by counting braces up to each of the first few ``}`` (strings
    are not considered; the decoder rejects a wrong slice), or -1. Bounded: a few ``find``/``count``
    passes over at most :data:`_MAX_USAGE_OBJECT` bytes."""
    end = start
    for _ in range(_QUICK_BRACES):
        end = data.find(b"}", end + 1, limit)
        if end < 0:
            return -1
        if data.count(b"{", start, end) == data.count(b"}", start, end + 1):
            return end + 1
    return -1


def _decode_object(data: bytes, start: int) -> Any:
    """The JSON object starting at ``start`` (a ``{``), or None when it is not one, is too large or too
    deep. orjson accepts a slice only if it is exactly one JSON value, so a success is that object.

    Fast path (almost every response): the brace count of :func:`_quick_end` and orjson. Otherwise the
    exact, string-aware and depth-limited :func:`_object_end`, then the standard decoder on that bounded,
    shallow slice for what orjson refuses but Python servers write (``NaN``).
    """
    limit = min(len(data), start + _MAX_USAGE_OBJECT)
    quick = _quick_end(data, start, limit)
    if quick > 0:
        try:
            return orjson.loads(data[start:quick])
        except orjson.JSONDecodeError:
            pass
    end = _object_end(data, start)
    if end < 0:
        return None
    piece = data[start:end]
    if end != quick:
        try:
            return orjson.loads(piece)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(piece.decode("utf-8", "replace"))
    except ValueError:
        return None


def _last_usage(data: bytes, *, skip_null: bool) -> Usage | None:
    """The last ``"usage": {...}`` object in ``data``. ``skip_null``: a ``"usage": null`` keeps looking
    further back (streams send null on every chunk but the last); otherwise it means "none reported".

    Linear and bounded: ``rfind`` visits each byte once, whitespace is skipped by one regex match per
    candidate, and at most :data:`_MAX_CANDIDATES` objects of at most :data:`_MAX_USAGE_OBJECT` bytes are
    scanned. Never raises: a usage object that does not decode means "no usage".
    """
    end = len(data)
    n = len(data)
    candidates = 0
    while True:
        pos = data.rfind(_USAGE_KEY, 0, end)
        if pos < 0:
            return None
        end = pos
        if pos > 0 and data[pos - 1] == 0x5C:  # an escaped quote: text inside a string, not a key
            continue
        value_at = pos + len(_USAGE_KEY)
        if value_at < n and data[value_at] in _WS_BYTES:
            value_at = _WHITESPACE.match(data, value_at).end()  # type: ignore[union-attr]
        if value_at >= n or data[value_at] != 0x3A:  # ':'
            continue
        value_at += 1
        if value_at < n and data[value_at] in _WS_BYTES:
            value_at = _WHITESPACE.match(data, value_at).end()  # type: ignore[union-attr]
        if value_at >= n or data[value_at] != 0x7B:  # '{'
            if skip_null:
                continue
            return None
        obj = _decode_object(data, value_at)
        if obj is None:
            candidates += 1
            if skip_null and candidates < _MAX_CANDIDATES:
                continue  # e.g. the object is cut by the start of the kept tail; look further back
            return None
        if isinstance(obj, dict):
            return usage_from_mapping(obj)
        return None


def usage_from_json(body: bytes) -> Usage | None:
    """The usage of a complete (non-streamed) JSON response, or None when it has none."""
    return _last_usage(body, skip_null=False)


#: Bytes of a stream's end kept for the usage scan: the final usage event of any OpenAI-style stream
#: (chat/completions usage chunk, Responses API ``response.completed``) ends well within it.
SSE_TAIL_BYTES = 64 * 1024


class SSEUsageScanner:
    """Usage of a Server-Sent Events response, read from the stream's tail at the end.

    Every OpenAI-style stream reports usage in its last events (the ``include_usage`` chunk before
    ``[DONE]``, the cumulative usage of the last chunk with vLLM's continuous stats, the Responses API's
    ``response.completed``), so :meth:`feed` only keeps references to the last ``SSE_TAIL_BYTES`` of
    chunks (no copy, no per-chunk parsing: this runs for every streamed token) and :meth:`finish` looks
    for the last ``"usage": {...}`` object in them once. A usage event split across chunks is found as
    long as it lies in the tail; ``"usage": null`` entries and escaped text are skipped. A chunk larger
    than the tail is kept as a copy of its tail: a reference would hold the whole chunk (up to the largest
    message gRPC accepts, or a flushed buffered body) for as long as the stream lives.
    """

    __slots__ = ("_chunks", "_json_body", "_size")

    def __init__(self, *, json_body: bool = False) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        #: the tail of one JSON document rather than events: a top-level ``"usage": null`` is final
        self._json_body = json_body

    def feed(self, chunk: bytes) -> None:
        """Keep one response chunk (any split: mid-line, mid-event, several events)."""
        if len(chunk) > SSE_TAIL_BYTES:
            chunk = chunk[-SSE_TAIL_BYTES:]
        chunks = self._chunks
        chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(chunks[0]) >= SSE_TAIL_BYTES:
            self._size -= len(chunks.popleft())

    def finish(self) -> Usage | None:
        """End of stream: the last usage reported, or None."""
        deferred = self.finish_deferred()
        return deferred.resolve() if deferred is not None else None

    def finish_deferred(self) -> DeferredUsage | None:
        """End of stream, the scan left for later (:class:`DeferredUsage`); None when nothing came."""
        chunks = self._chunks
        if not chunks:
            return None
        tail = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = deque()
        self._size = 0
        return DeferredUsage(tail, skip_null=not self._json_body)
