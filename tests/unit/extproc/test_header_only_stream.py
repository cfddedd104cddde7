"""The state machine in header-only mode, without gRPC: one reply at the request headers (also when
routing waits, as with flow control), the lease held until the stream ends, a body the proxy sends anyway
echoed chunk by chunk."""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.extproc import NullObserver
from picker.extproc.stream import SUSPENDED, ExtProcStream
from picker.routing.types import Dispatch, PendingRoute, Resolved, RoutingRequest
from picker.testing import envoy
from tests.unit.extproc.conftest import Lease

HEADERS = [(":path", "/v1/chat/completions"), ("x-ai-eg-model", "m"), ("x-request-id", "r")]


@dataclass
class WaitingRouter:
    """Routes by header; ``wait``: through a PendingRoute, as the director does while flow control queues."""

    wait: bool = False
    lease: Lease = field(default_factory=Lease)
    seen: list[RoutingRequest] = field(default_factory=list)

    def _decision(self) -> Dispatch:
        return Dispatch(("10.0.0.1:8000",), b"", self.lease, None, "m", "m", 0)

    def resolve(self, request: RoutingRequest) -> Resolved:
        raise AssertionError("header-only mode never routes on a body")

    def resolve_by_header(self, request: RoutingRequest) -> Resolved | None:
        self.seen.append(request)
        return Resolved("m", "m", 0, "", None)

    def route(self, request: RoutingRequest, resolved: Resolved) -> Dispatch | PendingRoute:
        if not self.wait:
            return self._decision()

        async def later() -> Dispatch:
            return self._decision()

        return PendingRoute(later())

    def route_headers_only(self, request: RoutingRequest) -> Dispatch:
        raise AssertionError("the model header is there")


def decode(reply: bytes) -> pb.ProcessingResponse:
    return pb.ProcessingResponse.FromString(reply)


def test_one_reply_and_the_lease_held_until_the_end() -> None:
    router = WaitingRouter()
    stream = ExtProcStream(router, NullObserver(), max_body_bytes=1024, header_only=True)
    (reply,) = stream.handle(envoy.request_headers(HEADERS))
    message = decode(reply)
    assert message.WhichOneof("response") == "request_headers"
    assert message.mode_override.response_header_mode == message.mode_override.SKIP
    assert not stream.finished  # the proxy ends the stream when the HTTP exchange ends
    assert (router.lease.first_bytes, router.lease.releases) == (1, 0)
    request = router.seen[0]
    assert (request.path, request.body, request.headers_only) == ("/v1/chat/completions", b"", False)
    stream.close()
    assert (router.lease.releases, router.lease.reports) == (1, 0)  # nothing seen: no outcome


async def test_a_route_that_waits_answers_with_the_same_one_reply() -> None:
    router = WaitingRouter(wait=True)
    stream = ExtProcStream(router, NullObserver(), max_body_bytes=1024, header_only=True)
    assert stream.handle(envoy.request_headers(HEADERS)) is SUSPENDED
    (reply,) = await stream.resume()
    message = decode(reply)
    assert message.WhichOneof("response") == "request_headers"
    assert message.HasField("mode_override")
    stream.close()
    assert router.lease.releases == 1


def test_a_body_sent_anyway_is_echoed_chunk_by_chunk_and_trailers_answered() -> None:
    router = WaitingRouter()
    stream = ExtProcStream(router, NullObserver(), max_body_bytes=4, header_only=True)
    stream.handle(envoy.request_headers(HEADERS))
    for chunk, eos in ((b"0123456789", False), (b"abc", False)):  # over max_body_bytes: nothing buffered
        (reply,) = stream.handle(envoy.request_body(chunk, end_of_stream=eos))
        streamed = decode(reply).request_body.response.body_mutation.streamed_response
        assert (streamed.body, streamed.end_of_stream) == (chunk, eos)
    (reply,) = stream.handle(envoy.request_trailers())
    assert decode(reply).WhichOneof("response") == "request_trailers"
    stream.close()
    assert router.lease.releases == 1
