"""The request headers as the router reads them and as they are echoed back (reference §1.5).

Envoy sends ``raw_value`` (``send_header_raw_value``); older proxies send ``value``. Every header goes into
the lower-cased map routing reads; the non-system ones are echoed back in the request-headers reply, except
in header-only mode, where nothing is echoed (the proxy has them, and setting them again cost an option
per header in the reply and a mutation each in the proxy: profiled, the echo was a fifth of that mode's
Python per request). A missing ``x-request-id`` is generated and is then the one header set either way,
as in the reference's body-less branch.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders

from picker.extproc.protocol import SYSTEM_HEADERS

__all__ = ["RequestHead", "read_request_head"]

_PATH_HEADERS = (":path", "x-original-path", "x-forwarded-path")


class RequestHead(NamedTuple):
    #: every header, lower-cased names, values decoded (invalid UTF-8 replaced)
    headers: dict[str, str]
    #: ``(name, raw value)`` to set in the request-headers reply
    echo: list[tuple[str, bytes]]
    request_id: str
    #: the request path (``:path``, else ``x-original-path`` / ``x-forwarded-path``), "" if none
    path: str


def read_request_head(message: HttpHeaders, *, echo: bool = True) -> RequestHead:
    """The headers of a ``request_headers`` message; ``echo=False`` (header-only mode) echoes none."""
    headers: dict[str, str] = {}
    echoed: list[tuple[str, bytes]] = []
    system = SYSTEM_HEADERS
    for header in message.headers.headers:
        original = header.key
        key = original.lower()
        raw = header.raw_value or header.value.encode()
        headers[key] = raw.decode("utf-8", "replace")
        if echo and key not in system:
            echoed.append((original, raw))
    request_id = headers.get("x-request-id", "")
    if not request_id:
        request_id = headers["x-request-id"] = str(uuid.uuid4())
        echoed = [item for item in echoed if item[0].lower() != "x-request-id"]
        echoed.append(("x-request-id", request_id.encode()))
    path = ""
    for name in _PATH_HEADERS:
        path = headers.get(name, "")
        if path:
            break
    return RequestHead(headers, echoed, request_id, path)
