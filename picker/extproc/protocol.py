"""Names and limits of the Endpoint Picker Protocol (reference §1.5-§1.10): header keys, metadata
namespaces, the headers never echoed back, the body chunk size, and the error that ends a stream with a
gRPC status. Read by the stream, the server, the wire encoder and the readable reply builders tests check
the encoder against (:mod:`picker.testing.replies`)."""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "CONFORMANCE_SERVED_HEADER",
    "CONTENT_LENGTH_HEADER",
    "DESTINATION_KEY",
    "LB_NAMESPACE",
    "MAX_CHUNK_BYTES",
    "RESPONSE_MARKER_HEADER",
    "SERVED_KEY",
    "SUBSET_KEY",
    "SUBSET_NAMESPACE",
    "SYSTEM_HEADERS",
    "ResponseSkip",
    "StreamAbortError",
]

#: Largest ``streamed_response`` chunk: below Envoy's 64 KiB per-chunk limit, as the reference uses.
MAX_CHUNK_BYTES: Final = 62_000

DESTINATION_KEY: Final = "x-gateway-destination-endpoint"
SERVED_KEY: Final = "x-gateway-destination-endpoint-served"
LB_NAMESPACE: Final = "envoy.lb"
SUBSET_NAMESPACE: Final = "envoy.lb.subset_hint"
SUBSET_KEY: Final = "x-gateway-destination-endpoint-subset"
#: Written with the reference's capitalisation (Envoy lower-cases header names when applying it).
CONTENT_LENGTH_HEADER: Final = "Content-Length"
RESPONSE_MARKER_HEADER: Final = "x-went-into-resp-headers"
CONFORMANCE_SERVED_HEADER: Final = "x-conformance-test-served-endpoint"

#: Headers never echoed back: input control headers, our output keys, and content-length (reference).
SYSTEM_HEADERS: Final = frozenset(
    {
        "x-gateway-inference-fairness-id",
        "x-gateway-inference-objective",
        "x-gateway-model-name-rewrite",
        SUBSET_KEY,
        DESTINATION_KEY,
        SERVED_KEY,
        "content-length",
    }
)


class ResponseSkip(enum.IntEnum):
    """How much of a request's response the proxy is asked to skip (``mode_override`` in the
    request-headers reply; needs ``allow_mode_override: true`` in Envoy's ext_proc filter config)."""

    #: nothing: every response phase is processed
    NONE = 0
    #: every response phase
    ALL = 1
    #: the body and trailers; the headers still come (what passive health needs: the status)
    BODY = 2
    #: everything after the request headers (header-only mode)
    AFTER_REQUEST_HEADERS = 3


class StreamAbortError(Exception):
    """End the RPC with a gRPC error (raised by the stream, mapped by the server). ``internal`` = our bug;
    otherwise the proxy broke the protocol."""

    def __init__(self, details: str, *, internal: bool) -> None:
        super().__init__(details)
        self.details = details
        self.internal = internal
