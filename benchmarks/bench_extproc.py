"""ext_proc benchmark: what one routed request costs the EPP, against the bare gRPC floor, in one run.

    python -m benchmarks.bench_extproc --json            # ~40 min: 3 runs per phase, 1,000,000-stream soak
    python -m benchmarks.bench_extproc --quick --json    # < 60 s: one short run; RSS extrapolated
    python -m benchmarks.bench_extproc --rss-streams 200000 --json
    python -m benchmarks.bench_extproc --header-only --json   # ~4 min: header-only mode and both floors
    python -m benchmarks.bench_extproc --tracing --json       # ~4 min: --tracing off / 0 / 1 / 100 %
    python -m benchmarks.bench_extproc --stream-window --json # ~4 min: --grpc-stream-window, 200 KB bodies

Servers (each its own process, all started once and measured in turn):

- ``floor``: a null handler written here on the same stack as ours (grpc.aio, protobuf upb, uvloop, the
  same server options and read/write loop as :class:`picker.extproc.ExtProcServer`). It answers every
  message at once with the smallest valid reply: an empty headers reply for headers, the chunk echoed as a
  ``streamed_response`` for body chunks (what FULL_DUPLEX_STREAMED requires);
- ``ours``: ``python -m picker serve --static-endpoints <16 fake vLLM servers> --secure-serving=false``
  with the default configuration: the real scraper, datastore, director, scheduler, telemetry and admin;
- ``ours_skip``: the same with ``responseProcessing: WhenNeeded`` in the PickerConfig document, so the
  request-headers reply carries ``mode_override`` and the proxy skips the response phases;
- ``ours_w2``: the same as ``ours`` with ``--workers 2``;
- ``ours_noscrape``: the same as ``ours`` with the scrape loop idle (``--refresh-metrics-interval 1h``);
- ``ours_header``: header-only mode (``--model-header x-ai-eg-model``, its default profile), and
  ``ours_header_noscrape`` the same with the scrape loop idle.

Header-only mode (issue 18), in the same run: its streams are what Envoy sends with ``request_body_mode:
NONE`` — the request headers (the same ten plus the model and a prompt-token estimate), one reply, the
half-close. The **one-message floor** is the null handler driven by the same one-message streams (it
answers the request headers with an empty headers reply), the **full-stream floor** the null handler
driven by full streams (phase ``cpu``). Phases: ``max_one`` (closed loop, floor and ours_header in turn),
the same under h2load when installed (``floor_one`` and ``ours_header_one`` in ``h2load``: requests/s and
the server's CPU per request at saturation, ``*_cpu_us_at_max_h2load``), ``half_max_one`` (each at half of
ours_header's max: p50/p99 from writing the request headers to the reply), ``cpu_header_only``
(ours_header and floor side by side at 400/s each: ``header_only_cpu_ratio``) and
``cpu_header_only_request_path`` (ours_header_noscrape and floor). ``header_only_cpu_us_per_request`` is
the worse of the two variants' CPU per request (as ``cpu_ratio``); ``one_message_floor_cpu_us`` the
floor's in the same windows. ``--header-only`` runs only these phases, the full-stream floor's ``max``
and ``cpu`` phases (floor alone) and the servers they need.

Load: Envoy-like load generators (``picker.testing.envoy`` messages and streams over real gRPC) in two
processes, four connections each per server. A stream is what Envoy sends for one request with
``FULL_DUPLEX_STREAMED`` bodies: request headers (10 headers with ``x-request-id``), the chat body in
64 KiB chunks, then - after the request replies arrived - response headers and a one-chunk SSE body with a
usage event, each sent after the previous reply (a proxy honouring ``mode_override`` stops after the
request phase and closes the stream). The 16 endpoints are fake vLLM servers in a third process.

Server CPU = on-CPU time of the server's process tree over the window, in nanoseconds from each thread's
``/proc/<pid>/task/<tid>/schedstat`` (``benchmarks.harness.CpuMeter``; ``/proc/<pid>/stat``'s 10 ms ticks
would quantize a quick window's figure in steps of ~33 µs per stream), minus its
idle rate measured before the phases, all servers in one shared window (4 s with ``--quick``, 10 s
otherwise; for ours that is the scrape loop: 16 endpoints every 50 ms, about 350 µs per stream at 200/s,
so its noise goes straight into the ratio). Phases, each ``--runs`` times, servers taking turns:

- ``max``: closed loop, 8 streams in flight per load process: ``max_streams_per_s``;
- one server at a time at 100/s, 300/s and 50 % of ours' max: EPP-side latency, i.e. the request phase as
  the proxy sees it, from writing the request headers to reading the last request-body reply (what a
  request waits for the EPP before it goes upstream): ``p99_ms_at_half_max``;
- **side by side** (servers driven at the same time by the same load processes, so they share the
  machine's conditions; on a shared 2-core machine that is what makes the ratios stable): ``cpu`` = ours
  and floor at 200/s each, giving ``cpu_us_per_stream``, ``floor_cpu_us_per_stream`` and
  ``cpu_ratio_with_scraping`` (median of per-run ratios); ``cpu_request_path`` = the same with
  ``ours_noscrape`` (``--refresh-metrics-interval 1h``: nothing to subtract, but no new snapshots either):
  ``cpu_ratio_request_path``. ``cpu_ratio`` (the target's number) is the worse of the two, because the
  idle subtraction of the first can err either way (a busy loop batches scrapes more cheaply than an idle
  one); ``cpu_skip`` = ours and ours_skip (the saving of "fewer messages");
  ``cpu_w2`` = ours and ours_w2; ``body_1k``/``body_200k`` = ours and floor at 100/s each with 1 KB and
  200 KB bodies: ``body200k_added_cpu_us`` = [ours(200K) - floor(200K)] - [ours(1K) - floor(1K)], what OUR
  code adds for the bigger body beyond what gRPC pays to carry it twice (the target refers to this one;
  ``body200k_added_cpu_us_raw`` = ours(200K) - ours(1K) is reported too);
- RSS (server process tree) after every phase above (the warm-up) and after ``--rss-streams`` more
  streams; with fewer than 1,000,000 (``--quick``: a 3 s soak) the growth is extrapolated linearly to
  1,000,000 (``rss_extrapolated``), which a few thousand streams cannot resolve well: allocator arenas
  move RSS in steps;
- ``max_h2load`` (when ``h2load`` is installed: ``apt-get install nghttp2-client``): floor, ours and
  ours_w2 in turn under nghttp2's C load generator, 16 connections x 4 streams in flight, each stream
  sending its four messages at once (gRPC-framed) and reading its four replies; about 0.15 core for the
  generator instead of about as much as the server for the Python one. A run whose reply bytes per stream
  fall below a 20-stream probe's (a failed gRPC stream is still HTTP 200 to h2load) is refused;
- ``workers2_speedup`` = max streams/s with ``--workers 2`` / with one worker, under h2load when it ran
  (``workers2_speedup_python_load``: under the Python generators, which share the 2 cores and cap it);
  ``workers2_ceiling`` = (cores - h2load's CPU) / one worker's CPU at its maximum: what the machine
  allows, since one worker is more than one busy thread; ``workers2_cpu_scaling`` = 2 x CPU per stream
  of one worker / of two (side by side).

Keys of issue 6: ``cpu_us_per_stream``, ``floor_cpu_us_per_stream``, ``max_streams_per_s``,
``p99_ms_at_half_max``, ``body200k_added_cpu_us``, ``rss_growth_mb``, ``workers2_speedup``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.extproc.floor import serve_null
from benchmarks.extproc.h2load import grpc_framed_stream
from benchmarks.extproc.load import CHANNELS_PER_PROC, load_main
from benchmarks.extproc.report import (
    h2load_summary,
    header_only_headline,
    header_only_summary,
    headline,
    paired,
    summary,
)
from benchmarks.extproc.run import (
    BODY_RATE,
    CPU_RATE,
    FLEET_RPS,
    HEADER_CPU_RATE,
    HEADER_VARIANTS,
    LOAD_PROCS,
    Plan,
    Run,
)
from benchmarks.extproc.workload import HEADER_ONLY, LARGE_BODY, SMALL_BODY
from benchmarks.harness import children, machine_info

ALL = ["floor", "ours", "ours_skip", "ours_w2"]
HEADER_SERVERS = ["floor", "ours_header"]
#: the smallest reply a one-message stream gets: the floor's empty headers reply in its gRPC frame
ONE_MESSAGE_MIN_REPLY = 7


def measure_header_only(r: Run, plan: Plan, tmp: Path) -> None:
    """The header-only phases (see the module docstring), ``plan.runs`` times each."""
    for _ in range(plan.runs):
        r.measure("max_one", HEADER_SERVERS, mode="closed", duration=plan.max_s, shape=HEADER_ONLY)
    if shutil.which("h2load"):
        one_file = tmp / "one-message.bin"
        one_file.write_bytes(grpc_framed_stream(SMALL_BODY, HEADER_ONLY))
        for _ in range(plan.runs):
            r.measure_h2load(
                HEADER_SERVERS,
                one_file,
                round(2000 * plan.max_s),
                min_reply_bytes=ONE_MESSAGE_MIN_REPLY,
                suffix="_one",
            )
    half = round((r.streams_per_s("max_one", "ours_header") or 600.0) / 2.0, 1)
    r.doc["header_only_half_max_rate"] = half
    for _ in range(plan.runs):
        r.measure(
            "half_max_one", HEADER_SERVERS, mode="open", duration=plan.half_s, rate=half, shape=HEADER_ONLY
        )
        for label, servers in (
            ("cpu_header_only", HEADER_SERVERS),
            ("cpu_header_only_request_path", ["floor", "ours_header_noscrape"]),
        ):
            r.side_by_side(label, servers, rate=HEADER_CPU_RATE, shape=HEADER_ONLY)


def report(r: Run, doc: dict[str, Any], started: float) -> None:
    """The run's phases, paired ratios and h2load figures into ``doc``, with the time it took."""
    doc["phases"] = r.phases()
    doc["paired"] = paired(r.results)
    if r.h2load:
        doc["h2load"] = h2load_summary(r.h2load)
    doc["elapsed_s"] = round(time.monotonic() - started, 1)


