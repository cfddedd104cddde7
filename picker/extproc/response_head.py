"""The response headers as the stream reads them and echoes them back (reference §1.9).

Envoy sends ``raw_value`` (``send_header_raw_value``); older proxies send ``value``. The non-system headers
are echoed back in the response-headers reply; ``:status`` (``status`` in the reference's tests) and the
content type are what the stream needs to know about the response.
"""

from __future__ import annotations

from typing import NamedTuple

from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders

from picker.extproc.protocol import SYSTEM_HEADERS

__all__ = ["ResponseHead", "read_response_head"]

_STATUS_KEYS = frozenset({":status", "status"})


class ResponseHead(NamedTuple):
    #: ``(name, raw value)`` to set in the response-headers reply (non-system headers, in order)
    echo: list[tuple[str, bytes]]
    #: the raw ``:status`` value, b"" when absent
    status: bytes
    #: the lower-cased ``content-type``, b"" when absent
    content_type: bytes


def read_response_head(message: HttpHeaders) -> ResponseHead:
    """The headers of a ``response_headers`` message."""
    echo: list[tuple[str, bytes]] = []
    status = b""
    content_type = b""
    system = SYSTEM_HEADERS
    for header in message.headers.headers:
        original = header.key
        key = original.lower()
        raw = header.raw_value or header.value.encode()
        if key in _STATUS_KEYS:
            status = raw
        elif key == "content-type":
            content_type = raw.lower()
        if key not in system:
            echo.append((original, raw))
    return ResponseHead(echo, status, content_type)
