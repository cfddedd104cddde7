"""Leases always released exactly once; bad input never hurts the server or other streams."""

from __future__ import annotations

import asyncio

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.testing.envoy import (
    HttpRequest,
    UpstreamResponse,
    request_body,
    request_headers,
    request_trailers,
    response_body,
    response_headers,
    response_trailers,
)
from tests.integration.extproc.conftest import POD_1, POD_2, POD_3, FakeRouter, StartHarness

pytestmark = pytest.mark.integration

BODY = b'{"model":"m","prompt":"p"}'
HEADERS = [(":method", "POST"), (":path", "/v1/completions"), ("x-request-id", "r1")]


async def test_completed_stream_releases_its_lease_once(start: StartHarness) -> None:
    h = await start()
    await h.client.exchange(HttpRequest(body=BODY), UpstreamResponse(chunks=[b"{}"]))
    await h.observer.wait_closed(1)
    assert [lease.releases for lease in h.router.leases] == [1]


async def test_cancel_after_routing_releases_the_lease_once(start: StartHarness) -> None:
    h = await start()
    stream = h.client.stream()
    await stream.send(request_headers(HEADERS))
    await stream.send(request_body(BODY, end_of_stream=True))
    assert (await stream.recv()) is not None
    assert (await stream.recv()) is not None
    stream.cancel()
    await h.observer.wait_closed(1)
    assert [lease.releases for lease in h.router.leases] == [1]
    assert h.observer.kinds() == ["routed", "closed"]  # a cancel is not a failure


async def test_cancel_during_a_streamed_response_releases_the_lease_once(start: StartHarness) -> None:
    h = await start()
    stream = h.client.stream()
    await stream.send(request_headers(HEADERS))
    await stream.send(request_body(BODY, end_of_stream=True))
    await stream.recv()
    await stream.recv()
    await stream.send(response_headers([(":status", "200"), ("content-type", "text/event-stream")]))
    await stream.send(response_body(b"data: {}\n\n"))
    assert (await stream.recv()).WhichOneof("response") == "response_headers"  # type: ignore[union-attr]
    assert (await stream.recv()).WhichOneof("response") == "response_body"  # type: ignore[union-attr]
    stream.cancel()
    await h.observer.wait_closed(1)
    assert [lease.releases for lease in h.router.leases] == [1]
    assert h.observer.kinds() == ["routed", "closed"]


async def test_cancel_before_routing_closes_without_a_decision(start: StartHarness) -> None:
    h = await start()
    stream = h.client.stream()
    await stream.send(request_headers(HEADERS))
    await stream.send(request_body(BODY[:5]))
    stream.cancel()
    await h.observer.wait_closed(1)
    assert h.router.leases == []
    assert h.router.requests == []
    assert h.observer.events == [("closed", None)]


async def test_half_close_without_a_response_releases_the_lease(start: StartHarness) -> None:
    h = await start()
    result = await h.client.raw([request_headers(HEADERS), request_body(BODY, end_of_stream=True)])
    assert len(result.replies) == 2
    assert result.code == grpc.StatusCode.OK
    await h.observer.wait_closed(1)
    assert [lease.releases for lease in h.router.leases] == [1]


async def test_server_shutdown_releases_in_flight_leases(start: StartHarness) -> None:
    h = await start()
    streams = []
    for _ in range(3):
        stream = h.client.stream()
        await stream.send(request_headers(HEADERS))
        await stream.send(request_body(BODY, end_of_stream=True))
        await stream.recv()
        await stream.recv()
        streams.append(stream)
    await h.server.stop(0)
    await h.observer.wait_closed(3)
    assert [lease.releases for lease in h.router.leases] == [1, 1, 1]
    assert h.server.bound_port != 0


