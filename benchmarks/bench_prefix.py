"""What prefix scoring adds to one request's CPU, at 1,000 endpoints, for a 200 KB chat prompt.

    python -m benchmarks.bench_prefix --json          # about a minute
    python -m benchmarks.bench_prefix --quick --json  # about 20 s
    python -m benchmarks.bench_prefix --quick --parts  # and the CPU of each stage on its own
    python -m benchmarks.bench_prefix --quick --json --parts --blocks-per-entry 1,2,4,8  # side by side

Each request runs the director's routing steps as the service does, twice, on the same snapshot of 1,000
endpoints and the same 200 KB chat body:

* **with**: parse with the prefix window (the first 16 KB of the canonical prompt), hash it (256 blocks of
  64 bytes, the default limit, in entries of 8 blocks: our default profile's ``blocksPerEntry``), match it
  against the snapshot, schedule with the reference default profile's weights (queue 2, KV 2, prefix 3,
  load guard on), record the prompt for the primary, charge the load;
* **without**: parse without the window, schedule with the same profile minus the prefix scorer (queue 2,
  KV 2), charge the load.

``added_us`` = with - without, the medians of the per-request CPU time of this thread
(``time.thread_time_ns``: other processes on a shared machine do not inflate it, though they still cool
the caches). Three workloads:

* ``conversation``: the next turn of one of 500 conversations whose history (system prompt and turns)
  already fills the 16 KB window and is recorded on one endpoint: every block matches there;
* ``shared_prefix``: a 20 KB system prompt that every one of the 1,000 endpoints holds, then a question:
  the lookup resolves a 1,000-endpoint holder set;
* ``fresh``: a prompt nobody has seen, on an index whose endpoints are full (capacity 1,024 blocks each,
  pre-filled), so each record also evicts a window's worth of entries (256 / ``blocksPerEntry``): the
  worst case for the index update.

The target (issue 13): ``added_us`` <= 150 µs for every workload.

``--blocks-per-entry 1,2,4,8`` measures the index with entries of that many blocks (``blocksPerEntry``;
1 is the reference's index) side by side: every value gets its own pool and index (capacities stay in
blocks: 1,024 or 31,250 blocks per endpoint, so 1,024 / s entries in the fresh case), and each run times
them in turn, the order rotating from run to run, so all of them meet the same machine. The JSON then
has one result per value under ``blocks_per_entry``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from picker.routing.openai import parse_request
from picker.state.prefix import prefix_config_of
from scoring import EndpointMatrix, PickRequest, PluginSpec, ProfileSpec, Scheduler, build_scheduler
from scoring.matrix import LoadCharge
from scoring.prefix import ApproxPrefixCache
from scoring.registry import DEFAULT_PARAMETERS

ENDPOINTS = 1000
PROMPT_BYTES = 200_000
TARGET_US = 150.0
NOW = 1000.0
PATH = "/v1/chat/completions"
WORDS = ("route", "token", "cache", "queue", "batch", "model", "prefix", "decode", "gateway", "pool")


def text_of(seed: int, size: int) -> str:
    """Deterministic words, different for every seed from the first word on."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(WORDS), size=size // 6 + 1)
    return f"<{seed}> " + " ".join(WORDS[int(i)] for i in picks)[:size]


def _body(messages: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"model": "m", "messages": messages, "stream": True, "max_tokens": 256})


