"""Ours' settings chosen on the history week, never on the test week.

Every pair of :data:`HEADROOMS` x :data:`STABILIZATIONS_S` is replayed on week 1 (without a forecast: there
is no week before it), and the cheapest whose SLO attainment is at least :data:`TARGET_RATIO` of static's
on the same week is kept; when none is, the one with the best attainment. Week 2 is then replayed once,
with that setting (:mod:`benchmarks.bench_scaling`).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.scaling.model import Fleet
from benchmarks.scaling.policies import ScalingPolicy

#: ours' settings searched on week 1: spare capacity, scale-down stabilization
HEADROOMS = (0.05, 0.1, 0.15, 0.2, 0.3)
STABILIZATIONS_S = (300.0, 600.0, 900.0, 1200.0)
QUICK_HEADROOMS = (0.1, 0.2)
QUICK_STABILIZATIONS_S = (600.0, 900.0)
#: the selection keeps the cheapest setting whose week-1 attainment is at least this share of static's
TARGET_RATIO = 0.99


def select_settings(
    run_week1: Any, static_attainment: float, headrooms: tuple[float, ...], stabilizations: tuple[float, ...]
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[tuple[float, float], Fleet]]:
    """Ours' settings chosen on week 1 (module doc): the chosen row, every row, and the fleets replayed."""
    rows: list[dict[str, Any]] = []
    fleets: dict[tuple[float, float], Fleet] = {}
    for h in headrooms:
        for stab in stabilizations:
            fleet = run_week1(h, stab)
            fleets[(h, stab)] = fleet
            tot = fleet.totals
            attainment = tot.met / tot.arrivals if tot.arrivals else 1.0
            rows.append(
                {
                    "headroom": h,
                    "stabilization_s": stab,
                    "gpu_hours": round(tot.gpu_s / 3600, 2),
                    "slo_attainment": round(attainment, 6),
                    "attainment_vs_static": round(attainment / static_attainment, 5),
                    "dropped_requests": round(tot.dropped),
                }
            )
    eligible = [r for r in rows if r["attainment_vs_static"] >= TARGET_RATIO]
    if eligible:
        chosen = min(eligible, key=lambda r: (r["gpu_hours"], -r["slo_attainment"]))
    else:
        chosen = max(rows, key=lambda r: (r["slo_attainment"], -r["gpu_hours"]))
    return chosen, rows, fleets


def history_week(
    args: argparse.Namespace,
    baselines: dict[str, ScalingPolicy],
    ours: Any,
    run_week1: Any,
    say: Any,
) -> tuple[dict[str, Fleet], dict[str, Any]]:
    """Week 1: the ``baselines`` (``static`` among them), and ours' settings chosen there (module doc).
    ``ours(h, s)`` builds ours' policy and token mix; ``run_week1(policy, **kw)`` replays a policy over
    week 1; ``args.headroom``/``args.stabilization_s`` fix a setting instead."""
    fleets1: dict[str, Fleet] = {}
    for name, policy in baselines.items():
        fleets1[name] = run_week1(policy, oracle=name == "oracle")
    static1 = fleets1["static"].totals
    static1_att = static1.met / static1.arrivals

    def ours_week1(headroom: float, stabilization_s: float) -> Fleet:
        policy, tokens = ours(headroom, stabilization_s)
        return run_week1(policy, tokens=tokens)  # type: ignore[no-any-return]

    if args.headroom is not None and args.stabilization_s is not None:
        fleets1["ours"] = ours_week1(args.headroom, args.stabilization_s)
        chosen = {"headroom": args.headroom, "stabilization_s": args.stabilization_s}
        return fleets1, {"rule": "given on the command line", "chosen": chosen, "grid": []}
    grid = (QUICK_HEADROOMS, QUICK_STABILIZATIONS_S) if args.quick else (HEADROOMS, STABILIZATIONS_S)
    headrooms = grid[0] if args.headroom is None else (args.headroom,)
    stabilizations = grid[1] if args.stabilization_s is None else (args.stabilization_s,)
    t0 = time.perf_counter()
    row, rows, tried = select_settings(ours_week1, static1_att, headrooms, stabilizations)
    say(
        f"chose headroom {row['headroom']}, stabilization {row['stabilization_s']:.0f} s on week 1 "
        f"({len(rows)} settings, {time.perf_counter() - t0:.0f} s)"
    )
    fleets1["ours"] = tried[(row["headroom"], row["stabilization_s"])]
    return fleets1, {
        "rule": f"cheapest on week 1 (no forecast) with SLO attainment >= {TARGET_RATIO} x static's",
        "chosen": {"headroom": row["headroom"], "stabilization_s": row["stabilization_s"]},
        "grid": rows,
    }
