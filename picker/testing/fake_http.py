"""A lean HTTP/1.1 server on asyncio protocols, for the fake model servers.

Why not aiohttp.web: ``bench_scrape`` runs 256 fake servers in one process, scraped every 50 ms (5,120
requests/s), on a 2-core machine where the EPP under test needs the CPU. Measured there (uvloop, keep-alive, a
2 KB filtered page): aiohttp.web spent about 58 µs of CPU per request (0.29 cores for the fleet), this server
about 15 µs (0.08 cores). Serving the full 75 KB vLLM page costs both about the same (kernel copies dominate).

What it implements, and no more: request line and headers (``Content-Length`` or chunked request bodies,
``Expect: 100-continue``), keep-alive and pipelining (one request at a time per connection), fixed-length
responses and chunked streaming (close-delimited for HTTP/1.0 clients), write flow control, and closing every
connection on :meth:`HttpServer.stop`. A handler answers synchronously or returns a coroutine (a task is only
created then), so ``GET /metrics`` costs no task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from http import HTTPStatus
from typing import Any, cast

logger = logging.getLogger(__name__)

#: request head (request line + headers) limit, bytes
MAX_HEAD = 64 * 1024
#: request body limit, bytes (the EPP's own default cap is 16 MiB)
MAX_BODY = 64 * 1024 * 1024

_PHRASES = {s.value: s.phrase for s in HTTPStatus}


class _BadRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpRequest:
    """One parsed request. Header names are lower-case."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "version")

    def __init__(
        self,
        *,
        method: str,
        path: str,
        query: str,
        version: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


#: a handler answers through the exchange, at once or from the coroutine it returns
Handler = Callable[[HttpRequest, "HttpExchange"], Coroutine[Any, Any, None] | None]


class HttpExchange:
    """The response side of one request."""

    __slots__ = ("_conn", "_keep_alive", "_legacy", "finished", "held", "started")

    def __init__(self, conn: _Connection, request: HttpRequest) -> None:
        self._conn = conn
        self._keep_alive = request.keep_alive
        self._legacy = request.version == "HTTP/1.0"
        #: a response head was written / the response is complete / the handler chose never to answer
        self.started = False
        self.finished = False
        self.held = False

    @property
    def client_gone(self) -> bool:
        return self._conn.closed

    def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Send a complete response with a ``Content-Length``."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = self.finished = True
        key = (status, content_type, tuple(headers), self._keep_alive)
        prefix = self._conn.heads.get(key)
        if prefix is None:
            prefix = self._conn.heads[key] = (
                self._head(status, content_type, headers, "")[:-2] + b"content-length: "
            )
        self._conn.write(b"".join((prefix, b"%d\r\n\r\n" % len(body), body)))

    def start_stream(self, status: int, content_type: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        """Send a response head for a body of unknown length (chunked; close-delimited for HTTP/1.0)."""
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        if self._legacy:
            self._keep_alive = False
        framing = "" if self._legacy else "transfer-encoding: chunked\r\n"
        self._conn.write(self._head(status, content_type, headers, framing))

    def send(self, data: bytes) -> None:
        """Send one piece of a streamed body (no-op once the client is gone)."""
        if not data:
            return
        if self._legacy:
            self._conn.write(data)
        else:
            self._conn.write(b"%x\r\n%b\r\n" % (len(data), data))

    async def drain(self) -> None:
        """Wait until the client has taken what was sent (flow control for long streams)."""
        await self._conn.drain()

    def end_stream(self) -> None:
        if not self._legacy:
            self._conn.write(b"0\r\n\r\n")
        self.finished = True

    def hold(self) -> None:
        """Never answer: the connection stays open and busy until the client or the server closes it."""
        self.held = True

    def abort(self) -> None:
        """Drop the connection without answering (a crashed server, from the client's view)."""
        self.held = True
        self._conn.abort()

    def _head(
        self, status: int, content_type: str, headers: Sequence[tuple[str, str]], framing: str
    ) -> bytes:
        lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, 'Unknown')}\r\ncontent-type: {content_type}\r\n"]
        lines.append(framing)
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        if not self._keep_alive:
            lines.append("connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")


