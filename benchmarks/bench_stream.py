"""What our per-stream Python costs, warm and with the cold caches it meets inside the server.

    python -m benchmarks.bench_stream --json            # ~40 s
    python -m benchmarks.bench_stream --quick --json    # ~10 s
    python -m benchmarks.bench_stream --header-only --json   # header-only mode's one message
    python -m benchmarks.bench_stream --header-only --profile  # cProfile of its warm loop, top 25,
                                                               # and how much code a stream touches

Why this exists: the ext_proc handler of one stream (request headers, 1 KB chat body, response headers,
one-chunk SSE body, close) costs about 75 µs in a warm loop but about 300 µs of server CPU inside
``picker serve``. Between two messages of a stream the gRPC stack, the load generators and the other
processes evict the CPU caches, so each message starts cold, and what it costs then follows the number of
distinct code paths and objects it touches rather than its iterations. Summing a 16 MB array before each
message (larger than the 2 x 1 MB of L2, half the shared L3 of the 2-core machines we measure on)
reproduces the in-server figures per message within about 10 % (an instrumented server gave 32 / 185 /
34 / 53 µs for the four messages). So a change to the stream path can be priced here in seconds, without
gRPC, and the number means what ``bench_extproc``'s CPU ratio will see.

Same service wiring as ``picker serve`` with the default configuration (director, scheduler, telemetry,
16 static endpoints that are never scraped, as ``bench_extproc``'s ``ours_noscrape``), the messages
``bench_extproc``'s load generator sends. Time is the thread's CPU time around each ``handle()`` call and
the final ``close()``. Reports the median over ``--repeat`` blocks of streams:

- ``warm_us_per_stream``: streams back to back;
- ``cold_us_per_stream`` and ``cold_us`` per message (``request_headers``, ``request_body``,
  ``response_headers``, ``response_body``, ``close``): the array summed before each message.

``--header-only``: the same for header-only mode (``--model-header x-ai-eg-model``, its default profile):
one ``request_headers`` message (with the model and prompt-token headers) and ``close``.

``--fresh-every K`` (with ``--header-only`` or without): what a busy server pays for its scrape loop beside
the requests. Every endpoint first gets a scraped page's gauges; then before every K-th stream six scrapes
land (as 16 endpoints scraped every 50 ms do in 20 ms; untimed, the idle scrape loop pays them too, and
every endpoint stays fresh) and the snapshot is published (``Datastore.publish``, timed with that
stream's first message), so that stream's pick prepares the new snapshot. Under load the service folds
landed scrapes into a new snapshot at most once per scrape period (50 ms; 20 ms before issue 18's
cadence change), the first pick after it paying for the snapshot and its preparation: at 400 requests/s
that is every 20th request (``K = 20``; ``K = 8`` for 20 ms); an idle server builds none, so
``bench_extproc``'s idle subtraction does not remove it. ``K = 1``: a new snapshot for every stream.

``--tracing``: warm streams without a tracer and with ``--tracing``'s at 0, 1 and 100 % sampling
(``parentbased_traceidratio``; the messages carry no ``traceparent``), exporting over OTLP/gRPC to a
collector endpoint in another process (``picker.testing.otlp``), blocks alternating between the four, each
round starting with the next variant (the first block after a switch is the slowest).
Time is the process's CPU time (``time.process_time_ns``), so the SDK's export thread is counted:
``tracing_us_per_stream`` per variant (median over blocks), ``tracing_added_us`` = its difference to off.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.extproc.workload import FULL, HEADER_ONLY, MODEL_HEADER, SMALL_BODY, Workload
from benchmarks.harness import machine_info, spawn_json
from picker.extproc.budget import BodyBudget
from picker.extproc.spans import RequestTracer
from picker.extproc.stream import ExtProcStream
from picker.service import Service
from picker.settings import Settings, TracingSettings
from picker.state.endpoints import PoolInfo, parse_static_endpoints
from picker.state.metrics import EndpointMetrics
from picker.tracing import Tracing
from picker.wiring import skip_response_rule, stream_config_rule

#: bytes summed before each message in the cold measurement (see the module doc)
EVICT_BYTES = 16 * 1024 * 1024
MESSAGES = ("request_headers", "request_body", "response_headers", "response_body", "close")
HEADER_ONLY_MESSAGES = ("request_headers", "close")
ENDPOINTS = 16
#: scrapes landed per new snapshot with ``--fresh-every``: 16 endpoints every 50 ms land 6.4 per 20 ms
#: (and every endpoint stays fresh, as in the server: none is avoided as stale)
LANDED_PER_SNAPSHOT = 6


def build_service(*, header_only: bool = False) -> Service:
    """``picker serve``'s objects with a static pool of 16 endpoints, nothing started."""
    addresses = ",".join(f"10.0.0.{i}:8000" for i in range(1, ENDPOINTS + 1))
    settings = Settings(
        static_endpoints=addresses, secure_serving=False, model_header=MODEL_HEADER if header_only else ""
    )
    service = Service.load(settings)
    endpoints = parse_static_endpoints(addresses)
    service.datastore.set_pool(PoolInfo(name="bench", namespace="default", target_ports=(8000,)))
    service.datastore.replace_endpoints(endpoints)
    return service


