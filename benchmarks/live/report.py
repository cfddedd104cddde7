"""The per-router summary (the simulator's keys and definitions, in model seconds) and the markdown report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from benchmarks.live.workload import Record
from benchmarks.sim.metrics import Slo, latency_stats
from benchmarks.sim.report import markdown_table


def summarize_live(
    records: Sequence[Record],
    *,
    time_scale: float,
    slo: Slo,
    fleet_stats: Sequence[Mapping[str, float]] = (),
) -> dict[str, Any]:
    """The report row of one router: the ``bench_quality`` keys, computed from client-side records.

    Times are converted to model seconds (wall / ``time_scale``). A request that failed (error status,
    exception, timeout, or a stream with fewer tokens than asked) counts in ``errors`` and never in goodput;
    latency percentiles are over the completed requests. ``load_imbalance`` is max / mean over servers of
    prompt + output tokens they processed, ``prefix_hit_rate`` the servers' prefix-cache hits / lookups,
    both from the fleet's own counters (``fleet_stats``).
    """
    ok = [r for r in records if r.ok]
    scale = 1.0 / time_scale
    sent = np.asarray([r.sent_s for r in ok], dtype=np.float64) * scale
    first = np.asarray([r.first_byte_s for r in ok], dtype=np.float64) * scale
    end = np.asarray([r.end_s for r in ok], dtype=np.float64) * scale
    tokens = np.asarray([r.tokens for r in ok], dtype=np.int64)
    makespan = float(np.max(end)) - min(r.sent_s for r in records) * scale if ok else float("nan")
    stats, good = latency_stats(sent, first, end, tokens, slo=slo, makespan=makespan)
    work = [float(s.get("prompt_tokens", 0) + s.get("generation_tokens", 0)) for s in fleet_stats]
    queries = sum(float(s.get("prefix_queries", 0)) for s in fleet_stats)
    picks = [r.pick_s for r in records if not math.isnan(r.pick_s)]
    errors: dict[str, int] = {}
    for r in records:
        if not r.ok:
            kind = r.error.split(":", 1)[0] if r.error else f"status {r.status}"
            if not r.error and r.status == 200:
                kind = "incomplete stream"
            errors[kind] = errors.get(kind, 0) + 1
    return {
        "requests": len(records),
        "completed": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        **stats,
        "slo_attainment": float(good.sum()) / len(records) if records else float("nan"),
        "prefix_hit_rate": sum(float(s.get("prefix_hits", 0)) for s in fleet_stats) / queries
        if queries
        else 0.0,
        "load_imbalance": max(work) / (sum(work) / len(work)) if work and sum(work) > 0 else float("nan"),
        "preemptions": int(sum(float(s.get("preemptions", 0)) for s in fleet_stats)),
        "makespan_s": makespan,
        "pick_mean_us": float(np.mean(picks)) * 1e6 if picks else float("nan"),
    }


def markdown_report(doc: Mapping[str, Any]) -> str:
    """The result document as Markdown: setup, then the bench_quality table plus an errors column."""
    cfg = doc["config"]
    lines = [
        (
            f"# Live routing — trace `{cfg['trace']}`, {cfg['servers']} fake vLLM servers, "
            f"load {cfg['load']:.2f}"
        ),
        "",
        f"Command: `{doc['command']}`  ",
        " ".join(
            (
                f"{doc['requests']} requests per router (trace slice from request {cfg['offset']},",
                f"outputs capped at {cfg['max_output_tokens']} tokens), open-loop at",
                f"{doc['offered_rps_wall']:.2f} req/s wall =",
                f"{doc['offered_rps_model']:.2f} req/s model time; capacity",
                f"{doc['capacity_rps_per_server']:.3f} req/s per server (model time, never starved);",
                f"time scale {cfg['time_scale']} wall s per model s; latencies in model seconds.",
                f"SLO: TTFT ≤ {cfg['slo']['ttft_s']} s and TPOT ≤ {cfg['slo']['tpot_s']} s.",
                f"Machine: {doc['machine']['cpus']} CPUs, load average",
                f"{doc['machine']['load_average_1m_at_start']} at start; wall time {doc['wall_s']:.0f} s.",
            )
        ),
        "",
        markdown_table(doc["routers"]),
        "",
        "| router | completed | errors | error kinds | EPP pick (µs, incl. gateway) |",
        "|---|---|---|---|---|",
    ]
    for name, row in doc["routers"].items():
        kinds = ", ".join(f"{k}: {v}" for k, v in row.get("error_kinds", {}).items()) or "—"
        pick = row.get("pick_mean_us", float("nan"))
        pick_s = "—" if pick is None or math.isnan(pick) else f"{pick:.0f}"
        lines.append(f"| {name} | {row['completed']} | {row['errors']} | {kinds} | {pick_s} |")
    for name, reason in doc.get("unavailable", {}).items():
        lines.append(f"\n`{name}` did not run: {reason}")
    return "\n".join(lines)
