"""The multi-seed report: ratios are geometric means over seeds with their range (synthetic rows)."""

from __future__ import annotations

from benchmarks.sim.tuning import VARIANTS, Job, Variant, collect, grid_table, sensitivity_table


def row(p99: float, goodput: float, met: float = 1.0) -> dict[str, float]:
    return {"ttft_p99_s": p99, "goodput_rps": goodput, "slo_attainment": met}


def test_grid_table_reports_means_and_geometric_mean_ratios_with_ranges() -> None:
    v = Variant("base")
    done = [
        (Job("t", 0.9, 0, "round-robin", 10, v), row(4.0, 10.0)),
        (Job("t", 0.9, 1, "round-robin", 10, v), row(2.0, 10.0)),
        (Job("t", 0.9, 0, "reference-default", 10, v), row(2.0, 10.0)),
        (Job("t", 0.9, 1, "reference-default", 10, v), row(2.0, 10.0)),
        (Job("t", 0.9, 0, "default", 10, v), row(1.0, 20.0, 0.5)),
        (Job("t", 0.9, 1, "default", 10, v), row(2.0, 10.0, 0.7)),
    ]
    text = grid_table(collect(done), ["t"], [0.9], "base")
    line = text.splitlines()[-1]
    assert line.startswith("| t | 0.9 | 3000 / 2000 / 1500 |")
    assert "0.50x [0.25-1.00]" in line  # ours ÷ round-robin: sqrt(0.25 x 1.0)
    assert "0.71x [0.50-1.00]" in line  # ours ÷ reference: sqrt(0.5 x 1.0)
    assert "1.41x [1.00-2.00]" in line  # goodput ratio
    assert line.endswith("| 40 % |")  # 1 - mean(0.5, 0.7)


def test_missing_cells_are_left_out_and_sensitivity_rows_follow_the_variants() -> None:
    v = VARIANTS[0]
    done = [
        (Job("azure-conv", 0.5, 0, "round-robin", 10, v), row(2.0, 1.0)),
        (Job("azure-conv", 0.5, 0, "reference-default", 10, v), row(1.0, 1.0)),
        (Job("azure-conv", 0.5, 0, "default", 10, v), row(0.5, 1.0)),
    ]
    results = collect(done)
    assert grid_table(results, ["azure-conv"], [0.7], v.name).count("\n") == 1, "header only"
    text = sensitivity_table(results, "azure-conv", [0.5], VARIANTS)
    assert f"| {v.name} | 0.5 | 0.25x [0.25-0.25] | 0.50x [0.50-0.50] |" in text
    assert text.count("\n") == 2
