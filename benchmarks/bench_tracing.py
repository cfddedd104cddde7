"""The cost of ``--tracing`` on the ext_proc path, in the same run as without it
(``bench_extproc --tracing``).

    python -m benchmarks.bench_extproc --tracing --json           # 3 runs, ~4 min
    python -m benchmarks.bench_extproc --tracing --quick --json   # 1 short run

Servers (``bench_extproc``'s harness: real ``picker serve`` processes over 16 fake vLLM servers, Envoy-like
load processes, server CPU from schedstat minus idle, full streams with a 1 KB chat body and an SSE
response):

- ``ours`` and ``ours_b``: tracing off (the default), twice: their ratio is what "nothing measurable"
  means on this machine in this run (the off path itself is one ``is None`` test per phase);
- ``ours_trace0``: ``--tracing`` with ``parentbased_traceidratio`` at 0: every request gets a
  non-recording span whose context is injected into the upstream headers, nothing is exported;
- ``ours_trace1``: the same at 0.01 (1 % of the requests recorded and exported);
- ``ours_trace100``: the same at 1.0 (every request recorded and exported).

The traced servers export over OTLP/gRPC to a real collector endpoint
(:class:`picker.testing.otlp.OtlpReceiver`) in a process of its own, whose CPU is not counted. The load
sends no ``traceparent``, so the ratio decides.

Phases, each ``--runs`` times: side by side at 200/s, ``ours`` with each other server in one window;
``*_cpu_ratio`` = median of the per-run CPU-per-stream ratios to ``ours``. Targets: tracing at 1 %
<= 1.03; off = within the A/A noise.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.extproc.run import CPU_RATE, Plan, Run, ratio
from benchmarks.harness import children, spawn_json

__all__ = ["run", "serve_collector", "summary"]

TARGETS = {"trace1_cpu_ratio_max": 1.03}
#: (server, OTEL_TRACES_SAMPLER_ARG) of the traced servers
TRACED = (("ours_trace0", "0"), ("ours_trace1", "0.01"), ("ours_trace100", "1"))
PAIRS = (("cpu_aa", "ours_b"), *((f"cpu_{name.removeprefix('ours_')}", name) for name, _ in TRACED))


def serve_collector() -> int:
    """A child process: an OTLP/gRPC collector endpoint; prints ``{"port": N}`` and serves until killed."""
    from picker.testing.otlp import OtlpReceiver

    async def main() -> None:
        receiver = OtlpReceiver()
        port = await receiver.start()
        sys.stdout.write(json.dumps({"port": port}) + "\n")
        sys.stdout.flush()
        await asyncio.Event().wait()

    asyncio.run(main())
    return 0


def run(quick: bool, runs: int | None, command: str) -> dict[str, Any]:
    plan = Plan.side_by_side(quick, runs)
    doc = plan.document("bench_extproc --tracing", command, quick=quick)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmp, children() as procs:
        collector = spawn_json(["-m", "benchmarks.bench_extproc", "--serve-collector"], timeout=60)
        procs.append(collector)
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.ready['port']}",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        }
        r = Run(plan, doc)
        r.start(
            procs,
            Path(tmp),
            variants=[
                ("ours", 1, None, []),
                ("ours_b", 1, None, []),
                *((name, 1, None, ["--tracing"]) for name, _ in TRACED),
            ],
            env={name: {**os.environ, **otel, "OTEL_TRACES_SAMPLER_ARG": arg} for name, arg in TRACED},
        )
        for _ in range(plan.runs):
            for label, other in PAIRS:
                r.side_by_side(label, ["ours", other])
    phases = doc["phases"] = r.phases()
    doc["cpu_us_per_stream"] = {
        label: {s: phases.get(label, {}).get(s, {}).get("cpu_us_per_stream") for s in ("ours", other)}
        for label, other in PAIRS
    }
    doc["cpu_ratio"] = {other: ratio(r.results, label, other, "ours") for label, other in PAIRS}
    limit = TARGETS["trace1_cpu_ratio_max"]
    doc["targets"] = {"trace1_cpu_le_1.03x": doc["cpu_ratio"]["ours_trace1"] <= limit}
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    return doc


def summary(doc: dict[str, Any]) -> str:
    lines = [f"CPU per stream at {CPU_RATE:g}/s, side by side with tracing off (ours):"]
    for label, per in doc["cpu_us_per_stream"].items():
        lines.append(f"  {label}: {per}")
    lines.append("ratios to ours (medians of per-run ratios): " + json.dumps(doc["cpu_ratio"]))
    lines.append(
        "targets: " + ", ".join(f"{k}={'met' if v else 'NOT met'}" for k, v in doc["targets"].items())
    )
    return "\n".join(lines)