def run_header_only(
    quick: bool, runs: int | None, command: str, fleet_rps: float = FLEET_RPS
) -> dict[str, Any]:
    """Header-only mode against both floors, alone (``--header-only``)."""
    plan = Plan(
        runs=runs or (1 if quick else 3),
        max_s=2.0 if quick else 5.0,
        rate_s=2.0 if quick else 5.0,
        half_s=3.0 if quick else 5.0,
        idle_s=4.0 if quick else 10.0,
        soak_s=0.0,
        rss_streams=0,
    )
    doc: dict[str, Any] = {
        "benchmark": "bench_extproc",
        "command": command,
        "quick": quick,
        "header_only_run": True,
        "machine": machine_info(),
        "runs": plan.runs,
        "method": (
            f"servers take turns within each run; max {plan.max_s:g} s, half max {plan.half_s:g} s, "
            f"side-by-side CPU {plan.rate_s:g} s; {LOAD_PROCS} load processes x {CHANNELS_PER_PROC} "
            "connections; medians over runs; ratios are medians of per-run ratios"
        ),
    }
    started = time.monotonic()
    r = Run(plan, doc)
    with tempfile.TemporaryDirectory(prefix="bench-extproc-") as tmp, children() as procs:
        r.start(procs, Path(tmp), variants=HEADER_VARIANTS, fleet_rps=fleet_rps)
        for _ in range(plan.runs):
            r.measure("max", ["floor"], mode="closed", duration=plan.max_s)
        measure_header_only(r, plan, Path(tmp))
        for _ in range(plan.runs):
            # the full-stream floor, alone (ours is not started in this run)
            r.side_by_side("cpu", ["floor"])
    report(r, doc, started)
    header_only_headline(doc)
    return doc


