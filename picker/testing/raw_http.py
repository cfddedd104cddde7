"""An HTTP/1.1 server on loopback whose answers are hand-written bytes, for tests of HTTP clients.

Why not :class:`picker.testing.fake_http.HttpServer`: a client test needs the exact bytes on the wire (odd
status lines, close-delimited or chunked framing with extensions, truncated or endless bodies, a server that
closes a keep-alive connection or never answers), which a correct server cannot be made to send. Each route
writes its whole answer itself; the server only reads request heads (no body), keeps them, counts the
connections and dispatches by path (the query string left out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Self

__all__ = ["RawHttpServer", "Respond", "fixed"]

#: writes one whole answer; returns False to close the connection after it (True keeps it alive)
Respond = Callable[[asyncio.StreamWriter], Awaitable[bool]]


def fixed(body: bytes, *, status: bytes = b"200 OK", extra: bytes = b"") -> Respond:
    """A route answering ``body`` with ``Content-Length`` and ``status`` (the status line's tail);
    ``extra`` is more header lines, each ending in CRLF. Keeps the connection alive."""
    answer = b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body

    async def respond(writer: asyncio.StreamWriter) -> bool:
        writer.write(answer)
        return True

    return respond


class RawHttpServer:
    """Serves :attr:`routes` (path → :data:`Respond`) on ``127.0.0.1``; an unknown path gets a 404.

    ``requests`` keeps every request head (request line and headers) in arrival order, appended before
    its route runs; ``connections`` counts the connections accepted. Constructing it binds nothing.
    """

    def __init__(self, routes: dict[str, Respond] | None = None) -> None:
        self.routes: dict[str, Respond] = dict(routes or {})
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def request_lines(self) -> list[str]:
        """The request line of each request, e.g. ``GET /metrics HTTP/1.1``."""
        return [head.split(b"\r\n", 1)[0].decode() for head in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                path = head.split(b" ", 2)[1].decode().split("?")[0]
                keep_open = await self.routes.get(path, _NOT_FOUND)(writer)
                await writer.drain()
                if not keep_open:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


_NOT_FOUND = fixed(b"no such route", status=b"404 Not Found")
