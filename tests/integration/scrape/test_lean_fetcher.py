"""The scraper's HTTP client against real sockets: every way a server may frame a page, keep-alive reuse,
stale connections, caps, timeouts and broken servers."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import pytest

from picker.scrape.client import ScrapeError
from picker.scrape.http import LeanFetcher
from picker.testing.fake_server import FakeServer
from picker.testing.raw_http import RawHttpServer, Respond, fixed

pytestmark = pytest.mark.integration

PAGE = b"".join(b'vllm:num_requests_waiting{model_name="m"} %d\n' % i for i in range(200))


@pytest.fixture
async def server() -> AsyncIterator[RawHttpServer]:
    async with RawHttpServer() as s:
        yield s


@pytest.fixture
async def fetcher() -> AsyncIterator[LeanFetcher]:
    f = LeanFetcher(max_page_bytes=64 * 1024)
    yield f
    await f.close()


async def test_content_length_pages_reuse_one_connection(server: RawHttpServer, fetcher: LeanFetcher) -> None:
    server.routes["/metrics"] = fixed(PAGE, extra=b"Content-Type: text/plain\r\n")
    for _ in range(5):
        assert await fetcher.fetch(server.url("/metrics"), timeout_s=2.0) == PAGE
    assert server.connections == 1
    head = server.requests[0]
    assert head.startswith(b"GET /metrics HTTP/1.1\r\n")
    assert b"Host: 127.0.0.1:" in head
    assert b"Accept-Encoding: identity" in head


async def test_query_strings_are_sent_as_given(server: RawHttpServer, fetcher: LeanFetcher) -> None:
    server.routes["/metrics"] = fixed(b"ok")
    await fetcher.fetch(server.url("/metrics?name[]=vllm%3Anum_requests_waiting"), timeout_s=2.0)
    assert server.requests[-1].startswith(b"GET /metrics?name[]=vllm%3Anum_requests_waiting HTTP/1.1")


async def test_chunked_pages_with_extensions_and_trailers(
    server: RawHttpServer, fetcher: LeanFetcher
) -> None:
    async def chunked(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for at in range(0, len(PAGE), 1000):
            part = PAGE[at : at + 1000]
            writer.write(b"%x;ext=1\r\n" % len(part) + part + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"0\r\nX-Trailer: 1\r\n\r\n")
        return True

    server.routes["/c"] = chunked
    assert await fetcher.fetch(server.url("/c"), timeout_s=2.0) == PAGE
    assert await fetcher.fetch(server.url("/c"), timeout_s=2.0) == PAGE
    assert server.connections == 1


async def test_close_delimited_pages(server: RawHttpServer, fetcher: LeanFetcher) -> None:
    async def close(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + PAGE)
        return False

    server.routes["/old"] = close
    assert await fetcher.fetch(server.url("/old"), timeout_s=2.0) == PAGE
    assert await fetcher.fetch(server.url("/old"), timeout_s=2.0) == PAGE
    assert server.connections == 2


async def test_gzip_is_decoded_even_though_identity_was_asked(
    server: RawHttpServer, fetcher: LeanFetcher
) -> None:
    server.routes["/gz"] = fixed(gzip.compress(PAGE), extra=b"Content-Encoding: gzip\r\n")
    assert await fetcher.fetch(server.url("/gz"), timeout_s=2.0) == PAGE


async def test_a_server_closing_idle_connections_costs_no_failure(
    server: RawHttpServer, fetcher: LeanFetcher
) -> None:
    async def once(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False  # keep-alive advertised, then closed while the client holds it idle

    server.routes["/once"] = once
    for _ in range(3):
        assert await fetcher.fetch(server.url("/once"), timeout_s=2.0) == b"ok"
        for _ in range(1000):  # the close arrives while the connection is idle: the pool lets it go
            if not any(fetcher._idle.values()):
                break
            await asyncio.sleep(0.005)
        assert not any(fetcher._idle.values()), "the server's close never reached the idle connection"
    assert server.connections == 3


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (fixed(b"no", status=b"500 Internal Server Error"), "HTTP 500"),
        (fixed(b"", status=b"302 Found", extra=b"Location: /x\r\n"), "HTTP 302"),
        (fixed(b"x" * 70_000), "page too large"),
        (fixed(gzip.compress(b"x" * 70_000), extra=b"Content-Encoding: gzip\r\n"), "larger than"),
        (fixed(b"garbage", extra=b"Content-Encoding: gzip\r\n"), "bad gzip body"),
    ],
    ids=["500", "redirect", "too-large", "gzip-bomb", "bad-gzip"],
)
async def test_bad_answers_are_scrape_errors(
    server: RawHttpServer, fetcher: LeanFetcher, route: Respond, message: str
) -> None:
    server.routes["/bad"] = route
    with pytest.raises(ScrapeError, match=message):
        await fetcher.fetch(server.url("/bad"), timeout_s=2.0)
    server.routes["/good"] = fixed(b"ok")
    assert await fetcher.fetch(server.url("/good"), timeout_s=2.0) == b"ok"  # the client is still usable


async def test_malformed_and_truncated_responses(server: RawHttpServer, fetcher: LeanFetcher) -> None:
    async def garbage(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HELLO THERE\r\n\r\n")
        return True

    async def truncated(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        return False

    async def big_chunks(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            writer.write(b"1000\r\n" + b"x" * 4096 + b"\r\n")
        return True

    server.routes.update({"/garbage": garbage, "/truncated": truncated, "/chunks": big_chunks})
    with pytest.raises(ScrapeError, match="bad status line"):
        await fetcher.fetch(server.url("/garbage"), timeout_s=2.0)
    with pytest.raises(ScrapeError, match="connection lost"):
        await fetcher.fetch(server.url("/truncated"), timeout_s=2.0)
    with pytest.raises(ScrapeError, match="larger than"):
        await fetcher.fetch(server.url("/chunks"), timeout_s=2.0)


async def test_a_hanging_server_times_out_and_its_connection_is_dropped(
    server: RawHttpServer, fetcher: LeanFetcher
) -> None:
    release = asyncio.Event()

    async def hang(writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        return False

    server.routes["/hang"] = hang
    with pytest.raises(ScrapeError, match=r"timeout after 0\.2s"):
        await fetcher.fetch(server.url("/hang"), timeout_s=0.2)
    release.set()
    server.routes["/ok"] = fixed(b"ok")
    assert await fetcher.fetch(server.url("/ok"), timeout_s=2.0) == b"ok"
    assert server.connections == 2  # the timed-out connection was never reused


async def test_refused_connections_and_bad_urls(fetcher: LeanFetcher) -> None:
    with pytest.raises(ScrapeError, match="ConnectionRefusedError"):
        await fetcher.fetch("http://127.0.0.1:1/metrics", timeout_s=2.0)
    with pytest.raises(ScrapeError, match="unsupported URL"):
        await fetcher.fetch("ftp://127.0.0.1/metrics", timeout_s=2.0)


async def test_a_fake_model_server_page_with_name_filtering() -> None:
    fetcher = LeanFetcher()  # the real vLLM page is about 72 KB
    async with FakeServer("vllm") as fake:
        full = await fetcher.fetch(f"{fake.url}/metrics", timeout_s=2.0)
        filtered = await fetcher.fetch(
            f"{fake.url}/metrics?name[]=vllm%3Anum_requests_waiting", timeout_s=2.0
        )
    await fetcher.close()
    assert b"vllm:num_requests_waiting" in full
    assert b"vllm:kv_cache_usage_perc" in full
    assert b"vllm:num_requests_waiting" in filtered
    assert b"vllm:kv_cache_usage_perc" not in filtered
    assert fake.served["metrics"] == 2
