"""What continuation credit adds to the prefix producer's CPU per request, at 1,000 endpoints.

    python -m benchmarks.bench_continuation --json          # about 30 s
    python -m benchmarks.bench_continuation --quick --json

``bench_prefix``'s prompts all reach the 16 KB hashing window, where a prompt has no known end and
continuation credit has nothing to do; its cost is paid by shorter prompts. Here: 2,000 two-turn chat
conversations behind one 2 KB system prompt (what every endpoint's index shares), turn 1 routed and
recorded on a random endpoint of 1,000, then each conversation's turn 2 (turn 1, a 3 KB answer, a new
question: about 5.6 KB) is matched and recorded — ``ApproxPrefixCache.match_prompt`` then ``record``, as
the director does — by two producers with the same index parameters (our default profile's), one with
``continuationCredit`` and one without. Thread CPU per request (``time.thread_time_ns``), medians over
runs in which the two take turns; ``added_us`` is the difference. Every turn 2 is a continuation, so the
lookup finds its earlier prompt and the credit is applied: the costly path.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from benchmarks.bench_prefix import text_of
from picker.routing.openai import parse_request
from scoring import EndpointMatrix
from scoring.prefix import ApproxPrefixCache, PrefixConfig
from scoring.registry import DEFAULT_PARAMETERS

ENDPOINTS = 1000
CONVERSATIONS = 2000
PATH = "/v1/chat/completions"
NOW = 1000.0


def bodies() -> tuple[list[bytes], list[bytes]]:
    """Turn 1 and turn 2 of every conversation, as chat request bodies."""
    system = {"role": "system", "content": text_of(13, 2000)}
    first, second = [], []
    for c in range(CONVERSATIONS):
        history = [system, {"role": "user", "content": text_of(10 * c + 1, 150)}]
        first.append(json.dumps({"model": "m", "messages": history, "max_tokens": 800}).encode())
        history = [
            *history,
            {"role": "assistant", "content": text_of(10 * c + 2, 3000)},
            {"role": "user", "content": text_of(10 * c + 3, 200)},
        ]
        second.append(json.dumps({"model": "m", "messages": history, "max_tokens": 800}).encode())
    return first, second


def producer(credit: bool) -> ApproxPrefixCache:
    """Our default profile's index parameters, with or without the credit."""
    params = {**DEFAULT_PARAMETERS["prefix-cache-scorer"], "continuationCredit": credit}
    return ApproxPrefixCache(PrefixConfig.from_params("p", "prefix-cache-scorer", params)[0])


def route(cache: ApproxPrefixCache, m: EndpointMatrix, body: bytes, row: int) -> None:
    info = parse_request(PATH, body, prefix_window=cache.window)
    match = cache.match_prompt("m", info.cache_salt, info.prefix_input, m, now=NOW, answer_tokens=800)
    if match is not None:
        cache.record(m, row, match)


def run(quick: bool) -> dict[str, Any]:
    from benchmarks.bench_pick import fleet

    m = EndpointMatrix.from_rows(fleet(ENDPOINTS, seed=ENDPOINTS))
    first, second = bodies()
    homes = np.random.default_rng(5).integers(0, ENDPOINTS, size=CONVERSATIONS)
    runs = 3 if quick else 7
    per_run = CONVERSATIONS // runs
    results: dict[bool, list[float]] = {True: [], False: []}
    for r in range(runs):
        for credit in (r % 2 == 0, r % 2 == 1):
            cache = producer(credit)
            for c in range(CONVERSATIONS):
                route(cache, m, first[c], int(homes[c]))
            times = []
            gc.disable()
            try:
                for c in range(r * per_run, (r + 1) * per_run):
                    t0 = time.thread_time_ns()
                    route(cache, m, second[c], int(homes[(c + 1) % CONVERSATIONS]))
                    times.append((time.thread_time_ns() - t0) / 1000.0)
            finally:
                gc.enable()
            results[credit].append(statistics.median(times))
    on, off = statistics.median(results[True]), statistics.median(results[False])
    return {
        "benchmark": "bench_continuation",
        "endpoints": ENDPOINTS,
        "conversations": CONVERSATIONS,
        "runs": runs,
        "with_credit_us": round(on, 1),
        "without_credit_us": round(off, 1),
        "added_us": round(on - off, 1),
        "per_run_us": {
            "with": [round(x, 1) for x in results[True]],
            "without": [round(x, 1) for x in results[False]],
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_continuation", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="3 runs instead of 7")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    doc = run(args.quick)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        on, off, added = doc["with_credit_us"], doc["without_credit_us"], doc["added_us"]
        print(f"with {on} µs, without {off} µs, added {added} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
