"""The aiohttp client that ``bench_scrape --fetcher aiohttp`` compares ``LeanFetcher`` with.

The scraper used it for ``https://`` pages until LeanFetcher read them over asyncio's TLS transport too: a
framing error aiohttp's parser finds after a response's headers fails the connection but not the body being
read, which then waits for the scrape timeout.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from picker.scrape.client import CappedBody, ScrapeError

__all__ = ["AiohttpFetcher"]


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
