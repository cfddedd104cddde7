"""Off-peak scaling on two weeks of real demand: GPU-hours against SLO attainment, five policies.

    python -m benchmarks.bench_scaling --json
    python -m benchmarks.bench_scaling --quick
    python -m benchmarks.bench_scaling --rate-file my-rates.csv --peak-replicas 32 --warmup-s 300

The ServeGen rate series (``benchmarks/data/traces/servegen-m-large-14d-rate.csv``: 14 days, 10-minute
windows) is scaled so that its highest window needs ``--peak-replicas`` replicas at the per-replica capacity
at SLO; week 1 is the history, week 2 the test. Policies (:mod:`benchmarks.scaling.policies`): static peak
provisioning, schedule-only, reactive (HPA-like), a perfect-foresight oracle, and ours (the EPP's own
planner, :mod:`picker.scaler.plan`, sizing on requests and tokens: ``tokensPerSecond`` is the capacity
times the length mix's mean tokens per request, see :mod:`benchmarks.scaling.demand` for what is assumed).

Ours' settings (headroom, scale-down stabilization) are **chosen on week 1** and only then replayed on
week 2 (:mod:`benchmarks.scaling.selection`: the cheapest of a grid whose week-1 SLO attainment is at
least 99 % of static's over the week and on each of its days, ours running there without a forecast: no
week precedes it). Week 1's
numbers are reported too, for the policies that need no history (static, reactive, oracle, ours without
forecast); schedule-only needs the week before and is not run there. ``--headroom``/``--stabilization-s``
skip the selection.

Simulating two weeks request by request is too slow in Python, so each 15 s tick goes through a per-window
queueing model (:mod:`benchmarks.scaling.model`) whose SLO attainment per load comes from the
discrete-event simulator (:mod:`benchmarks.scaling.calibration`); the model is then checked against the
simulator on sampled windows of the replay (ramps, warm-ups, drains, kills), and that calibration error is
reported (:mod:`benchmarks.scaling.validate`).

Reported per policy: GPU-hours, SLO attainment (TTFT <= 1 s and TPOT <= 0.1 s), requests dropped by a scale
event, scale events. The reactive policy is also run at the utilisation target that spends the same
GPU-hours as ours (found by bisection), so "fewer misses at equal cost" is checked like for like.
Outputs: JSON (``--json`` prints it) and a PNG of demand, replicas and SLO attainment over both weeks in
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scaling.calibration import (
    N_GRID,
    QUICK_N_GRID,
    QUICK_RHO_GRID,
    RHO_GRID,
    AttainmentTable,
    steady_state,
)
from benchmarks.scaling.demand import DATA, WEEK_S, WINDOW_S, DemandSeries, TokenMix
from benchmarks.scaling.model import Fleet
from benchmarks.scaling.policies import (
    OURS_VARIANTS,
    Oracle,
    Ours,
    Reactive,
    ScalingPolicy,
    ScheduleOnly,
    Signals,
    Static,
    iso_cost_reactive,
    measured,
)
from benchmarks.scaling.report import plot, summary, table, targets
from benchmarks.scaling.selection import history_week
from benchmarks.scaling.validate import compare, pick_windows
from benchmarks.sim.metrics import DEFAULT_TPOT_SLO_S, DEFAULT_TTFT_SLO_S, Slo
from benchmarks.sim.profiles import LLAMA3_8B_H100, ServerProfile
from benchmarks.sim.traces import Workload, named_trace
from picker.config.scaling import ScalingConfig
from picker.scaler.forecast import PoolHistory

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TICK_S = 15.0
POLICIES = ("static", "schedule-only", "reactive", "oracle", "ours")
#: the reactive policy's default utilisation target (a common HPA setting for GPU servers)
REACTIVE_TARGET = 0.7
#: schedule-only's spare capacity over last week's block peaks: fixed at the value the replay used before
#: ours' settings were chosen on week 1 (a baseline must not move with what ours picks)
SCHEDULE_HEADROOM = 0.1


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_scaling", description=__doc__.split("\n")[0])
    p.add_argument("--rate-file", type=Path, default=DATA, help="CSV with window_start_s,rate_rps")
    p.add_argument("--peak-replicas", type=int, default=16, help="replicas the highest window needs")
    p.add_argument("--warmup-s", type=float, default=180.0, help="model load time of a new replica")
    p.add_argument(
        "--headroom", type=float, help="ours: spare capacity over demand (default: chosen on week 1)"
    )
    p.add_argument(
        "--stabilization-s", type=float, help="ours: scale-down stabilization (default: chosen on week 1)"
    )
    p.add_argument("--quick", action="store_true", help="smaller calibration grid, fewer validation windows")
    p.add_argument(
        "--calibration",
        type=Path,
        help="reuse the steady-state table of an earlier result JSON (skips that step)",
    )
    p.add_argument("--windows", type=int, default=8, help="validation windows against the simulator")
    p.add_argument("--json", action="store_true", help="print the result document as JSON")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-write", action="store_true", help="write no result files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def ours_config(
    args: argparse.Namespace,
    capacity_rps: float,
    tokens_per_request: float | None,
    *,
    headroom: float,
    stabilization_s: float,
    forecast: bool = True,
    trend: bool = False,
    sample_window_s: float = WINDOW_S,
) -> ScalingConfig:
    """Ours as replayed: the section an operator would write (no schedule windows: bounds [1, peak]); the
    token capacity is the request capacity at the mix's mean tokens per request (one load test gives both);
    ``sample_window_s``: what each history sample averages over (the rate file's window)."""
    capacity: dict[str, float] = {"requestsPerSecond": capacity_rps}
    if tokens_per_request is not None:
        capacity["tokensPerSecond"] = capacity_rps * tokens_per_request
    doc: dict[str, Any] = {
        "target": {"kind": "Deployment", "name": "vllm"},
        "dryRun": False,
        "minReplicas": 1,
        "maxReplicas": args.peak_replicas,
        "replicaCapacity": capacity,
        "headroom": headroom,
        "warmup": args.warmup_s,
        "interval": TICK_S,
        "scaleDown": {"stabilization": stabilization_s},
    }
    if forecast:
        url = "http://replay.invalid"
        doc["forecast"] = {"prometheusUrl": url, "weeks": 1, "trend": trend, "sampleWindow": sample_window_s}
    return ScalingConfig.model_validate(doc)


def replay(
    policy: ScalingPolicy,
    series: DemandSeries,
    table: AttainmentTable,
    slo: Slo,
    *,
    start: float,
    end: float,
    warmup_s: float,
    peak: int,
    seed: int,
    oracle: bool = False,
    tokens: TokenMix | None = None,
) -> Fleet:
    """Run one policy over ``[start, end)`` tick by tick; the fleet keeps the totals and the log.
    ``tokens``: meter the tokens of each tick's requests too (drawn from the mix, their own random stream,
    so every policy sees the same request counts)."""
    ticks = np.arange(start, end, TICK_S)
    rates = series.rate_at(ticks)
    fleet = Fleet(table, slo.ttft_s, 0.0 if oracle else warmup_s, drop_on_kill=not oracle)
    policy.start(fleet, start)
    rng = np.random.default_rng([seed, 17])
    token_rng = np.random.default_rng([seed, 19])

    def meter(lam: float) -> tuple[float, float | None]:
        rps = measured(rng, lam, TICK_S)
        if tokens is None:
            return rps, None
        return rps, tokens.draw(token_rng, round(rps * TICK_S)) / TICK_S

    last, last_tokens = meter(float(rates[0]))
    saturated = False
    backlog = 0.0
    for t, lam in zip(ticks.tolist(), rates.tolist(), strict=True):
        policy.act(fleet, Signals(t, last, lam, saturated, backlog, last_tokens))
        out = fleet.tick(t, lam, TICK_S, hi=peak)
        assert fleet._model is not None
        (last, last_tokens), saturated, backlog = meter(lam), out.saturated, fleet._model.backlog
    return fleet


def attainment_table(
    args: argparse.Namespace, lengths: Workload, profile: ServerProfile, slo: Slo, say: Any
) -> AttainmentTable:
    """The simulator's steady-state attainment per (replicas, load), or the one of ``--calibration``."""
    if args.calibration is not None:
        saved = json.loads(args.calibration.read_text(encoding="utf-8"))
        return AttainmentTable.from_dict(saved["calibration"]["steady_state"])
    return steady_state(
        lengths,
        profile,
        slo,
        n_grid=QUICK_N_GRID if args.quick else N_GRID,
        rho_grid=QUICK_RHO_GRID if args.quick else RHO_GRID,
        duration_s=90.0 if args.quick else 180.0,
        seed=args.seed,
        progress=say,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        if not args.no_progress:
            print(msg, file=sys.stderr, flush=True)

    slo = Slo(DEFAULT_TTFT_SLO_S, DEFAULT_TPOT_SLO_S)
    profile = LLAMA3_8B_H100
    lengths = named_trace("azure-conv")
    mix = TokenMix.of(lengths.prompt_tokens, lengths.output_tokens)
    table = attainment_table(args, lengths, profile, slo, say)
    capacity = table.capacity_at_slo(args.peak_replicas)
    raw = DemandSeries.load(args.rate_file)
    factor = args.peak_replicas * capacity / float(raw.rps.max())
    series = raw.scaled(factor)
    week1 = float(series.start[0])
    start = week1 + WEEK_S
    end = series.end
    hours = (end - start) / 3600
    hours1 = (start - week1) / 3600
    history = PoolHistory(series.history(), series.history(scale=mix.mean))
    common: dict[str, Any] = {
        "start": start,
        "end": end,
        "warmup_s": args.warmup_s,
        "peak": args.peak_replicas,
        "seed": args.seed,
    }
    first = {**common, "start": week1, "end": start}

    def ours(headroom: float, stabilization_s: float, **changes: Any) -> tuple[Ours, TokenMix | None]:
        use_tokens = changes.pop("tokens", True)
        # the history's samples are the windows' means, stamped at each window's end
        changes.setdefault("sample_window_s", series.window_s)
        cfg = ours_config(
            args,
            capacity,
            mix.mean if use_tokens else None,
            headroom=headroom,
            stabilization_s=stabilization_s,
            **changes,
        )
        return Ours(cfg, history), mix if use_tokens else None

    baselines: dict[str, ScalingPolicy] = {
        "static": Static(args.peak_replicas),
        "reactive": Reactive(table, REACTIVE_TARGET, args.peak_replicas, TICK_S),
        "oracle": Oracle(table, args.peak_replicas),
    }
    fleets1, selection = history_week(
        args, baselines, ours, lambda p, **kw: replay(p, series, table, slo, **first, **kw), say, start=week1
    )
    chosen = selection["chosen"]
    headroom, stabilization = chosen["headroom"], chosen["stabilization_s"]
    week1_results = {name: summary(f, hours1, tick_s=TICK_S) for name, f in fleets1.items()}

    # ---------------------------------------------------------------- week 2: the test
    ours_policy, ours_tokens = ours(headroom, stabilization)
    cfg = ours_policy.cfg
    policies: dict[str, ScalingPolicy] = {
        "static": Static(args.peak_replicas),
        "schedule-only": ScheduleOnly(
            series,
            test_start=start,
            capacity_rps=capacity,
            headroom=SCHEDULE_HEADROOM,
            peak=args.peak_replicas,
            warmup_s=args.warmup_s,
        ),
        "reactive": Reactive(table, REACTIVE_TARGET, args.peak_replicas, TICK_S),
        "oracle": Oracle(table, args.peak_replicas),
        "ours": ours_policy,
    }
    fleets: dict[str, Fleet] = {}
    for name, policy in policies.items():
        t0 = time.perf_counter()
        fleets[name] = replay(
            policy,
            series,
            table,
            slo,
            oracle=name == "oracle",
            tokens=ours_tokens if name == "ours" else None,
            **common,
        )
        say(f"replayed {name} in {time.perf_counter() - t0:.1f} s")
    results = {name: summary(f, hours, tick_s=TICK_S) for name, f in fleets.items()}
    results["ours"]["decisions"] = dict(sorted(ours_policy.decisions.items()))
    results["ours"]["ticks_sized_by_forecast"] = ours_policy.forecast_used

    def reactive_at(u: float) -> Fleet:
        return replay(Reactive(table, u, args.peak_replicas, TICK_S), series, table, slo, **common)

    variants = {}
    for label, changes in OURS_VARIANTS.items():
        policy, tokens = ours(**{"headroom": headroom, "stabilization_s": stabilization, **changes})
        fleet = replay(policy, series, table, slo, tokens=tokens, **common)
        variants[label] = summary(fleet, hours, tick_s=TICK_S)
        variants[label]["gpu_hours_saved_vs_static"] = round(
            1 - fleet.totals.gpu_s / 3600 / (args.peak_replicas * hours), 4
        )
        say(f"replayed ours ({label})")
    iso_u, iso_fleet = iso_cost_reactive(results["ours"]["gpu_hours"], reactive_at)
    iso = {"utilisation_target": round(iso_u, 4), **summary(iso_fleet, hours, tick_s=TICK_S)}
    windows = pick_windows(
        fleets, TICK_S, 300.0 if args.quick else 600.0, 4 if args.quick else args.windows, args.seed
    )
    calibration = compare(
        windows,
        fleets,
        rate_at=series.rate_at,
        lengths=lengths,
        table=table,
        profile=profile,
        slo=slo,
        lead_s=60.0 if args.quick else 120.0,
        dt=TICK_S,
        seed=args.seed,
        progress=say,
    )
    static_gpu = results["static"]["gpu_hours"]
    static1_gpu = week1_results["static"]["gpu_hours"]
    doc: dict[str, Any] = {
        "benchmark": "bench_scaling",
        "command": "python -m benchmarks.bench_scaling " + shlex.join(sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "setup": {
            "rate_file": str(args.rate_file.name),
            "test": "week 2 (days 7-13); week 1 is history and chooses ours' settings",
            "tick_s": TICK_S,
            "peak_replicas": args.peak_replicas,
            "warmup_s": args.warmup_s,
            "profile": profile.name,
            "lengths": "Azure LLM 2023 conversation trace",
            "tokens": "per request: prompt + output of a request drawn from the length trace (the rate file "
            f"has none); mean {mix.mean:.1f}",
            "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
            "mu_rps": round(table.mu, 4),
            "capacity_at_slo_rps": round(capacity, 4),
            "rate_scale": factor,
            "ours": cfg.model_dump(by_alias=True, mode="json", exclude={"target", "forecast"}),
            "reactive_target": REACTIVE_TARGET,
            "schedule_headroom": SCHEDULE_HEADROOM,
        },
        "selection": selection,
        "week1": {
            "note": "week 1 has no week before it: no forecast for ours, no schedule-only policy",
            "policies": week1_results,
            "gpu_hours_saved_vs_static": {
                n: round(1 - r["gpu_hours"] / static1_gpu, 4) for n, r in week1_results.items()
            },
            "targets": targets(week1_results, None),
        },
        "policies": results,
        "gpu_hours_saved_vs_static": {
            n: round(1 - r["gpu_hours"] / static_gpu, 4) for n, r in results.items()
        },
        "reactive_iso_cost": iso,
        "ours_variants": variants,
        "calibration": {"steady_state": table.to_dict(), **calibration},
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    doc["targets"] = targets(results, iso)
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        suffix = "-quick" if args.quick else ""
        (args.out / f"scaling{suffix}.json").write_text(json.dumps(doc, indent=2) + "\n")
        plot(
            args.out / f"scaling{suffix}.png",
            {"week 1": fleets1, "week 2": fleets},
            series,
            capacity=capacity,
            start=week1,
            test_start=start,
            tick_s=TICK_S,
        )
    return doc


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    doc = run(args)
    print(json.dumps(doc, indent=2) if args.json else table(doc))
    return 0 if all(t["met"] for t in doc["targets"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
