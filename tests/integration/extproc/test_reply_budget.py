"""Replies not yet written count against a budget of their own (``picker.extproc.budget``, the body budget's
size, each reply twice): a proxy that reads none of them cannot make the server hold more echoes than the
budget allows, once it reads every reply goes out unchanged and the budget is whole again, and request
bodies that fill the body budget hold no reply back."""

from __future__ import annotations

import asyncio

import pytest

from picker.extproc import wire
from picker.testing.envoy import EnvoyClient, request_body, request_headers, response_body, response_headers
from picker.testing.poll import eventually
from tests.integration.extproc.conftest import StartHarness

pytestmark = pytest.mark.integration

MIB = 1 << 20
#: the server's body (and reply) budget, and what each stream's one response chunk is
LIMIT = 8 * MIB
CHUNK = 1 * MIB
STREAMS = 8
#: the peer's own receive window (gRPC's probe off): no echo fits in it, so none completes unread
PEER_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 << 10)]
SSE = response_headers([(":status", "200"), ("content-type", "text/event-stream")])


async def test_a_peer_that_reads_nothing_holds_no_more_echoes_than_the_budget(start: StartHarness) -> None:
    """Eight streams each send one 1 MiB SSE chunk and read nothing: three echoes fit in the 8 MiB reply
    budget (twice their size each) and wait in gRPC's send path, the other five wait for room and their
    streams read nothing more. Before the replies were budgeted, all eight were handed to gRPC."""
    harness = await start(max_buffered_bytes=LIMIT)
    budget = harness.server.body_budget.replies
    echo = 2 * len(wire.response_body_reply(b"x" * CHUNK, False))
    fit = LIMIT // echo
    chunks = [bytes([ord("a") + i]) * CHUNK for i in range(STREAMS)]
    async with EnvoyClient(f"127.0.0.1:{harness.port}", timeout=60.0, options=PEER_OPTIONS) as peer:
        streams = [peer.stream() for _ in range(STREAMS)]
        for stream, chunk in zip(streams, chunks, strict=True):
            await stream.send(SSE)
            await stream.send(response_body(chunk))
        held = await eventually(
            lambda: (budget.used, budget.waiting),
            "echoes reserved and waiting",
            done=lambda seen: seen == (fit * echo, STREAMS - fit),
        )
        assert held[0] <= LIMIT

        async def read(stream_index: int) -> bytes:
            stream = streams[stream_index]
            headers = await stream.recv()
            assert headers is not None
            assert headers.HasField("response_headers"), headers
            reply = await stream.recv()
            assert reply is not None
            assert reply.HasField("response_body"), reply
            return bytes(reply.response_body.response.body_mutation.streamed_response.body)

        # the peer reads now: each written echo gives its room to a waiting one, and every echo is the
        # chunk as it was sent
        echoed = await asyncio.wait_for(asyncio.gather(*(read(i) for i in range(STREAMS))), 60.0)
        assert echoed == chunks
        await eventually(lambda: (budget.used, budget.waiting), "an empty budget", done=lambda s: s == (0, 0))
        for stream in streams:
            stream.cancel()
    await harness.observer.wait_closed(STREAMS)
    assert (budget.used, budget.waiting) == (0, 0)


async def test_a_stream_cancelled_while_its_echo_waits_gives_everything_back(start: StartHarness) -> None:
    """The proxy gives up on streams whose echoes are reserved or waiting: the budget is whole again."""
    harness = await start(max_buffered_bytes=LIMIT)
    budget = harness.server.body_budget.replies
    echo = 2 * len(wire.response_body_reply(b"x" * CHUNK, False))
    fit = LIMIT // echo
    async with EnvoyClient(f"127.0.0.1:{harness.port}", timeout=60.0, options=PEER_OPTIONS) as peer:
        streams = [peer.stream() for _ in range(STREAMS)]
        for stream in streams:
            await stream.send(SSE)
            await stream.send(response_body(b"x" * CHUNK))
        await eventually(
            lambda: (budget.used, budget.waiting),
            "echoes reserved and waiting",
            done=lambda seen: seen == (fit * echo, STREAMS - fit),
        )
        for stream in streams:
            stream.cancel()
        await harness.observer.wait_closed(STREAMS)
    assert (budget.used, budget.waiting) == (0, 0)


async def test_a_reply_larger_than_the_budget_still_goes_out(start: StartHarness) -> None:
    """A 2 MiB echo with a 1 MiB budget takes the whole budget instead of waiting for room that cannot
    exist; a reading peer gets it unchanged."""
    harness = await start(max_buffered_bytes=1 * MIB)
    chunk = b"y" * (2 * MIB)
    stream = harness.client.stream()
    await stream.send(SSE)
    await stream.send(response_body(chunk, end_of_stream=True))
    headers = await stream.recv()
    assert headers is not None
    assert headers.HasField("response_headers"), headers
    reply = await stream.recv()
    assert reply is not None, await stream.status()
    assert reply.response_body.response.body_mutation.streamed_response.body == chunk
    await harness.observer.wait_closed(1)
    assert harness.server.body_budget.replies.used == 0


async def test_request_bodies_that_fill_the_body_budget_hold_no_reply_back(start: StartHarness) -> None:
    """Two unfinished request bodies fill the 1 MiB body budget: a third body is refused with its 503 at
    once and another stream's echo goes out, neither waiting for bodies the proxy may never finish."""
    harness = await start(max_buffered_bytes=1 * MIB)
    headers = request_headers([(":method", "POST"), (":path", "/v1/completions")])
    half = request_body(b"x" * (MIB // 2), end_of_stream=False)
    held = [harness.client.stream() for _ in range(2)]
    for stream in held:
        await stream.send(headers)
        await stream.send(half)
    await eventually(lambda: harness.server.body_budget.used, "the body budget full", done=lambda u: u == MIB)
    refused = harness.client.stream()
    await refused.send(headers)
    await refused.send(half)
    reply = await asyncio.wait_for(refused.recv(), 30.0)
    assert reply is not None
    assert reply.immediate_response.status.code == 503, reply
    echoed = harness.client.stream()
    await echoed.send(SSE)
    await echoed.send(response_body(b"z" * 4096, end_of_stream=True))
    assert await asyncio.wait_for(echoed.recv(), 30.0) is not None  # the headers reply
    reply = await asyncio.wait_for(echoed.recv(), 30.0)
    assert reply is not None
    assert reply.response_body.response.body_mutation.streamed_response.body == b"z" * 4096
    for stream in held:
        stream.cancel()
