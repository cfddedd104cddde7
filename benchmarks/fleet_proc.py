"""A fleet of fake model servers in its own process, for benchmarks that measure another process's CPU.

    python -m benchmarks.fleet_proc --count 256 [--engine vllm] [--time-scale 0.05] [--busy-rps R]

Prints one JSON line ``{"addresses": ["127.0.0.1:port", ...], "pid": ...}`` once every server listens, then
serves until SIGTERM/SIGINT. Runs on uvloop when installed, like the EPP.

``--busy-rps R``: the fleet serves R requests a second that no client sends (``FakeServer.admit_unattended``,
at an even rate on random servers, 100-1,500 prompt and 32-256 output tokens), so every page the EPP under
measurement scrapes shows new running/waiting/KV gauges, as a serving fleet's do. Without it an unused fleet's
pages never change, and the EPP's new snapshots are the cheap kind that reuse every scorer's prepared state.
Use ``--time-scale 1`` with it: a faster model clock makes the fleet's own engine steps cost more CPU than the
benchmark's client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal

from picker.testing.fake_server import FakeFleet

TICK_S = 0.05


async def _keep_busy(fleet: FakeFleet, rps: float, seed: int = 0) -> None:
    """Admit ``rps`` unattended requests a second to random servers, in 50 ms ticks."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    due = loop.time()
    pending = 0.0
    while True:
        due += TICK_S
        await asyncio.sleep(max(0.0, due - loop.time()))
        pending += rps * TICK_S
        while pending >= 1.0:
            pending -= 1.0
            server = fleet[rng.randrange(len(fleet))]
            server.admit_unattended(rng.randint(100, 1500), rng.randint(32, 256))


async def _serve(count: int, engine: str, time_scale: float, busy_rps: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeFleet.uniform(count, engine, time_scale=time_scale) as fleet:
        busy = asyncio.create_task(_keep_busy(fleet, busy_rps)) if busy_rps > 0 else None
        print(json.dumps({"addresses": fleet.addresses, "pid": os.getpid()}), flush=True)
        await stop.wait()
        if busy is not None:
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fleet_proc", description=__doc__)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--engine", default="vllm")
    p.add_argument("--time-scale", type=float, default=0.05, help="wall seconds per model second")
    p.add_argument(
        "--busy-rps", type=float, default=0.0, help="unattended requests a second that keep the gauges moving"
    )
    args = p.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(args.count, args.engine, args.time_scale, args.busy_rps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
