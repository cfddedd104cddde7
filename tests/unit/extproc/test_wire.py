"""The hand-encoded replies decode to exactly the messages the readable builders make, for any input
(``picker.testing.replies``, through the protobuf API, is the oracle)."""

from __future__ import annotations

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.extproc import wire
from picker.extproc.protocol import ResponseSkip
from picker.testing import replies as messages

header_names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=0, max_size=40
) | st.sampled_from([":path", "x-request-id", "content-type", "x-gateway-destination-endpoint"])
raw_values = st.binary(max_size=300)
echo = st.lists(st.tuples(header_names, raw_values), max_size=20)
destinations = st.text(max_size=200) | st.sampled_from(["10.0.0.1:8000", "10.0.0.1:8000,10.0.0.2:8000", ""])


def decoded(data: bytes) -> pb.ProcessingResponse:
    assert isinstance(data, bytes)
    return pb.ProcessingResponse.FromString(data)


_MODES = {
    ResponseSkip.NONE: None,
    ResponseSkip.ALL: messages.SKIP_RESPONSE_MODE,
    ResponseSkip.BODY: messages.SKIP_RESPONSE_BODY_MODE,
    ResponseSkip.AFTER_REQUEST_HEADERS: messages.HEADER_ONLY_MODE,
}


@settings(max_examples=300, deadline=None)
@given(
    destinations,
    echo,
    st.none() | st.integers(min_value=0, max_value=2**40),
    st.sampled_from(list(ResponseSkip)),
)
def test_request_headers_reply(
    destination: str, items: list[tuple[str, bytes]], length: int | None, skip: ResponseSkip
) -> None:
    want = messages.request_headers_reply(destination, items, length, mode_override=_MODES[skip])
    assert decoded(wire.request_headers_reply(destination, items, length, skip_response=skip)) == want


@settings(max_examples=300, deadline=None)
@given(echo, st.none() | st.text(max_size=60), st.booleans())
def test_response_headers_reply(items: list[tuple[str, bytes]], served: str | None, remove: bool) -> None:
    want = messages.response_headers_reply(items, served_endpoint=served, remove_content_length=remove)
    got = wire.response_headers_reply(items, served_endpoint=served, remove_content_length=remove)
    assert decoded(got) == want


sizes = st.sampled_from([0, 1, 127, 128, 16383, 16384, 61_999, 62_000, 62_001, 124_000, 200_000, 300_001])


@settings(max_examples=60, deadline=None)
@given(sizes, st.booleans())
def test_body_replies_chunk_like_the_reference(size: int, end_of_stream: bool) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for ours, ref in (
        (wire.request_body_replies, messages.request_body_replies),
        (wire.response_body_replies, messages.response_body_replies),
    ):
        got = [decoded(g) for g in ours(body, end_of_stream=end_of_stream)]
        assert got == list(ref(body, end_of_stream=end_of_stream))
        kinds = {g.WhichOneof("response") for g in got}
        assert len(kinds) == 1
        kind = kinds.pop()
        assert b"".join(getattr(g, kind).response.body_mutation.streamed_response.body for g in got) == body


@given(st.binary(max_size=2000), st.booleans())
def test_a_streamed_response_chunk(chunk: bytes, end_of_stream: bool) -> None:
    assert decoded(wire.response_body_reply(chunk, end_of_stream)) == messages.response_body_reply(
        chunk, end_of_stream
    )


@given(st.binary(max_size=2000), st.booleans())
def test_an_echoed_request_body_chunk(chunk: bytes, end_of_stream: bool) -> None:
    (want,) = messages.request_body_replies(chunk, end_of_stream=end_of_stream)
    assert decoded(wire.request_body_reply(chunk, end_of_stream)) == want


@given(st.lists(st.sampled_from(["10.0.0.1:8000", "[fd00::1]:8000"]) | st.text(), max_size=3))
def test_the_remembered_header_only_reply_is_the_encoded_one(endpoints: list[str]) -> None:
    destination = ",".join(endpoints)
    want = wire.request_headers_reply(destination, (), None, skip_response=ResponseSkip.AFTER_REQUEST_HEADERS)
    key = tuple(endpoints)
    assert wire.header_only_reply(key) == want
    assert wire.header_only_reply(key) is wire.header_only_reply(key)


def test_constants_and_the_serializer() -> None:
    assert decoded(wire.EMPTY_REQUEST_BODY_EOS) == messages.EMPTY_REQUEST_BODY_EOS
    assert decoded(wire.EMPTY_RESPONSE_BODY_EOS) == messages.EMPTY_RESPONSE_BODY_EOS
    assert decoded(wire.REQUEST_TRAILERS_REPLY) == messages.REQUEST_TRAILERS_REPLY
    assert decoded(wire.RESPONSE_TRAILERS_REPLY) == messages.RESPONSE_TRAILERS_REPLY
    assert messages.SKIP_RESPONSE_MODE.SerializeToString() == wire.SKIP_RESPONSE_MODE
    assert messages.SKIP_RESPONSE_BODY_MODE.SerializeToString() == wire.SKIP_RESPONSE_BODY_MODE
    immediate = messages.immediate_response(429, "inference error: ResourceExhausted - x")
    assert wire.serialize(immediate) == immediate.SerializeToString()
    data = wire.response_body_reply(b"x", True)
    assert wire.serialize(data) is data


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([400, 401, 403, 404, 413, 429, 500, 503]),
    st.text(max_size=300),
    st.lists(st.tuples(header_names, st.text(max_size=60)), max_size=5),
)
def test_an_immediate_response(status: int, body: str, headers: list[tuple[str, str]]) -> None:
    assert decoded(wire.immediate_response(status, body, headers)) == messages.immediate_response(
        status, body, headers
    )


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0.0, max_value=3600.0, allow_nan=False))
def test_message_timeout_override(seconds: float) -> None:
    assert decoded(wire.message_timeout_override(seconds)) == messages.message_timeout_override(seconds)
