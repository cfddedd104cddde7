"""Turn per-policy summaries into the benchmark's outputs: one JSON document, a Markdown table, PNG plots.

Kept separate from the simulation so the live benchmark (real fake servers, same metrics) can print the same
table and draw the same plots from its own per-request records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Columns of the Markdown table: (summary key, header, scale, format).
TABLE_COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("ttft_p50_s", "TTFT p50 (ms)", 1e3, "{:.0f}"),
    ("ttft_p90_s", "TTFT p90 (ms)", 1e3, "{:.0f}"),
    ("ttft_p99_s", "TTFT p99 (ms)", 1e3, "{:.0f}"),
    ("tpot_p50_s", "TPOT p50 (ms)", 1e3, "{:.1f}"),
    ("tpot_p99_s", "TPOT p99 (ms)", 1e3, "{:.1f}"),
    ("e2e_p50_s", "E2E p50 (s)", 1.0, "{:.2f}"),
    ("e2e_p99_s", "E2E p99 (s)", 1.0, "{:.2f}"),
    ("output_tok_per_s", "out tok/s", 1.0, "{:.0f}"),
    ("goodput_rps", "goodput (req/s)", 1.0, "{:.1f}"),
    ("slo_attainment", "SLO met", 100.0, "{:.1f} %"),
    ("prefix_hit_rate", "prefix hit", 100.0, "{:.1f} %"),
    ("load_imbalance", "imbalance", 1.0, "{:.3f}"),
    ("preemptions", "preempt", 1.0, "{:.0f}"),
)


def _fmt(value: Any, scale: float, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return fmt.format(float(value) * scale)


def markdown_table(policies: Mapping[str, Mapping[str, Any]], *, baseline: str = "round-robin") -> str:
    """One row per policy, plus x-vs-baseline columns for p99 TTFT and goodput (the issue's targets)."""
    head = ["policy", *(c[1] for c in TABLE_COLUMNS), f"p99 TTFT vs {baseline}", f"goodput vs {baseline}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = policies.get(baseline)
    for name, row in policies.items():
        cells = [name, *(_fmt(row.get(k), s, f) for k, _, s, f in TABLE_COLUMNS)]
        if base:
            cells.append(_ratio(row.get("ttft_p99_s"), base.get("ttft_p99_s")))
            cells.append(_ratio(row.get("goodput_rps"), base.get("goodput_rps")))
        else:
            cells += ["n/a", "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratio(a: Any, b: Any) -> str:
    try:
        return f"{float(a) / float(b):.2f}x"
    except (TypeError, ValueError, ZeroDivisionError):
        return "n/a"


def markdown_report(doc: Mapping[str, Any]) -> str:
    """The whole result document as Markdown: setup, the table at the main load, then the sweep."""
    out = [
        f"# Routing quality — trace `{doc['trace']}`, profile `{doc['profile']}`, {doc['servers']} servers",
        "",
        f"Command: `{doc['command']}`  ",
        (
            f"Requests: {doc['requests']}; capacity {doc['capacity_rps_per_server']:.2f} req/s per server "
            f"({doc['capacity_definition']}); SLO: TTFT ≤ {doc['slo']['ttft_s']} s and TPOT ≤ "
            f"{doc['slo']['tpot_s']} s; seed {doc['seed']}; simulator wall time {doc['wall_s']:.1f} s."
        ),
        "",
        f"## Load {doc['load']:.2f}",
        "",
        markdown_table(doc["policies"]),
        "",
    ]
    for load, entry in doc.get("sweep", {}).items():
        if float(load) == float(doc["load"]):
            continue
        out += [f"## Load {float(load):.2f}", "", markdown_table(entry["policies"]), ""]
    return "\n".join(out)


def plot_sweep(
    sweep: Mapping[str, Mapping[str, Any]],
    policies: Sequence[str],
    path: Path,
    *,
    title: str,
) -> list[Path]:
    """Latency-vs-load and goodput-vs-load PNGs (one line per policy). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted(sweep, key=float)
    xs = [float(x) for x in loads]
    panels = (
        ("ttft_p99_s", "p99 TTFT (s)", True),
        ("ttft_p50_s", "p50 TTFT (s)", True),
        ("tpot_p50_s", "p50 TPOT (s)", False),
        ("goodput_rps", "goodput (req/s)", False),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.4), dpi=80)
    for ax, (key, label, log) in zip(axes, panels, strict=True):
        for name in policies:
            ys = [sweep[x]["policies"].get(name, {}).get(key, float("nan")) for x in loads]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=name)
        ax.set_xlabel("offered load (fraction of fleet capacity)")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return [path]