def conversation(c: int, turn: int) -> bytes:
    """Turn ``turn`` of conversation ``c``: a 2 KB system prompt, then 8 KB turns up to about 200 KB."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": text_of(c, 2_000)}]
    for t in range(turn):
        messages.append({"role": "user", "content": text_of(c * 1000 + t, 4_000)})
        messages.append({"role": "assistant", "content": text_of(c * 1000 + 500 + t, 4_000)})
    rest = max(1_000, PROMPT_BYTES - len(messages) * 4_000)
    messages.append({"role": "user", "content": text_of(c * 1000 + 999, rest)})
    return _body(messages)


def shared(k: int, system: str) -> bytes:
    return _body(
        [{"role": "system", "content": system}, {"role": "user", "content": text_of(10**6 + k, PROMPT_BYTES)}]
    )


def fresh(k: int) -> bytes:
    return _body([{"role": "user", "content": text_of(2 * 10**6 + k, PROMPT_BYTES)}])


def profile(with_prefix: bool, per_entry: int | None = None) -> Scheduler:
    """Queue 2, KV 2 and (``with_prefix``) prefix 3 with our default profile's parameters (entries of 8
    blocks), or entries of ``per_entry`` blocks."""
    plugins = [PluginSpec("queue-scorer", "queue-scorer"), PluginSpec("kv", "kv-cache-utilization-scorer")]
    refs: list[tuple[str, float | None]] = [("queue-scorer", 2.0), ("kv", 2.0)]
    if with_prefix:
        params = dict(DEFAULT_PARAMETERS["prefix-cache-scorer"])
        if per_entry is not None:
            params["blocksPerEntry"] = per_entry
        plugins.append(PluginSpec("prefix", "prefix-cache-scorer", params))
        refs.append(("prefix", 3.0))
    return build_scheduler(plugins, [ProfileSpec("default", refs)])


def pool() -> EndpointMatrix:
    from benchmarks.bench_pick import fleet

    return EndpointMatrix.from_rows(fleet(ENDPOINTS, seed=ENDPOINTS))


@dataclass
class Router:
    """The director's steps for one request, with or without prefix scoring."""

    m: EndpointMatrix
    scheduler: Scheduler
    cache: ApproxPrefixCache | None
    rng: np.random.Generator

    def route(self, body: bytes) -> int:
        cache = self.cache
        info = parse_request(PATH, body, prefix_window=cache.window if cache is not None else 0)
        match = None
        if cache is not None:
            data = info.prefix_input
            info.prefix_input = b""
            match = cache.match_prompt(
                "m", info.cache_salt, data, self.m, now=NOW, answer_tokens=info.max_tokens or 0
            )
        req = PickRequest(
            target_model="m", prompt_tokens_estimate=info.prompt_chars // 4, stream=info.stream, prefix=match
        )
        row = self.scheduler.schedule(self.m, req, now=NOW, rng=self.rng).primary
        if cache is not None and match is not None:
            cache.record(self.m, row, match)
        LoadCharge.for_request(req, row).add(self.m, row)
        return row


def _cpu_us(
    calls: int, body: Callable[[int], bytes], route: Callable[[bytes], int], after: Callable[[], None]
) -> list[float]:
    """Per-call CPU time (µs) of this thread for ``route(body(i))``; ``after()`` runs untimed after each."""
    times = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(calls):
            data = body(i)
            t0 = time.thread_time_ns()
            route(data)
            times.append((time.thread_time_ns() - t0) / 1000.0)
            after()
    finally:
        if gc_was:
            gc.enable()
    return times


def _release(m: EndpointMatrix) -> None:
    """The requests routed so far have completed: their load is given back. Called after every timed
    request, so each one meets the same idle pool (and a conversation's holder is not busy with the
    previous request of the run, which would make the load guard send it elsewhere)."""
    for column in (m.dispatched, m.inflight, m.prefill_tokens, m.inflight_tokens):
        column[:] = 0.0


