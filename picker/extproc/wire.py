"""Every reply the EPP sends (reference §1.5, §1.6, §1.9, §1.10), encoded straight to protobuf wire bytes.

Why: building a reply through the protobuf API costs a C call and a wrapper object per field on the
path (``reply.request_headers.response.header_mutation.set_headers.add().header.key = ...``): about 40
for a request-headers reply echoing ten headers, plus the serialization. Measured inside the server (not
in a warm microbenchmark, where it looks cheap), builders written that way were about 6 % of the server's
CPU per stream; the same replies as byte concatenations cost a fraction. The gRPC servicer writes
``bytes`` as they are (see :func:`serialize`).

The encoding is plain protobuf: every field here is length-delimited (wire type 2) except the booleans and
the status code (varints), and field numbers are read from the generated descriptors at import rather than
written down. The readable builders of the same replies, through the protobuf API, live in
:mod:`picker.testing.replies`: ``tests/unit/extproc/test_wire.py`` checks, for generated inputs, that each
function here decodes to exactly the message built there.

Why one module: every reply is built from the same tag, length and header-option encoders and the field
numbers read once at import; split, the parts would share those private helpers across modules.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Final

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor

from picker.extproc.protocol import (
    CONFORMANCE_SERVED_HEADER,
    CONTENT_LENGTH_HEADER,
    DESTINATION_KEY,
    LB_NAMESPACE,
    MAX_CHUNK_BYTES,
    RESPONSE_MARKER_HEADER,
    ResponseSkip,
)

__all__ = [
    "EMPTY_REQUEST_BODY_EOS",
    "EMPTY_RESPONSE_BODY_EOS",
    "HEADER_ONLY_MODE",
    "REQUEST_TRAILERS_REPLY",
    "RESPONSE_TRAILERS_REPLY",
    "SKIP_RESPONSE_BODY_MODE",
    "SKIP_RESPONSE_MODE",
    "header_only_reply",
    "immediate_response",
    "message_timeout_override",
    "request_body_replies",
    "request_body_reply",
    "request_headers_reply",
    "response_body_replies",
    "response_body_reply",
    "response_headers_reply",
    "serialize",
]


def _num(descriptor: Descriptor, name: str) -> int:
    number: int = descriptor.fields_by_name[name].number
    return number


_PR = pb.ProcessingResponse.DESCRIPTOR
_REQUEST_HEADERS = _num(_PR, "request_headers")
_RESPONSE_HEADERS = _num(_PR, "response_headers")
_REQUEST_BODY = _num(_PR, "request_body")
_RESPONSE_BODY = _num(_PR, "response_body")
_DYNAMIC_METADATA = _num(_PR, "dynamic_metadata")
_MODE_OVERRIDE = _num(_PR, "mode_override")
_IMMEDIATE = _num(_PR, "immediate_response")
_REQUEST_TRAILERS = _num(_PR, "request_trailers")
_RESPONSE_TRAILERS = _num(_PR, "response_trailers")
_IMMEDIATE_STATUS = _num(pb.ImmediateResponse.DESCRIPTOR, "status")
_IMMEDIATE_HEADERS = _num(pb.ImmediateResponse.DESCRIPTOR, "headers")
_IMMEDIATE_BODY = _num(pb.ImmediateResponse.DESCRIPTOR, "body")
_STATUS_CODE = _num(http_status_pb2.HttpStatus.DESCRIPTOR, "code")
_RESPONSE = _num(pb.HeadersResponse.DESCRIPTOR, "response")
if _num(pb.BodyResponse.DESCRIPTOR, "response") != _RESPONSE:  # pragma: no cover - a changed proto
    raise ImportError("HeadersResponse.response and BodyResponse.response have different numbers")
_HEADER_MUTATION = _num(pb.CommonResponse.DESCRIPTOR, "header_mutation")
_BODY_MUTATION = _num(pb.CommonResponse.DESCRIPTOR, "body_mutation")
_CLEAR_ROUTE_CACHE = _num(pb.CommonResponse.DESCRIPTOR, "clear_route_cache")
_STREAMED = _num(pb.BodyMutation.DESCRIPTOR, "streamed_response")
_STREAMED_BODY = _num(pb.StreamedBodyResponse.DESCRIPTOR, "body")
_STREAMED_EOS = _num(pb.StreamedBodyResponse.DESCRIPTOR, "end_of_stream")
_SET_HEADERS = _num(pb.HeaderMutation.DESCRIPTOR, "set_headers")
_REMOVE_HEADERS = _num(pb.HeaderMutation.DESCRIPTOR, "remove_headers")
_OPTION_HEADER = _num(base_pb2.HeaderValueOption.DESCRIPTOR, "header")
_KEY = _num(base_pb2.HeaderValue.DESCRIPTOR, "key")
_RAW_VALUE = _num(base_pb2.HeaderValue.DESCRIPTOR, "raw_value")
_STRUCT_FIELDS = _num(struct_pb2.Struct.DESCRIPTOR, "fields")
_STRUCT_VALUE = _num(struct_pb2.Value.DESCRIPTOR, "struct_value")
_STRING_VALUE = _num(struct_pb2.Value.DESCRIPTOR, "string_value")
_MAP_KEY, _MAP_VALUE = 1, 2  # protobuf map entries are always {key = 1, value = 2}


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_varint(n) for n in range(1 << 14)]


def _len(n: int) -> bytes:
    return _SMALL[n] if n < 16384 else _varint(n)


def _tag(field: int) -> bytes:
    """The tag of a length-delimited field (wire type 2)."""
    return _varint(field << 3 | 2)


def _ld(field: int, payload: bytes) -> bytes:
    return _tag(field) + _len(len(payload)) + payload


def _bool_true(field: int) -> bytes:
    return _varint(field << 3) + b"\x01"


_T_REQUEST_HEADERS = _tag(_REQUEST_HEADERS)
_T_RESPONSE_HEADERS = _tag(_RESPONSE_HEADERS)
_T_REQUEST_BODY = _tag(_REQUEST_BODY)
_T_RESPONSE_BODY = _tag(_RESPONSE_BODY)
_T_RESPONSE = _tag(_RESPONSE)
_T_HEADER_MUTATION = _tag(_HEADER_MUTATION)
_T_BODY_MUTATION = _tag(_BODY_MUTATION)
_T_STREAMED = _tag(_STREAMED)
_T_STREAMED_BODY = _tag(_STREAMED_BODY)
_T_SET_HEADERS = _tag(_SET_HEADERS)
_T_OPTION_HEADER = _tag(_OPTION_HEADER)
_T_KEY = _tag(_KEY)
_T_RAW_VALUE = _tag(_RAW_VALUE)
_CLEAR = _bool_true(_CLEAR_ROUTE_CACHE)
_EOS = _bool_true(_STREAMED_EOS)


_ONE_BYTE = [bytes((n,)) for n in range(128)]


#: the fixed bytes of an option whose lengths fit one byte each: tags and length bytes
_VALUE_FIXED = len(_T_KEY) + 1 + len(_T_RAW_VALUE) + 1
_OPTION_FIXED = len(_T_OPTION_HEADER) + 1


def _option(key: bytes, raw: bytes) -> bytes:
    """One ``set_headers`` entry: ``HeaderValueOption{header: HeaderValue{key, raw_value}}``."""
    lk = len(key)
    lr = len(raw)
    if lk and lr:
        lv = _VALUE_FIXED + lk + lr
        lo = _OPTION_FIXED + lv
        if lo < 128:  # the usual header: every length fits one byte
            one = _ONE_BYTE
            return b"".join(
                (
                    _T_SET_HEADERS,
                    one[lo],
                    _T_OPTION_HEADER,
                    one[lv],
                    _T_KEY,
                    one[lk],
                    key,
                    _T_RAW_VALUE,
                    one[lr],
                    raw,
                )
            )
    value = (_ld(_KEY, key) if key else b"") + (_ld(_RAW_VALUE, raw) if raw else b"")
    return _ld(_SET_HEADERS, _ld(_OPTION_HEADER, value))


_ProcessingMode = processing_mode_pb2.ProcessingMode

#: ``mode_override`` telling the proxy to skip the response phases (:attr:`ResponseSkip.ALL`). Needs
#: ``allow_mode_override: true`` in Envoy's ext_proc filter config; a proxy that ignores it still sends the
#: response, which we handle.
SKIP_RESPONSE_MODE: Final = _ProcessingMode(
    response_header_mode=_ProcessingMode.SKIP,
    response_body_mode=_ProcessingMode.NONE,
    response_trailer_mode=_ProcessingMode.SKIP,
).SerializeToString()
#: ``mode_override`` keeping the response headers but skipping the body and trailers
#: (:attr:`ResponseSkip.BODY`): what passive health needs (the status) at one message instead of two to four.
SKIP_RESPONSE_BODY_MODE: Final = _ProcessingMode(
    response_header_mode=_ProcessingMode.SEND,
    response_body_mode=_ProcessingMode.NONE,
    response_trailer_mode=_ProcessingMode.SKIP,
).SerializeToString()
#: ``mode_override`` of header-only mode (:attr:`ResponseSkip.AFTER_REQUEST_HEADERS`): nothing after the
#: request headers (no request body or trailers, no response phase). The proxy should be configured with
#: ``request_body_mode: NONE`` already (a body mode cannot be lowered from FULL_DUPLEX_STREAMED by an
#: override); this skips the response phases of a proxy that processes them, when it allows overrides.
HEADER_ONLY_MODE: Final = _ProcessingMode(
    request_body_mode=_ProcessingMode.NONE,
    request_trailer_mode=_ProcessingMode.SKIP,
    response_header_mode=_ProcessingMode.SKIP,
    response_body_mode=_ProcessingMode.NONE,
    response_trailer_mode=_ProcessingMode.SKIP,
).SerializeToString()

_DESTINATION_KEY = DESTINATION_KEY.encode()
_LB_NAMESPACE = LB_NAMESPACE.encode()
_CONTENT_LENGTH = CONTENT_LENGTH_HEADER.encode()
#: the ``mode_override`` field of each :class:`~picker.extproc.protocol.ResponseSkip` value
_SKIPS = (
    b"",
    _ld(_MODE_OVERRIDE, SKIP_RESPONSE_MODE),
    _ld(_MODE_OVERRIDE, SKIP_RESPONSE_BODY_MODE),
    _ld(_MODE_OVERRIDE, HEADER_ONLY_MODE),
)
_MARKER = _option(RESPONSE_MARKER_HEADER.encode(), b"true")
_CONFORMANCE = CONFORMANCE_SERVED_HEADER.encode()
_REMOVE_CONTENT_LENGTH = _ld(_REMOVE_HEADERS, b"content-length")
# dynamic_metadata = {"envoy.lb": {"x-gateway-destination-endpoint": <destination>}}: only the destination
# and the lengths around it vary
_T_STRING_VALUE = _tag(_STRING_VALUE)
_INNER_KEY = _ld(_MAP_KEY, _DESTINATION_KEY) + _tag(_MAP_VALUE)
_T_FIELDS = _tag(_STRUCT_FIELDS)
_OUTER_KEY = _ld(_MAP_KEY, _LB_NAMESPACE) + _tag(_MAP_VALUE)
_T_STRUCT_VALUE = _tag(_STRUCT_VALUE)
_T_DYNAMIC_METADATA = _tag(_DYNAMIC_METADATA)


def _metadata(destination: bytes) -> bytes:
    """``dynamic_metadata = {"envoy.lb": {"x-gateway-destination-endpoint": destination}}``."""
    value = _T_STRING_VALUE + _len(len(destination)) + destination
    entry = _INNER_KEY + _len(len(value)) + value
    struct = _T_FIELDS + _len(len(entry)) + entry
    outer_value = _T_STRUCT_VALUE + _len(len(struct)) + struct
    outer_entry = _OUTER_KEY + _len(len(outer_value)) + outer_value
    fields = _T_FIELDS + _len(len(outer_entry)) + outer_entry
    return _T_DYNAMIC_METADATA + _len(len(fields)) + fields


def request_headers_reply(
    destination: str,
    echo: Iterable[tuple[str, bytes]],
    content_length: int | None,
    *,
    skip_response: ResponseSkip = ResponseSkip.NONE,
) -> bytes:
    """The request-headers reply of a routed request (§1.5).

    ``clear_route_cache`` so the proxy re-evaluates routing with the destination header; the destination
    both as a header and as ``dynamic_metadata["envoy.lb"]`` (the same string); ``Content-Length`` when
    the forwarded body is non-empty; ``echo`` = the non-system request headers, already filtered;
    ``skip_response``: a :class:`~picker.extproc.protocol.ResponseSkip`, sent as the matching
    ``mode_override`` (:data:`SKIP_RESPONSE_MODE`, :data:`SKIP_RESPONSE_BODY_MODE`).
    """
    dest = destination.encode()
    parts = [_option(_DESTINATION_KEY, dest)]
    if content_length:
        parts.append(_option(_CONTENT_LENGTH, str(content_length).encode()))
    parts += [_option(key.encode(), raw) for key, raw in echo]
    mutation = b"".join(parts)
    common = _T_HEADER_MUTATION + _len(len(mutation)) + mutation + _CLEAR
    headers = _T_RESPONSE + _len(len(common)) + common
    out = _T_REQUEST_HEADERS + _len(len(headers)) + headers + _metadata(dest)
    return out + _SKIPS[skip_response] if skip_response else out


@functools.lru_cache(maxsize=4096)
def header_only_reply(endpoints: tuple[str, ...]) -> bytes:
    """Header-only mode's reply when nothing is echoed: :func:`request_headers_reply` with no headers, no
    content length and :attr:`~picker.extproc.protocol.ResponseSkip.AFTER_REQUEST_HEADERS`. It depends on
    the destination alone, of which a pool has few (each endpoint, and each primary-fallback pair), so it
    is encoded once per destination and remembered (bounded): a lookup instead of about 40 µs of encoding
    with the cold caches every request meets in the server (``bench_stream --header-only``). Keyed by
    the dispatch's endpoints (primary first), so a remembered reply costs no join either."""
    destination = ",".join(endpoints)
    return request_headers_reply(destination, (), None, skip_response=ResponseSkip.AFTER_REQUEST_HEADERS)


