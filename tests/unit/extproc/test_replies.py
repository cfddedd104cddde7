"""The readable reply builders (``picker.testing.replies``, the oracle the wire encoder is checked against):
exact message shapes as the reference sends them, chunking boundaries, shared constants stay untouched."""

from __future__ import annotations

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.extproc import protocol
from picker.testing import replies as messages


def _streamed(reply: pb.ProcessingResponse, phase: str) -> tuple[bytes, bool]:
    streamed = getattr(reply, phase).response.body_mutation.streamed_response
    return bytes(streamed.body), bool(streamed.end_of_stream)


def test_request_headers_reply_shape() -> None:
    reply = messages.request_headers_reply(
        "10.0.0.1:8000,10.0.0.2:8000", [("hi", b"mom"), ("x-request-id", b"rid")], 42
    )
    assert reply.WhichOneof("response") == "request_headers"
    common = reply.request_headers.response
    assert common.clear_route_cache is True
    headers = [(o.header.key, o.header.raw_value, o.header.value) for o in common.header_mutation.set_headers]
    assert headers == [
        ("x-gateway-destination-endpoint", b"10.0.0.1:8000,10.0.0.2:8000", ""),
        ("Content-Length", b"42", ""),
        ("hi", b"mom", ""),
        ("x-request-id", b"rid", ""),
    ]
    assert not common.header_mutation.remove_headers
    lb = reply.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert lb["x-gateway-destination-endpoint"].string_value == "10.0.0.1:8000,10.0.0.2:8000"
    assert not reply.HasField("mode_override")


def test_request_headers_reply_without_body_has_no_content_length_and_can_skip_response() -> None:
    reply = messages.request_headers_reply(
        "10.0.0.1:8000", [], None, mode_override=messages.SKIP_RESPONSE_MODE
    )
    keys = [o.header.key for o in reply.request_headers.response.header_mutation.set_headers]
    assert keys == ["x-gateway-destination-endpoint"]
    mode = reply.mode_override
    assert mode.response_header_mode == mode.SKIP
    assert mode.response_trailer_mode == mode.SKIP
    assert mode.response_body_mode == mode.NONE
    assert mode.request_body_mode == mode.NONE  # untouched fields stay DEFAULT/NONE


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, [(0, True)]),
        (1, [(1, True)]),
        (62_000, [(62_000, True)]),
        (62_001, [(62_000, False), (1, True)]),
        (124_000, [(62_000, False), (62_000, True)]),
        (200_000, [(62_000, False), (62_000, False), (62_000, False), (14_000, True)]),
    ],
)
def test_body_chunking(size: int, expected: list[tuple[int, bool]]) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for build, phase in (
        (messages.request_body_replies, "request_body"),
        (messages.response_body_replies, "response_body"),
    ):
        replies = build(body)
        chunks = [_streamed(r, phase) for r in replies]
        assert [(len(c), eos) for c, eos in chunks] == expected
        assert b"".join(c for c, _ in chunks) == body
        assert all(r.WhichOneof("response") == phase for r in replies)


def test_body_chunks_without_end_of_stream_when_trailers_follow() -> None:
    replies = messages.request_body_replies(b"x" * 70_000, end_of_stream=False)
    assert [_streamed(r, "request_body")[1] for r in replies] == [False, False]
    empty = messages.response_body_replies(b"", end_of_stream=False)
    assert [_streamed(r, "response_body") for r in empty] == [(b"", False)]
    assert empty[0].response_body.response.body_mutation.HasField("streamed_response")


def test_response_headers_reply_marker_served_and_removal() -> None:
    reply = messages.response_headers_reply(
        [("content-type", b"text/event-stream")], served_endpoint="10.0.0.1:8000", remove_content_length=True
    )
    mutation = reply.response_headers.response.header_mutation
    assert [(o.header.key, o.header.raw_value) for o in mutation.set_headers] == [
        ("x-went-into-resp-headers", b"true"),
        ("x-conformance-test-served-endpoint", b"10.0.0.1:8000"),
        ("content-type", b"text/event-stream"),
    ]
    assert list(mutation.remove_headers) == ["content-length"]
    assert not reply.response_headers.response.clear_route_cache
    plain = messages.response_headers_reply([])
    assert [o.header.key for o in plain.response_headers.response.header_mutation.set_headers] == [
        "x-went-into-resp-headers"
    ]
    assert not plain.response_headers.response.header_mutation.remove_headers


def test_immediate_response_has_status_body_and_no_headers() -> None:
    reply = messages.immediate_response(503, "inference error: ServiceUnavailable - none")
    assert reply.WhichOneof("response") == "immediate_response"
    assert reply.immediate_response.status.code == 503
    assert reply.immediate_response.body == b"inference error: ServiceUnavailable - none"
    assert not reply.immediate_response.HasField("headers")


def test_shared_replies_are_reused_and_unchanged_by_use() -> None:
    before = (
        messages.EMPTY_REQUEST_BODY_EOS.SerializeToString(),
        messages.EMPTY_RESPONSE_BODY_EOS.SerializeToString(),
    )
    assert messages.request_body_replies(b"")[0] is messages.EMPTY_REQUEST_BODY_EOS
    assert messages.response_body_reply(b"", True) is messages.EMPTY_RESPONSE_BODY_EOS
    for _ in range(3):
        messages.response_headers_reply([("a", b"b")])
    after = (
        messages.EMPTY_REQUEST_BODY_EOS.SerializeToString(),
        messages.EMPTY_RESPONSE_BODY_EOS.SerializeToString(),
    )
    assert before == after
    assert _streamed(messages.EMPTY_REQUEST_BODY_EOS, "request_body") == (b"", True)
    assert messages.REQUEST_TRAILERS_REPLY.WhichOneof("response") == "request_trailers"
    assert messages.RESPONSE_TRAILERS_REPLY.WhichOneof("response") == "response_trailers"


def test_system_headers_cover_the_reference_list() -> None:
    assert {
        "x-gateway-inference-fairness-id",
        "x-gateway-inference-objective",
        "x-gateway-model-name-rewrite",
        "x-gateway-destination-endpoint-subset",
        "x-gateway-destination-endpoint",
        "x-gateway-destination-endpoint-served",
        "content-length",
    } == protocol.SYSTEM_HEADERS


@pytest.mark.parametrize("seconds", [125.0, 0.25, 65.5])
def test_a_message_timeout_override_carries_only_the_duration(seconds: float) -> None:
    reply = pb.ProcessingResponse.FromString(messages.message_timeout_override(seconds).SerializeToString())
    assert reply.WhichOneof("response") is None  # no phase reply: the real one follows
    assert reply.override_message_timeout.ToTimedelta().total_seconds() == seconds
    assert not reply.HasField("mode_override")
