"""Loopback helpers for tests, benchmarks and the demo."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, for a child process that must be told its port up front.

    Another process may take it before the child binds it; in-process servers should bind port 0 and
    read the bound port instead.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
