"""Readable builders of every ``ProcessingResponse`` the EPP sends (reference §1.5, §1.6, §1.9, §1.10),
through the protobuf API: the oracle :mod:`picker.extproc.wire` is checked against
(``tests/unit/extproc/test_wire.py``) and a source of replies for testing the Envoy-like client. Not used
by the service: the stream sends the same replies as wire bytes, built several times cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeAlias

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from picker.extproc.protocol import (
    CONFORMANCE_SERVED_HEADER,
    CONTENT_LENGTH_HEADER,
    DESTINATION_KEY,
    LB_NAMESPACE,
    MAX_CHUNK_BYTES,
    RESPONSE_MARKER_HEADER,
)

__all__ = [
    "EMPTY_REQUEST_BODY_EOS",
    "EMPTY_RESPONSE_BODY_EOS",
    "HEADER_ONLY_MODE",
    "REQUEST_TRAILERS_REPLY",
    "RESPONSE_TRAILERS_REPLY",
    "SKIP_RESPONSE_BODY_MODE",
    "SKIP_RESPONSE_MODE",
    "Reply",
    "immediate_response",
    "message_timeout_override",
    "request_body_replies",
    "request_headers_reply",
    "response_body_replies",
    "response_body_reply",
    "response_headers_reply",
]

#: A ``ProcessingResponse`` (typed by the stubs in ``typings/``).
Reply: TypeAlias = pb.ProcessingResponse
ProcessingResponse = pb.ProcessingResponse

_HeaderValueOption = base_pb2.HeaderValueOption
_ProcessingMode = processing_mode_pb2.ProcessingMode

#: ``mode_override`` telling the proxy to skip the response phases. Needs ``allow_mode_override: true``
#: in Envoy's ext_proc filter config; a proxy that ignores it still sends the response, which we handle.
SKIP_RESPONSE_MODE = _ProcessingMode(
    response_header_mode=_ProcessingMode.SKIP,
    response_body_mode=_ProcessingMode.NONE,
    response_trailer_mode=_ProcessingMode.SKIP,
)
#: ``mode_override`` keeping the response headers but skipping the body and trailers: what passive health
#: needs (the status) at one message instead of two to four.
SKIP_RESPONSE_BODY_MODE = _ProcessingMode(
    response_header_mode=_ProcessingMode.SEND,
    response_body_mode=_ProcessingMode.NONE,
    response_trailer_mode=_ProcessingMode.SKIP,
)

#: ``mode_override`` of header-only mode: nothing after the request headers (no request body or
#: trailers, no response phase). The proxy should be configured with ``request_body_mode: NONE`` already
#: (a body mode cannot be lowered from FULL_DUPLEX_STREAMED by an override); this skips the response
#: phases of a proxy that processes them, when it allows overrides.
HEADER_ONLY_MODE = _ProcessingMode(
    request_body_mode=_ProcessingMode.NONE,
    request_trailer_mode=_ProcessingMode.SKIP,
    response_header_mode=_ProcessingMode.SKIP,
    response_body_mode=_ProcessingMode.NONE,
    response_trailer_mode=_ProcessingMode.SKIP,
)

_MARKER = _HeaderValueOption()
_MARKER.header.key = RESPONSE_MARKER_HEADER
_MARKER.header.raw_value = b"true"


def _set_headers(
    target: RepeatedCompositeFieldContainer[base_pb2.HeaderValueOption], headers: Iterable[tuple[str, bytes]]
) -> None:
    add = target.add
    for key, value in headers:
        header = add().header
        header.key = key
        header.raw_value = value


def request_headers_reply(
    destination: str,
    echo: Iterable[tuple[str, bytes]],
    content_length: int | None,
    *,
    mode_override: processing_mode_pb2.ProcessingMode | None = None,
) -> Reply:
    """The request-headers reply of a routed request (§1.5).

    ``clear_route_cache`` so the proxy re-evaluates routing with the destination header; the destination
    both as a header and as ``dynamic_metadata["envoy.lb"]`` (the same string); ``Content-Length`` when
    the forwarded body is non-empty; ``echo`` = the non-system request headers, already filtered.
    """
    reply = ProcessingResponse()
    common = reply.request_headers.response
    common.clear_route_cache = True
    set_headers = common.header_mutation.set_headers
    header = set_headers.add().header
    header.key = DESTINATION_KEY
    header.raw_value = destination.encode()
    if content_length:
        header = set_headers.add().header
        header.key = CONTENT_LENGTH_HEADER
        header.raw_value = str(content_length).encode()
    _set_headers(set_headers, echo)
    fields = reply.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields
    fields[DESTINATION_KEY].string_value = destination
    if mode_override is not None:
        reply.mode_override.CopyFrom(mode_override)
    return reply


def response_headers_reply(
    echo: Iterable[tuple[str, bytes]],
    *,
    served_endpoint: str | None = None,
    remove_content_length: bool = False,
) -> Reply:
    """The response-headers reply (§1.9): the debug marker, the echoed non-system response headers, and
    the conformance verifier's header when enabled. No ``clear_route_cache`` on the response path.

    ``remove_content_length`` is set when the body may change length (the model name is rewritten back
    to a name of a different length); the reference leaves a stale Content-Length in that case.
    """
    reply = ProcessingResponse()
    mutation = reply.response_headers.response.header_mutation
    set_headers = mutation.set_headers
    set_headers.append(_MARKER)
    if served_endpoint is not None:
        header = set_headers.add().header
        header.key = CONFORMANCE_SERVED_HEADER
        header.raw_value = served_endpoint.encode()
    _set_headers(set_headers, echo)
    if remove_content_length:
        mutation.remove_headers.append("content-length")
    return reply


def _request_body_reply(chunk: bytes, end_of_stream: bool) -> Reply:
    reply = ProcessingResponse()
    streamed = reply.request_body.response.body_mutation.streamed_response
    streamed.body = chunk
    streamed.end_of_stream = end_of_stream
    return reply


def response_body_reply(chunk: bytes, end_of_stream: bool) -> Reply:
    """One ``streamed_response`` chunk of the response body."""
    if not chunk and end_of_stream:
        return EMPTY_RESPONSE_BODY_EOS
    reply = ProcessingResponse()
    streamed = reply.response_body.response.body_mutation.streamed_response
    streamed.body = chunk
    streamed.end_of_stream = end_of_stream
    return reply


def _chunked(body: bytes, end_of_stream: bool, build: Callable[[bytes, bool], Reply]) -> list[Reply]:
    size = len(body)
    if size <= MAX_CHUNK_BYTES:
        return [build(body, end_of_stream)]
    return [
        build(body[at : at + MAX_CHUNK_BYTES], end_of_stream and at + MAX_CHUNK_BYTES >= size)
        for at in range(0, size, MAX_CHUNK_BYTES)
    ]


def request_body_replies(body: bytes, *, end_of_stream: bool = True) -> list[Reply]:
    """The forwarded request body as ≤ 62,000-byte chunks; an empty body is one empty chunk (§1.6).
    ``end_of_stream`` marks the last chunk (False when request trailers follow)."""
    if not body:
        return [EMPTY_REQUEST_BODY_EOS if end_of_stream else _request_body_reply(b"", False)]
    return _chunked(body, end_of_stream, _request_body_reply)


def response_body_replies(body: bytes, *, end_of_stream: bool = True) -> list[Reply]:
    """A buffered response body as ≤ 62,000-byte chunks (same rules as the request body)."""
    if not body:
        return [response_body_reply(b"", end_of_stream)]
    return _chunked(body, end_of_stream, response_body_reply)


def immediate_response(status: int, body: str, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    """An ``ImmediateResponse``: the proxy answers the client itself; no headers, as the reference, unless
    the error carries some (a tenant's 429: ``retry-after``, ``x-ratelimit-*``)."""
    reply = ProcessingResponse()
    immediate = reply.immediate_response
    immediate.status.code = http_status_pb2.StatusCode.ValueType(status)
    immediate.body = body.encode()
    if headers:
        _set_headers(immediate.headers.set_headers, ((k, v.encode()) for k, v in headers))
    return reply


def message_timeout_override(seconds: float) -> Reply:
    """A reply carrying only ``override_message_timeout``: the proxy restarts the timer of the message it
    waits on with this duration instead of ``message_timeout``. Envoy honours it only with
    ``max_message_timeout`` set (0, the default, ignores it), only up to that bound, and only once per
    message; the proxy sends nothing in return, the real reply follows later."""
    reply = ProcessingResponse()
    whole = int(seconds)
    reply.override_message_timeout.seconds = whole
    reply.override_message_timeout.nanos = round((seconds - whole) * 1e9)
    return reply


EMPTY_REQUEST_BODY_EOS = _request_body_reply(b"", True)
_empty_response_eos = ProcessingResponse()
_empty_response_eos.response_body.response.body_mutation.streamed_response.end_of_stream = True
EMPTY_RESPONSE_BODY_EOS = _empty_response_eos
REQUEST_TRAILERS_REPLY = ProcessingResponse()
REQUEST_TRAILERS_REPLY.request_trailers.SetInParent()
RESPONSE_TRAILERS_REPLY = ProcessingResponse()
RESPONSE_TRAILERS_REPLY.response_trailers.SetInParent()
