"""``picker fake-server``: flags → :func:`picker.testing.fake_server.run_fake_server`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Coroutine
from typing import Any

from picker.testing.fake_load import LoadParams
from picker.testing.fake_server import DEFAULT_MODEL, FakeServer, run_fake_server


def load_params_from_args(ns: argparse.Namespace) -> LoadParams:
    changes = {
        name: getattr(ns, name)
        for name in ("max_num_seqs", "num_blocks", "max_lora")
        if getattr(ns, name, None) is not None
    }
    params = dataclasses.replace(LoadParams(), **changes)
    return params.slower(ns.slower) if ns.slower != 1.0 else params


def run_fake_server_cli(ns: argparse.Namespace) -> int:
    server = FakeServer(
        ns.engine,
        port=ns.port,
        host=ns.host,
        models=tuple(ns.model or (DEFAULT_MODEL,)),
        lora_adapters=tuple(ns.lora or ()),
        load=load_params_from_args(ns),
        time_scale=ns.time_scale,
        seed=ns.seed,
    )
    asyncio.run(_until_signalled(run_fake_server(server)))
    return 0


async def _until_signalled(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` until SIGINT or SIGTERM, then let it clean up and return.

    The handlers are installed explicitly: a process started from a non-interactive shell's background job (or
    by a parent that ignores SIGINT) inherits SIGINT as *ignored*, and Python then installs no
    KeyboardInterrupt handler, so without this the server could not be stopped with Ctrl-C's signal at all."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