def response_headers_reply(
    echo: Iterable[tuple[str, bytes]],
    *,
    served_endpoint: str | None = None,
    remove_content_length: bool = False,
) -> bytes:
    """The response-headers reply (§1.9): the debug marker, the conformance verifier's header when
    enabled, the echoed non-system response headers. No ``clear_route_cache`` on the response path.

    ``remove_content_length`` is set when the body may change length (the model name is rewritten back
    to a name of a different length); the reference leaves a stale Content-Length in that case.
    """
    parts = [_MARKER]
    if served_endpoint is not None:
        parts.append(_option(_CONFORMANCE, served_endpoint.encode()))
    parts += [_option(key.encode(), raw) for key, raw in echo]
    if remove_content_length:
        parts.append(_REMOVE_CONTENT_LENGTH)
    mutation = b"".join(parts)
    common = _T_HEADER_MUTATION + _len(len(mutation)) + mutation
    headers = _T_RESPONSE + _len(len(common)) + common
    return _T_RESPONSE_HEADERS + _len(len(headers)) + headers


def _size(n: int) -> int:
    """The length of ``n``'s varint."""
    return 1 if n < 0x80 else 2 if n < 0x4000 else len(_varint(n))


_N_STREAMED_BODY = len(_T_STREAMED_BODY)
_N_EOS = len(_EOS)
_N_STREAMED = len(_T_STREAMED)
_N_BODY_MUTATION = len(_T_BODY_MUTATION)
_N_RESPONSE = len(_T_RESPONSE)


