"""A hostile model server: answers ``/metrics`` with framings meant to exhaust a scraper's memory.

Used by the hardening tests (in-process and against a real ``picker serve``) and the fuzz benchmark.
Every behaviour is bounded in what it sends (``total`` bytes, then it closes), so a test that goes wrong
cannot fill the machine; the scraper under test is expected to refuse the page long before that.

Behaviours (``mode``):

* ``endless-chunk``: ``Transfer-Encoding: chunked`` with one chunk declared huge that never ends.
* ``many-chunks``: a chunked page of ``total`` bytes in ``chunk``-byte chunks (a 50 MB page in 1 MiB
  chunks, say).
* ``gzip-bomb``: a chunked, gzip-encoded page that inflates to ``total`` bytes (megabytes on the wire).
* ``close-delimited``: no length, no chunking: ``total`` bytes then close.
* ``content-length``: ``Content-Length: total``, then that many bytes (a page declared far over the cap).
* ``endless-size-line``: a chunk-size line of hex digits that never ends.
* ``page``: ``body`` as an ordinary Content-Length page (the fuzz test sets random pages).

With ``ssl`` (a server context; :func:`self_signed_context` makes one) every behaviour is served over
TLS, for the ``https`` scrape path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
import sys
import tempfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

__all__ = ["MODES", "HostileMetricsServer", "hostile_process", "self_signed_context"]

MODES: Final = (
    "endless-chunk",
    "many-chunks",
    "gzip-bomb",
    "close-delimited",
    "content-length",
    "endless-size-line",
    "page",
)
_PIECE: Final = 256 * 1024


def self_signed_context(host: str = "127.0.0.1") -> ssl_module.SSLContext:
    """A TLS server context with a fresh self-signed certificate for ``host``."""
    from picker.extproc.tls import generate_self_signed

    cert, key = generate_self_signed((host,))
    ctx = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cert.pem").write_bytes(cert)
        (Path(tmp) / "key.pem").write_bytes(key)
        ctx.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")
    return ctx


class HostileMetricsServer:
    """An HTTP/1.1 server on ``host`` (ephemeral port) answering every request with ``mode``.

    ``start()`` binds; ``stop()`` closes every connection. ``requests`` counts requests served and
    ``sent`` the body bytes written (what the peer accepted before it hung up).
    """

    def __init__(
        self,
        mode: str = "endless-chunk",
        *,
        host: str = "127.0.0.1",
        total: int = 64 << 20,
        chunk: int = 1 << 20,
        body: bytes = b"",
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
        self.mode = mode
        self.body = body
        self._host = host
        self._ssl = ssl
        self._total = total
        self._chunk = chunk
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.requests = 0
        self.sent = 0

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """The page's URL (``https://`` when serving TLS)."""
        return f"{'https' if self._ssl is not None else 'http'}://{self.address}/metrics"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HostileMetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if not await self._answer(writer):
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):  # OSError: TLS too
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.transport.is_closing():  # the peer hung up: stop (a TLS transport would log each write)
            raise ConnectionResetError("the peer closed the connection")
        writer.write(data)
        await writer.drain()
        self.sent += len(data)
        # drain() does not yield while the buffer is below its high-water mark: without this, a gzip bomb
        # (kilobytes per megabyte compressed) keeps the loop busy after its peer hung up, and every new
        # connection waits for it to finish
        await asyncio.sleep(0)

    async def _answer(self, writer: asyncio.StreamWriter) -> bool:
        """Write one response; True to keep the connection for another request."""
        mode = self.mode
        if mode == "page":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            await self._write(writer, head % len(self.body) + self.body)
            return True
        if mode == "content-length":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            await self._write(writer, head % self._total)
            await self._stream(writer, b"", b"")
            return False
        if mode == "close-delimited":
            await self._write(writer, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            await self._stream(writer, b"", b"")
            return False
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
        if mode == "endless-chunk":
            await self._write(writer, head + b"\r\n" + b"%x\r\n" % (1 << 40))
            await self._stream(writer, b"", b"")
        elif mode == "endless-size-line":
            await self._write(writer, head + b"\r\n")
            await self._stream(writer, b"", b"", filler=b"f")
        elif mode == "many-chunks":
            await self._write(writer, head + b"\r\n")
            await self._stream(writer, b"%x\r\n" % self._chunk, b"\r\n", piece=self._chunk)
            await self._write(writer, b"0\r\n\r\n")
            return True
        else:  # gzip-bomb
            await self._write(writer, head + b"Content-Encoding: gzip\r\n\r\n")
            await self._gzip_bomb(writer)
        return False

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        prefix: bytes,
        suffix: bytes,
        *,
        piece: int = _PIECE,
        filler: bytes = b"x",
    ) -> None:
        """Up to ``total`` bytes in pieces (each framed by prefix/suffix), stopping when the peer leaves."""
        data = filler * piece
        left = self._total
        while left > 0:
            part = data[: min(piece, left)] if not prefix else data
            await self._write(writer, prefix + part + suffix)
            left -= len(part)

    async def _gzip_bomb(self, writer: asyncio.StreamWriter) -> None:
        comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        zeros = b"0" * (1 << 20)
        left = self._total
        while left > 0:
            out = comp.compress(zeros[: min(len(zeros), left)])
            left -= min(len(zeros), left)
            if out:
                await self._write(writer, b"%x\r\n" % len(out) + out + b"\r\n")
        tail = comp.flush()
        with contextlib.suppress(OSError):
            await self._write(writer, b"%x\r\n" % len(tail) + tail + b"\r\n0\r\n\r\n")


async def _serve_forever(mode: str, total: int, chunk: int, tls: bool) -> None:
    context = self_signed_context() if tls else None
    async with HostileMetricsServer(mode, total=total, chunk=chunk, ssl=context) as server:
        print(server.port, flush=True)  # noqa: T201 - the parent reads the port from stdout
        # serve until stdin closes: the parent ended (even killed), so no server outlives its test
        await asyncio.to_thread(sys.stdin.buffer.read)


@contextlib.asynccontextmanager
async def hostile_process(mode: str, total: int, chunk: int, *, tls: bool = False) -> AsyncIterator[str]:
    """This module's server in a child process (so its memory is not the test's); yields its ``host:port``
    and kills it on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "picker.testing.hostile",
        mode,
        str(total),
        str(chunk),
        *(["tls"] if tls else []),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        # no deadline of our own: a loaded machine may take many seconds to start Python; the line comes,
        # or EOF when the child died (its traceback is on stderr)
        line = await proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"the hostile server did not start (exit code {await proc.wait()})")
        yield f"127.0.0.1:{int(line)}"
    finally:
        proc.kill()
        await proc.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m picker.testing.hostile MODE [TOTAL [CHUNK [tls]]]``: prints the port, serves until
    stdin closes."""
    args = sys.argv[1:] if argv is None else argv
    mode = args[0] if args else "endless-chunk"
    total = int(args[1]) if len(args) > 1 else 64 << 20
    chunk = int(args[2]) if len(args) > 2 else 1 << 20
    tls = len(args) > 3 and args[3] == "tls"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(mode, total, chunk, tls))


if __name__ == "__main__":
    main()