async def test_many_concurrent_streams_do_not_interfere(start: StartHarness) -> None:
    h = await start(FakeRouter((POD_1, POD_2, POD_3)))
    n = 48

    async def one(i: int) -> None:
        model = f"model-{i}"
        body = orjson.dumps({"model": model, "prompt": "p" * (1 + i * 997), "stream": i % 2 == 0})
        subset = [(POD_1, POD_2, POD_3)[i % 3]]
        rewrite = [("x-gateway-model-name-rewrite", f"target-{i}")] if i % 4 == 0 else []
        request = HttpRequest(
            body=body, request_id=f"req-{i}", chunk_size=1000 + i, subset=subset, headers=rewrite
        )
        if i % 2 == 0:
            sse = [f'data: {{"model":"target-{i}","n":{k}}}\n\n'.encode() for k in range(3)]
            response = UpstreamResponse(headers=[("content-type", "text/event-stream")], chunks=sse)
        else:
            response = UpstreamResponse(chunks=[orjson.dumps({"model": model, "i": i})])
        result = await h.client.exchange(request, response)
        assert result.destination == subset[0]
        assert result.request_set_headers["x-request-id"] == f"req-{i}"
        expected_model = f"target-{i}" if rewrite else model
        assert orjson.loads(result.request_body)["model"] == expected_model
        if i % 2 == 0:
            restored = model if rewrite else f"target-{i}"
            assert result.response_body.count(f'"model":"{restored}"'.encode()) == 3
        else:
            assert orjson.loads(result.response_body) == {"model": model, "i": i}

    await asyncio.gather(*(one(i) for i in range(n)))
    await h.observer.wait_closed(n)
    assert sorted(lease.releases for lease in h.router.leases) == [1] * n
    assert h.observer.kinds().count("complete") == n


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([response_body(b"x", end_of_stream=True)], "response_body before response_headers"),
        ([request_body(BODY, end_of_stream=True)], "request_body before request_headers"),
        ([request_headers(HEADERS), request_headers(HEADERS)], "request_headers after the request started"),
        ([request_headers(HEADERS), response_headers([(":status", "200")])], "before the request ended"),
        ([request_trailers()], "request_trailers before request_headers"),
        ([response_trailers()], "response_trailers before response_headers"),
        ([pb.ProcessingRequest()], "without a known request field"),
        (
            [
                request_headers(HEADERS, end_of_stream=True),
                request_body(BODY, end_of_stream=True),
            ],
            "request_body after the request ended",
        ),
        (
            [
                request_headers(HEADERS, end_of_stream=True),
                response_headers([(":status", "200")]),
                response_headers([(":status", "200")]),
            ],
            "response_headers twice",
        ),
    ],
)
async def test_messages_out_of_order_end_the_rpc_cleanly(
    start: StartHarness, messages: list[object], fragment: str
) -> None:
    h = await start()
    result = await h.client.raw(messages)
    assert result.code == grpc.StatusCode.FAILED_PRECONDITION
    assert fragment in result.details
    await h.observer.wait_closed(1)
    assert [lease.releases for lease in h.router.leases] == [1] * len(h.router.leases)
    assert ("failed", "Unknown") in [event[:2] for event in h.observer.events]
    ok = await h.client.exchange(HttpRequest(body=BODY))
    assert ok.destination == POD_2


async def test_undecodable_bytes_do_not_hurt_other_streams(start: StartHarness) -> None:
    h = await start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{h.port}") as channel:
        call = channel.stream_stream(
            "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
            request_serializer=lambda raw: raw,
            response_deserializer=pb.ProcessingResponse.FromString,
        )()
        await call.write(b"\xff\xff\xff\xff not a protobuf")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await h.observer.wait_closed(1)
    good, junk = await asyncio.gather(
        h.client.exchange(HttpRequest(body=BODY)),
        h.client.raw([response_body(b"junk")]),
    )
    assert good.destination == POD_2
    assert junk.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model":"m","prompt":"\xc3\x28"}', b"not valid UTF-8"),
        (b'{"model":["m"],"prompt":"p"}', b"model not found in request body"),
        (b'{"model":"m","prompt":"p","stream":"true"}', b"stream must be a boolean"),
        (b'{"model":"m","prompt":"p"', b"error unmarshaling request bodyMap"),
        (b"\x00\x01\x02", b"error unmarshaling request bodyMap"),
    ],
)
async def test_junk_bodies_get_a_400(start: StartHarness, body: bytes, fragment: bytes) -> None:
    h = await start()
    result = await h.client.exchange(HttpRequest(body=body))
    assert result.immediate is not None
    assert result.immediate.status == 400
    assert fragment in result.immediate.body
