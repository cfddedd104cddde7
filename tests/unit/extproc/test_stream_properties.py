"""The state machine without gRPC: any message sequence ends cleanly and leases are released once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.errors import BadRequest, ResourceExhausted
from picker.extproc import HealthService, HealthState, NullObserver
from picker.extproc.stream import ExtProcStream, StreamAbortError
from picker.routing.openai import parse_request
from picker.routing.types import Dispatch, Resolved, RoutingRequest
from picker.testing import envoy
from tests.unit.extproc.conftest import Lease


@dataclass
class Router:
    leases: list[Lease] = field(default_factory=list)
    shed: bool = False

    def resolve(self, request: RoutingRequest) -> Resolved:
        info = parse_request(request.path, request.body)
        return Resolved(info.model or "", "t", 0, "", info)

    def route(self, request: RoutingRequest, resolved: Resolved) -> Dispatch:
        if self.shed:
            raise ResourceExhausted("shed")
        lease = Lease()
        self.leases.append(lease)
        return Dispatch(("10.0.0.1:80",), request.body, lease, None, resolved.incoming_model, "t", 0)

    def route_headers_only(self, request: RoutingRequest) -> Dispatch:
        lease = Lease()
        self.leases.append(lease)
        return Dispatch(("10.0.0.1:80",), b"", lease, None, "", "", 0)

    def resolve_by_header(self, request: RoutingRequest) -> Resolved | None:
        model = request.headers.get("x-model", "")
        if not model and request.headers_only:
            return None
        if not model:
            raise BadRequest("model not found in header x-model")
        return Resolved(model, model, 0, "", None)


@dataclass
class CountingObserver(NullObserver):
    closed: int = 0
    failed_count: int = 0

    def failed(self, error_code: str, incoming_model: str, target_model: str) -> None:
        self.failed_count += 1

    def stream_closed(self, decision: Dispatch | None) -> None:
        self.closed += 1


_BODIES = [b'{"model":"m","prompt":"p"}', b"junk", b"", b'{"model":"m","prompt":"p","stream":true}']
_MESSAGES: list[Any] = [
    envoy.request_headers([(":path", "/v1/completions")]),
    envoy.request_headers([(":path", "/v1/completions"), ("content-length", "99999999")]),
    envoy.request_headers([(":method", "GET")], end_of_stream=True, subset=["10.0.0.1:80"]),
    envoy.request_headers([(":path", "/v1/completions"), ("x-model", "m")]),
    envoy.request_headers([(":path", "/v1/completions"), ("x-model", "m")], end_of_stream=True),
    *[envoy.request_body(b, end_of_stream=eos) for b in _BODIES for eos in (False, True)],
    envoy.request_body(b"x" * 300, end_of_stream=False, subset=[]),
    envoy.request_trailers(),
    envoy.response_headers([(":status", "200"), ("content-type", "text/event-stream")]),
    envoy.response_headers([(":status", "500")], end_of_stream=True),
    envoy.response_headers([("content-type", "application/grpc")]),
    envoy.response_headers([("status", "200")], served_endpoint="10.0.0.1:80"),
    *[envoy.response_body(b, end_of_stream=eos) for b in _BODIES for eos in (False, True)],
    envoy.response_body(b"y" * 300),
    envoy.response_trailers(),
    envoy.request_body(b"", end_of_stream=True),
]


def as_message(reply: Any) -> Any:
    return pb.ProcessingResponse.FromString(reply) if isinstance(reply, bytes) else reply


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(range(len(_MESSAGES))), max_size=12), st.booleans(), st.booleans(), st.booleans()
)
def test_any_sequence_ends_cleanly_and_releases_once(
    indices: list[int], shed: bool, verifier: bool, header_only: bool
) -> None:
    router = Router(shed=shed)
    observer = CountingObserver()
    stream = ExtProcStream(
        router, observer, max_body_bytes=256, served_verifier=verifier, header_only=header_only
    )
    aborts: list[StreamAbortError] = []
    for index in indices:
        try:
            replies = stream.handle(_MESSAGES[index])
        except StreamAbortError as exc:
            aborts.append(exc)
            break
        # replies are wire bytes (picker.extproc.wire) or messages: both must decode to a known reply
        assert all(as_message(reply).WhichOneof("response") for reply in replies)
        if stream.finished:
            break
    # only protocol violations, never our own bug
    assert [a.details for a in aborts if a.internal] == []
    stream.close()
    stream.close()
    assert observer.closed == 1
    assert observer.failed_count <= 1
    assert len(router.leases) <= 1
    assert all(lease.releases == 1 for lease in router.leases)
    assert all(lease.reports <= 1 for lease in router.leases)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (HealthState(synced=False), {"": 2, "liveness": 2, "readiness": 2, "x": 2}),
        (HealthState(synced=True), {"": 1, "liveness": 1, "readiness": 1, "x": 1}),
        (HealthState(synced=True, protocol_ok=False), {"": 2, "liveness": 2, "readiness": 2, "x": 2}),
        (HealthState(synced=True, leader_election=True), {"": 2, "liveness": 1, "readiness": 2, "x": 3}),
        (
            HealthState(synced=False, leader=True, leader_election=True),
            {"": 2, "liveness": 1, "readiness": 2, "x": 3},
        ),
        (
            HealthState(synced=True, leader=True, leader_election=True),
            {"": 1, "liveness": 1, "readiness": 1, "x": 3},
        ),
    ],
)
def test_health_status_table(state: HealthState, expected: dict[str, int]) -> None:
    service = HealthService(lambda: state)
    assert {name: service.status(name) for name in expected} == expected
    assert service.status("envoy.service.ext_proc.v3.ExternalProcessor") == expected["readiness"]
