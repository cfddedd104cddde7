"""Staggered scrape timers against phase-aligned rounds: the event-loop stalls and the CPU of each.

    python -m benchmarks.bench_scrape_rounds                    # 16 endpoints, 3 pairs of 4 s (~40 s)
    python -m benchmarks.bench_scrape_rounds --endpoints 256 --json

Why: the scraper gives every endpoint its own timer at a random phase (``picker.scrape.scraper``), so
pages land spread over the interval. Phase-aligned rounds (every endpoint scraped at the same instants,
one publish per round) would publish as rarely as once per interval and fresher, but land a round's
pages together, so their Python runs as one burst on the event loop the ext_proc streams share. This
measures both on the service's scraper (uvloop, :class:`picker.scrape.http.LeanFetcher`, a real
:class:`picker.state.Datastore`) against ``--endpoints`` fake vLLM servers in another process
(``benchmarks.fleet_proc``, 1.5 unattended requests a second per server so the gauges move). "aligned"
starts every endpoint's timer at the same instant, as a round scheduler would; the timers keep their
phase (a tick is one interval after the last). Figures per variant, pairs alternating, each pair
starting with the other variant:

- ``late_ms`` p50 / p99 / p99.9 / max: how late a probe task sleeping 1 ms wakes (the wait a request
  arriving then would see before its first callback runs);
- ``cpu_cores``: the event-loop thread's CPU per wall second (the scrape loop, idle otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import time
from typing import Any

INTERVAL_S = 0.05


class _Aligned(random.Random):
    """Every endpoint's first tick at the same instant."""

    def random(self) -> float:
        return 0.0


async def _measure(addresses: list[str], *, aligned: bool, seconds: float) -> dict[str, float]:
    from picker.scrape.engines import engine_specs
    from picker.scrape.http import LeanFetcher
    from picker.scrape.scraper import Scraper
    from picker.state.datastore import Datastore
    from picker.state.endpoints import PoolInfo, parse_static_endpoints

    ds = Datastore(min_publish_interval_s=INTERVAL_S)
    endpoints = parse_static_endpoints(",".join(addresses))
    ds.set_pool(PoolInfo(name="bench", namespace="default", target_ports=tuple({e.port for e in endpoints})))
    ds.replace_endpoints(endpoints)
    rng = _Aligned() if aligned else None
    scraper = Scraper(
        ds, LeanFetcher(), engines=engine_specs(), interval_s=INTERVAL_S, timeout_s=1.0, rng=rng
    )
    task = asyncio.create_task(scraper.run())
    await asyncio.sleep(1.0)  # warm-up: connections open, engines detected
    late: list[float] = []
    end = time.perf_counter() + seconds
    cpu0 = time.thread_time()
    while time.perf_counter() < end:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        late.append((time.perf_counter() - t - 0.001) * 1000.0)
    cpu = (time.thread_time() - cpu0) / seconds
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await scraper.close()
    late.sort()

    def q(p: float) -> float:
        return late[min(len(late) - 1, int(p / 100.0 * len(late)))]

    return {"p50": q(50), "p99": q(99), "p999": q(99.9), "max": late[-1], "cpu_cores": cpu}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_scrape_rounds", description=__doc__.split("\n")[0]
    )
    p.add_argument("--endpoints", type=int, default=16)
    p.add_argument("--pairs", type=int, default=3, help="alternating pairs of runs")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    fleet_args = ["--count", str(args.endpoints), "--busy-rps", str(1.5 * args.endpoints)]
    fleet = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fleet_proc", *fleet_args], stdout=subprocess.PIPE, text=True
    )
    runs: dict[str, list[dict[str, float]]] = {"staggered": [], "aligned": []}
    try:
        assert fleet.stdout is not None
        addresses = json.loads(fleet.stdout.readline())["addresses"]
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        for k in range(args.pairs):
            for aligned in (False, True) if k % 2 == 0 else (True, False):
                res = asyncio.run(_measure(addresses, aligned=aligned, seconds=args.seconds))
                runs["aligned" if aligned else "staggered"].append(res)
                if not args.json:
                    name = "aligned" if aligned else "staggered"
                    print(name, {key: round(v, 3) for key, v in res.items()}, flush=True)
    finally:
        fleet.terminate()
        fleet.wait()
    doc: dict[str, Any] = {
        "benchmark": "bench_scrape_rounds",
        "endpoints": args.endpoints,
        "interval_s": INTERVAL_S,
        "runs": runs,
        "median": {
            v: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for v, rs in runs.items()
        },
    }
    print(json.dumps(doc, indent=2) if args.json else json.dumps(doc["median"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