def setup(
    workload: str, per_entry: int | None = None
) -> tuple[EndpointMatrix, Router, Router, Callable[[int], bytes]]:
    """The pool, the routers without and with prefix scoring (its index filled for ``workload``; entries
    of ``per_entry`` blocks, or the scorer's default) and the ``i -> body`` of the workload's timed
    requests."""
    m = pool()
    rng = np.random.default_rng(7)
    plain = Router(m, profile(False), None, rng)
    capacity = 1024 if workload == "fresh" else 31_250  # blocks per endpoint
    scheduler = profile(True, per_entry)
    config = prefix_config_of(scheduler)
    assert config is not None
    config = dataclasses.replace(config, capacity=capacity)
    with_prefix = Router(m, scheduler, ApproxPrefixCache(config), rng)
    cache = with_prefix.cache
    assert cache is not None
    system = text_of(99, 20_000)
    if workload == "conversation":
        for c in range(500):  # every conversation's history recorded on the endpoint its first turn went to
            with_prefix.route(conversation(c, 24))

        def make(i: int) -> bytes:
            return conversation(i % 500, 25)

    elif workload == "shared_prefix":
        head = b"system\n" + system.encode()
        probe = cache.match(cache.hashes("m", "", head), m, now=NOW, blocks=cache.blocks(len(head)))
        assert probe is not None
        for row in range(ENDPOINTS):  # every endpoint holds the system prompt
            cache.record(m, row, probe)

        def make(i: int) -> bytes:
            return shared(i, system)

    else:
        for k in range(4 * ENDPOINTS):  # fill every endpoint to its capacity: records evict from now on
            with_prefix.route(fresh(10**6 + k))

        def make(i: int) -> bytes:
            return fresh(i)

    _release(m)
    return m, plain, with_prefix, make


def measure(
    workload: str, runs: int, calls: int, per_entry: tuple[int | None, ...] = (None,)
) -> dict[int | None, dict[str, float]]:
    """Per value of ``per_entry``: the medians over ``runs`` of the per-request CPU with and without prefix
    scoring (the values take turns within each run, in an order that rotates from run to run)."""
    setups = {s: setup(workload, s) for s in per_entry}
    with_runs: dict[int | None, list[float]] = {s: [] for s in per_entry}
    without_runs: dict[int | None, list[float]] = {s: [] for s in per_entry}
    for r in range(runs):
        bodies = [setups[per_entry[0]][3](r * calls + i) for i in range(calls)]
        for k in range(len(per_entry)):
            s = per_entry[(r + k) % len(per_entry)]
            m, plain, with_prefix, _ = setups[s]
            after = lambda m=m: _release(m)  # noqa: E731 - a one-line callback
            with_runs[s].append(
                statistics.median(_cpu_us(calls, bodies.__getitem__, with_prefix.route, after))
            )
            without_runs[s].append(statistics.median(_cpu_us(calls, bodies.__getitem__, plain.route, after)))
    out = {}
    for s in per_entry:
        with_us, without_us = statistics.median(with_runs[s]), statistics.median(without_runs[s])
        cache = setups[s][2].cache
        assert cache is not None
        out[s] = {
            "with_us": round(with_us, 1),
            "without_us": round(without_us, 1),
            "added_us": round(with_us - without_us, 1),
            "index_entries": len(cache.index),
        }
    return out


#: the stages of a request with prefix scoring that :func:`parts` times one by one
STAGES = ("parse_window", "hash", "match", "schedule", "record")


