"""A real ``redis-server`` (Debian package) on 127.0.0.1 for tests, benchmarks and the demo.

No persistence, no config file: ``--save "" --appendonly no``; a fresh empty server every start, on a port
chosen up front so that a restart comes back on the same address (what an EPP's client reconnects to).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from picker.testing.net import free_port

__all__ = ["REDIS_SERVER", "RedisServer"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class _PortTakenError(RuntimeError):
    pass


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        #: a port picked here (``port`` None) may be taken by another process before the server binds it:
        #: the first :meth:`start` then picks another; a restart never moves (it fails, saying so)
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return Path(REDIS_SERVER).exists()

    def start(self, timeout_s: float = 10.0) -> None:
        for _ in range(3):
            try:
                self._start(timeout_s)
            except _PortTakenError:
                if self._fixed_port:
                    raise
                self.port = free_port()
                self.url = f"redis://127.0.0.1:{self.port}/0"
            else:
                self._fixed_port = True  # a restart comes back here: its clients know this address
                return
        self._start(timeout_s)
        self._fixed_port = True

    def _start(self, timeout_s: float) -> None:
        log = (self._workdir / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - the Debian binary, fixed arguments
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._workdir),
                "--protected-mode",
                "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "Address already in use" in self._log_text():
                    raise _PortTakenError(f"port {self.port} taken before redis-server bound it")
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s:g} s")

    def _log_text(self) -> str:
        path = self._workdir / f"redis-{self.port}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pause(self) -> None:
        """Stop the server's process (SIGSTOP): commands sent meanwhile wait, unanswered, in its sockets
        until :meth:`resume` (a test's way to decide which of two clients' commands Redis runs first)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # (a paused server would not act on SIGTERM)
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
