"""Fetching ``/metrics`` pages: the only place that talks HTTP to model servers.

The scraper depends on the small :class:`MetricsFetcher` protocol, so tests and benchmarks can swap the
transport, and a faster one can replace this without touching the scrape loop.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from typing import Any, Protocol

import aiohttp


class ScrapeError(Exception):
    """A scrape failed (connection, timeout, non-200, oversized page). The message is safe to log."""


class MetricsFetcher(Protocol):
    async def fetch(self, url: str, *, timeout_s: float) -> bytes: ...

    async def close(self) -> None: ...


class CappedBody:
    """A page's bytes as they arrive, decoded (gzip/deflate) on the fly, capped while reading; both
    fetchers (plain http and https) read every page through it, so the cap has one implementation.

    Both the bytes on the wire and the decoded bytes count against ``limit``: a page is refused the moment
    either would exceed it, whatever the framing, so memory held per scrape never exceeds about ``limit``
    (plus one socket read). A compressed page is inflated piece by piece with ``max_length``, so a
    decompression bomb stops at the cap too. Other encodings are kept as they are (the page then fails to
    parse, which is a failed scrape).
    """

    __slots__ = ("_decoder", "_encoding", "_limit", "_parts", "_size", "raw_size")

    def __init__(self, limit: int, encoding: bytes) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        #: bytes received (before decoding)
        self.raw_size = 0
        self._size = 0
        self._decoder: Any = None
        encoding = encoding.strip().lower()
        self._encoding = encoding.decode("latin-1")
        if encoding in (b"gzip", b"x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == b"deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)

    def feed(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.raw_size += len(data)
        if self.raw_size > self._limit:
            raise ScrapeError(f"page larger than {self._limit} bytes")
        decoder = self._decoder
        if decoder is None:
            out = bytes(data)
        else:
            try:
                out = decoder.decompress(data, self._limit - self._size + 1)
            except zlib.error as exc:
                raise ScrapeError(f"bad {self._encoding} body: {exc}") from None
            if decoder.unconsumed_tail:
                raise ScrapeError(f"page larger than {self._limit} bytes")
        self._size += len(out)
        if self._size > self._limit:
            raise ScrapeError(f"page larger than {self._limit} bytes")
        if out:
            self._parts.append(out)

    def finish(self) -> bytes:
        parts = self._parts
        self._parts = []
        if self._decoder is not None:
            try:
                tail = self._decoder.flush()
            except zlib.error as exc:
                raise ScrapeError(f"bad {self._encoding} body: {exc}") from None
            if self._size + len(tail) > self._limit:
                raise ScrapeError(f"page larger than {self._limit} bytes")
            parts.append(tail)
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)


class AiohttpFetcher:
    """Keep-alive HTTP(S) GETs with a per-request timeout and a page-size cap.

    One connection per host is kept alive (the reference keeps 2 idle per host); TLS is not verified,
    as in the reference's ``insecureSkipVerify: true`` default, because model servers in a pool usually
    serve self-signed certificates if any. aiohttp does not decode the body (``auto_decompress=False``):
    :class:`CappedBody` does, with the same cap on the wire and decoded bytes as the plain-http fetcher,
    whatever aiohttp's own decompression limits are in the installed version.
    """

    def __init__(self, *, max_page_bytes: int = 8 << 20, insecure_skip_verify: bool = True) -> None:
        self._max = max_page_bytes
        self._insecure = insecure_skip_verify
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_ctx: ssl.SSLContext | bool = False if self._insecure else ssl.create_default_context()
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=2, ssl=ssl_ctx, keepalive_timeout=30, enable_cleanup_closed=True
            )
            # identity: prometheus_client servers gzip on request, which costs CPU on both sides
            # for pages that are a few KB once filtered with name[].
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                headers={"Accept-Encoding": "identity", "Accept": "text/plain"},
            )
        return self._session

    async def fetch(self, url: str, *, timeout_s: float) -> bytes:
        session = self._get_session()
        try:
            async with asyncio.timeout(timeout_s), session.get(url, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ScrapeError(f"HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > self._max:
                    raise ScrapeError(f"page too large ({resp.content_length} bytes)")
                encoding = resp.headers.get("Content-Encoding", "").encode("latin-1", "replace")
                return await self._read_capped(resp.content, CappedBody(self._max, encoding))
        except TimeoutError as exc:
            raise ScrapeError(f"timeout after {timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise ScrapeError(f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise ScrapeError(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    async def _read_capped(content: aiohttp.StreamReader, body: CappedBody) -> bytes:
        """The whole (decoded) body, refused as soon as it exceeds the cap: read piece by piece, since
        ``read(n)`` returns whatever is buffered (a partial page) and the reader holds at most one piece."""
        while piece := await content.readany():
            body.feed(piece)
        return body.finish()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
