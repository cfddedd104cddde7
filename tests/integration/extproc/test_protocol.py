"""ext_proc protocol behaviour over real gRPC: replies, errors, caps, response handling, observer calls."""

from __future__ import annotations

import logging

import orjson
import pytest

from picker import errors
from picker.routing.openai import parse_passthrough
from picker.testing.envoy import (
    HttpRequest,
    UpstreamResponse,
    request_body,
    request_headers,
)
from tests.integration.extproc.conftest import (
    POD_1,
    POD_2,
    POD_3,
    FakeRouter,
    StartHarness,
    StepClock,
)

pytestmark = pytest.mark.integration

CHAT = b'{"model":"client-model","messages":[{"role":"user","content":"hi"}]}'


def chat(**options: object) -> HttpRequest:
    return HttpRequest(path="/v1/chat/completions", body=CHAT, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.BadRequest("bad"), 400),
        (errors.Unauthorized("who"), 401),
        (errors.Forbidden("no"), 403),
        (errors.NotFound("gone"), 404),
        (errors.PayloadTooLarge("big"), 413),
        (errors.ResourceExhausted("failed to find target endpoint: all filtered"), 429),
        (errors.ServiceUnavailable("failed to find endpoint candidates for serving the request"), 503),
        (errors.Internal("request cannot be admitted"), 500),
    ],
)
async def test_every_error_class_maps_to_one_immediate_response(
    start: StartHarness, error: errors.PickerError, status: int
) -> None:
    h = await start(FakeRouter(error=error))
    result = await h.client.exchange(chat(), UpstreamResponse())
    assert result.immediate is not None
    assert result.immediate.status == status
    assert result.immediate.body == f"inference error: {error.code} - {error.message}".encode()
    assert len(result.replies) == 1
    assert result.code is not None
    assert result.code.name == "OK"
    await h.observer.wait_closed(1)
    assert h.observer.events == [("failed", error.code, "", ""), ("closed", None)]


async def test_a_routing_failure_is_labelled_with_the_models_resolved_before_it(start: StartHarness) -> None:
    """The error carries no models: the stream labels it with what ``resolve`` returned (the target after
    the rewrite header), and the one failure is counted once."""
    h = await start(FakeRouter(route_error=errors.ResourceExhausted("shed")))
    result = await h.client.exchange(chat(headers=[("x-gateway-model-name-rewrite", "served-model")]))
    assert result.immediate is not None
    assert result.immediate.status == 429
    await h.observer.wait_closed(1)
    assert h.observer.events == [
        ("failed", "ResourceExhausted", "client-model", "served-model"),
        ("closed", None),
    ]


