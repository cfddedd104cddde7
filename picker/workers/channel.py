"""The pipe between the ``--workers`` supervisor and each worker: length-prefixed JSON messages over one
end of a socket pair, and the vocabulary both sides speak.

Messages are lists whose first item names them. What concerns one pool travels wrapped as
``[POOL, pool index, message]`` (the index in ``--pool`` order; 0 without ``--pool``), so a worker serving
several pools speaks to each pool's host in the supervisor (:mod:`picker.workers.hosts`) over one pipe;
``serving`` and ``stop`` concern the process.

Worker → supervisor: ``["serving", pid]`` (its ext_proc ports are bound), and per pool
``["metrics", families]`` (its request-path metrics, :func:`picker.telemetry.export_families`, about every
:data:`METRICS_INTERVAL_S`), ``["prefix", records]`` (its new prefix-index records, forwarded to the other
workers), ``[PREFIX_ENTRIES, n]`` (its replica's entries, when they changed: ``/debug/workers``),
``[HELD, n]`` (its requests held for a first replica), ``["tenants.*", ...]`` (budget
reservations and, with Redis, usage counts: :mod:`picker.tenants.remote`), ``["external.*", ...]``
(external endpoints' reservations, :mod:`picker.routing.external_remote`).

Supervisor → worker: ``["stop"]``, and per pool ``["prefix", records]`` (another worker's), budget
verdicts (``picker.tenants.remote.VERDICT``) and external grants (``picker.routing.external_remote.GRANT``).

JSON rather than pickle: the supervisor never unpickles what another process wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

import orjson

#: seconds between a worker's metric snapshots to the supervisor
METRICS_INTERVAL_S = 1.0
#: a worker draining on stop gets this long for open streams, then the supervisor kills it
DRAIN_S = 5.0
#: worker → supervisor: ``[HELD, n]``, the worker's requests now held for a first replica (scale from zero)
HELD = "held"
#: worker → supervisor: ``[PREFIX_ENTRIES, n]``, the entries of the worker's prefix-index replica, sent
#: when they changed (at most every 50 ms): ``/debug/workers`` shows that the replicas agree
PREFIX_ENTRIES = "prefix.entries"
#: either way: ``[POOL, index, message]``, a message about the pool at ``index`` (in ``--pool`` order)
POOL = "pool"


class Channel:
    """Length-prefixed JSON messages over one end of a socket pair, on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: list[Any]) -> None:
        """Queue one message (never blocks; the peer reads continuously)."""
        if self._writer.is_closing():
            return
        data = orjson.dumps(message)
        self._writer.write(len(data).to_bytes(4, "big") + data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def recv(self) -> list[Any] | None:
        """The next message, or None once the other end is closed."""
        try:
            head = await self._reader.readexactly(4)
            data = await self._reader.readexactly(int.from_bytes(head, "big"))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        message: list[Any] = orjson.loads(data)
        return message

    def for_pool(self, index: int) -> Callable[[list[Any]], None]:
        """A ``send`` for messages about the pool at ``index`` (wrapped as ``[POOL, index, message]``)."""

        def send(message: list[Any]) -> None:
            self.send([POOL, index, message])

        return send

    def close(self) -> None:
        self._writer.close()