def _body_reply(tag: bytes, chunk: bytes | memoryview, end_of_stream: bool) -> bytes:
    """``{request,response}_body.response.body_mutation.streamed_response{body, end_of_stream}`` with one
    copy of ``chunk`` (the lengths of the enclosing messages are computed, not built bottom-up)."""
    n = len(chunk)
    streamed_len = (_N_STREAMED_BODY + _size(n) + n if n else 0) + (_N_EOS if end_of_stream else 0)
    mutation_len = _N_STREAMED + _size(streamed_len) + streamed_len
    common_len = _N_BODY_MUTATION + _size(mutation_len) + mutation_len
    body_len = _N_RESPONSE + _size(common_len) + common_len
    return b"".join(
        (
            tag,
            _len(body_len),
            _T_RESPONSE,
            _len(common_len),
            _T_BODY_MUTATION,
            _len(mutation_len),
            _T_STREAMED,
            _len(streamed_len),
            _T_STREAMED_BODY + _len(n) if n else b"",
            chunk,
            _EOS if end_of_stream else b"",
        )
    )


def _chunked(tag: bytes, body: bytes, end_of_stream: bool) -> list[bytes]:
    size = len(body)
    if size <= MAX_CHUNK_BYTES:
        return [_body_reply(tag, body, end_of_stream)]
    view = memoryview(body)  # each chunk is copied once, into its reply
    return [
        _body_reply(tag, view[at : at + MAX_CHUNK_BYTES], end_of_stream and at + MAX_CHUNK_BYTES >= size)
        for at in range(0, size, MAX_CHUNK_BYTES)
    ]


