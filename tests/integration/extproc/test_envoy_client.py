"""The Envoy-like client itself: it must catch servers that break the reply order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from picker.testing import replies as messages
from picker.testing.envoy import EnvoyClient, HttpRequest, ProtocolOrderError, UpstreamResponse

pytestmark = pytest.mark.integration

BODY = b'{"model":"m","prompt":"p"}'


def _headers_reply() -> Any:
    return messages.request_headers_reply("10.0.0.1:80", [], len(BODY))


ScriptedServer = Callable[[list[Any]], Any]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[list[Any]], Any]]:
    """A server that reads the request phase, writes a fixed list of replies, then drains to EOF
    (so the client never writes into a finished RPC)."""
    servers: list[Any] = []

    async def _start(replies: list[Any]) -> int:
        async def process(_iterator: Any, context: Any) -> None:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                if request.WhichOneof("request") == "request_trailers" or (
                    request.HasField("request_body") and request.request_body.end_of_stream
                ):
                    break
            for reply in replies:
                await context.write(reply)
            while await context.read() is not grpc.aio.EOF:
                pass

        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "envoy.service.ext_proc.v3.ExternalProcessor",
                    {
                        "Process": grpc.stream_stream_rpc_method_handler(
                            process,
                            request_deserializer=pb.ProcessingRequest.FromString,
                            response_serializer=pb.ProcessingResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return port

    yield _start
    for server in servers:
        await server.stop(0)


@pytest.mark.parametrize(
    ("replies", "message"),
    [
        ([messages.request_body_replies(BODY)[0], _headers_reply()], "before the matching headers reply"),
        ([_headers_reply(), _headers_reply()], "second request_headers reply"),
        (
            [
                _headers_reply(),
                *messages.request_body_replies(BODY),
                messages.request_body_replies(BODY)[0],
                messages.REQUEST_TRAILERS_REPLY,
            ],
            "after its end_of_stream chunk",
        ),
        ([messages.immediate_response(500, "x"), _headers_reply()], "after an immediate_response"),
        ([messages.response_headers_reply([]), _headers_reply()], "after a later phase"),
        ([pb.ProcessingResponse()], "without a known response field"),
    ],
)
async def test_out_of_order_replies_are_reported(
    scripted: Callable[[list[Any]], Any], replies: list[Any], message: str
) -> None:
    port = await scripted(replies)
    async with EnvoyClient(f"127.0.0.1:{port}", timeout=5.0) as client:
        with pytest.raises(ProtocolOrderError, match=message):
            # trailers keep the client reading the request phase until the trailers reply
            await client.exchange(HttpRequest(body=BODY, trailers=[("t", "1")]), UpstreamResponse())


async def test_in_order_replies_are_collected(scripted: Callable[[list[Any]], Any]) -> None:
    replies = [_headers_reply(), *messages.request_body_replies(BODY)]
    port = await scripted(replies)
    async with EnvoyClient(f"127.0.0.1:{port}", timeout=5.0) as client:
        result = await client.exchange(HttpRequest(body=BODY))
    assert result.destination == "10.0.0.1:80"
    assert result.request_body == BODY
    assert result.code == grpc.StatusCode.OK
