"""Capacity-at-SLO outputs: the JSON section, Markdown tables and PNG plots.

One run (one trace, one seed; ``bench_quality --capacity``) gives :func:`capacity_section` (the issue's
``{"capacity": {policy: {...}}}`` figures) and :func:`evaluations_section` (every rate the search tried);
:func:`plot_attainment` draws attainment against offered rate with each policy's capacity marked. The
multi-seed sweep (:mod:`benchmarks.sim.capacity_sweep`) aggregates runs with :func:`ratios` and
:func:`geomean` into :func:`capacity_table` and :func:`hit_table`, and draws :func:`plot_capacity_bars`.

The plots need matplotlib, from the ``bench`` dependency group (``make bench-capacity`` installs it): without
it a plot is skipped with a message on stderr, after the JSON and Markdown are written, instead of failing a
sweep that may have taken hours at its last step.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.sim.capacity import Comparison


def capacity_section(c: Comparison) -> dict[str, dict[str, float | None]]:
    """``{policy: {capacity_rps, vs_round_robin, prefix_hit_rate, ttft_p99_s_at_rr_capacity}}``."""
    return {name: {k: _round(v) for k, v in row.items()} for name, row in c.rows().items()}


def evaluations_section(c: Comparison) -> dict[str, list[dict[str, float]]]:
    """Every evaluation per policy, in the order the search ran them."""
    return {
        name: [
            {
                "rate_rps": _round(e.rate_rps),
                "slo_attainment": _round(e.attainment),
                "ttft_p99_s": _round(e.summary["ttft_p99_s"]),
                "tpot_p99_s": _round(e.summary["tpot_p99_s"]),
                "prefix_hit_rate": _round(e.summary["prefix_hit_rate"]),
            }
            for e in res.evaluations
        ]
        for name, res in c.results.items()
    }


def _round(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.5g}")


def _cell(x: Any, fmt: str, scale: float = 1.0) -> str:
    if x is None:
        return "n/a"
    return fmt.format(float(x) * scale)


def markdown_capacity(doc: Mapping[str, Any]) -> str:
    """A run's table: capacity, ratio to round-robin, hit rate at capacity, p99 TTFT at RR's capacity."""
    slo = doc["slo"]
    ttft = f"TTFT ≤ {slo['ttft_s']} s" + (
        f" (or {slo['ttft_per_token_s'] * 1e3:g} ms per prompt token if longer)"
        if slo.get("ttft_per_token_s")
        else ""
    )
    out = [
        f"# Capacity at SLO — `{doc['trace']}`, {doc['servers']} x `{doc['profile']}`, seed {doc['seed']}",
        "",
        f"Command: `{doc['command']}`  ",
        (
            f"Capacity = the highest offered rate (the trace's {doc['requests']} requests, arrivals "
            f"time-scaled) at which ≥ {doc['target_attainment']:.0%} of requests meet {ttft} and TPOT ≤ "
            f"{slo['tpot_s']} s, by bisection to within {doc['rel_tol']:.0%}. Simulator wall time "
            f"{doc['wall_s']:.0f} s."
        ),
        "",
        (
            "| policy | capacity (req/s) | vs round-robin | prefix hit at capacity "
            "| p99 TTFT at RR's capacity | runs |"
        ),
        "|---|---|---|---|---|---|",
    ]
    evals = doc.get("evaluations", {})
    for name, row in doc["capacity"].items():
        out.append(
            "| "
            + " | ".join(
                [
                    name,
                    _cell(row["capacity_rps"], "{:.2f}"),
                    _cell(row["vs_round_robin"], "{:.2f}x"),
                    _cell(row["prefix_hit_rate"], "{:.1f} %", 100.0),
                    _cell(row["ttft_p99_s_at_rr_capacity"], "{:.2f} s"),
                    str(len(evals.get(name, ()))),
                ]
            )
            + " |"
        )
    return "\n".join(out)


def _pyplot(path: Path) -> Any:
    """matplotlib's pyplot on the file-only backend, or None (saying that ``path`` is not drawn and why)."""
    try:
        import matplotlib
    except ImportError:
        print(
            f"no plot {path}: matplotlib is not installed (the bench dependency group has it: "
            "make bench-capacity, or pip install --group bench)",
            file=sys.stderr,
        )
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_attainment(doc: Mapping[str, Any], path: Path) -> Path | None:
    """SLO attainment against offered rate per policy (every evaluation), capacities marked; None when
    matplotlib is missing."""
    plt = _pyplot(path)
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    for name, evs in doc["evaluations"].items():
        pts = sorted((e["rate_rps"], e["slo_attainment"]) for e in evs)
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
        cap = doc["capacity"][name]["capacity_rps"]
        if cap:
            ax.axvline(cap, color=line.get_color(), linewidth=0.6, linestyle=":")
    ax.axhline(doc["target_attainment"], color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("share of requests meeting the SLO")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{doc['trace']} — {doc['servers']} x {doc['profile']}, seed {doc['seed']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def geomean(xs: Sequence[float]) -> float:
    """Geometric mean of positive values (NaN if any is missing or not positive)."""
    if not xs or any(not (x > 0) for x in xs):
        return math.nan
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def plot_capacity_bars(
    table: Mapping[str, Mapping[str, float]], policies: Sequence[str], path: Path, *, title: str
) -> Path | None:
    """Grouped bars: per workload (``table`` key), each policy's capacity relative to round-robin; None
    when matplotlib is missing."""
    plt = _pyplot(path)
    if plt is None:
        return None
    workloads = list(table)
    width = 0.8 / max(1, len(policies))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(workloads)), 4), dpi=80)
    for j, name in enumerate(policies):
        ys = [table[w].get(name, math.nan) for w in workloads]
        xs = [i + (j - (len(policies) - 1) / 2) * width for i in range(len(workloads))]
        ax.bar(xs, ys, width=width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=15, fontsize=7, ha="right")
    ax.set_ylabel("capacity at SLO / round-robin's")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ sweeps
