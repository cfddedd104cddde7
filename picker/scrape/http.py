"""A lean keep-alive HTTP/1.1 GET client for ``/metrics`` pages, on asyncio protocols.

Why not aiohttp for plain http: the scraper fetches every endpoint every 50 ms (5,120 GETs/s for 256
endpoints). aiohttp's client builds a request object, a response object, a stream reader, a timer and
several tasks' worth of callbacks per GET; ``benchmarks/bench_scrape.py`` measures both (see
``benchmarks/RESULTS.md``). This client keeps per connection one prebuilt request per URL and a small
parser fed straight from ``data_received``: one write and one future per GET.

What it implements, and no more: ``GET`` over HTTP/1.1 with keep-alive (at most ``max_idle_per_host``
idle connections per ``host:port`` are kept), responses delimited by ``Content-Length``, chunked transfer
coding or connection close; ``Content-Encoding: gzip``/``deflate`` decoding (we ask for ``identity``; some
servers compress anyway); a page-size cap applied while reading; one timeout covering connect, send and
the whole response. Redirects are not followed (a 3xx is a failed scrape, as with the aiohttp fetcher).
A GET on a reused connection that the server had already closed is retried once on a new connection
(GET is idempotent; the race is a normal part of keep-alive).

``https://`` pages take the same path over asyncio's TLS transport (the ``ssl`` module, as aiohttp uses it),
so the cap and the framing limits hold over TLS exactly as over plain http, and a refused TLS connection is
aborted at once. (They went through aiohttp before: a framing error aiohttp's parser found after the
headers failed the connection but never the body being read, which then waited for the scrape timeout.)

Why one module of this size: the connection protocol, the response parser it feeds from ``data_received``
and the per-host pool share one connection's state machine (a parser completes the GET's future and decides
whether the connection is reusable); split, that state would cross module boundaries on every byte.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from picker.scrape.client import CappedBody, ScrapeError

__all__ = ["LeanFetcher"]

_MAX_HEAD: Final = 64 * 1024
_MAX_URL_CACHE: Final = 8192
#: a pooled connection's identity: scheme, host, port
_Key = tuple[str, str, int]


class _StaleConnectionError(Exception):
    """A reused keep-alive connection was closed by the server before any byte of the response."""


class _Response:
    __slots__ = ("body", "keep_alive", "status")

    def __init__(self, status: int, body: bytes, keep_alive: bool) -> None:
        self.status = status
        self.body = body
        self.keep_alive = keep_alive


#: a chunk-size line (hex size plus extensions) longer than this is malformed
_MAX_CHUNK_LINE: Final = 1024
# chunked framing states
_SIZE_LINE: Final = 0
_DATA: Final = 1
_DATA_END: Final = 2
_TRAILERS: Final = 3


class _Connection(asyncio.Protocol):
    """One TCP connection; at most one request in flight. Parses the response as bytes arrive.

    Only the header section and an incomplete framing line are ever buffered; body bytes go straight into
    a capped :class:`CappedBody` (dropped whole on a rejection), so a server that sends an endless chunk, an
    endless close-delimited body or a huge declared chunk is refused at the cap, holding at most the cap.
    """

    def __init__(self, key: _Key, max_body: int, on_lost: Callable[[_Connection], None]) -> None:
        self.key = key
        self._max_body = max_body
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._waiter: asyncio.Future[_Response] | None = None
        self._buf = bytearray()
        self._got_bytes = False
        # response state
        self._status = 0
        self._keep_alive = True
        self._length = -1  # Content-Length, -1 = unknown
        self._chunked = False
        self._encoding = b""
        self._head_done = False
        self._body: CappedBody | None = None
        #: body bytes still expected: of the Content-Length body, or of the current chunk's data
        self._left = 0
        self._chunk_state = _SIZE_LINE

    # ----------------------------------------------------------------------------------- asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # create_connection gives a Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost(self)
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._release()
            return
        if self._head_done and self._length < 0 and not self._chunked and self._body is not None:
            # a close-delimited body ends here
            self._finish(keep_alive=False)
            return
        self._release()
        if not self._got_bytes and self.reused:
            waiter.set_exception(_StaleConnectionError())
            return
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "connection closed by the server"
        waiter.set_exception(ScrapeError(f"connection lost before the response ended ({reason})"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # bytes nobody asked for: the connection is out of sync, never reuse it
            self._abort()
            return
        self._got_bytes = True
        try:
            self._parse(data)
        except ScrapeError as exc:
            self._fail(exc)

    # ----------------------------------------------------------------------------------- request
    def request(self, raw: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[_Response]:
        waiter: asyncio.Future[_Response] = loop.create_future()
        self._waiter = waiter
        self._buf.clear()
        self._got_bytes = False
        self._head_done = False
        self._length = -1
        self._chunked = False
        self._encoding = b""
        self._body = None
        self._left = 0
        self._chunk_state = _SIZE_LINE
        assert self.transport is not None
        self.transport.write(raw)
        return waiter

    def close(self) -> None:
        self._abort()

    # ----------------------------------------------------------------------------------- parsing
    def _parse(self, data: bytes) -> None:
        if not self._head_done:
            buf = self._buf
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ScrapeError("malformed response: header section too large")
                return
            self._parse_head(bytes(buf[:end]))
            self._head_done = True
            self._body = CappedBody(self._max_body, self._encoding)
            data = bytes(buf[end + 4 :])
            buf.clear()
            if self._length == 0:
                self._finish(keep_alive=self._keep_alive)
                return
            self._left = self._length
        if self._chunked:
            self._parse_chunks(data)
            return
        body = self._body
        assert body is not None
        if self._length >= 0:
            take = data[: self._left]
            body.feed(take)
            self._left -= len(take)
            if self._left == 0:
                self._finish(keep_alive=self._keep_alive)
            return
        body.feed(data)  # close-delimited: capped as it arrives

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ScrapeError("malformed response: bad status line")
        self._status = int(parts[1])
        keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ScrapeError("malformed response: bad header line")
            key = name.strip().lower()
            if key == b"content-length":
                text = value.strip()
                if not text.isdigit() or len(text) > 19:
                    raise ScrapeError("malformed response: bad Content-Length")
                self._length = int(text)
                if self._length > self._max_body:
                    raise ScrapeError(f"page too large ({self._length} bytes)")
            elif key == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            elif key == b"connection":
                token = value.strip().lower()
                if token == b"close":
                    keep_alive = False
                elif token == b"keep-alive":
                    keep_alive = True
            elif key == b"content-encoding":
                self._encoding = value.strip().lower()
        if self._chunked:
            self._length = -1
        if self._status in (204, 304) or 100 <= self._status < 200:
            self._length = 0
            self._chunked = False
        self._keep_alive = keep_alive

    def _parse_chunks(self, data: bytes) -> None:
        """Chunked framing. Chunk data goes to the body as it arrives (never waiting for a whole chunk),
        and a declared chunk size beyond what the cap still allows is refused at once."""
        body = self._body
        assert body is not None
        buf = self._buf
        at = 0
        n = len(data)
        while at < n:
            if self._chunk_state == _DATA:
                take = min(self._left, n - at)
                body.feed(memoryview(data)[at : at + take])
                at += take
                self._left -= take
                if self._left == 0:
                    self._chunk_state = _DATA_END
                continue
            # a framing line: size line, the CRLF after chunk data, or a trailer line
            end = data.find(b"\n", at)
            if end < 0:
                buf += data[at:]
                limit = _MAX_HEAD if self._chunk_state == _TRAILERS else _MAX_CHUNK_LINE
                if len(buf) > limit:
                    raise ScrapeError("malformed response: chunked framing line too long")
                return
            buf += data[at : end + 1]
            at = end + 1
            line = bytes(buf).rstrip(b"\r\n")
            buf.clear()
            if self._line(line, body):
                return

    def _line(self, line: bytes, body: CappedBody) -> bool:
        """One complete framing line; True when the response is finished."""
        state = self._chunk_state
        if state == _DATA_END:
            if line:
                raise ScrapeError("malformed response: chunk data longer than its size")
            self._chunk_state = _SIZE_LINE
            return False
        if state == _TRAILERS:
            if line:
                return False  # a trailer field: ignored
            self._finish(keep_alive=self._keep_alive)
            return True
        if len(line) > _MAX_CHUNK_LINE:
            raise ScrapeError("malformed response: chunked framing line too long")
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16:
            raise ScrapeError("malformed response: bad chunk size")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ScrapeError("malformed response: bad chunk size") from None
        if size == 0:
            self._chunk_state = _TRAILERS
            return False
        if body.raw_size + size > self._max_body:
            raise ScrapeError(f"page larger than {self._max_body} bytes (a chunk of {size} bytes)")
        self._left = size
        self._chunk_state = _DATA
        return False

    # ----------------------------------------------------------------------------------- outcome
    def _finish(self, *, keep_alive: bool) -> None:
        waiter = self._waiter
        self._waiter = None
        body = self._body
        self._release()
        try:
            page = body.finish() if body is not None else b""
        except ScrapeError as exc:
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc.with_traceback(None))
            self._abort()
            return
        if not keep_alive:
            self._abort()
        if waiter is not None and not waiter.done():
            waiter.set_result(_Response(self._status, page, keep_alive))

    def _fail(self, exc: ScrapeError) -> None:
        waiter = self._waiter
        self._waiter = None
        self._release()
        if waiter is not None and not waiter.done():
            # without its traceback: the parser's frames would keep the refused bytes alive
            waiter.set_exception(exc.with_traceback(None))
        self._abort()

    def _release(self) -> None:
        """Drop every byte held for the current response (it ended, or was refused)."""
        self._body = None
        self._buf = bytearray()

    def _abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


def _expire(waiter: asyncio.Future[_Response]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Target:
    """A parsed http(s) URL: where to connect, over TLS or not, and the request bytes to send."""

    __slots__ = ("host", "key", "port", "raw", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ScrapeError(f"unsupported URL {url!r}")
        self.tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if self.tls else 80)
        except ValueError:
            raise ScrapeError(f"bad port in URL {url!r}") from None
        self.host = parts.hostname
        self.port = port
        self.key = (parts.scheme, self.host, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None:
            host_header += f":{port}"
        self.raw = (
            f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nAccept: text/plain\r\n"
            "Accept-Encoding: identity\r\n\r\n"
        ).encode("latin-1")


class LeanFetcher:
    """:class:`picker.scrape.client.MetricsFetcher` over keep-alive HTTP/1.1 connections.

    ``max_page_bytes`` caps a page (decoded); ``insecure_skip_verify``: https pages' certificates are not
    verified (the reference's default: model servers serve self-signed ones if any);
    ``max_idle_per_host`` bounds the idle connections kept per ``host:port`` (the scraper has one request
    in flight per endpoint, so one is used; the reference keeps two).
    """

    def __init__(
        self,
        *,
        max_page_bytes: int = 8 << 20,
        insecure_skip_verify: bool = True,
        max_idle_per_host: int = 2,
    ) -> None:
        self._max = max_page_bytes
        self._insecure = insecure_skip_verify
        self._max_idle = max_idle_per_host
        self._idle: dict[_Key, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._targets: dict[str, _Target] = {}
        self._tls: ssl.SSLContext | None = None  # built on the first https page
        self._closed = False

    async def fetch(self, url: str, *, timeout_s: float) -> bytes:
        """The page at ``url``; raises :class:`ScrapeError` (message safe to log) on any failure."""
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) >= _MAX_URL_CACHE:
                self._targets.clear()
            self._targets[url] = target
        try:
            response = await self._get(target, asyncio.get_running_loop().time() + timeout_s)
        except TimeoutError as exc:
            raise ScrapeError(f"timeout after {timeout_s:g}s") from exc
        if response.status != 200:
            raise ScrapeError(f"HTTP {response.status}")
        return response.body

    async def _get(self, target: _Target, deadline: float) -> _Response:
        conn = self._take_idle(target.key)
        if conn is not None:
            try:
                return await self._exchange(conn, target, deadline)
            except _StaleConnectionError:
                pass  # the server closed it while idle: one retry on a new connection
        async with asyncio.timeout_at(deadline):  # connecting is rare: the general (costlier) timeout
            conn = await self._connect(target)
        try:
            return await self._exchange(conn, target, deadline)
        except _StaleConnectionError as exc:  # pragma: no cover - a new connection is never "reused"
            raise ScrapeError("connection closed by the server") from exc

    def _take_idle(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(target.key, self._max, self._forget),
                target.host,
                target.port,
                ssl=self._tls_context() if target.tls else None,
            )
        except OSError as exc:  # ssl.SSLError (a failed handshake) too
            raise ScrapeError(f"{type(exc).__name__}: {exc}") from exc
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            ctx = ssl.create_default_context()
            if self._insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self._tls = ctx
        return self._tls

    async def _exchange(self, conn: _Connection, target: _Target, deadline: float) -> _Response:
        self._busy.add(conn)
        loop = asyncio.get_running_loop()
        waiter = conn.request(target.raw, loop)
        # a timer failing the one future costs a fraction of asyncio.timeout() (which cancels the task)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            response = await waiter
        except BaseException:
            # cancelled (timeout), failed or stale: the connection's state is unknown, never reuse it
            conn.close()
            raise
        finally:
            timer.cancel()
            self._busy.discard(conn)
        if response.keep_alive and not conn.closed and not self._closed:
            idle = self._idle.setdefault(target.key, [])
            if len(idle) < self._max_idle:
                idle.append(conn)
            else:
                conn.close()
        return response

    def _forget(self, conn: _Connection) -> None:
        """A connection closed (either side): drop it from the pool."""
        self._busy.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection (idle and in use)."""
        self._closed = True
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()
