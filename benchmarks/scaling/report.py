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


def plot(
    path: Path,
    fleets: dict[str, Fleet],
    series: DemandSeries,
    *,
    capacity: float,
    start: float,
    tick_s: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 8), sharex=True, height_ratios=(2, 1))
    window = int(600 / tick_s)
    for name, fleet in fleets.items():
        log = np.asarray(fleet.log)
        days = (log[:, 0] - start) / 86400
        n = len(log) // window * window
        ax1.step(days, log[:, 2], where="post", lw=0.8, label=f"{name} replicas")
        att = log[:n, 4].reshape(-1, window).mean(axis=1)
        ax2.plot(days[:n:window], att, lw=0.8, label=name)
    mask = series.start >= start
    ax1.plot(
        (series.start[mask] - start) / 86400,
        series.rps[mask] / capacity,
        color="k",
        lw=0.6,
        alpha=0.6,
        label="demand / capacity at SLO",
    )
    ax1.set_ylabel("replicas")
    ax1.legend(loc="upper left", ncol=3, fontsize=8)
    ax2.set_ylabel("SLO attainment (10 min)")
    ax2.set_xlabel("day of the test week")
    ax2.set_ylim(0.5, 1.005)
    ax2.legend(loc="lower left", ncol=5, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def targets(p: dict[str, dict[str, Any]], iso: dict[str, Any]) -> list[dict[str, Any]]:
    static, ours, oracle = p["static"], p["ours"], p["oracle"]
    saved = 1 - ours["gpu_hours"] / static["gpu_hours"]
    oracle_saved = 1 - oracle["gpu_hours"] / static["gpu_hours"]
    rows = [
        ("GPU-hours saved vs static", saved, ">=", 0.35),
        ("share of the oracle's saving", saved / oracle_saved if oracle_saved > 0 else 0.0, ">=", 0.75),
        ("SLO attainment / static's", ours["slo_attainment"] / static["slo_attainment"], ">=", 0.99),
        ("requests dropped by scale events", ours["dropped_requests"], "<=", 0),
        (
            "SLO misses / reactive's at >= ours' GPU-hours",
            ours["slo_misses"] / max(iso["slo_misses"], 1),
            "<",
            1.0,
        ),
    ]
    out = []
    for name, value, op, bound in rows:
        met = value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound
        out.append(
            {"target": name, "value": round(float(value), 4), "op": op, "bound": bound, "met": bool(met)}
        )
    return out


def table(doc: dict[str, Any]) -> str:
    lines = ["policy          GPU-h  saved  attainment   misses  dropped  events"]
    for name, r in doc["policies"].items():
        lines.append(
            f"{name:<14} {r['gpu_hours']:>6.0f} {doc['gpu_hours_saved_vs_static'][name]:>6.1%} "
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
    lines.extend(
        f"  {'met ' if t['met'] else 'MISS'} {t['target']}: {t['value']} {t['op']} {t['bound']}"
        for t in doc["targets"]
    )
    return "\n".join(lines)
