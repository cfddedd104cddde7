"""An EPP in this process, as the in-process tests and the fuzz rig run it: loopback, ephemeral ports,
plaintext, started as a task whose ports are known once it serves.

(``tests/integration/conftest.py``'s ``LOCAL`` says the same to a ``picker serve`` subprocess, in flags.)
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from picker.service import Ports, Service
from picker.settings import Settings

__all__ = ["LOCAL", "local_settings", "run_started"]

#: every port ephemeral (0), on 127.0.0.1, without TLS on ext_proc
LOCAL: Final[dict[str, Any]] = {
    "grpc_port": 0,
    "grpc_health_port": 0,
    "metrics_port": 0,
    "admin_port": 0,
    "host": "127.0.0.1",
    "secure_serving": False,
}


def local_settings(**settings: Any) -> Settings:
    """:data:`LOCAL` with ``settings`` over it."""
    return Settings(**{**LOCAL, **settings})


async def run_started(service: Service) -> tuple[Ports, asyncio.Task[None]]:
    """Run ``service`` as a task until it has bound its ports; raises what made it fail if it ends before
    (instead of waiting for ports that never come)."""
    started: asyncio.Future[Ports] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(service.run(on_started=started.set_result))
    either: set[asyncio.Future[Any]] = {started, task}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        await task  # raises what made the service fail
        raise AssertionError("the service ended before it started")
    return started.result(), task
