"""The fake server's HTTP/1.1 layer with raw sockets: pipelining, chunked bodies, 100-continue, keep-alive,
HTTP/1.0 streaming, malformed requests, and a client leaving mid-stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from picker.testing.fake_server import FakeServer

pytestmark = pytest.mark.integration


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length or chunked body)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.strip().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    async with FakeServer("vllm", time_scale=0.01) as server:
        yield server


async def test_pipelined_requests_are_answered_in_order(fake: FakeServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.bound_port)
    body = json.dumps({"model": fake.models[0], "prompt": "hi", "max_tokens": 3}).encode()
    writer.write(
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n" % (len(body), body)
    )
    first, second, third = [await read_response(reader) for _ in range(3)]
    writer.close()
    assert first[0] == 200
    assert first[2] == b""
    assert second[0] == 200
    assert json.loads(second[2])["usage"]["completion_tokens"] == 3
    assert json.loads(third[2])["object"] == "list"


async def test_chunked_request_body_and_expect_continue(fake: FakeServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.bound_port)
    body = json.dumps({"model": fake.models[0], "prompt": "chunked", "max_tokens": 2}).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    half = len(body) // 2
    writer.write(b"%x\r\n%b\r\n" % (half, body[:half]))
    await writer.drain()
    writer.write(b"%x;ext=1\r\n%b\r\n0\r\nTrailer: x\r\n\r\n" % (len(body) - half, body[half:]))
    status, _, answer = await read_response(reader)
    writer.close()
    assert status == 200
    assert json.loads(answer)["usage"]["completion_tokens"] == 2


async def test_connection_close_is_honoured(fake: FakeServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.bound_port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200
    assert headers["connection"] == "close"
    assert await reader.read() == b""  # the server closed
    writer.close()


async def test_http10_stream_is_close_delimited(fake: FakeServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.bound_port)
    body = json.dumps({"model": fake.models[0], "prompt": "x", "max_tokens": 4, "stream": True}).encode()
    writer.write(b"POST /v1/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    raw = await reader.read()  # until the server closes
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    events = [e for e in payload.decode().split("\n\n") if e]
    assert len(events) == 5
    assert events[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET /health HTTP/2.0\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (b"POST /v1/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", 413),
    ],
)
async def test_malformed_requests_get_an_error_and_a_closed_connection(
    fake: FakeServer, request_: bytes, status: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.bound_port)
    writer.write(request_)
    got, headers, _ = await read_response(reader)
    assert got == status
    assert headers["connection"] == "close"
    assert await reader.read() == b""
    writer.close()
    # the server itself is fine
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.bound_port)
    writer.write(b"GET /health HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_a_client_leaving_mid_stream_aborts_its_request() -> None:
    async with FakeServer("vllm", time_scale=1.0) as fake:  # real time: the stream outlives the test
        await _leave_mid_stream(fake)


async def _leave_mid_stream(fake: FakeServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.bound_port)
    body = json.dumps({"model": fake.models[0], "prompt": "x", "max_tokens": 8000, "stream": True}).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    await reader.readuntil(b"data: ")  # tokens are flowing
    assert fake.snapshot().running == 1
    writer.close()
    await writer.wait_closed()
    for _ in range(300):
        if fake.snapshot().finished_abort == 1:
            break
        await asyncio.sleep(0.01)
    snap = fake.snapshot()
    assert (snap.finished_abort, snap.running, snap.used_blocks) == (1, 0, 0)
