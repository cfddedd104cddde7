"""Capacity at SLO on every bundled workload and several seeds, and the issue's targets met or not.

    python -m benchmarks.sim.capacity_sweep --workers 2            # seeds 0-2, every workload
    python -m benchmarks.sim.capacity_sweep --quick                # 1 seed, shorter traces
    python -m benchmarks.sim.capacity_sweep --quick --seeds 0,1,2 --workloads lora \
        --add-runs benchmarks/results/capacity-sweep-quick.json    # only what is not in that file

For each workload and seed :func:`benchmarks.sim.capacity.compare` measures every policy of
``CAPACITY_POLICIES`` (16 servers of ``llama3-8b-h100``); per policy the report gives the geometric mean
over seeds of its capacity ratio to round-robin (and to the others the targets name), with the range over
seeds. Writes ``benchmarks/results/capacity-sweep{-quick}.{json,md,png}``.

Workloads: the Mooncake conversation trace under the issue's SLO and under the length-scaled one
(:data:`benchmarks.sim.metrics.LONG_PROMPT_SLO`: the fixed 1 s objective is out of reach for 12.5 % of its
prompts even on an idle fleet), the four ``shared_prefix`` shapes, the Azure conversation trace and the
multi-LoRA workload. The seed moves scrape phases, tie-breaks, prompt-size estimates, SGLang's tenant
order, and the generated workloads themselves (``shared_prefix``, LoRA).

Runs of earlier sweeps (``--add-runs``) are reported with this one's, per policy: a (workload, seed) whose
round-robin search ran already is not searched again, only the policies it lacks, from round-robin's
capacity as in one comparison (:func:`benchmarks.sim.capacity.compare`, ``baseline_rps``). So seeds,
workloads and policies can run in separate processes, at separate times, and give one report. Each run
records the simulator's wall time per policy (``policy_wall_s``), to plan a longer sweep from a shorter one,
and when landed scrapes reached its picks (``publish``; ``--publish``, :mod:`benchmarks.sim.publish`): only
runs under this sweep's publish rule are taken (:mod:`benchmarks.sim.sweep_runs`; runs recorded before the
publish was modelled saw every page at once, which is ``--publish 0``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.sim.capacity import Comparison, compare
from benchmarks.sim.capacity_report import (
    capacity_section,
    capacity_table,
    covered,
    evaluations_section,
    geomean,
    hit_ratios,
    hit_table,
    plot_capacity_bars,
    ratios,
    targets_table,
    wall_time_note,
)
from benchmarks.sim.fleet import FleetConfig
from benchmarks.sim.metrics import LONG_PROMPT_SLO, Slo, slo_dict
from benchmarks.sim.policies import CAPACITY_POLICIES, make_policy
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.publish import publish_config
from benchmarks.sim.sweep_runs import BASELINE, earlier_runs, merge_run, publish_rule
from benchmarks.sim.traces import SHARED_PREFIX, SHARED_PREFIX_SHAPES, named_trace

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
#: our profiles the targets are evaluated for: the built-in default, and the same plus prefix-cache-scorer
OURS = ("default", "default-prefix")
#: the issue's objective: TTFT <= 1 s and TPOT <= 0.1 s for every request
STRICT_SLO = Slo()


@dataclass(frozen=True, slots=True)
class Case:
    """One workload of the sweep: a bundled trace, how many of its requests, and the SLO."""

    label: str
    trace: str
    requests: int
    quick_requests: int
    slo: Slo = STRICT_SLO


CASES: tuple[Case, ...] = (
    Case("mooncake-conv", "mooncake-conv", 6000, 2000),
    Case("mooncake-conv (long-prompt SLO)", "mooncake-conv", 6000, 2000, LONG_PROMPT_SLO),
    *(Case(SHARED_PREFIX + s, SHARED_PREFIX + s, 3000, 1500) for s in SHARED_PREFIX_SHAPES[:2]),
    # the multi-turn shapes: every session two rounds (shared_prefix's docstring), quick or not. With half of
    # the sessions' second rounds (9,000) short-q few-sys meets the objective at every low rate and the
    # search climbs into the closed-loop regime, where offered rate is not throughput (round-robin
    # "2,227 req/s", ours "4,092": benchmarks/RESULTS.md, the multi-turn shapes)
    *(Case(SHARED_PREFIX + s, SHARED_PREFIX + s, 12000, 12000) for s in SHARED_PREFIX_SHAPES[2:]),
    Case("azure-conv", "azure-conv", 10000, 3000),
    Case("lora", "lora", 10000, 3000),
)


#: every run's first search, which the others start from


@dataclass(frozen=True, slots=True)
class Job:
    case: Case
    seed: int
    quick: bool
    policies: tuple[str, ...]
    #: round-robin's capacity from an earlier run of this workload and seed (it is not searched again)
    baseline_rps: float | None = None
    #: when landed scrapes reach the picks: an interval (s) or "rounds" (``--publish``); None: the service's
    publish: str | None = None


def run_job(job: Job) -> tuple[Job, dict[str, Any]]:
    """One workload and seed, every policy of the job (in a worker process)."""
    t0 = time.perf_counter()
    w = named_trace(job.case.trace, seed=job.seed)
    n = job.case.quick_requests if job.quick else job.case.requests
    w = w.head(n) if len(w) > n else w
    lora = bool(w.adapter_names)
    cfg = publish_config(FleetConfig(LLAMA3_8B_H100, n_servers=16, seed=job.seed), job.publish)
    slo = job.case.slo

    def make(name: str) -> Any:
        return make_policy(name, lora=lora, seed=job.seed, slo=slo)

    c: Comparison = compare(w, job.policies, make, cfg, slo, baseline=BASELINE, baseline_rps=job.baseline_rps)
    return job, {
        "requests": len(w),
        "nominal_capacity_rps": c.nominal_rps,
        "capacity": capacity_section(c),
        "evaluations": evaluations_section(c),
        "policy_wall_s": {p: round(s, 1) for p, s in c.wall_s.items()},
        "wall_s": time.perf_counter() - t0,
        "publish": publish_rule(cfg),
    }


def plan_jobs(
    cases: Sequence[Case],
    seeds: Sequence[int],
    policies: Sequence[str],
    earlier: Mapping[str, Mapping[int, Mapping[str, Any]]],
    *,
    quick: bool,
) -> list[Job]:
    """What is left to simulate: per workload and seed, the policies no earlier run measured (all of
    them, round-robin first, where none did)."""
    jobs = []
    for c in cases:
        for s in seeds:
            run = earlier.get(c.label, {}).get(s)
            if run is None:
                jobs.append(Job(c, s, quick, tuple(policies)))
                continue
            missing = tuple(p for p in policies if p not in run["capacity"])
            if missing:
                base = float(run["capacity"][BASELINE]["capacity_rps"] or 0.0)
                jobs.append(Job(c, s, quick, missing, baseline_rps=base))
    return jobs


def _run_all(jobs: Sequence[Job], workers: int) -> Iterator[tuple[Job, dict[str, Any]]]:
    """The jobs' results in order: in this process with one worker, else in a pool of ``workers``."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(run_job, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(run_job, jobs)


