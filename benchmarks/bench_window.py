"""What ``--grpc-stream-window`` costs honest traffic with 200 KB bodies, and what it bounds
(``bench_extproc --stream-window``).

    python -m benchmarks.bench_extproc --stream-window --json           # 3 runs, ~4 min
    python -m benchmarks.bench_extproc --stream-window --quick --json   # 1 short run

Servers (``bench_extproc``'s harness: real ``picker serve`` processes over 16 fake vLLM servers, Envoy-like
load processes in two processes with four connections each, full streams: request headers, the chat body in
64 KiB chunks, response headers, an SSE chunk):

- ``auto``: ``--grpc-stream-window=0``, gRPC's own receive windows (its bandwidth-delay probe grows each
  stream's to 4 MiB or more);
- ``w64k``, ``w256k``, ``w1m``: a fixed window of 64 KiB, 256 KiB, 1 MiB per stream (the probe off).

Phases, each ``--runs`` times, every variant **side by side with** ``auto`` (both driven at once by the same
load processes, so they share the machine's conditions; the pairs' order rotates from run to run):
``max_200k_<variant>`` = closed loop with 200 KB bodies, 8 streams in flight per load process and server:
``max_ratio_to_auto`` = median of the per-run streams/s ratios; ``cpu_200k_<variant>`` = 100 streams/s each
with 200 KB bodies: ``cpu_ratio_to_auto`` (CPU per stream, from schedstat minus idle) and the request
phase's p50/p99 as the proxy sees it (from writing the request headers to the last request-body reply).

Then the **hostile peer** (:func:`hostile_growth`), once per server: ``HOSTILE_STREAMS`` streams on one
connection each start at SSE response headers and send one 64 KiB chunk whose echo the client never reads
(its own window is 16 KiB, probe off), so each stream's handler waits on that write and reads nothing more;
each stream then offers ``HOSTILE_CHUNKS`` more 64 KiB chunks (2 MiB). What gRPC accepts of them sits in its
buffers: ``rss_growth_mib`` (the server's resident set, peak minus before) and ``accepted_chunks``
(sends completed per stream, at most): deterministic, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.extproc.run import BODY_RATE, Plan, Run, median, per_run, ratio
from benchmarks.extproc.workload import LARGE_BODY
from benchmarks.harness import children, rss_bytes

__all__ = ["hostile_growth", "run", "summary"]

VARIANTS = (("auto", "0"), ("w64k", "64Ki"), ("w256k", "256Ki"), ("w1m", "1Mi"))
HOSTILE_STREAMS = 64
HOSTILE_CHUNKS = 32
HOSTILE_CHUNK = 64 << 10
#: the hostile client's own receive window: the echo of its first chunk never fits
CLIENT_WINDOW = 16 << 10
#: the senders are done, or none progressed for this long (each sent what the server's windows take)
QUIET_S = 2.0


async def hostile_growth(target: str, pid: int) -> dict[str, Any]:
    """The non-reading peer (:func:`picker.testing.unread_peer.offer_unread`, the one the hardening test
    bounds) against the server at ``target`` (process ``pid``); see the module docstring."""
    from picker.testing.unread_peer import offer_unread

    outcome = await offer_unread(
        target,
        lambda: rss_bytes(pid),
        streams=HOSTILE_STREAMS,
        chunks=HOSTILE_CHUNKS,
        chunk=HOSTILE_CHUNK,
        client_window=CLIENT_WINDOW,
        quiet_s=QUIET_S,
        sample_s=0.05,
        settle_s=0.3,  # what was written last reaches the server
        rpc_timeout_s=600,
    )
    return {
        "rss_growth_mib": round(outcome.growth / (1 << 20), 1),
        "accepted_chunks": outcome.accepted,
        "offered_mib": HOSTILE_STREAMS * HOSTILE_CHUNKS * HOSTILE_CHUNK >> 20,
        "seconds": round(outcome.seconds, 1),
    }


def run(quick: bool, runs: int | None, command: str) -> dict[str, Any]:
    plan = Plan(
        runs=runs or (1 if quick else 3),
        max_s=2.0 if quick else 5.0,
        rate_s=2.0 if quick else 5.0,
        half_s=0.0,
        idle_s=3.0 if quick else 8.0,
        soak_s=0.0,
        rss_streams=0,
    )
    doc = plan.document("bench_extproc --stream-window", command, quick=quick)
    names = [name for name, _ in VARIANTS]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-window-") as tmp, children() as procs:
        r = Run(plan, doc)
        r.start(
            procs,
            Path(tmp),
            variants=[(name, 1, None, [f"--grpc-stream-window={w}"]) for name, w in VARIANTS],
        )
        others = names[1:]
        for i in range(plan.runs):
            for name in others[i % len(others) :] + others[: i % len(others)]:
                pair = ["auto", name]
                r.measure(
                    f"max_200k_{name}",
                    pair,
                    together=True,
                    mode="closed",
                    duration=plan.max_s,
                    body_bytes=LARGE_BODY,
                )
                r.side_by_side(f"cpu_200k_{name}", pair, rate=BODY_RATE, body_bytes=LARGE_BODY)
        doc["hostile"] = {
            name: asyncio.run(hostile_growth(r.live[name].target, r.live[name].pid))
            for name in names
            if name in r.live
        }
    doc["phases"] = r.phases()
    pairs = {n: (f"max_200k_{n}", f"cpu_200k_{n}") for n in names[1:]}
    doc["max_streams_per_s"] = {
        n: {s: median(per_run(r.results, top, s, "streams_per_s")) for s in ("auto", n)}
        for n, (top, _) in pairs.items()
    }
    doc["max_ratio_to_auto"] = {
        n: ratio(r.results, top, n, "auto", "streams_per_s") for n, (top, _) in pairs.items()
    }
    doc["cpu_ratio_to_auto"] = {n: ratio(r.results, cpu, n, "auto") for n, (_, cpu) in pairs.items()}

    def per_run_ratios(phase: str, name: str, key: str) -> list[float | None]:
        ours, auto = per_run(r.results, phase, name, key), per_run(r.results, phase, "auto", key)
        return [round(x / y, 3) if y else None for x, y in zip(ours, auto, strict=True)]

    doc["per_run_ratios"] = {
        n: {
            "streams_per_s": per_run_ratios(top, n, "streams_per_s"),
            "cpu": per_run_ratios(cpu, n, "cpu_us_per_stream"),
        }
        for n, (top, cpu) in pairs.items()
    }
    for key in ("request_p50_ms", "request_p99_ms"):
        doc[f"rate_200k_{key}"] = {
            n: {s: median(per_run(r.results, cpu, s, key)) for s in ("auto", n)}
            for n, (_, cpu) in pairs.items()
        }
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    return doc


def summary(doc: dict[str, Any]) -> str:
    keys = (
        "max_streams_per_s",
        "max_ratio_to_auto",
        "cpu_ratio_to_auto",
        "per_run_ratios",
        "rate_200k_request_p50_ms",
        "rate_200k_request_p99_ms",
    )
    lines = [f"200 KB bodies; machine {doc['machine']}"]
    lines.extend(f"  {key}: {json.dumps(doc[key])}" for key in keys)
    lines.append("hostile peer (streams not read): " + json.dumps(doc["hostile"]))
    return "\n".join(lines)
