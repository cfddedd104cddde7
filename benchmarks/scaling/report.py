"""The scaling replay's report: per-policy totals, the targets, the text table and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scaling.demand import DemandSeries
from benchmarks.scaling.model import Fleet


def summary(fleet: Fleet, dt_hours: float, *, tick_s: float) -> dict[str, Any]:
    tot = fleet.totals
    return {
        "gpu_hours": round(tot.gpu_s / 3600, 2),
        "slo_attainment": round(tot.met / tot.arrivals, 6) if tot.arrivals else None,
        "slo_misses": round(tot.arrivals - tot.met),
        "dropped_requests": round(tot.dropped),
        "scale_events": tot.scale_events,
        "requests": round(tot.arrivals),
        "mean_replicas": round(tot.gpu_s / 3600 / dt_hours, 3),
        "saturated_at_max_minutes": round(tot.ticks_at_max_saturated * tick_s / 60, 1),
    }


#: one colour per policy in both weeks
COLOURS = {
    "static": "tab:blue",
    "schedule-only": "tab:orange",
    "reactive": "tab:green",
    "oracle": "tab:red",
    "ours": "tab:purple",
}
CAPTION = (
    "Week 1 (days 0-6) is the history: ours runs there without a forecast (no week before it) and its "
    "settings were chosen there; schedule-only is not shown (it is built from the week before). Week 2 "
    "(days 7-13) is the test. Each week is replayed from a full fleet."
)


def plot(
    path: Path,
    weeks: dict[str, dict[str, Fleet]],
    series: DemandSeries,
    *,
    capacity: float,
    start: float,
    test_start: float,
    tick_s: float,
) -> None:
    """Demand, replicas per policy and SLO attainment (10-minute means) over both weeks, one colour per
    policy; ``weeks`` maps a label to that week's fleets (week 1 lacks the policies that need history)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(18, 8.5), sharex=True, height_ratios=(2, 1))
    window = int(600 / tick_s)
    labelled: set[str] = set()
    for fleets in weeks.values():
        for name, fleet in fleets.items():
            log = np.asarray(fleet.log)
            days = (log[:, 0] - start) / 86400
            n = len(log) // window * window
            label = None if name in labelled else name
            labelled.add(name)
            colour = COLOURS.get(name)
            ax1.step(days, log[:, 2], where="post", lw=0.7, color=colour, label=label and f"{label} replicas")
            att = log[:n, 4].reshape(-1, window).mean(axis=1)
            ax2.plot(days[:n:window], att, lw=0.7, color=colour, label=label)
    ax1.plot(
        (series.start - start) / 86400,
        series.rps / capacity,
        color="k",
        lw=0.6,
        alpha=0.6,
        label="demand / capacity at SLO",
    )
    split = (test_start - start) / 86400
    for ax in (ax1, ax2):
        ax.axvline(split, color="k", lw=1.0, ls="--")
    ax1.text(split + 0.05, ax1.get_ylim()[1] * 0.97, "test week", va="top", fontsize=9)
    ax1.text(0.05, ax1.get_ylim()[1] * 0.97, "history week (settings chosen here)", va="top", fontsize=9)
    ax1.set_ylabel("replicas")
    ax1.legend(loc="upper right", ncol=3, fontsize=8)
    ax2.set_ylabel("SLO attainment (10 min)")
    ax2.set_xlabel("day")
    ax2.set_ylim(0.5, 1.005)
    ax2.legend(loc="lower left", ncol=5, fontsize=8)
    fig.suptitle("Off-peak scaling replay (ServeGen m-large, 14 days)", fontsize=11)
    fig.text(0.01, 0.005, CAPTION, fontsize=8, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.025, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def targets(p: dict[str, dict[str, Any]], iso: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The issue's targets for ours (the last, against the reactive policy at ours' cost, needs ``iso``)."""
    static, ours, oracle = p["static"], p["ours"], p["oracle"]
    saved = 1 - ours["gpu_hours"] / static["gpu_hours"]
    oracle_saved = 1 - oracle["gpu_hours"] / static["gpu_hours"]
    rows = [
        ("GPU-hours saved vs static", saved, ">=", 0.35),
        ("share of the oracle's saving", saved / oracle_saved if oracle_saved > 0 else 0.0, ">=", 0.75),
        ("SLO attainment / static's", ours["slo_attainment"] / static["slo_attainment"], ">=", 0.99),
        ("requests dropped by scale events", ours["dropped_requests"], "<=", 0),
    ]
    if iso is not None:
        rows.append(
            (
                "SLO misses / reactive's at >= ours' GPU-hours",
                ours["slo_misses"] / max(iso["slo_misses"], 1),
                "<",
                1.0,
            )
        )
    out = []
    for name, value, op, bound in rows:
        met = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
        out.append(
            {"target": name, "value": round(float(value), 4), "op": op, "bound": bound, "met": bool(met)}
        )
    return out


def table(doc: dict[str, Any]) -> str:
    sel = doc["selection"]
    lines = [
        (
            f"ours' settings: headroom {sel['chosen']['headroom']}, stabilization "
            f"{sel['chosen']['stabilization_s']:.0f} s ({sel['rule']}; {len(sel['grid'])} tried)"
        )
    ]
    for label, policies, saved in (
        ("week 1 (history)", doc["week1"]["policies"], doc["week1"]["gpu_hours_saved_vs_static"]),
        ("week 2 (test)", doc["policies"], doc["gpu_hours_saved_vs_static"]),
    ):
        lines.append(f"{label}\npolicy          GPU-h  saved  attainment   misses  dropped  events")
        for name, r in policies.items():
            lines.append(
                f"{name:<14} {r['gpu_hours']:>6.0f} {saved[name]:>6.1%} "
                f"{r['slo_attainment']:>11.4%} {r['slo_misses']:>8} {r['dropped_requests']:>8} "
                f"{r['scale_events']:>7}"
            )
    iso = doc["reactive_iso_cost"]
    lines.append(
        f"reactive at ours' cost (target {iso['utilisation_target']:.2f}): {iso['gpu_hours']:.0f} GPU-h, "
        f"attainment {iso['slo_attainment']:.4%}, misses {iso['slo_misses']}, "
        f"dropped {iso['dropped_requests']}"
    )
    for label, r in doc["ours_variants"].items():
        lines.append(
            f"ours, {label}: saved {r['gpu_hours_saved_vs_static']:.1%}, attainment {r['slo_attainment']:.4%}"
        )
    cal = doc["calibration"]
    lines.append(
        f"model vs simulator: mean |error| {cal['mean_abs_error_pp']} pp, max {cal['max_abs_error_pp']} pp, "
        f"mean signed {cal['mean_signed_error_pp']} pp"
    )
    for label, rows in (("week 1", doc["week1"]["targets"]), ("week 2", doc["targets"])):
        lines.extend(
            f"  {label} {'met ' if t['met'] else 'MISS'} {t['target']}: {t['value']} {t['op']} {t['bound']}"
            for t in rows
        )
    return "\n".join(lines)
