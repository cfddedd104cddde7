"""Routing-quality benchmark: every policy replays the same trace on the same simulated fleet.

    python -m benchmarks.bench_quality --trace azure-conv --load 0.9 --json
    python -m benchmarks.bench_quality --trace mooncake-conv --quick
    python -m benchmarks.bench_quality --trace-file my.jsonl --config my-epp-config.yaml
    python -m benchmarks.bench_quality --sweep --plots            # what `make bench-quality` runs

Load is offered traffic as a fraction of fleet capacity; capacity is measured, per trace and profile, by
:func:`benchmarks.sim.fleet.server_capacity_rps` (one server, never starved, prefix cache and LoRA off) times
the number of servers. Arrivals keep the trace's own burst pattern, uniformly time-scaled to that rate.

Outputs: one JSON document (``--json`` prints it; it is also written to ``benchmarks/results/``), a Markdown
table next to it, and with ``--plots`` PNGs of latency and goodput against load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.sim.fleet import FleetConfig, server_capacity_rps, simulate
from benchmarks.sim.metrics import (
    DEFAULT_TPOT_SLO_S,
    DEFAULT_TTFT_SLO_S,
    Slo,
    slo_dict,
    slo_misses,
    summarize,
)
from benchmarks.sim.policies import ALL_POLICIES, Policy, make_policy
from benchmarks.sim.profiles import PROFILES, ServerProfile, get_profile
from benchmarks.sim.report import markdown_report, plot_sweep
from benchmarks.sim.traces import Workload, load_trace_file, named_trace

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SWEEP_LOADS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
QUICK_SWEEP_LOADS = (0.7, 0.9, 1.1)
QUICK_REQUESTS = 6000
CAPACITY_DEFINITION = (
    "requests/s one server completes on this trace's length mix with its queue never empty, prefix cache "
    "and LoRA effects off; fleet capacity = that x servers"
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_quality", description=__doc__.split("\n")[0])
    p.add_argument("--trace", choices=("azure-conv", "mooncake-conv", "lora"), default="azure-conv")
    p.add_argument("--trace-file", type=Path, help="an Azure CSV or Mooncake JSONL file (format detected)")
    p.add_argument("--load", type=float, default=0.9, help="offered load, fraction of fleet capacity")
    p.add_argument("--sweep", action="store_true", help=f"also run loads {', '.join(map(str, SWEEP_LOADS))}")
    p.add_argument("--loads", type=str, help="comma-separated loads for the sweep (overrides the default)")
    p.add_argument("--servers", type=int, default=16)
    p.add_argument("--requests", type=int, default=20000, help="use at most this many requests")
    p.add_argument("--profile", choices=tuple(PROFILES), default="llama3-8b-h100")
    p.add_argument(
        "--profile-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a profile field, e.g. max_lora=2 or lora_load_s=0.2 (repeatable)",
    )
    p.add_argument("--policies", type=str, default=",".join(ALL_POLICIES), help="comma-separated names")
    p.add_argument("--config", type=Path, action="append", default=[], help="EndpointPickerConfig YAML")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} requests; a 3-point sweep")
    p.add_argument("--json", action="store_true", help="print the result document as JSON")
    p.add_argument("--plots", action="store_true", help="write PNG plots (needs --sweep)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where JSON/Markdown/PNG files go")
    p.add_argument("--no-write", action="store_true", help="do not write result files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slo-ttft", type=float, default=DEFAULT_TTFT_SLO_S, help="TTFT SLO for goodput (s)")
    p.add_argument("--slo-tpot", type=float, default=DEFAULT_TPOT_SLO_S, help="TPOT SLO for goodput (s)")
    p.add_argument("--scrape-interval", type=float, default=0.05, help="metrics poll interval (s)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _profile(args: argparse.Namespace) -> ServerProfile:
    prof = get_profile(args.profile)
    changes: dict[str, Any] = {}
    for item in args.profile_set:
        key, sep, value = item.partition("=")
        if not sep or not hasattr(prof, key) or key in {"name", "model", "sources", "validation"}:
            raise SystemExit(f"--profile-set {item!r}: expected FIELD=VALUE with a numeric profile field")
        current = getattr(prof, key)
        changes[key] = type(current)(float(value)) if isinstance(current, int) else float(value)
    return prof.with_overrides(**changes) if changes else prof


def _workload(args: argparse.Namespace) -> Workload:
    w = load_trace_file(args.trace_file) if args.trace_file else named_trace(args.trace, seed=args.seed)
    n = min(args.requests, QUICK_REQUESTS) if args.quick else args.requests
    return w.head(n) if len(w) > n else w


def _loads(args: argparse.Namespace) -> list[float]:
    if args.loads:
        loads = [float(x) for x in args.loads.split(",") if x.strip()]
    elif args.sweep:
        loads = list(QUICK_SWEEP_LOADS if args.quick else SWEEP_LOADS)
    else:
        loads = []
    if args.load not in loads:
        loads.append(args.load)
    return sorted(loads)


def _policy_names(args: argparse.Namespace) -> list[str]:
    names = [x.strip() for x in args.policies.split(",") if x.strip()]
    return names + [str(c) for c in args.config]


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Run every (load, policy) pair and assemble the result document."""
    wall0 = time.perf_counter()
    profile = _profile(args)
    workload = _workload(args)
    is_lora = bool(workload.adapter_names)
    cap = server_capacity_rps(workload, profile, seed=args.seed)
    slo = Slo(args.slo_ttft, args.slo_tpot)
    cfg = FleetConfig(profile, n_servers=args.servers, scrape_interval_s=args.scrape_interval, seed=args.seed)
    loads = _loads(args)
    names = _policy_names(args)
    unavailable: dict[str, str] = {}
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(loads) * len(names) * len(workload), unit="req", file=sys.stderr, leave=False)
    sweep: dict[str, dict[str, Any]] = {}
    misses: dict[str, Any] = {}
    for load in loads:
        w = workload.with_rate(load * cap * args.servers)
        rows: dict[str, Any] = {}
        for name in names:
            try:
                policy: Policy = make_policy(name, lora=is_lora)
            except RuntimeError as exc:
                unavailable[name] = str(exc)
                if bar is not None:
                    bar.update(len(w))
                continue
            if bar is not None:
                bar.set_description(f"load {load:.2f} {policy.name}")
            res = simulate(w, policy, cfg, on_progress=bar.update if bar is not None else None)
            rows[policy.name] = summarize(res, slo)
            if load == args.load:
                misses[policy.name] = slo_misses(res, slo)
        sweep[f"{load:g}"] = {"offered_rps": load * cap * args.servers, "policies": rows}
    if bar is not None:
        bar.close()
    main = sweep[f"{args.load:g}"]
    doc: dict[str, Any] = {
        "benchmark": "bench_quality",
        "command": command,
        "trace": str(args.trace_file) if args.trace_file else args.trace,
        "profile": profile.name,
        "profile_parameters": {
            k: getattr(profile, k)
            for k in (
                "step_overhead_s",
                "per_token_s",
                "per_context_token_s",
                "num_blocks",
                "block_size",
                "max_num_seqs",
                "max_num_batched_tokens",
                "max_lora",
                "lora_load_s",
            )
        },
        "servers": args.servers,
        "requests": len(workload),
        "seed": args.seed,
        "scrape_interval_s": args.scrape_interval,
        "capacity_rps_per_server": cap,
        "capacity_definition": CAPACITY_DEFINITION,
        "slo": slo_dict(slo),
        "load": args.load,
        "offered_rps": main["offered_rps"],
        "policies": main["policies"],
        # at the main load: TTFT-only / TPOT-only / both misses, and misses by arrival time (10 s windows)
        "slo_misses": misses,
        "unavailable": unavailable,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "wall_s": time.perf_counter() - wall0,
    }
    if len(sweep) > 1:
        doc["sweep"] = sweep
    return doc


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    command = "python -m benchmarks.bench_quality " + shlex.join(sys.argv[1:] if argv is None else argv)
    doc = run(args, command)
    stem = f"quality-{Path(doc['trace']).stem if args.trace_file else args.trace}" + (
        "-quick" if args.quick else ""
    )
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        (args.out / f"{stem}.md").write_text(markdown_report(doc) + "\n", encoding="utf-8")
        if args.plots and "sweep" in doc:
            plot_sweep(
                doc["sweep"],
                list(doc["policies"]),
                args.out / f"{stem}.png",
                title=f"{doc['trace']} — {doc['profile']} x {doc['servers']}",
            )
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(markdown_report(doc))
    for name, reason in doc["unavailable"].items():
        print(f"warning: policy {name} skipped: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
