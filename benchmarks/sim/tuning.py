"""Multi-seed comparison of routing policies across traces and loads, and the accounting's sensitivity.

    python -m benchmarks.sim.tuning                 # the full grid: about 10 minutes on 2 cores
    python -m benchmarks.sim.tuning --quick         # 2 seeds, 3 loads, 4,000 requests: about 2 minutes

``bench_quality`` answers "how do the policies compare on this trace at this load" for one seed; choosing a
default profile needs more: every bundled trace, a range of loads, several seeds (the seed moves scrape
phases, tie-breaks and the prompt-size estimates, and for the LoRA workload the arrivals themselves), and
the conditions the service cannot control (how good the chars / 4 estimate is, how many clients stream).
This runs that grid for round-robin, the reference profile and ours, and writes
``benchmarks/results/quality-tuning.{json,md}``: per trace and load, each policy's p99 TTFT and goodput as
the mean over seeds and our profile's ratios to the others as a geometric mean with the range over seeds;
then the sensitivity table (Azure trace) for the estimate's spread and the share of streaming requests,
including the non-streaming accounting rule the service does not use (``FleetConfig.nonstreaming_prefill``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.sim.fleet import FleetConfig, server_capacity_rps, simulate
from benchmarks.sim.metrics import Slo, summarize
from benchmarks.sim.policies import make_policy
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.traces import named_trace

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
TRACES = ("azure-conv", "mooncake-conv", "lora")
POLICIES = ("round-robin", "reference-default", "default")
KEYS = ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "goodput_rps", "slo_attainment", "e2e_p99_s")


@dataclass(frozen=True, slots=True)
class Variant:
    """Conditions of a run beyond the trace and the load (``FleetConfig`` fields)."""

    name: str
    fleet: Mapping[str, Any] = field(default_factory=dict)


#: the sensitivity grid (Azure trace): estimate spread, then streaming share and the accounting rule
VARIANTS = (
    Variant("estimate exact", {"prompt_estimate_sigma": 0.0}),
    Variant("estimate ±25 % (default)"),
    Variant("estimate ±50 %", {"prompt_estimate_sigma": 0.5}),
    Variant("80 % streaming", {"streaming_fraction": 0.8}),
    Variant("50 % streaming", {"streaming_fraction": 0.5}),
    Variant("20 % streaming", {"streaming_fraction": 0.2}),
    Variant(
        "50 % streaming, non-streaming counted until the end",
        {"streaming_fraction": 0.5, "nonstreaming_prefill": "until-end"},
    ),
    Variant(
        "20 % streaming, non-streaming counted until the end",
        {"streaming_fraction": 0.2, "nonstreaming_prefill": "until-end"},
    ),
)


@dataclass(frozen=True, slots=True)
class Job:
    trace: str
    load: float
    seed: int
    policy: str
    requests: int
    variant: Variant = field(default_factory=lambda: Variant("estimate ±25 % (default)"))


def run_job(job: Job) -> tuple[Job, dict[str, float]]:
    """One simulation (in a worker process): the summary keys this report uses."""
    w = named_trace(job.trace, seed=job.seed)
    w = w.head(job.requests) if len(w) > job.requests else w
    cap = server_capacity_rps(w, LLAMA3_8B_H100, seed=job.seed)
    cfg = replace(FleetConfig(LLAMA3_8B_H100, n_servers=16, seed=job.seed), **dict(job.variant.fleet))
    policy = make_policy(job.policy, lora=bool(w.adapter_names))
    res = simulate(w.with_rate(job.load * cap * cfg.n_servers), policy, cfg)
    row = summarize(res, Slo())
    return job, {k: float(row[k]) for k in KEYS}


def _gm(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else math.nan


def _ratio_cell(
    ours: Mapping[int, Mapping[str, float]], base: Mapping[int, Mapping[str, float]], key: str
) -> str:
    ratios = [ours[s][key] / base[s][key] for s in sorted(ours) if s in base and base[s][key] > 0]
    if not ratios:
        return "n/a"
    return f"{_gm(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"


def _mean(rows: Mapping[int, Mapping[str, float]], key: str) -> float:
    return sum(r[key] for r in rows.values()) / len(rows)


Results = dict[tuple[str, float, str, str], dict[int, dict[str, float]]]


def collect(done: Sequence[tuple[Job, dict[str, float]]]) -> Results:
    """(trace, load, variant, policy) → seed → summary."""
    out: Results = {}
    for job, row in done:
        out.setdefault((job.trace, job.load, job.variant.name, job.policy), {})[job.seed] = row
    return out


def grid_table(results: Results, traces: Sequence[str], loads: Sequence[float], variant: str) -> str:
    head = (
        "| trace | load | p99 TTFT (ms): round-robin / reference / ours | ours ÷ round-robin "
        "| ours ÷ reference | goodput (req/s): round-robin / reference / ours | ours ÷ round-robin "
        "| ours ÷ reference | ours: requests missing the SLO |"
    )
    lines = [head, "|" + "---|" * 9]
    for trace in traces:
        for load in loads:
            rr = results.get((trace, load, variant, "round-robin"))
            ref = results.get((trace, load, variant, "reference-default"))
            ours = results.get((trace, load, variant, "default"))
            if not (rr and ref and ours):
                continue
            lines.append(
                f"| {trace} | {load:.1f} | {_mean(rr, 'ttft_p99_s') * 1e3:.0f} / "
                f"{_mean(ref, 'ttft_p99_s') * 1e3:.0f} / {_mean(ours, 'ttft_p99_s') * 1e3:.0f} | "
                f"{_ratio_cell(ours, rr, 'ttft_p99_s')} | {_ratio_cell(ours, ref, 'ttft_p99_s')} | "
                f"{_mean(rr, 'goodput_rps'):.1f} / {_mean(ref, 'goodput_rps'):.1f} / "
                f"{_mean(ours, 'goodput_rps'):.1f} | {_ratio_cell(ours, rr, 'goodput_rps')} | "
                f"{_ratio_cell(ours, ref, 'goodput_rps')} | "
                f"{(1 - _mean(ours, 'slo_attainment')) * 100:.0f} % |"
            )
    return "\n".join(lines)


def sensitivity_table(
    results: Results, trace: str, loads: Sequence[float], variants: Sequence[Variant]
) -> str:
    lines = [
        "| condition | load | ours ÷ round-robin (p99 TTFT) | ours ÷ reference (p99 TTFT) |",
        "|---|---|---|---|",
    ]
    for v in variants:
        for load in loads:
            rr = results.get((trace, load, v.name, "round-robin"))
            ref = results.get((trace, load, v.name, "reference-default"))
            ours = results.get((trace, load, v.name, "default"))
            if rr and ref and ours:
                lines.append(
                    f"| {v.name} | {load:.1f} | {_ratio_cell(ours, rr, 'ttft_p99_s')} | "
                    f"{_ratio_cell(ours, ref, 'ttft_p99_s')} |"
                )
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sim.tuning", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="2 seeds, loads 0.5/0.7/0.9, 4,000 requests")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--loads", default="0.5,0.7,0.9,1.0")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--no-sensitivity", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    seeds = list(range(2 if args.quick else args.seeds))
    loads = [0.5, 0.7, 0.9] if args.quick else [float(x) for x in args.loads.split(",") if x.strip()]
    requests = 4000 if args.quick else args.requests
    default_variant = VARIANTS[1]
    jobs = [
        Job(t, ld, s, p, requests, default_variant)
        for t in TRACES
        for ld in loads
        for s in seeds
        for p in POLICIES
    ]
    sens_loads = [ld for ld in loads if ld in (0.5, 0.7, 0.9)]
    if not args.no_sensitivity:
        jobs += [
            Job("azure-conv", ld, s, p, requests, v)
            for v in VARIANTS
            if v is not default_variant
            for ld in sens_loads
            for s in seeds
            for p in POLICIES
        ]
    wall0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        done = list(pool.map(run_job, jobs))
    results = collect(done)
    command = "python -m benchmarks.sim.tuning " + shlex.join(sys.argv[1:] if argv is None else argv)
    md = [
        "# Routing quality across traces, loads and seeds — round-robin, the reference profile, ours",
        "",
        f"Command: `{command}`  ",
        (
            f"Simulator: 16 x `llama3-8b-h100`, {requests} requests per trace, seeds {seeds} (scrape "
            "phases, tie-breaks, prompt-size estimates; LoRA: also the arrivals), load = offered / measured "
            "capacity. "
            "Ratios are geometric means over seeds with the [min-max] over seeds; below 1 is better for p99 "
            "TTFT, above 1 for goodput (requests meeting TTFT ≤ 1 s and TPOT ≤ 0.1 s, per second). "
            f"Wall time {time.perf_counter() - wall0:.0f} s on {os.cpu_count()} CPUs."
        ),
        "",
        "## Every trace and load",
        "",
        grid_table(results, TRACES, loads, default_variant.name),
    ]
    if not args.no_sensitivity:
        md += [
            "",
            "## Sensitivity (Azure conversation trace)",
            "",
            (
                "The prompt-size estimate's log-normal spread around the true count, the share of clients "
                "that stream, and the alternative accounting rule for non-streaming requests (charge their "
                "prompt to `prefill_tokens` until the response ends) that `LoadCharge` rejects."
            ),
            "",
            sensitivity_table(results, "azure-conv", sens_loads, VARIANTS),
        ]
    text = "\n".join(md) + "\n"
    doc = {
        "benchmark": "sim.tuning",
        "command": command,
        "seeds": seeds,
        "loads": loads,
        "requests": requests,
        "results": [
            {"trace": t, "load": ld, "variant": v, "policy": p, "seed": s, **row}
            for (t, ld, v, p), by_seed in sorted(results.items())
            for s, row in sorted(by_seed.items())
        ],
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    if not args.no_write:
        stem = "quality-tuning-quick" if args.quick else "quality-tuning"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.md").write_text(text, encoding="utf-8")
        (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
