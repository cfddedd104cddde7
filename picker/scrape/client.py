"""What fetching ``/metrics`` pages means to the scraper: :class:`MetricsFetcher`, :class:`ScrapeError`, and
:class:`CappedBody`, the page cap every fetcher reads through (``picker.scrape.http.LeanFetcher`` for http
and https; ``benchmarks/aiohttp_fetcher.py``, the aiohttp client the benchmark compares it with).

The scraper depends on the small :class:`MetricsFetcher` protocol, so tests and benchmarks can swap the
transport without touching the scrape loop.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol


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