def request_body_replies(body: bytes, *, end_of_stream: bool = True) -> list[bytes]:
    """The forwarded request body as ≤ 62,000-byte chunks; an empty body is one empty chunk (§1.6).
    ``end_of_stream`` marks the last chunk (False when request trailers follow)."""
    return _chunked(_T_REQUEST_BODY, body, end_of_stream)


def request_body_reply(chunk: bytes, end_of_stream: bool) -> bytes:
    """One request body chunk echoed unchanged (header-only mode, when the proxy sends the body anyway)."""
    return _body_reply(_T_REQUEST_BODY, chunk, end_of_stream)


def response_body_reply(chunk: bytes, end_of_stream: bool) -> bytes:
    """One ``streamed_response`` chunk of the response body."""
    return _body_reply(_T_RESPONSE_BODY, chunk, end_of_stream)


def response_body_replies(body: bytes, *, end_of_stream: bool = True) -> list[bytes]:
    """A buffered response body as ≤ 62,000-byte chunks (same rules as the request body)."""
    return _chunked(_T_RESPONSE_BODY, body, end_of_stream)


EMPTY_REQUEST_BODY_EOS = _body_reply(_T_REQUEST_BODY, b"", True)
EMPTY_RESPONSE_BODY_EOS = _body_reply(_T_RESPONSE_BODY, b"", True)
#: the empty replies to request / response trailers: ``request_trailers {}`` (an empty message, present)
REQUEST_TRAILERS_REPLY: Final = _ld(_REQUEST_TRAILERS, b"")
RESPONSE_TRAILERS_REPLY: Final = _ld(_RESPONSE_TRAILERS, b"")


