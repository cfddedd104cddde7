"""Run one blocking client call on a daemon thread and await its result on the event loop.

Why not ``asyncio.to_thread``: the default executor has ``cpu + 4`` workers (6 on our 2-core target) and
is shared with DNS resolution and other libraries. Long blocking Kubernetes calls parked there could
starve them. A short-lived daemon thread per call costs ~50 µs, never queues behind anyone, and cannot
hold up interpreter exit. The thread only computes; the result crosses back with
``call_soon_threadsafe`` — the loop never blocks on the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def post_to_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> bool:
    """Schedule ``callback(*args)`` on ``loop`` from any thread; False if the loop is already closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # loop closed during shutdown: nobody is waiting any more
        return False
    return True


async def run_in_thread(fn: Callable[[], T], *, name: str) -> T:
    """Run ``fn()`` on a new daemon thread; return its result or raise its exception here."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle_ok(value: T) -> None:
        if not fut.done():
            fut.set_result(value)

    def settle_err(exc: BaseException) -> None:
        if not fut.done():
            fut.set_exception(exc)

    def target() -> None:
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised unchanged in the awaiting coroutine
            post_to_loop(loop, settle_err, exc)
        else:
            post_to_loop(loop, settle_ok, value)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await fut