def parts(workload: str, runs: int, calls: int, per_entry: int | None = None) -> dict[str, float]:
    """Where the added CPU goes: per stage of the ``with`` request, the median CPU µs of this thread, and
    for the two stages both requests have (parse, schedule) the ``without`` request's figure beside it.
    As in :func:`measure`, the bodies of a run are made first and the two kinds of request run one after
    the other (each stage timed on its own adds about a µs of timer per stage)."""
    m, plain, with_prefix, make = setup(workload, per_entry)
    cache = with_prefix.cache
    assert cache is not None
    times: dict[str, list[float]] = {k: [] for k in (*STAGES, "parse_plain", "schedule_plain")}
    clock = time.thread_time_ns

    def lap(stage: str, t0: int) -> int:
        t1 = clock()
        times[stage].append((t1 - t0) / 1000.0)
        return clock()

    def with_stages(body: bytes) -> None:
        t = clock()
        info = parse_request(PATH, body, prefix_window=cache.window)
        t = lap("parse_window", t)
        hashes = cache.hashes("m", info.cache_salt, info.prefix_input)
        t = lap("hash", t)
        match = cache.match(hashes, m, now=NOW, blocks=cache.blocks(len(info.prefix_input)))
        info.prefix_input = b""
        t = lap("match", t)
        req = PickRequest(
            target_model="m", prompt_tokens_estimate=info.prompt_chars // 4, stream=info.stream, prefix=match
        )
        row = with_prefix.scheduler.schedule(m, req, now=NOW, rng=with_prefix.rng).primary
        t = lap("schedule", t)
        if match is not None:
            cache.record(m, row, match)
        lap("record", t)
        _release(m)

    def plain_stages(body: bytes) -> None:
        t = clock()
        info = parse_request(PATH, body, prefix_window=0)
        t = lap("parse_plain", t)
        req = PickRequest(target_model="m", prompt_tokens_estimate=info.prompt_chars // 4, stream=info.stream)
        plain.scheduler.schedule(m, req, now=NOW, rng=plain.rng)
        lap("schedule_plain", t)
        _release(m)

    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(runs):
            bodies = [make(10**5 + r * calls + i) for i in range(calls)]
            for body in bodies:
                with_stages(body)
            for body in bodies:
                plain_stages(body)
    finally:
        if gc_was:
            gc.enable()
    return {k: round(statistics.median(v), 1) for k, v in times.items()}


WORKLOADS = ("conversation", "shared_prefix", "fresh")


def run(
    quick: bool, command: str, *, stages: bool = False, per_entry: tuple[int, ...] = ()
) -> dict[str, Any]:
    """The document ``--json`` prints; with ``per_entry`` one result per ``blocksPerEntry`` value."""
    runs, calls = (3, 60) if quick else (7, 150)
    load = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    values: tuple[int | None, ...] = per_entry or (None,)
    results: dict[str, dict[str, Any]] = {}
    for w in WORKLOADS:
        by_value: dict[int | None, dict[str, Any]] = dict(measure(w, runs, calls, values))
        if stages:
            for v in values:
                by_value[v]["stages_us"] = parts(w, runs, calls, v)
        results[w] = (
            by_value[None] if not per_entry else {"blocks_per_entry": {str(v): by_value[v] for v in values}}
        )
    met = {
        w: all(r["added_us"] <= TARGET_US for r in (res["blocks_per_entry"].values() if per_entry else [res]))
        for w, res in results.items()
    }
    return {
        "benchmark": "bench_prefix",
        "command": command,
        "endpoints": ENDPOINTS,
        "prompt_bytes": PROMPT_BYTES,
        "runs": runs,
        "calls_per_run": calls,
        "workloads": results,
        "target_added_us": TARGET_US,
        "targets_met": met,
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1m_at_start": load,
            "note": "shared machine: other processes ran test suites during the run",
        },
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_prefix", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="3 shorter runs per figure")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--parts", action="store_true", help="also time each stage of the request on its own (where it goes)"
    )
    p.add_argument("--blocks-per-entry", default="", metavar="S,S,...", help="entries of these many blocks")
    args = p.parse_args(argv)
    command = "python -m benchmarks.bench_prefix " + shlex.join(sys.argv[1:] if argv is None else argv)
    per_entry = tuple(int(x) for x in args.blocks_per_entry.split(",") if x.strip().isdigit())
    if len(per_entry) != len([x for x in args.blocks_per_entry.split(",") if x.strip()]) or 0 in per_entry:
        p.error(f"--blocks-per-entry: comma-separated integers >= 1, got {args.blocks_per_entry!r}")
    doc = run(args.quick, command, stages=args.parts, per_entry=per_entry)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for w, res in doc["workloads"].items():
            rows = res["blocks_per_entry"].items() if per_entry else [("", res)]
            for v, r in rows:
                with_us, without_us, added = r["with_us"], r["without_us"], r["added_us"]
                label = f"{w} s={v}" if v else w
                print(f"{label:>18}: with {with_us:>7} µs, without {without_us:>7} µs, added {added} µs")
                if "stages_us" in r:
                    print(" " * 20 + ", ".join(f"{k} {x}" for k, x in r["stages_us"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