#: case label -> seed -> run document (:mod:`benchmarks.sim.capacity_sweep`)
SweepRuns = Mapping[str, Mapping[int, Mapping[str, Any]]]


def ratios(runs: Mapping[int, Mapping[str, Any]], policy: str, other: str) -> list[float]:
    """Per seed: ``policy``'s capacity / ``other``'s (seeds where both are positive)."""
    out = []
    for run in runs.values():
        a = run["capacity"].get(policy, {}).get("capacity_rps")
        b = run["capacity"].get(other, {}).get("capacity_rps")
        if a and b:
            out.append(a / b)
    return out


def _fmt_ratio(xs: Sequence[float], n_seeds: int) -> str:
    if not xs:
        return "n/a"
    cell = f"{geomean(xs):.2f}x [{min(xs):.2f}-{max(xs):.2f}]"
    return cell if len(xs) == n_seeds else cell + f" ({len(xs)} of {n_seeds} seeds)"


def covered(results: SweepRuns, seeds: Sequence[int], workloads: Sequence[str]) -> str:
    """What a sweep's report covers: "every workload, seeds ..." only when each of ``workloads`` ran every
    seed, else each workload with its seeds (a report of some runs must not read as the whole sweep)."""
    ran = {label: sorted(runs) for label, runs in results.items() if runs}
    if set(ran) == set(workloads) and all(s == sorted(seeds) for s in ran.values()):
        return "every workload, seeds " + ", ".join(map(str, seeds))
    return "; ".join(f"{w}: seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for w, s in ran.items())


def capacity_table(results: SweepRuns, policies: Sequence[str]) -> str:
    """Per workload: mean capacity (req/s) per policy, then each policy's ratio to round-robin."""
    head = ["workload", *(f"{p} (req/s; vs RR)" for p in policies)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in results.items():
        cells = [label]
        for p in policies:
            caps = [r["capacity"][p]["capacity_rps"] for r in runs.values() if p in r["capacity"]]
            mean = sum(caps) / len(caps) if caps else math.nan
            cells.append(f"{mean:.1f}; {_fmt_ratio(ratios(runs, p, 'round-robin'), len(runs))}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hit_table(results: SweepRuns, policies: Sequence[str]) -> str:
    """Mean prefix hit rate at each policy's own capacity."""
    head = ["workload", *policies]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in results.items():
        cells = [label]
        for p in policies:
            hs = [r["capacity"][p]["prefix_hit_rate"] for r in runs.values() if p in r["capacity"]]
            hs = [h for h in hs if h is not None]
            cells.append(f"{100 * sum(hs) / len(hs):.1f} %" if hs else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hit_ratios(runs: Mapping[int, Mapping[str, Any]], policy: str, other: str) -> list[float]:
    """Per seed: ``policy``'s prefix hit rate / ``other``'s (seeds where both are known)."""
    out = []
    for run in runs.values():
        a = run["capacity"].get(policy, {}).get("prefix_hit_rate")
        b = run["capacity"].get(other, {}).get("prefix_hit_rate")
        if a is not None and b:
            out.append(a / b)
    return out


def wall_time_note(
    simulated: Collection[tuple[str, int]],
    results: Mapping[str, Mapping[int, Mapping[str, Any]]],
    *,
    wall_s: float,
    workers: int,
    cpus: int | None,
) -> str:
    """What a sweep's report says of its time: the wall time of the runs simulated now (``simulated``: their
    workloads and seeds; on how many workers and CPUs), and how many runs came from earlier sweeps
    (``--add-runs``) with the simulator time they recorded; with ``--no-simulate`` only the latter (the
    report itself takes no time worth stating)."""
    earlier = [r for label, runs in results.items() for s, r in runs.items() if (label, s) not in simulated]
    earlier_s = sum(float(run.get("wall_s", 0.0)) for run in earlier)
    parts = []
    if simulated:
        parts.append(
            f"Wall time {wall_s:.0f} s for the {len(simulated)} run(s) simulated now, with {workers} "
            f"worker(s) on {cpus} CPUs (shared machine)."
        )
    if earlier:
        parts.append(
            f"{len(earlier)} run(s) from earlier sweeps (--add-runs), {earlier_s:.0f} s of simulator time as "
            "they recorded it."
        )
    return " ".join(parts) or "No run simulated or reported."


def targets_table(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| policy | workload | target | measured (geomean [range]) | seeds | goal | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        measured = "n/a (no capacity)" if not r["seeds"] else f"{r['measured']:.2f}x"
        if r["range"]:
            measured += f" [{r['range'][0]:.2f}-{r['range'][1]:.2f}]"
        met = "met" if r["met"] else "**not met**"
        policy = r.get("policy", "default")  # documents from before the column: ours
        cells = (policy, r["workload"], r["target"], measured, str(r["seeds"]), f"≥ {r['goal']}x", met)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