# ------------------------------------------------------------------------------------------------ report
Runs = Mapping[str, Mapping[int, Mapping[str, Any]]]  # case label -> seed -> run document


def targets(results: Runs) -> list[dict[str, Any]]:
    """The issue's targets (16 servers, geometric mean over seeds), each with its measured value, for each
    of our profiles that ran (:data:`OURS`)."""
    rows: list[dict[str, Any]] = []

    def add(ours: str, label: str, case: str, xs: list[float], goal: float) -> None:
        if case not in results:
            return
        g = geomean(xs) if xs else math.nan
        rows.append(
            {
                "policy": ours,
                "target": label,
                "workload": case,
                "measured": g,
                "range": [min(xs), max(xs)] if xs else None,
                "seeds": len(xs),
                "goal": goal,
                "met": bool(xs) and g >= goal,
            }
        )

    ran = {p for runs in results.values() for r in runs.values() for p in r["capacity"]}
    for ours in (p for p in OURS if p in ran):
        for case in ("mooncake-conv", "mooncake-conv (long-prompt SLO)"):
            if case in results:
                runs = results[case]
                add(ours, "capacity vs round-robin", case, ratios(runs, ours, "round-robin"), 1.6)
                add(
                    ours,
                    "capacity vs SGLang cache-aware",
                    case,
                    ratios(runs, ours, "sglang-cache-aware"),
                    1.1,
                )
                add(ours, "prefix hit rate vs the oracle's", case, hit_ratios(runs, ours, "oracle"), 0.9)
        for s in SHARED_PREFIX_SHAPES:
            case = SHARED_PREFIX + s
            if case in results:
                add(ours, "capacity vs round-robin", case, ratios(results[case], ours, "round-robin"), 1.5)
        if "azure-conv" in results:
            add(
                ours,
                "capacity vs round-robin",
                "azure-conv",
                ratios(results["azure-conv"], ours, "round-robin"),
                1.05,
            )
        for case, runs in results.items():
            if any("reference-default" in r["capacity"] and ours in r["capacity"] for r in runs.values()):
                add(
                    ours,
                    "capacity vs the reference profile",
                    case,
                    ratios(runs, ours, "reference-default"),
                    1.0,
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.sim.capacity_sweep", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="seed 0 only, shorter traces")
    p.add_argument("--seeds", type=str, default=None, help="comma-separated (default 0,1,2; --quick: 0)")
    p.add_argument("--workloads", type=str, default=None, help="comma-separated case labels (default: all)")
    p.add_argument("--policies", type=str, default=",".join(CAPACITY_POLICIES))
    p.add_argument("--workers", type=int, default=1, help="worker processes (one workload and seed each)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--publish", metavar="S|rounds", help="publish interval (s) or scrape rounds: sim.publish")
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--add-runs",
        type=Path,
        action="append",
        default=[],
        metavar="JSON",
        help="runs of an earlier sweep (its JSON) to report with this one's: a (workload, seed) found there "
        "on the same trace length, SLO and publish rule is not simulated again (seeds run separately, or on "
        "several machines, give one report)",
    )
    p.add_argument(
        "--no-simulate",
        action="store_true",
        help="report only the runs of --add-runs (a workload and seed none of them has is left out, and the "
        "targets table says on how many seeds each figure rests)",
    )
    args = p.parse_args(argv)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    wanted = [w.strip() for w in args.workloads.split(",")] if args.workloads else None
    cases = [c for c in CASES if wanted is None or c.label in wanted]
    if wanted and len(cases) != len(wanted):
        known = ", ".join(c.label for c in CASES)
        raise SystemExit(f"unknown workload in {args.workloads!r}; known: {known}")
    policies = tuple(x.strip() for x in args.policies.split(",") if x.strip())
    wall0 = time.perf_counter()
    results: dict[str, dict[int, dict[str, Any]]] = {c.label: {} for c in cases}
    rule = publish_rule(publish_config(FleetConfig(LLAMA3_8B_H100), args.publish))  # a bad one fails here
    for path in args.add_runs:
        earlier = earlier_runs(path, cases, seeds, quick=args.quick, publish=rule)
        for label, runs in earlier.items():
            for seed, run in runs.items():
                results[label][seed] = merge_run(results[label].get(seed), run)
    jobs = plan_jobs(cases, seeds, policies, results, quick=args.quick)
    jobs = [dataclasses.replace(j, publish=args.publish) for j in jobs]
    if args.no_simulate:
        jobs = []
        results = {label: runs for label, runs in results.items() if runs}
        cases = [c for c in cases if c.label in results]
    for job, run in _run_all(jobs, args.workers):
        results[job.case.label][job.seed] = merge_run(results[job.case.label].get(job.seed), run)
        print(
            f"{job.case.label} seed {job.seed}: {run['wall_s']:.0f} s ("
            + ", ".join(f"{p} {t:.0f} s" for p, t in run.get("policy_wall_s", {}).items())
            + ")",
            file=sys.stderr,
            flush=True,
        )
    command = "python -m benchmarks.sim.capacity_sweep " + shlex.join(sys.argv[1:] if argv is None else argv)
    simulated = {(j.case.label, j.seed) for j in jobs}
    timing = wall_time_note(
        simulated, results, wall_s=time.perf_counter() - wall0, workers=args.workers, cpus=os.cpu_count()
    )
    rows = targets(results)
    shown = [p for p in CAPACITY_POLICIES if p in policies] + [
        p for p in policies if p not in CAPACITY_POLICIES
    ]
    text = "\n".join(
        [
            "# Capacity at SLO — " + covered(results, seeds, [c.label for c in CASES]),
            "",
            f"Command: `{command}`  ",
            (
                "16 x `llama3-8b-h100`; capacity = the highest offered rate (the trace's arrivals "
                "time-scaled) at which ≥ 90 % of requests meet TTFT ≤ 1 s and TPOT ≤ 0.1 s (long-prompt "
                "SLO: TTFT ≤ max(1 s, 0.1 ms x prompt tokens)), by bisection to within 2 %. Ratios: "
                "geometric mean over seeds [min-max]. " + timing
            ),
            "",
            "## Targets",
            "",
            targets_table(rows),
            "",
            "## Capacity per policy",
            "",
            capacity_table(results, shown),
            "",
            "## Prefix hit rate at each policy's capacity",
            "",
            hit_table(results, shown),
        ]
    )
    doc = {
        "benchmark": "sim.capacity_sweep",
        "command": command,
        "seeds": seeds,
        "profile": LLAMA3_8B_H100.name,
        "servers": 16,
        "workloads": {
            c.label: {
                "trace": c.trace,
                "slo": slo_dict(c.slo),
                "runs": {str(s): run for s, run in sorted(results[c.label].items())},
            }
            for c in cases
        },
        "targets": rows,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    print(text)
    if not args.no_write:
        stem = "capacity-sweep-quick" if args.quick else "capacity-sweep"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.md").write_text(text + "\n", encoding="utf-8")
        (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        table = {
            label: {p: geomean(ratios(runs, p, "round-robin")) for p in shown}
            for label, runs in results.items()
        }
        plot_capacity_bars(
            table, shown, args.out / f"{stem}.png", title="capacity at SLO / round-robin's (16 servers)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