def immediate_response(status: int, body: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """An ``ImmediateResponse``: the proxy answers the client itself with ``status`` and ``body``; no
    headers, as the reference, unless the error carries some (a tenant's 429: ``retry-after``, ...)."""
    payload = _varint(_STATUS_CODE << 3) + _varint(status)
    parts = [_ld(_IMMEDIATE_STATUS, payload)]
    mutation = b"".join(_option(key.encode(), value.encode()) for key, value in headers)
    if mutation:
        parts.append(_ld(_IMMEDIATE_HEADERS, mutation))
    encoded = body.encode()
    if encoded:
        parts.append(_ld(_IMMEDIATE_BODY, encoded))
    return _ld(_IMMEDIATE, b"".join(parts))


def message_timeout_override(seconds: float) -> bytes:
    """A reply carrying only ``override_message_timeout``: the proxy restarts the timer of the message it
    waits on with this duration instead of ``message_timeout``. Envoy honours it only with
    ``max_message_timeout`` set (0, the default, ignores it), only up to that bound, and only once per
    message; the proxy sends nothing in return, the real reply follows later. Rare (a request held for a
    first replica), so built through the protobuf API."""
    reply = pb.ProcessingResponse()
    whole = int(seconds)
    reply.override_message_timeout.seconds = whole
    reply.override_message_timeout.nanos = round((seconds - whole) * 1e9)
    encoded: bytes = reply.SerializeToString()
    return encoded


_serialize_message = pb.ProcessingResponse.SerializeToString


def serialize(reply: bytes | pb.ProcessingResponse) -> bytes:
    """The gRPC response serializer: wire bytes pass through, messages are serialized."""
    if isinstance(reply, bytes):
        return reply
    return _serialize_message(reply)
