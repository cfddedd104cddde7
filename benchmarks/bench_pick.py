"""Pick benchmark: the vectorized scheduler against the same scorers written as a per-endpoint Python loop.

    python -m benchmarks.bench_pick --json          # 1-2 minutes: 7 runs per figure
    python -m benchmarks.bench_pick --quick --json  # under 30 s: 3 shorter runs per figure

Workload: a fleet of N endpoints (10, 16, 100, 1,000, 10,000) with seeded, realistic gauges (queues 0-20,
running 0-64, KV and GPU utilization 0-1 with 10 % of GPU values unknown, 0-2 of 20 LoRA adapters
loaded, max_lora 4, fresh scrapes). Each pick is for a request naming one of the adapters or the base
model with a prompt of 50-8,000 tokens (streamed), and is followed - outside the timed region - by the
request's load charge on its primary endpoint (``LoadCharge.add``: dispatched, in-flight and token columns),
as the service does.

Figures (microseconds; each is the median over runs of a per-run statistic):

- ``pick_p50_us``: median time of one :meth:`Scheduler.schedule` with our default profile
  (queue + running + KV + LoRA + GPU scorers, max-score picker) on an unchanged snapshot - the steady
  state between two scrapes, where the snapshot's static scores are cached;
- ``pick_numpy_path_p50_us``: the same with the small-pool path off (``Scheduler.small_pool = 0``): up to
  24 endpoints the default scores with Python floats, bit-identical and cheaper than numpy calls there;
- ``pick_new_snapshot_p50_us``: the same when every pick sees a new snapshot (nothing cached);
- ``pick_reference_p50_us``: the reference default profile (queue 2, KV 2, prefix 3);
- ``pick_timed_p50_us``: our default profile asked for per-plugin timings (``timings=[]``), as a traced
  request's pick is: every plugin timed, each scorer also scored on its own;
- ``loop_p50_us``: the baseline - our default profile written as a Python loop over endpoint objects
  (same imputation, formulas, weights and tie-break), measured in the same run; ``speedup`` = loop / pick;
- ``batch64_1000_us``: :meth:`Scheduler.schedule_batch` of 64 requests over 1,000 endpoints, and
  ``batch64_1000_sequential_us`` for the same 64 picks made one :meth:`schedule` call at a time.

Targets (issue "scoring"): pick over 1,000 endpoints ≤ 30 µs p50 and ≥ 20x the loop; 10,000 ≤ 300 µs;
the batch ≤ 1 ms. ``agree`` reports whether the loop picked the same endpoints as the scheduler.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.harness import cpu_model
from scoring import EndpointMatrix, EndpointRow, PickRequest, Scheduler, default_scheduler
from scoring.matrix import LoadCharge
from scoring.registry import DEFAULT_WEIGHTS, reference_default_scheduler
from scoring.scorers.tokens import DEFAULT_MIN_RANGE_TOKENS

SIZES = (10, 16, 100, 1000, 10000)
ADAPTERS = tuple(f"adapter-{i}" for i in range(20))
NOW = 1000.0
MAX_LOAD = 1e12
TARGETS = {"pick_1000_us": 30.0, "pick_10000_us": 300.0, "speedup_1000": 20.0, "batch64_1000_us": 1000.0}


# ---------------------------------------------------------------------------------------------- workload
def fleet(n: int, seed: int) -> list[EndpointRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        loaded = rng.choice(len(ADAPTERS), size=int(rng.integers(0, 3)), replace=False)
        rows.append(
            EndpointRow(
                name=f"pod-{i}-rank-0",
                address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8000",
                waiting=float(rng.integers(0, 21)),
                running=float(rng.integers(0, 65)),
                kv_usage=float(rng.random()),
                gpu_util=float(rng.random()) if rng.random() > 0.1 else math.nan,
                scraped_at=NOW,
                lora_active=tuple(ADAPTERS[j] for j in loaded),
                max_lora=4.0,
            )
        )
    return rows


def requests(count: int, seed: int) -> list[PickRequest]:
    rng = np.random.default_rng(seed)
    names = [*ADAPTERS, "base-model"]
    return [
        PickRequest(
            target_model=names[int(rng.integers(len(names)))],
            prompt_tokens_estimate=int(rng.integers(50, 8001)),
        )
        for _ in range(count)
    ]


# ---------------------------------------------------------------------------------------------- baseline
@dataclass(slots=True)
class LoopScheduler:
    """Our default profile as the obvious Python implementation: one pass per statistic, then one loop."""

    weights: dict[str, float]

    @staticmethod
    def _fill(values: Sequence[float], lo: float, hi: float, fallback: float) -> float:
        known = [min(max(v, lo), hi) for v in values if math.isfinite(v)]
        return sum(known) / len(known) if known else fallback

    def pick(
        self,
        rows: Sequence[EndpointRow],
        dispatched: list[float],
        prefill: list[float],
        target: str,
        rng: np.random.Generator,
    ) -> int:
        w = self.weights
        wq, wr = w.get("queue-scorer", 0.0), w.get("running-requests-size-scorer", 0.0)
        wkv, wl = w.get("kv-cache-utilization-scorer", 0.0), w.get("lora-affinity-scorer", 0.0)
        wg, wp = w.get("gpu-utilization-scorer", 0.0), w.get("prefill-queue-scorer", 0.0)
        p_lo = min(prefill)
        p_top = max(*prefill, p_lo + DEFAULT_MIN_RANGE_TOKENS)
        q_fill = self._fill([r.waiting for r in rows], 0.0, MAX_LOAD, 0.0)
        r_fill = self._fill([r.running for r in rows], 0.0, MAX_LOAD, 0.0)
        kv_fill = self._fill([r.kv_usage for r in rows], 0.0, 1.0, 0.0)
        g_fill = self._fill([r.gpu_util for r in rows], 0.0, 1.0, 0.5)
        queue = []
        running = []
        for i, r in enumerate(rows):
            q = r.waiting if math.isfinite(r.waiting) else q_fill
            queue.append(min(max(q, 0.0), MAX_LOAD) + dispatched[i])
            run = r.running if math.isfinite(r.running) else r_fill
            running.append(min(max(run, 0.0), MAX_LOAD) + dispatched[i])
        q_lo, q_hi = min(queue), max(queue)
        r_lo, r_hi = min(running), max(running)
        best = -math.inf
        ties: list[int] = []
        for i, r in enumerate(rows):
            kv = r.kv_usage if math.isfinite(r.kv_usage) else kv_fill
            gpu = r.gpu_util if math.isfinite(r.gpu_util) else g_fill
            if target in r.lora_active:
                lora = 1.0
            elif len(r.lora_active) + len(r.lora_waiting) < r.max_lora:
                lora = 0.8
            elif target in r.lora_waiting:
                lora = 0.6
            else:
                lora = 0.0
            total = (
                wq * ((q_hi - queue[i]) / (q_hi - q_lo) if q_hi > q_lo else 1.0)
                + wr * ((r_hi - running[i]) / (r_hi - r_lo) if r_hi > r_lo else 1.0)
                + wkv * (1.0 - min(max(kv, 0.0), 1.0))
                + wl * lora
                + wg * (1.0 - min(max(gpu, 0.0), 1.0))
                + wp * ((p_top - prefill[i]) / (p_top - p_lo) if p_top > p_lo else 1.0)
            )
            if total > best:
                best = total
                ties = [i]
            elif total == best:
                ties.append(i)
        return ties[int(rng.integers(len(ties)))] if len(ties) > 1 else ties[0]


# ---------------------------------------------------------------------------------------------- timing
def _per_call(calls: int, setup: Callable[[int], None], body: Callable[[int], Any]) -> list[float]:
    """Per-call wall times (µs) of ``body(i)``; ``setup(i)`` runs untimed before each call. GC off."""
    times = []
    clock = time.perf_counter_ns
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(calls):
            setup(i)
            t0 = clock()
            body(i)
            times.append((clock() - t0) / 1000.0)
    finally:
        if gc_was:
            gc.enable()
    return times


def _median_of_runs(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def bench_size(n: int, runs: int, calls: int, loop_calls: int) -> dict[str, Any]:
    rows = fleet(n, seed=n)
    reqs = requests(max(calls, loop_calls), seed=1)
    ours = default_scheduler()
    reference = reference_default_scheduler()
    loop = LoopScheduler(dict(DEFAULT_WEIGHTS))

    charges = [LoadCharge.for_request(r) for r in reqs]

    def scheduler_p50(s: Scheduler, *, new_snapshot: bool, timed: bool = False) -> float:
        snapshots = [EndpointMatrix.from_rows(rows) for _ in range(8 if new_snapshot else 1)]
        rng = np.random.default_rng(2)
        state: dict[str, Any] = {"m": snapshots[0]}

        def setup(i: int) -> None:
            m = snapshots[i % len(snapshots)]
            if new_snapshot:  # a fresh object each time: what a scrape publishing a new snapshot looks like
                m = m.with_load(m.dispatched)  # the same (shared) load columns, as the datastore does
                m = EndpointMatrix(**{k: getattr(m, k) for k in m.__dataclass_fields__})
            state["m"] = m

        def body(i: int) -> None:
            m = state["m"]
            primary = s.schedule(m, reqs[i], now=NOW, rng=rng).primary
            charges[i].add(m, primary)

        def timed_body(i: int) -> None:  # a traced request's pick: a fresh list of timings each
            m = state["m"]
            primary = s.schedule(m, reqs[i], now=NOW, rng=rng, timings=[]).primary
            charges[i].add(m, primary)

        return statistics.median(_per_call(calls, setup, timed_body if timed else body))

    def loop_p50() -> float:
        rng = np.random.default_rng(2)
        dispatched = [0.0] * n
        prefill = [0.0] * n

        def body(i: int) -> None:
            primary = loop.pick(rows, dispatched, prefill, reqs[i].target_model, rng)
            dispatched[primary] += 1.0
            prefill[primary] += charges[i].prefill

        return statistics.median(_per_call(loop_calls, lambda _i: None, body))

    numpy_only = default_scheduler()
    numpy_only.small_pool = 0  # the vectorized path at every size (the default scores small pools as floats)
    pick = _median_of_runs(runs, lambda: scheduler_p50(ours, new_snapshot=False))
    vectorized = _median_of_runs(runs, lambda: scheduler_p50(numpy_only, new_snapshot=False))
    cold = _median_of_runs(runs, lambda: scheduler_p50(ours, new_snapshot=True))
    ref = _median_of_runs(runs, lambda: scheduler_p50(reference, new_snapshot=False))
    timed = _median_of_runs(runs, lambda: scheduler_p50(ours, new_snapshot=False, timed=True))
    base = _median_of_runs(runs, loop_p50)
    checked = reqs[: 64 if n <= 1000 else 8]  # the loop is slow at 10,000: fewer requests suffice
    return {
        "pick": pick,
        "numpy": vectorized,
        "cold": cold,
        "reference": ref,
        "timed": timed,
        "loop": base,
        "agree": agreement(rows, checked),
    }


def agreement(rows: list[EndpointRow], reqs: Sequence[PickRequest]) -> bool:
    """Do the scheduler and the loop pick the same endpoints for the same sequence of requests?"""
    m = EndpointMatrix.from_rows(rows)
    s = default_scheduler()
    loop = LoopScheduler(dict(DEFAULT_WEIGHTS))
    dispatched = [0.0] * len(rows)
    prefill = [0.0] * len(rows)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    for req in reqs:
        a = s.schedule(m, req, now=NOW, rng=rng_a).primary
        b = loop.pick(rows, dispatched, prefill, req.target_model, rng_b)
        if a != b:
            return False
        charge = LoadCharge.for_request(req)
        charge.add(m, a)
        dispatched[b] += 1.0
        prefill[b] += charge.prefill
    return True


def bench_batch(runs: int, calls: int) -> dict[str, float]:
    rows = fleet(1000, seed=1000)
    s = default_scheduler()
    batches = [requests(64, seed=10 + i) for i in range(calls)]

    def run(batched: bool) -> float:
        m = EndpointMatrix.from_rows(rows)
        rng = np.random.default_rng(3)

        def body(i: int) -> None:
            if batched:
                s.schedule_batch(m, batches[i], now=NOW, rng=rng)
                return
            copy = m.with_load_copies()
            for req in batches[i]:
                LoadCharge.for_request(req).add(copy, s.schedule(copy, req, now=NOW, rng=rng).primary)

        return statistics.median(_per_call(calls, lambda _i: None, body))

    return {
        "batch64_1000_us": _median_of_runs(runs, lambda: run(True)),
        "batch64_1000_sequential_us": _median_of_runs(runs, lambda: run(False)),
    }


# ---------------------------------------------------------------------------------------------- report
def run(quick: bool, command: str) -> dict[str, Any]:
    runs = 3 if quick else 7
    load_at_start = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    per_size: dict[str, dict[str, Any]] = {}
    for n in SIZES:
        calls = (400 if quick else 2000) if n < 10000 else (200 if quick else 800)
        loop_calls = max(5, min(calls, (200_000 if quick else 600_000) // n))
        per_size[str(n)] = bench_size(n, runs, calls, loop_calls)
    batch = bench_batch(runs, 40 if quick else 200)

    def column(key: str) -> dict[str, float]:
        return {k: round(v[key], 2) for k, v in per_size.items()}

    doc: dict[str, Any] = {
        "benchmark": "bench_pick",
        "command": command,
        "runs": runs,
        "pick_p50_us": column("pick"),
        "loop_p50_us": column("loop"),
        "speedup": {k: round(v["loop"] / v["pick"], 1) for k, v in per_size.items()},
        "pick_numpy_path_p50_us": column("numpy"),
        "pick_new_snapshot_p50_us": column("cold"),
        "pick_reference_p50_us": column("reference"),
        "pick_timed_p50_us": column("timed"),
        "loop_agrees": {k: v["agree"] for k, v in per_size.items()},
        **{k: round(v, 1) for k, v in batch.items()},
    }
    doc["targets"] = {
        "pick_1000_le_30us": doc["pick_p50_us"]["1000"] <= TARGETS["pick_1000_us"],
        "speedup_1000_ge_20x": doc["speedup"]["1000"] >= TARGETS["speedup_1000"],
        "pick_10000_le_300us": doc["pick_p50_us"]["10000"] <= TARGETS["pick_10000_us"],
        "batch64_1000_le_1ms": doc["batch64_1000_us"] <= TARGETS["batch64_1000_us"],
    }
    doc["machine"] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        # other processes compete for the same cores; a high value here means inflated figures
        "load_average_1m_at_start": load_at_start,
    }
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    return doc


def _summary(doc: dict[str, Any]) -> str:
    lines = [
        f"{'endpoints':>10} {'pick µs':>9} {'new snap':>9} {'reference':>10} {'loop µs':>10} {'speedup':>8}"
    ]
    lines.extend(
        f"{n:>10} {doc['pick_p50_us'][n]:>9.2f} {doc['pick_new_snapshot_p50_us'][n]:>9.2f} "
        f"{doc['pick_reference_p50_us'][n]:>10.2f} {doc['loop_p50_us'][n]:>10.1f} "
        f"{doc['speedup'][n]:>7.1f}x"
        for n in map(str, SIZES)
    )
    batch, sequential = doc["batch64_1000_us"], doc["batch64_1000_sequential_us"]
    lines.append(f"batch of 64 over 1000: {batch} µs (sequential {sequential} µs)")
    lines.append(
        "targets: " + ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in doc["targets"].items())
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_pick", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="3 shorter runs per figure (under 30 s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    command = "python -m benchmarks.bench_pick " + shlex.join(sys.argv[1:] if argv is None else argv)
    doc = run(args.quick, command)
    print(json.dumps(doc, indent=2) if args.json else _summary(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