def run(
    quick: bool, runs: int | None, rss_streams: int | None, command: str, fleet_rps: float = FLEET_RPS
) -> dict[str, Any]:
    plan = Plan(
        runs=runs or (1 if quick else 3),
        max_s=2.0 if quick else 6.0,
        rate_s=1.5 if quick else 6.0,
        half_s=3.0 if quick else 6.0,
        idle_s=4.0 if quick else 10.0,
        soak_s=3.0 if quick else 20.0,
        rss_streams=rss_streams if rss_streams is not None else (0 if quick else 1_000_000),
    )
    doc: dict[str, Any] = {
        "benchmark": "bench_extproc",
        "command": command,
        "quick": quick,
        "machine": machine_info(),
        "runs": plan.runs,
        "method": (
            f"servers take turns within each run; per run: max {plan.max_s:g} s, each fixed rate "
            f"{plan.rate_s:g} s (half max {plan.half_s:g} s); {LOAD_PROCS} load processes x "
            f"{CHANNELS_PER_PROC} connections; figures are medians over runs; ratios are medians of "
            "per-run ratios (each run compares servers measured "
            "seconds apart, which cancels slow drifts in the machine's load)"
        ),
    }
    started = time.monotonic()
    r = Run(plan, doc)
    with tempfile.TemporaryDirectory(prefix="bench-extproc-") as tmp, children() as procs:
        r.start(procs, Path(tmp), fleet_rps=fleet_rps)
        for _ in range(plan.runs):
            r.measure("max", ALL, mode="closed", duration=plan.max_s)
        if shutil.which("h2load"):
            stream_file = Path(tmp) / "stream.bin"
            stream_file.write_bytes(grpc_framed_stream(SMALL_BODY))
            for _ in range(plan.runs):
                # about max_s seconds at 1,000 streams/s
                r.measure_h2load(["floor", "ours", "ours_w2"], stream_file, round(1000 * plan.max_s))
        else:
            doc["h2load_missing"] = (
                "h2load not installed (apt-get install nghttp2-client): workers2_speedup uses the Python load"
            )
        measure_header_only(r, plan, Path(tmp))
        half = round((r.streams_per_s("max", "ours") or 300.0) / 2.0, 1)
        doc["half_max_rate"] = half
        one_at_a_time: list[tuple[str, float, float, list[str]]] = [
            ("100/s", 100.0, plan.rate_s, ["floor", "ours"]),
            ("300/s", 300.0, plan.rate_s, ["floor", "ours"]),
            ("half_max", half, plan.half_s, ALL),
        ]
        side_by_side: list[tuple[str, float, int, list[str]]] = [
            ("cpu", CPU_RATE, SMALL_BODY, ["floor", "ours"]),
            ("cpu_request_path", CPU_RATE, SMALL_BODY, ["floor", "ours_noscrape"]),
            ("cpu_skip", CPU_RATE, SMALL_BODY, ["ours", "ours_skip"]),
            ("cpu_w2", CPU_RATE, SMALL_BODY, ["ours", "ours_w2"]),
            ("body_1k", BODY_RATE, SMALL_BODY, ["floor", "ours"]),
            ("body_200k", BODY_RATE, LARGE_BODY, ["floor", "ours"]),
        ]
        for _ in range(plan.runs):
            for label, rate, seconds, servers in one_at_a_time:
                r.measure(label, servers, mode="open", duration=seconds, rate=rate)
            for label, rate, body, servers in side_by_side:
                r.side_by_side(label, servers, rate=rate, body_bytes=body)
        r.soak(max(r.streams_per_s("max", "ours"), 1.0))
    report(r, doc, started)
    headline(doc)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_extproc", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument(
        "--quick", action="store_true", help="one short run per phase (under 60 s), RSS extrapolated"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--runs", type=int, default=None, help="runs per phase (default 3, quick 1)")
    p.add_argument(
        "--rss-streams", type=int, default=None, help="streams of the RSS soak (default 1,000,000)"
    )
    p.add_argument(
        "--header-only",
        action="store_true",
        help="only header-only mode against the one-message and full-stream floors (issue 18)",
    )
    p.add_argument(
        "--tenants",
        action="store_true",
        help="the cost of tenant metering and a limit instead (benchmarks/bench_tenants.py)",
    )
    p.add_argument(
        "--tracing",
        action="store_true",
        help="the cost of --tracing off, at 0, 1 and 100 %% sampling instead (benchmarks/bench_tracing.py)",
    )
    p.add_argument(
        "--stream-window",
        action="store_true",
        help="the cost of --grpc-stream-window for 200 KB bodies and what it bounds instead "
        "(benchmarks/bench_window.py)",
    )
    p.add_argument(
        "--fleet-rps",
        type=float,
        default=FLEET_RPS,
        help="unattended requests a second the 16 fake servers serve, so their gauges move as a serving "
        "fleet's do (default %(default)g; 0: pages that never change, as sittings before 2026-12-07 had)",
    )
    p.add_argument("--serve-null", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--serve-collector", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_null is not None:
        return serve_null(args.serve_null)
    if args.load:
        return load_main()
    if args.serve_collector:
        from benchmarks.bench_tracing import serve_collector

        return serve_collector()
    command = "python -m benchmarks.bench_extproc " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.tenants:
        from benchmarks import bench_tenants

        doc = bench_tenants.run(args.quick, args.runs, command)
        print(json.dumps(doc, indent=2) if args.json else bench_tenants.summary(doc))
        return 0
    if args.tracing:
        from benchmarks import bench_tracing

        doc = bench_tracing.run(args.quick, args.runs, command)
        print(json.dumps(doc, indent=2) if args.json else bench_tracing.summary(doc))
        return 0
    if args.stream_window:
        from benchmarks import bench_window

        doc = bench_window.run(args.quick, args.runs, command)
        print(json.dumps(doc, indent=2) if args.json else bench_window.summary(doc))
        return 0
    if args.header_only:
        doc = run_header_only(args.quick, args.runs, command, args.fleet_rps)
        print(json.dumps(doc, indent=2) if args.json else header_only_summary(doc))
        return 0
    doc = run(args.quick, args.runs, args.rss_streams, command, args.fleet_rps)
    print(json.dumps(doc, indent=2) if args.json else summary(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