def _page(i: int) -> EndpointMetrics:
    """A scraped vLLM page's gauges, different per endpoint and scrape."""
    return EndpointMetrics(
        waiting=float(i % 3), running=float(i % 5), kv_usage=0.1 * (i % 7), max_lora=0.0, block_size=16.0
    )


class _Streams:
    def __init__(
        self,
        service: Service,
        *,
        header_only: bool = False,
        tracer: RequestTracer | None = None,
        fresh_every: int = 0,
    ) -> None:
        work = Workload.build(SMALL_BODY, HEADER_ONLY if header_only else FULL)
        self.messages = work.request + work.response
        self.names = HEADER_ONLY_MESSAGES if header_only else MESSAGES
        assert len(self.messages) == len(self.names) - 1, "one message per phase"
        self.header_only = header_only
        self.service = service
        # what the server holds once and hands to every stream
        self.router, self.observer = service.director, service.telemetry
        self.budget = BodyBudget()
        # as the server wires them: the skip rule once, the stream settings read at every stream
        self.skip_response = skip_response_rule(service.config_store)
        self.stream_config = stream_config_rule(service.config_store)
        self.evict = np.ones(EVICT_BYTES // 8)
        self.tracer = tracer
        #: a scrape lands and is published before every ``fresh_every``-th stream (0: never; module doc)
        self.fresh_every = fresh_every
        self.scrapes = 0
        datastore = service.datastore
        self._endpoints = [e.name for e in datastore.endpoints()]
        if fresh_every:
            for i, name in enumerate(self._endpoints):
                datastore.record_scrape(name, _page(i))
            datastore.publish()

    def _land(self, k: int) -> bool:
        """Before stream ``k``: :data:`LANDED_PER_SNAPSHOT` scrapes land (untimed: the idle scrape loop pays
        them too); True if the stream is to publish them."""
        if not self.fresh_every or k % self.fresh_every:
            return False
        record = self.service.datastore.record_scrape
        for _ in range(LANDED_PER_SNAPSHOT):
            self.scrapes += 1
            record(self._endpoints[self.scrapes % len(self._endpoints)], _page(self.scrapes))
        return True

    def _stream(self) -> ExtProcStream:
        max_body, served_verifier, header_only = self.stream_config()
        return ExtProcStream(
            self.router,
            self.observer,
            max_body_bytes=max_body,
            served_verifier=served_verifier,
            skip_response=self.skip_response,
            header_only=header_only,
            budget=self.budget,
            tracer=self.tracer,
        )

    def warm(self, count: int, clock: Callable[[], int] = time.thread_time_ns) -> float:
        """CPU µs per stream, streams back to back (``clock``: this thread's CPU time by default)."""
        if not self.fresh_every:
            t0 = clock()
            for _ in range(count):
                stream = self._stream()
                for message in self.messages:
                    stream.handle(message)
                stream.close()
            return (clock() - t0) / count / 1000
        publish = self.service.datastore.publish
        spent = 0
        for k in range(count):
            land = self._land(k)
            t0 = clock()
            if land:
                publish()
            stream = self._stream()
            for message in self.messages:
                stream.handle(message)
            stream.close()
            spent += clock() - t0
        return spent / count / 1000

    def cold(self, count: int) -> dict[str, float]:
        """CPU µs per message (and ``close``), the caches evicted before each."""
        clock = time.thread_time_ns
        evict = self.evict.sum
        publish = self.service.datastore.publish
        totals = dict.fromkeys(self.names, 0)
        for k in range(count):
            land = self._land(k)
            stream = self._stream()
            for name, message in zip(self.names, self.messages, strict=False):
                evict()
                t0 = clock()
                if land:  # the new snapshot, published by the first message's pick's time
                    publish()
                    land = False
                stream.handle(message)
                totals[name] += clock() - t0
            evict()
            t0 = clock()
            stream.close()
            totals["close"] += clock() - t0
        return {name: ns / count / 1000 for name, ns in totals.items()}


def run(
    *,
    quick: bool,
    repeat: int,
    counts: tuple[int, int] | None = None,
    service: Service | None = None,
    header_only: bool = False,
    fresh_every: int = 0,
) -> dict[str, Any]:
    """``counts``: streams per warm and per cold block (default by ``quick``); ``fresh_every``: see the
    module doc."""
    service = service if service is not None else build_service(header_only=header_only)
    streams = _Streams(service, header_only=header_only, fresh_every=fresh_every)
    warm_count, cold_count = counts or ((2000, 300) if quick else (10_000, 1000))
    streams.warm(min(1000, warm_count))  # first picks prepare the snapshot, first metric children appear
    warm = [streams.warm(warm_count) for _ in range(repeat)]
    cold = [streams.cold(cold_count) for _ in range(repeat)]
    per_message = {name: round(statistics.median(c[name] for c in cold), 1) for name in streams.names}
    return {
        "benchmark": "bench_stream",
        "command": "python -m benchmarks.bench_stream " + " ".join(sys.argv[1:]),
        "quick": quick,
        "header_only": header_only,
        "fresh_every": fresh_every,
        "machine": machine_info(),
        "repeat": repeat,
        "streams_per_block": {"warm": warm_count, "cold": cold_count},
        "evict_bytes": EVICT_BYTES,
        "warm_us_per_stream": round(statistics.median(warm), 1),
        "cold_us_per_stream": round(statistics.median(sum(c.values()) for c in cold), 1),
        "cold_us": per_message,
    }


def code_touched(stats: pstats.Stats, streams: int) -> str:
    """How much code a stream touches (what its cold cost follows, see the module doc): profiled calls per
    stream, the functions called at least once every other stream, and those of them in ``picker/`` and
    ``scoring/`` (ours; the metric batch's functions included, though they run at a flush)."""
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    calls = sum(row[1] for row in table.values())
    per_stream = [key for key, row in table.items() if row[1] >= streams / 2]
    ours = [key for key in per_stream if any(f"/{top}/" in key[0] for top in ("picker", "scoring"))]
    return (
        f"calls per stream {calls / streams:.1f}; functions per stream {len(per_stream)}, "
        f"of which ours {len(ours)} with {sum(table[key][1] for key in ours) / streams:.1f} calls"
    )


def run_tracing(*, quick: bool, repeat: int) -> dict[str, Any]:
    """``--tracing`` (see the module doc)."""
    collector = spawn_json(["-m", "benchmarks.bench_extproc", "--serve-collector"], timeout=60)
    try:
        service = build_service()
        endpoint = f"http://127.0.0.1:{collector.ready['port']}"
        tracers: dict[str, Tracing | None] = {"off": None}
        for name, ratio in (("0%", 0.0), ("1%", 0.01), ("100%", 1.0)):
            settings = TracingSettings(endpoint=endpoint, sampler="parentbased_traceidratio", ratio=ratio)
            tracers[name] = Tracing(settings)
        variants = {
            name: _Streams(service, tracer=None if tracer is None else tracer.for_pool(lambda: "bench"))
            for name, tracer in tracers.items()
        }
        for tracer in tracers.values():
            if tracer is not None:
                tracer.start()
        count = 2000 if quick else 10_000
        results: dict[str, list[float]] = {name: [] for name in variants}
        for streams in variants.values():
            streams.warm(min(1000, count))
        names = list(variants)
        for block in range(repeat):
            # the first block after a switch runs slower (measured: up to 30 µs between two identical
            # variants), so each round starts with the next variant
            for name in names[block % len(names) :] + names[: block % len(names)]:
                results[name].append(variants[name].warm(count, time.process_time_ns))

        async def close() -> None:
            for tracer in tracers.values():
                if tracer is not None:
                    await tracer.close()

        asyncio.run(close())
    finally:
        collector.stop()
    per_stream = {name: round(statistics.median(values), 1) for name, values in results.items()}
    added = {name: round(us - per_stream["off"], 1) for name, us in per_stream.items() if name != "off"}
    return {
        "benchmark": "bench_stream --tracing",
        "command": "python -m benchmarks.bench_stream " + " ".join(sys.argv[1:]),
        "quick": quick,
        "machine": machine_info(),
        "repeat": repeat,
        "streams_per_block": count,
        "tracing_us_per_stream": per_stream,
        "tracing_added_us": added,
        "per_block_us": {name: [round(v, 1) for v in values] for name, values in results.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="fewer streams per block (about 10 s)")
    p.add_argument("--repeat", type=int, default=5, help="blocks of streams; figures are medians")
    p.add_argument("--header-only", action="store_true", help="header-only mode's one-message streams")
    p.add_argument("--profile", action="store_true", help="cProfile the warm loop instead (top 25)")
    p.add_argument(
        "--fresh-every",
        type=int,
        default=0,
        metavar="K",
        help="a scrape lands and is published before every K-th stream (8: 400 requests/s under load)",
    )
    p.add_argument("--tracing", action="store_true", help="warm streams with --tracing off, 0, 1, 100 %%")
    args = p.parse_args(argv)
    if args.tracing:
        print(json.dumps(run_tracing(quick=args.quick, repeat=max(1, args.repeat)), indent=2))
        return 0
    if args.profile:
        streams = _Streams(
            build_service(header_only=args.header_only),
            header_only=args.header_only,
            fresh_every=max(0, args.fresh_every),
        )
        streams.warm(1000)
        profiler = cProfile.Profile()
        count = 5000 if args.quick else 20000
        profiler.runcall(streams.warm, count)
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(25)
        print(code_touched(stats, count))
        return 0
    doc = run(
        quick=args.quick,
        repeat=max(1, args.repeat),
        header_only=args.header_only,
        fresh_every=max(0, args.fresh_every),
    )
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        cold = ", ".join(f"{k} {v:g}" for k, v in doc["cold_us"].items())
        print(
            f"warm {doc['warm_us_per_stream']:g} µs/stream; cold {doc['cold_us_per_stream']:g} µs/stream "
            f"({cold})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
