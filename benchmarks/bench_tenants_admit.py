"""What one admission costs the request with the Redis backend: on a lease, and asking Redis (leases off).

    python -m benchmarks.bench_tenants_admit            # 5 rounds of 2,000 admissions per variant, ~20 s
    python -m benchmarks.bench_tenants_admit --json

In process, against a local ``redis-server``: ``RedisBackend.reserve`` (awaited when it answers an
awaitable) and the settlement of each admitted request, one request at a time, as the request path does
them, with the backends' background tasks running (the lease loop refilling and reporting; the writer
writing settlements). Blocks of the two variants take turns (leases, per request, leases, ...), so both see
the same machine. Per admission: the wall time the request waited (``wait_us``) and this thread's CPU
(``cpu_us``, the background work the block caused included, as it runs on the same loop). Medians of the
blocks. What the end-to-end ``bench_extproc --tenants`` shows as answer time, without the gRPC and load
client around it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from picker.config.tenants import LeaseConfig, RedisConfig
from picker.tenants.backend import Settlement, Verdict
from picker.tenants.ledger import actual_vector, reservation_vector
from picker.tenants.redis_backend import RedisBackend
from picker.testing.redis_server import RedisServer

LIMITS = (1_000_000_000, None, None, None, 10**15, None)
AMOUNTS = reservation_vector(1_100, 300_000)


async def _block(b: RedisBackend, n: int) -> tuple[float, float]:
    wall = cpu = 0.0
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        v = b.reserve("bench", LIMITS, AMOUNTS)
        verdict = v if isinstance(v, Verdict) else await v
        wall += time.perf_counter() - t0
        cpu += time.thread_time() - c0
        c0 = time.thread_time()
        b.settle(
            Settlement("bench", "m", AMOUNTS, actual_vector(1_100, 300_000), 100, 1_000, 0, verdict.hold)
        )
        await asyncio.sleep(0)  # the loop turn a request's stream gives the background tasks
        cpu += time.thread_time() - c0
    return wall / n * 1e6, cpu / n * 1e6


async def _measure(url: str, rounds: int, n: int) -> dict[str, Any]:
    variants = {
        "lease": RedisBackend(RedisConfig(url=url, timeout=1.0, key_prefix="bench:a:")),
        "per_request": RedisBackend(
            RedisConfig(url=url, timeout=1.0, key_prefix="bench:b:", lease=LeaseConfig(fraction=0))
        ),
    }
    tasks = [asyncio.create_task(b.run()) for b in variants.values()]
    out: dict[str, Any] = {name: {"wait_us": [], "cpu_us": []} for name in variants}
    try:
        for b in variants.values():
            await _block(b, 200)  # connected, scripts loaded, a lease granted
        for _ in range(rounds):
            for name, b in variants.items():
                wait, cpu = await _block(b, n)
                out[name]["wait_us"].append(round(wait, 1))
                out[name]["cpu_us"].append(round(cpu, 1))
                await asyncio.sleep(0.2)  # the writer drains between blocks
        for name, b in variants.items():
            out[name]["admitted_on_lease"] = b.local_admissions
            out[name]["admitted_after_refill"] = b.refill_admissions
            out[name]["asked_redis"] = b.remote_admissions
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for b in variants.values():
            await b.close()
    for name in variants:
        out[name]["median_wait_us"] = statistics.median(out[name]["wait_us"])
        out[name]["median_cpu_us"] = statistics.median(out[name]["cpu_us"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--admissions", type=int, default=2_000, help="per block")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-admit-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            load = Path("/proc/loadavg").read_text(encoding="utf-8").split()[0]
            doc = asyncio.run(_measure(server.url, args.rounds, args.admissions))
        finally:
            server.stop()
    doc["load_average_1m_at_start"] = float(load)
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    for name in ("lease", "per_request"):
        d = doc[name]
        print(
            f"{name}: wait {d['median_wait_us']} us (blocks {d['wait_us']}), cpu {d['median_cpu_us']} us "
            f"(blocks {d['cpu_us']}); on a lease {d['admitted_on_lease']}, asked Redis {d['asked_redis']}"
        )
    print(f"load average at start: {load}")


if __name__ == "__main__":
    main()
