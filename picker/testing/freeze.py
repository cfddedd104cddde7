"""A TCP proxy that can freeze: the connections stay open but no byte moves in either direction.

This is what a proxy that hangs (a stuck Envoy worker, a paused VM, a partitioned network where the TCP
connection was not reset) looks like to the ext_proc server. Used to test that the server's keepalive
pings detect it.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["FreezingProxy"]


class FreezingProxy:
    """Forwards ``host:port`` (ephemeral, on 127.0.0.1) to ``target`` until :meth:`freeze`."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._host = host
        self._server: asyncio.Server | None = None
        self._frozen = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self._host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        """From now on nothing is read or forwarded; every connection stays open."""
        self._frozen.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while not self._frozen.is_set():
                read = asyncio.ensure_future(src.read(65536))
                frozen = asyncio.ensure_future(self._frozen.wait())
                done, _ = await asyncio.wait({read, frozen}, return_when=asyncio.FIRST_COMPLETED)
                if read not in done:
                    read.cancel()
                    break
                frozen.cancel()
                data = read.result()
                if not data:
                    dst.close()
                    return
                dst.write(data)
                await dst.drain()
        await asyncio.Event().wait()  # frozen: hold the connection open, move nothing
