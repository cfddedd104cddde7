"""A fleet of fake model servers in its own process, for benchmarks that measure another process's CPU.

    python -m benchmarks.fleet_proc --count 256 [--engine vllm] [--time-scale 0.05]

Prints one JSON line ``{"addresses": ["127.0.0.1:port", ...], "pid": ...}`` once every server listens, then
serves until SIGTERM/SIGINT. Runs on uvloop when installed, like the EPP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal

from picker.testing.fake_server import FakeFleet


async def _serve(count: int, engine: str, time_scale: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeFleet.uniform(count, engine, time_scale=time_scale) as fleet:
        print(json.dumps({"addresses": fleet.addresses, "pid": os.getpid()}), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet_proc", description=__doc__)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--engine", default="vllm")
    p.add_argument("--time-scale", type=float, default=0.05, help="wall seconds per model second")
    args = p.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(args.count, args.engine, args.time_scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
