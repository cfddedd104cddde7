"""Entry point of ``picker serve``: one :class:`~picker.service.Service` in this process, or with
``--workers N`` (N > 1) the supervisor of :mod:`picker.workers`. Nothing imports this module except the
CLI.
"""

from __future__ import annotations

import asyncio
import signal

from picker.service import Service
from picker.settings import Settings
from picker.wiring import freeze_startup_objects, run_main
from picker.workers.supervisor import run_workers


async def _main(settings: Settings) -> None:
    service = Service.load(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run(on_started=freeze_startup_objects)


def run_serve(settings: Settings) -> int:
    """Entry point of ``picker serve``. Returns the process exit code."""
    if len(settings.pools) == 1:  # one --pool is --pool-name with its port and document
        settings = settings.for_pool(settings.pools[0])
    if settings.workers > 1:
        return run_workers(settings)
    return run_main(_main(settings))
