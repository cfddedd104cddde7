"""A routed stream keeps its Dispatch until the response ends (minutes for a long streamed answer): the
request body must not stay with it, outside every budget, once the replies that carry it are written."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from picker.extproc import NullObserver
from picker.extproc.stream import ExtProcStream
from picker.routing.types import Dispatch, Resolved, RoutingRequest
from picker.testing import envoy
from tests.unit.extproc.conftest import Lease

HEADERS = [(":path", "/v1/completions"), ("x-request-id", "r"), ("content-type", "application/json")]


@dataclass
class BodyRouter:
    """Routes every request to one endpoint, forwarding its body unchanged (no model rewrite)."""

    lease: Lease = field(default_factory=Lease)
    bodies: list[bytes] = field(default_factory=list)

    def resolve(self, request: RoutingRequest) -> Resolved:
        return Resolved("m", "m", 0, "", None)

    def route(self, request: RoutingRequest, resolved: Resolved) -> Dispatch:
        self.bodies.append(request.body)
        return Dispatch(("10.0.0.1:8000",), request.body, self.lease, None, "m", "m", 0)


def test_the_body_is_not_kept_once_routed() -> None:
    router = BodyRouter()
    stream = ExtProcStream(router, NullObserver(), max_body_bytes=8 << 20)
    assert stream.handle(envoy.request_headers(HEADERS)) == ()
    chunk = b'{"model": "m", "prompt": "' + b"x" * (2 << 20) + b'"}'
    replies = stream.handle(envoy.request_body(chunk, end_of_stream=True))
    assert replies  # the headers reply and the body echoed
    (body,) = router.bodies
    assert len(body) == len(chunk)
    del replies
    # held by router.bodies, this name and getrefcount's argument: not by the stream's dispatch
    assert sys.getrefcount(body) == 3
    assert not stream.finished  # the response is still to come
    stream.close()