def _parse_head(raw: bytes) -> tuple[str, str, str, str, dict[str, str], bool, int, bool]:
    """method, path, query, version, headers, chunked, content length, keep-alive."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequestError(400, "bad request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        colon = line.find(":")
        if colon < 1 or line[colon - 1] in " \t":
            raise _BadRequestError(400, "bad header line")
        headers[line[:colon].lower()] = line[colon + 1 :].strip()
    chunked = False
    length = 0
    te = headers.get("transfer-encoding")
    if te is not None:
        if te.lower() != "chunked":
            raise _BadRequestError(501, "unsupported transfer-encoding")
        chunked = True
    elif "content-length" in headers:
        cl = headers["content-length"]
        if not cl.isdigit():
            raise _BadRequestError(400, "bad content-length")
        length = int(cl)
        if length > MAX_BODY:
            raise _BadRequestError(413, "request body too large")
    conn = headers.get("connection", "").lower()
    keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
    path, _, query = target.partition("?")
    return method, path, query, version, headers, chunked, length, keep_alive


def _dechunk(buf: bytearray) -> tuple[bytes, int] | None:
    """(body, bytes consumed) of a complete chunked body at the start of ``buf``; None if incomplete."""
    pos = 0
    pieces: list[bytes] = []
    total = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BadRequestError(400, "bad chunk size") from None
        pos = eol + 2
        if size == 0:
            while True:  # trailers, up to an empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return b"".join(pieces), eol + 2
                pos = eol + 2
        total += size
        if total > MAX_BODY:
            raise _BadRequestError(413, "request body too large")
        if len(buf) < pos + size + 2:
            return None
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise _BadRequestError(400, "bad chunk framing")
        pieces.append(bytes(buf[pos : pos + size]))
        pos += size + 2


class _Connection(asyncio.Protocol):
    """One client connection: parses requests one at a time and hands them to the server's handler."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._head: tuple[str, str, str, str, dict[str, str], bool, int, bool] | None = None
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._paused = False
        self._drainers: list[asyncio.Future[None]] = []
        self.closed = False
        #: response heads already built, by (status, content type, headers, keep-alive)
        self.heads = server.heads

    # ---------------------------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but have its interface
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._process()

    def eof_received(self) -> bool:
        # a client that half-closes after its request still gets its answer
        return self._busy

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - asyncio.Protocol signature
        self.closed = True
        self._server.connections.discard(self)
        if self._task is not None:
            self._task.cancel()
        self._wake_drainers()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers()

    # ---------------------------------------------------------------------------------- writing
    def write(self, data: bytes) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            t.write(data)

    async def drain(self) -> None:
        if self._paused and not self.closed:
            fut = asyncio.get_running_loop().create_future()
            self._drainers.append(fut)
            await fut

    def _wake_drainers(self) -> None:
        for fut in self._drainers:
            if not fut.done():
                fut.set_result(None)
        self._drainers.clear()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # ---------------------------------------------------------------------------------- requests
    def _process(self) -> None:
        while not self._busy and not self.closed:
            try:
                request = self._parse()
            except _BadRequestError as exc:
                self._reject(exc.status, str(exc))
                return
            if request is None:
                return
            self._dispatch(request)

    def _parse(self) -> HttpRequest | None:
        buf = self._buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise _BadRequestError(431, "request head too large")
                return None
            self._head = _parse_head(bytes(buf[:end]))
            del buf[: end + 4]
            headers, chunked, length = self._head[4], self._head[5], self._head[6]
            if headers.get("expect", "").lower() == "100-continue" and (chunked or len(buf) < length):
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        method, path, query, version, headers, chunked, length, keep_alive = self._head
        if chunked:
            done = _dechunk(buf)
            if done is None:
                return None
            body, used = done
        else:
            if len(buf) < length:
                return None
            body, used = bytes(buf[:length]), length
        del buf[:used]
        self._head = None
        return HttpRequest(
            method=method,
            path=path,
            query=query,
            version=version,
            headers=headers,
            body=body,
            keep_alive=keep_alive,
        )

    def _reject(self, status: int, message: str) -> None:
        self._busy = True
        self.write(
            f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(message)}\r\nconnection: close\r\n\r\n{message}".encode("latin-1")
        )
        self.close()

    def _dispatch(self, request: HttpRequest) -> None:
        exchange = HttpExchange(self, request)
        self._busy = True
        try:
            pending = self._server.handler(request, exchange)
        except Exception:  # a broken handler must answer 500 and be logged, not kill the connection silently
            logger.exception("fake server handler failed for %s %s", request.method, request.path)
            pending = None
        if pending is None:
            self._finish(exchange)
            return
        task = asyncio.get_running_loop().create_task(pending)
        self._task = task
        self._server.tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, exchange))

    def _task_done(self, task: asyncio.Task[None], exchange: HttpExchange) -> None:
        self._server.tasks.discard(task)
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("fake server handler failed", exc_info=exc)
        self._finish(exchange)
        if not self._busy:
            self._process()

    def _finish(self, exchange: HttpExchange) -> None:
        if exchange.held or self.closed:
            return
        if not exchange.started:
            exchange.respond(500, b"handler did not answer")
        elif not exchange.finished:
            # a stream the handler left open cannot be framed any more: close it
            self.close()
            return
        if not exchange._keep_alive:
            self.close()
            return
        self._busy = False


class HttpServer:
    """Serves a :data:`Handler` on one TCP port. Nothing happens until :meth:`start`."""

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        #: response heads (up to the content length) by (status, content type, headers, keep-alive)
        self.heads: dict[tuple[int, str, tuple[tuple[str, str], ...], bool], bytes] = {}
        self._server: asyncio.Server | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Bind and listen; ``port`` 0 picks a free port, which :attr:`port` then holds."""
        if self._server is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, drop every connection and cancel every handler still running."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self.connections):
            conn.abort()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
