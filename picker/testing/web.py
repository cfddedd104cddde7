"""Starting an aiohttp application on loopback, for the test peers built on aiohttp.web."""

from __future__ import annotations

from aiohttp import web

__all__ = ["start_app"]


async def start_app(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: any free port) without access logs; returns the runner (call
    ``cleanup()`` to stop) and the port actually bound."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner, int(runner.addresses[0][1])
