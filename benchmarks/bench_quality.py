"""Routing-quality benchmark: every policy replays the same trace on the same simulated fleet.

    python -m benchmarks.bench_quality --trace mooncake-conv --capacity --quick --json   # capacity at SLO
    python -m benchmarks.bench_quality --trace-file my.jsonl --capacity --config my-epp-config.yaml
    python -m benchmarks.bench_quality --trace azure-conv --load 0.9 --json
    python -m benchmarks.bench_quality --trace mooncake-conv --quick
    python -m benchmarks.bench_quality --sweep --plots            # the load sweep of `make bench-quality`

``--capacity`` measures the routing yardstick, capacity at SLO (:mod:`benchmarks.sim.capacity`): per
policy the highest offered rate at which 90 % of requests meet the SLO, found by bisection, and prints
``{"capacity": {policy: {"capacity_rps", "vs_round_robin", "prefix_hit_rate",
"ttft_p99_s_at_rr_capacity"}}}`` with ``--json`` (every evaluated rate is under ``"evaluations"``). Its
policies: round-robin, least-in-flight, SGLang's cache-aware router, the reference profile, ours and the
oracle (``--policies`` to choose). Without ``--capacity``, the fixed-load comparison below.

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

from benchmarks.sim import capacity as cap_search
from benchmarks.sim.capacity_report import (
    capacity_section,
    evaluations_section,
    markdown_capacity,
    plot_attainment,
)
from benchmarks.sim.fleet import FleetConfig, server_capacity_rps, simulate
from benchmarks.sim.metrics import (
    DEFAULT_TPOT_SLO_S,
    DEFAULT_TTFT_SLO_S,
    Slo,
    slo_dict,
    slo_misses,
    summarize,
)
from benchmarks.sim.policies import ALL_POLICIES, CAPACITY_POLICIES, Policy, make_policy
from benchmarks.sim.profiles import PROFILES, ServerProfile, get_profile
from benchmarks.sim.report import markdown_report, plot_sweep
from benchmarks.sim.traces import TRACE_NAMES, Workload, load_trace_file, named_trace

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SWEEP_LOADS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
QUICK_SWEEP_LOADS = (0.7, 0.9, 1.1)
QUICK_REQUESTS = 6000
#: --capacity --quick: requests per replay (each capacity search runs about eight replays per policy)
QUICK_CAPACITY_REQUESTS = 2000
CAPACITY_DEFINITION = (
    "requests/s one server completes on this trace's length mix with its queue never empty, prefix cache "
    "and LoRA effects off; fleet capacity = that x servers"
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_quality", description=__doc__.split("\n")[0])
    p.add_argument("--trace", choices=TRACE_NAMES, default="azure-conv")
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
    p.add_argument(
        "--policies",
        type=str,
        default=None,
        help=f"comma-separated names (default: {','.join(ALL_POLICIES)}; with --capacity "
        f"{','.join(CAPACITY_POLICIES)})",
    )
    p.add_argument("--capacity", action="store_true", help="measure capacity at SLO per policy (bisection)")
    p.add_argument("--config", type=Path, action="append", default=[], help="EndpointPickerConfig YAML")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} requests; a 3-point sweep")
    p.add_argument("--json", action="store_true", help="print the result document as JSON")
    p.add_argument("--plots", action="store_true", help="write PNG plots (the load sweep needs --sweep)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where JSON/Markdown/PNG files go")
    p.add_argument("--no-write", action="store_true", help="do not write result files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slo-ttft", type=float, default=DEFAULT_TTFT_SLO_S, help="TTFT SLO for goodput (s)")
    p.add_argument("--slo-tpot", type=float, default=DEFAULT_TPOT_SLO_S, help="TPOT SLO for goodput (s)")
    p.add_argument(
        "--slo-ttft-per-token",
        type=float,
        default=0.0,
        help="length-scaled TTFT SLO: max(--slo-ttft, this x prompt tokens) (s per token; 0 = off)",
    )
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
    quick = QUICK_CAPACITY_REQUESTS if args.capacity else QUICK_REQUESTS
    n = min(args.requests, quick) if args.quick else args.requests
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
    default = CAPACITY_POLICIES if args.capacity else ALL_POLICIES
    given = args.policies if args.policies is not None else ",".join(default)
    names = [x.strip() for x in given.split(",") if x.strip()]
    return names + [str(c) for c in args.config]


def _machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def run_capacity(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Capacity at SLO per policy (round-robin first) on one trace and seed: the result document."""
    wall0 = time.perf_counter()
    profile = _profile(args)
    workload = _workload(args)
    is_lora = bool(workload.adapter_names)
    slo = Slo(args.slo_ttft, args.slo_tpot, args.slo_ttft_per_token)
    cfg = FleetConfig(profile, n_servers=args.servers, scrape_interval_s=args.scrape_interval, seed=args.seed)
    names = _policy_names(args)
    unavailable: dict[str, str] = {}
    available: list[str] = []
    for name in dict.fromkeys(["round-robin", *names]):
        try:
            make_policy(name, lora=is_lora, seed=args.seed, slo=slo)
        except RuntimeError as exc:
            unavailable[name] = str(exc)
        else:
            available.append(name)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        # the number of replays a search needs is not known in advance: count them
        bar = tqdm(unit="replay", file=sys.stderr, leave=False)

    def on_eval(name: str, e: cap_search.Evaluation) -> None:
        if bar is not None:
            bar.set_description(f"{name}: {e.rate_rps:.2f} req/s, {e.attainment:.1%} met")
            bar.update(1)

    def make(name: str) -> Policy:
        return make_policy(name, lora=is_lora, seed=args.seed, slo=slo)

    comparison = cap_search.compare(workload, available, make, cfg, slo, on_eval=on_eval)
    if bar is not None:
        bar.close()
    return {
        "benchmark": "bench_quality.capacity",
        "command": command,
        "trace": str(args.trace_file) if args.trace_file else args.trace,
        "profile": profile.name,
        "servers": args.servers,
        "requests": len(workload),
        "seed": args.seed,
        "scrape_interval_s": args.scrape_interval,
        "slo": slo_dict(slo),
        "target_attainment": cap_search.TARGET_ATTAINMENT,
        "rel_tol": cap_search.REL_TOL,
        "nominal_capacity_rps": comparison.nominal_rps,
        "capacity": capacity_section(comparison),
        "evaluations": evaluations_section(comparison),
        "unavailable": unavailable,
        "machine": _machine(),
        "wall_s": time.perf_counter() - wall0,
    }


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
                policy: Policy = make_policy(name, lora=is_lora, seed=args.seed)
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
        "machine": _machine(),
        "wall_s": time.perf_counter() - wall0,
    }
    if len(sweep) > 1:
        doc["sweep"] = sweep
    return doc


def _main_capacity(args: argparse.Namespace, command: str) -> int:
    doc = run_capacity(args, command)
    stem = f"capacity-{Path(doc['trace']).stem if args.trace_file else args.trace}" + (
        "-quick" if args.quick else ""
    )
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        (args.out / f"{stem}.md").write_text(markdown_capacity(doc) + "\n", encoding="utf-8")
        if args.plots:
            plot_attainment(doc, args.out / f"{stem}.png")
    print(json.dumps(doc, indent=2) if args.json else markdown_capacity(doc))
    for name, reason in doc["unavailable"].items():
        print(f"warning: policy {name} skipped: {reason}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    command = "python -m benchmarks.bench_quality " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.capacity:
        return _main_capacity(args, command)
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