async def test_unexpected_router_exception_is_a_grpc_error_logged_with_request_id(
    start: StartHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start(FakeRouter(error=ZeroDivisionError("boom")))
    with caplog.at_level(logging.ERROR, logger="picker.extproc.stream"):
        result = await h.client.exchange(chat(request_id="rid-42"))
    assert result.replies == []
    assert result.code is not None
    assert result.code.name == "INTERNAL"
    assert "rid-42" in result.details
    records = [r for r in caplog.records if r.name == "picker.extproc.stream"]
    assert len(records) == 1
    assert "rid-42" in records[0].getMessage()
    assert "hi" not in records[0].getMessage()  # no prompt text
    await h.observer.wait_closed(1)
    assert h.observer.events == [("failed", "Unknown", "", ""), ("closed", None)]
    # the server keeps serving
    h.router.error = None
    assert (await h.client.exchange(chat())).destination == POD_2


async def test_fallbacks_are_one_comma_list_in_header_and_metadata(start: StartHarness) -> None:
    h = await start(FakeRouter((POD_3, POD_1, POD_2), max_endpoints=3))
    result = await h.client.exchange(chat())
    assert result.destination == f"{POD_3},{POD_1},{POD_2}" == result.metadata_destination
    assert result.endpoints == (POD_3, POD_1, POD_2)


async def test_subset_hint_last_non_empty_value_wins_across_messages(start: StartHarness) -> None:
    h = await start(FakeRouter((POD_1, POD_2, POD_3)))
    stream = h.client.stream()
    await stream.send(request_headers([(":path", "/v1/chat/completions")], subset=["192.168.1.1:8000"]))
    await stream.send(request_body(CHAT[:5], subset=["192.168.1.3:8000"]))
    await stream.send(request_body(CHAT[5:], end_of_stream=True))  # no metadata: keeps .3
    reply = await stream.recv()
    assert reply is not None
    assert h.router.requests[0].subset == ("192.168.1.3:8000",)
    stream.cancel()

    stream = h.client.stream()
    await stream.send(request_headers([(":path", "/v1/chat/completions")], subset=["192.168.1.1:8000"]))
    await stream.send(request_body(CHAT, end_of_stream=True, subset=[]))  # empty after non-empty: ignored
    await stream.recv()
    assert h.router.requests[1].subset == ("192.168.1.1:8000",)
    stream.cancel()

    result = await h.client.exchange(chat())
    assert h.router.requests[2].subset is None
    assert result.destination == POD_1


async def test_large_body_round_trips_in_62000_byte_chunks(start: StartHarness) -> None:
    h = await start()
    prompt = "x" * 200_000
    body = orjson.dumps({"model": "m", "prompt": prompt})
    result = await h.client.exchange(HttpRequest(body=body, chunk_size=16 * 1024))
    assert result.request_body == body
    assert result.request_body_chunks == 4
    sizes = [len(r.request_body.response.body_mutation.streamed_response.body) for r in result.replies[1:]]
    assert sizes == [62_000, 62_000, 62_000, len(body) - 186_000]
    assert result.request_set_headers["content-length"] == str(len(body))
    assert h.router.requests[0].body == body


async def test_empty_body_gets_one_empty_eos_chunk(start: StartHarness) -> None:
    h = await start(FakeRouter(parser=parse_passthrough))
    result = await h.client.exchange(HttpRequest(body=b""))
    assert result.request_body_chunks == 1
    assert result.request_body == b""
    assert "content-length" not in result.request_set_headers
    assert h.router.requests[0].body == b""


async def test_body_over_the_cap_is_refused_without_reading_the_rest(start: StartHarness) -> None:
    h = await start(max_body_bytes=1000)
    body = orjson.dumps({"model": "m", "prompt": "y" * 5000})
    result = await h.client.exchange(HttpRequest(body=body, chunk_size=400))
    assert result.immediate is not None
    assert result.immediate.status == 413
    assert result.immediate.body.startswith(
        b"inference error: PayloadTooLarge - request body exceeds the limit"
    )
    assert h.router.requests == []
    await h.observer.wait_closed(1)
    assert h.observer.events[0] == ("failed", "PayloadTooLarge", "", "")


async def test_declared_content_length_over_the_cap_is_refused_at_the_headers(start: StartHarness) -> None:
    h = await start(max_body_bytes=1000)
    stream = h.client.stream()
    await stream.send(request_headers([(":path", "/v1/completions"), ("content-length", "5000")]))
    reply = await stream.recv()  # nothing else was sent: the answer cannot depend on the body
    assert reply is not None
    assert reply.immediate_response.status.code == 413
    assert await stream.recv() is None
    code, _ = await stream.status()
    assert code.name == "OK"


async def test_request_trailers_end_the_body(start: StartHarness) -> None:
    h = await start()
    result = await h.client.exchange(chat(trailers=[("x-checksum", "1")]))
    assert result.request_body == CHAT
    assert result.request_trailers_replied
    eos = [
        r.request_body.response.body_mutation.streamed_response.end_of_stream for r in result.replies[1:-1]
    ]
    assert eos == [False]


async def test_response_json_rewritten_back_and_usage_reported(start: StartHarness) -> None:
    clock = StepClock(0.25)
    h = await start(clock=clock)
    upstream = orjson.dumps(
        {
            "id": "c",
            "model": "served-name",
            "choices": [],
            "usage": {
                "prompt_tokens": 5,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
    )
    request = chat(headers=[("x-gateway-model-name-rewrite", "served-name")])
    response = UpstreamResponse(
        headers=[("content-type", "application/json"), ("content-length", str(len(upstream)))],
        chunks=[upstream[:20], upstream[20:]],
    )
    result = await h.client.exchange(request, response)
    assert orjson.loads(result.request_body)["model"] == "served-name"
    assert orjson.loads(result.response_body)["model"] == "client-model"
    assert result.response_body == upstream.replace(b'"served-name"', b'"client-model"')
    assert result.response_removed_headers == ("content-length",)
    assert "content-length" not in (result.response_set_headers or {})
    await h.observer.wait_closed(1)
    kinds = h.observer.kinds()
    assert kinds == ["routed", "complete", "closed"]
    complete = h.observer.events[1]
    assert complete[2] == pytest.approx(0.25)  # one clock step between request headers and completion
    assert complete[3] == len(upstream)
    assert complete[4] is True
    usage = h.observer.usages[0]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.cached_tokens) == (
        5,
        2,
        7,
        4,
    )


async def test_sse_chunks_are_echoed_one_by_one_and_rewritten(start: StartHarness) -> None:
    h = await start()
    chunks = [
        b'data: {"model":"served-name","choices":[{"delta":{"content":"a"}}]}\n\n',
        b'data: {"model":"served-name","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n',
        b"data: [DONE]\n\n",
    ]
    request = chat(headers=[("x-gateway-model-name-rewrite", "served-name")])
    # stream_response=True: each chunk is sent only after the previous one was echoed
    response = UpstreamResponse(headers=[("content-type", "text/event-stream; charset=utf-8")], chunks=chunks)
    result = await h.client.exchange(request, response)
    assert result.response_body_chunks == 3
    assert result.response_body == b"".join(chunks).replace(b"served-name", b"client-model")
    usage = h.observer.usages[0]
    assert usage is not None
    assert usage.total_tokens == 4


async def test_stream_true_request_makes_a_json_typed_response_stream(start: StartHarness) -> None:
    h = await start()
    body = b'{"model":"m","prompt":"p","stream":true}'
    response = UpstreamResponse(headers=[("content-type", "application/json")], chunks=[b"a", b"b", b""])
    result = await h.client.exchange(HttpRequest(body=body), response, stream_response=True)
    assert result.response_body_chunks == 3  # echoed as they came, not buffered


async def test_grpc_response_is_buffered_until_trailers(start: StartHarness) -> None:
    h = await start()
    frames = [b"\x00\x00\x00\x00\x03abc", b"\x00\x00\x00\x00\x02de"]
    response = UpstreamResponse(
        headers=[("content-type", "application/grpc")], chunks=frames, trailers=[("grpc-status", "0")]
    )
    result = await h.client.exchange(chat(), response)
    body_replies = [r for r in result.replies if r.WhichOneof("response") == "response_body"]
    assert len(body_replies) == 1
    streamed = body_replies[0].response_body.response.body_mutation.streamed_response
    assert (streamed.body, streamed.end_of_stream) == (b"".join(frames), False)
    assert result.replies[-1].WhichOneof("response") == "response_trailers"
    assert result.response_trailers_replied


async def test_sse_followed_by_trailers(start: StartHarness) -> None:
    h = await start()
    response = UpstreamResponse(
        headers=[("content-type", "text/event-stream")], chunks=[b"data: 1\n\n"], trailers=[("x-t", "1")]
    )
    result = await h.client.exchange(chat(), response)
    assert result.response_body == b"data: 1\n\n"
    assert result.response_trailers_replied
    await h.observer.wait_closed(1)
    assert h.observer.kinds() == ["routed", "complete", "closed"]


async def test_model_server_error_status_is_reported_once(start: StartHarness) -> None:
    h = await start()
    response = UpstreamResponse(status=503, chunks=[b'{"error":"overloaded"}'])
    result = await h.client.exchange(chat(), response)
    assert result.response_body == b'{"error":"overloaded"}'
    assert result.response_set_headers is not None
    assert result.response_set_headers[":status"] == "503"
    await h.observer.wait_closed(1)
    assert h.observer.kinds() == ["routed", "failed", "complete", "closed"]
    assert h.observer.events[1] == ("failed", "ModelServerError", "client-model", "client-model")
    assert h.observer.events[2][4] is False


async def test_response_headers_with_end_of_stream_complete_the_response(start: StartHarness) -> None:
    h = await start()
    result = await h.client.exchange(chat(), UpstreamResponse(status=204, headers=()))
    assert result.response_set_headers == {"x-went-into-resp-headers": "true", ":status": "204"}
    await h.observer.wait_closed(1)
    assert h.observer.kinds() == ["routed", "failed", "complete", "closed"]


async def test_conformance_served_endpoint_verifier(start: StartHarness) -> None:
    h = await start(FakeRouter((POD_1,)), served_verifier=True)
    result = await h.client.exchange(chat(), UpstreamResponse(chunks=[b"{}"]))
    assert result.response_set_headers is not None
    assert result.response_set_headers["x-conformance-test-served-endpoint"] == POD_1
    missing = await h.client.exchange(chat(), UpstreamResponse(chunks=[b"{}"], report_served=False))
    assert missing.response_set_headers is not None
    assert (
        missing.response_set_headers["x-conformance-test-served-endpoint"]
        == "fail: missing envoy lb metadata"
    )
    off = await start(FakeRouter((POD_1,)))
    plain = await off.client.exchange(chat(), UpstreamResponse(chunks=[b"{}"]))
    assert plain.response_set_headers is not None
    assert "x-conformance-test-served-endpoint" not in plain.response_set_headers


async def test_mode_override_skips_the_response_when_asked(start: StartHarness) -> None:
    h = await start(skip_response=lambda decision: decision.target_model == "m")
    result = await h.client.exchange(HttpRequest(body=b'{"model":"m","prompt":"p"}'), UpstreamResponse())
    assert result.mode_override is not None
    assert result.mode_override.response_header_mode == result.mode_override.SKIP
    assert result.response_set_headers is None
    await h.observer.wait_closed(1)
    assert h.router.leases[0].releases == 1
    # a proxy that ignores the override still gets full response handling
    ignored = await h.client.exchange(
        HttpRequest(body=b'{"model":"m","prompt":"p"}'),
        UpstreamResponse(chunks=[b"{}"]),
        honor_mode_override=False,
    )
    assert ignored.response_body == b"{}"
    other = await h.client.exchange(HttpRequest(body=b'{"model":"x","prompt":"p"}'), UpstreamResponse())
    assert other.mode_override is None


async def test_header_value_or_raw_value_is_read_and_raw_value_written(start: StartHarness) -> None:
    h = await start()
    stream = h.client.stream()
    headers = request_headers([(":path", "/v1/completions")])
    legacy = headers.request_headers.headers.headers.add()
    legacy.key = "x-legacy"
    legacy.value = "plain-value"
    binary = headers.request_headers.headers.headers.add()
    binary.key = "x-bin"
    binary.raw_value = b"\xff\xfe"
    await stream.send(headers)
    await stream.send(request_body(b'{"model":"m","prompt":"p"}', end_of_stream=True))
    reply = await stream.recv()
    assert reply is not None
    options = {o.header.key: o.header for o in reply.request_headers.response.header_mutation.set_headers}
    assert options["x-legacy"].raw_value == b"plain-value"
    assert options["x-legacy"].value == ""
    assert options["x-bin"].raw_value == b"\xff\xfe"  # echoed byte for byte
    assert h.router.requests[0].headers["x-legacy"] == "plain-value"
    assert h.router.requests[0].headers["x-bin"] == "\ufffd\ufffd"
    stream.cancel()


async def test_buffered_response_over_the_cap_is_passed_through(start: StartHarness) -> None:
    h = await start(max_body_bytes=4096)
    pieces = [b'{"data":[' + b"0.5," * 1000, b"0.5," * 1000, b'0.5],"usage":{"prompt_tokens":9}}']
    result = await h.client.exchange(chat(), UpstreamResponse(chunks=pieces))
    assert result.response_body == b"".join(pieces)
    assert result.response_body_chunks == 2  # first two flushed at the overflow, then the last echoed
    usage = h.observer.usages[0]
    assert usage is not None
    assert usage.prompt_tokens == 9
