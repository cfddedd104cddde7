"""One HTTP server (uvicorn) on a socket we bind ourselves, run as a task of the service's TaskGroup.

Why bind ourselves: :meth:`HttpServer.bind` reports the port actually bound (tests pass port 0) before
anything is served, and a port in use fails start-up with a clear ``OSError`` instead of uvicorn logging
and exiting on its own. uvicorn's signal handlers are disabled: the service owns SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from fastapi import FastAPI


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the app owns SIGTERM/SIGINT for an orderly shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """``app`` on ``host:port``. Constructing it binds nothing; :meth:`bind`, then :meth:`serve`."""

    def __init__(self, app: FastAPI, *, host: str, port: int, name: str) -> None:
        self.name = name
        self._host = host
        self._port = port
        self._sock: socket.socket | None = None
        self._server = _QuietServer(
            uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        )

    def bind(self) -> int:
        """Listen on the socket; returns the port bound (``OSError`` if it is taken)."""
        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(512)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        port: int = sock.getsockname()[1]
        return port

    @property
    def bound_host(self) -> str:
        """The address listened on ("" before :meth:`bind`)."""
        return str(self._sock.getsockname()[0]) if self._sock is not None else ""

    async def serve(self, *, stopping: Callable[[], bool]) -> None:
        """Serve until :meth:`stop`; returning while ``stopping()`` is false is a crash (the TaskGroup's
        rule: a long-running task never ends quietly)."""
        assert self._sock is not None, "bind() first"
        await self._server.serve(sockets=[self._sock])
        if not stopping():
            raise RuntimeError(f"{self.name} server exited unexpectedly")

    def stop(self) -> None:
        self._server.should_exit = True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
