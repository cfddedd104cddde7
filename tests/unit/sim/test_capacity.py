"""Capacity at SLO: the bisection, the comparison, and the ``bench_quality --capacity`` document."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_quality
from benchmarks.sim import capacity_sweep
from benchmarks.sim.capacity import Evaluation, compare, find_capacity
from benchmarks.sim.capacity_report import covered, plot_capacity_bars
from benchmarks.sim.fleet import FleetConfig
from benchmarks.sim.metrics import LONG_PROMPT_SLO, Slo, slo_dict, summarize
from benchmarks.sim.policies import CAPACITY_POLICIES, ScoringPolicy, make_policy
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.publish import publish_config
from benchmarks.sim.sweep_runs import UNMODELLED_PUBLISH, publish_rule
from benchmarks.sim.traces import Workload

#: the publish rule a sweep runs under by default (the service's cadence)
SERVICE_PUBLISH = publish_rule(publish_config(FleetConfig(LLAMA3_8B_H100), None))


def step_curve(knee: float, calls: list[float]) -> object:
    """Attainment 1.0 up to ``knee`` req/s, 0.5 above (records every rate asked)."""

    def evaluate(rate: float) -> Evaluation:
        calls.append(rate)
        return Evaluation(rate, 1.0 if rate <= knee else 0.5, {"prefix_hit_rate": 0.0, "ttft_p99_s": 0.1})

    return evaluate


@pytest.mark.parametrize(("knee", "start"), [(7.3, 1.0), (7.3, 100.0), (7.3, 7.3), (0.9, 2.0)])
def test_bisection_lands_within_two_percent_below_the_knee(knee: float, start: float) -> None:
    calls: list[float] = []
    res = find_capacity(step_curve(knee, calls), start)  # type: ignore[arg-type]
    assert res.found
    assert knee / 1.02 <= res.capacity_rps <= knee
    # the search brackets then bisects: the rate just above the capacity was measured to fail
    above = min(r for r in calls if r > res.capacity_rps)
    assert above / res.capacity_rps <= 1.02
    assert [e.rate_rps for e in res.evaluations] == calls
    assert res.at_capacity is not None
    assert res.at_capacity.attainment == 1.0


def test_tighter_tolerance_costs_more_evaluations_and_gets_closer() -> None:
    loose: list[float] = []
    tight: list[float] = []
    a = find_capacity(step_curve(5.0, loose), 1.0, rel_tol=0.1)  # type: ignore[arg-type]
    b = find_capacity(step_curve(5.0, tight), 1.0, rel_tol=0.005)  # type: ignore[arg-type]
    assert len(tight) > len(loose)
    assert a.capacity_rps <= b.capacity_rps <= 5.0
    assert b.capacity_rps >= 5.0 / 1.005


def test_a_policy_that_never_meets_the_slo_has_no_capacity() -> None:
    def never(rate: float) -> Evaluation:
        return Evaluation(rate, 0.2, {"prefix_hit_rate": 0.0, "ttft_p99_s": 9.0})

    res = find_capacity(never, 10.0, max_evals=6)
    assert not res.found
    assert res.capacity_rps == 0.0
    assert res.at_capacity is None
    assert len(res.evaluations) == 6
    assert min(e.rate_rps for e in res.evaluations) < 10.0 / 1.5**4


def test_bad_search_arguments_are_refused() -> None:
    calls: list[float] = []
    with pytest.raises(ValueError, match="positive"):
        find_capacity(step_curve(1.0, calls), 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rel_tol"):
        find_capacity(step_curve(1.0, calls), 1.0, rel_tol=0.0)  # type: ignore[arg-type]


def small_workload(n: int = 400, seed: int = 1) -> Workload:
    """Short requests sharing a few 64-token system prompts (quick to simulate, prefix-sensitive)."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 8, n)
    units = tuple((*range(g * 100, g * 100 + 16), 10_000 + i, 10_000 + n + i) for i, g in enumerate(groups))
    return Workload(
        name="small",
        arrival_s=np.cumsum(rng.exponential(1.0, n)),
        prompt_tokens=np.full(n, 18 * 64 - 10),
        output_tokens=rng.integers(20, 200, n),
        units=units,
        unit_tokens=64,
        adapter=np.full(n, -1, dtype=np.int64),
    )


def test_compare_measures_every_policy_against_round_robin_at_its_capacity() -> None:
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=4)
    c = compare(small_workload(200), ["least-in-flight", "oracle"], make_policy, cfg)
    assert list(c.results) == ["round-robin", "least-in-flight", "oracle"]
    rows = c.rows()
    base = c.results["round-robin"].capacity_rps
    assert base > 0
    assert rows["round-robin"]["vs_round_robin"] == 1.0
    for name in ("least-in-flight", "oracle"):
        # every other policy started at round-robin's capacity: p99 TTFT there is known for all
        assert c.results[name].at(base) is not None
        assert rows[name]["ttft_p99_s_at_rr_capacity"] is not None
        assert rows[name]["vs_round_robin"] == pytest.approx(c.results[name].capacity_rps / base)
        assert 0.0 <= rows[name]["prefix_hit_rate"] <= 1.0  # type: ignore[operator]


def test_policies_compared_separately_from_round_robins_capacity_get_the_same_searches() -> None:
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=4)
    w = small_workload(200)
    whole = compare(w, ["least-in-flight"], make_policy, cfg)
    base = whole.results["round-robin"].capacity_rps
    part = compare(w, ["round-robin", "least-in-flight"], make_policy, cfg, baseline_rps=base)
    assert list(part.results) == ["least-in-flight"], "round-robin is not searched again"
    assert part.results["least-in-flight"] == whole.results["least-in-flight"]
    assert part.rows()["least-in-flight"] == whole.rows()["least-in-flight"]
    assert set(part.wall_s) == {"least-in-flight"}
    assert set(whole.wall_s) == {"round-robin", "least-in-flight"}
    # round-robin had no capacity earlier: the others start where they would have, 60 % of nominal
    none = compare(w, ["least-in-flight"], make_policy, cfg, baseline_rps=0.0)
    assert none.rows()["least-in-flight"]["vs_round_robin"] is None
    assert none.results["least-in-flight"].evaluations[0].rate_rps == pytest.approx(0.6 * whole.nominal_rps)


def test_long_prompt_slo_scales_the_ttft_objective_with_the_prompt() -> None:
    slo = LONG_PROMPT_SLO
    bounds = slo.ttft_bound(np.asarray([100, 10_000, 30_000]))
    assert np.allclose(bounds, [1.0, 1.0, 3.0])
    assert Slo().ttft_bound(np.asarray([30_000])) == 1.0


def test_attainment_uses_the_length_scaled_objective(tmp_path: Path) -> None:
    # one 30,000-token prompt alone on an idle server: about 1.2 s to its first token
    w = Workload(
        name="long",
        arrival_s=np.zeros(1),
        prompt_tokens=np.asarray([30_000]),
        output_tokens=np.asarray([10]),
        units=((),),
        unit_tokens=0,
        adapter=np.full(1, -1, dtype=np.int64),
    )
    from benchmarks.sim.fleet import simulate

    res = simulate(w, make_policy("round-robin"), FleetConfig(LLAMA3_8B_H100, n_servers=1))
    ttft = float(res.first_token[0] - res.arrival[0])
    assert 1.0 < ttft < 3.0
    assert summarize(res, Slo())["slo_attainment"] == 0.0
    assert summarize(res, LONG_PROMPT_SLO)["slo_attainment"] == 1.0


def test_bench_quality_capacity_prints_the_documented_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "t.jsonl"
    w = small_workload(150)
    with trace.open("w") as fh:
        for t, p, o, u in zip(w.arrival_s, w.prompt_tokens, w.output_tokens, w.units, strict=True):
            rec = {"timestamp": int(t * 1000), "input_length": int(p), "output_length": int(o), "hash_ids": u}
            fh.write(json.dumps(rec) + "\n")
    argv = [
        "--trace-file",
        str(trace),
        "--capacity",
        "--json",
        "--servers",
        "4",
        "--policies",
        "round-robin,least-in-flight,sglang-cache-aware,oracle",
        "--no-progress",
        "--out",
        str(tmp_path / "out"),
    ]  # not --plots: matplotlib is in the bench group, which `make test` does not install
    assert bench_quality.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["capacity"]) == {"round-robin", "least-in-flight", "sglang-cache-aware", "oracle"}
    for row in doc["capacity"].values():
        assert set(row) == {"capacity_rps", "vs_round_robin", "prefix_hit_rate", "ttft_p99_s_at_rr_capacity"}
        assert row["capacity_rps"] > 0
    assert doc["capacity"]["round-robin"]["vs_round_robin"] == 1.0
    assert doc["slo"] == {"ttft_s": 1.0, "tpot_s": 0.1, "ttft_per_token_s": 0.0}
    assert all(len(v) >= 3 for v in doc["evaluations"].values())
    out = tmp_path / "out"
    assert (out / "capacity-t.json").exists()
    assert (out / "capacity-t.md").read_text().count("| oracle |") == 1
    assert not (out / "capacity-t.png").exists()


def test_default_prefix_is_our_default_profile() -> None:
    """``default-prefix`` (what the sweeps measured as our prefix profile) is the built-in default now."""

    def weights(name: str) -> dict[str, float]:
        policy = make_policy(name)
        assert isinstance(policy, ScoringPolicy)
        return {w.scorer.name: w.weight for w in policy.scheduler.scorers}

    ours, prefixed = weights("default"), weights("default-prefix")
    assert prefixed["prefix-cache-scorer"] == 3.0
    assert prefixed == ours


def test_the_sweeps_policies_are_distinct_profiles() -> None:
    """Every policy a sweep searches by default is a different router (one searched twice is wasted)."""
    scoring = []
    for name in CAPACITY_POLICIES:
        policy = make_policy(name)
        if isinstance(policy, ScoringPolicy):
            scoring.append(tuple(sorted((w.scorer.type_name, w.weight) for w in policy.scheduler.scorers)))
        else:
            scoring.append((type(policy).__name__,))
    assert len(set(scoring)) == len(CAPACITY_POLICIES), dict(zip(CAPACITY_POLICIES, scoring, strict=True))


def test_sweep_targets_are_evaluated_for_each_of_our_profiles_that_ran() -> None:
    def run(caps: dict[str, float]) -> dict[str, object]:
        return {"capacity": {p: {"capacity_rps": c, "prefix_hit_rate": 0.5} for p, c in caps.items()}}

    both = {"round-robin": 10.0, "reference-default": 20.0, "default": 11.0, "default-prefix": 24.0}
    results = {
        "azure-conv": {0: run(both)},
        "mooncake-conv": {0: run({"round-robin": 10.0, "default": 16.5})},
    }
    rows = capacity_sweep.targets(results)
    got = {(r["policy"], r["workload"], r["target"]): (round(r["measured"], 3), r["met"]) for r in rows}
    assert got[("default", "azure-conv", "capacity vs round-robin")] == (1.1, True)
    assert got[("default-prefix", "azure-conv", "capacity vs round-robin")] == (2.4, True)
    assert got[("default", "azure-conv", "capacity vs the reference profile")] == (0.55, False)
    assert got[("default", "mooncake-conv", "capacity vs round-robin")] == (1.65, True)
    # default-prefix did not run on mooncake-conv: no capacity there, so not met
    row = next(r for r in rows if r["policy"] == "default-prefix" and r["workload"] == "mooncake-conv")
    assert row["seeds"] == 0
    assert not row["met"]
    table = capacity_sweep.targets_table(rows)
    lines = {
        line.split(" | ", 1)[1] for line in table.splitlines()[2:] if line.startswith("| default-prefix")
    }
    assert "azure-conv | capacity vs the reference profile | 1.20x [1.20-1.20] | 1 | ≥ 1.0x | met |" in lines
    assert "mooncake-conv | capacity vs round-robin | n/a (no capacity) | 0 | ≥ 1.6x | **not met** |" in lines


def test_sweep_reports_runs_of_earlier_sweeps_without_simulating_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    policies = ("round-robin", "default")
    case = next(c for c in capacity_sweep.CASES if c.label == "lora")

    def run(rr: float, ours: float, requests: int = case.quick_requests) -> dict[str, object]:
        caps = {"round-robin": rr, "default": ours}
        return {
            "requests": requests,
            "capacity": {p: {"capacity_rps": c, "prefix_hit_rate": None} for p, c in caps.items()},
            "publish": SERVICE_PUBLISH,
        }

    def sweep(runs: dict[str, object], name: str) -> Path:
        doc = {"workloads": {"lora": {"slo": slo_dict(case.slo), "runs": runs}}}
        path = tmp_path / name
        path.write_text(json.dumps(doc), encoding="utf-8")
        return path

    first = sweep({"0": run(10.0, 20.0)}, "first.json")
    # seed 1 ran on another trace length, seed 2 on this one
    second = sweep({"1": run(10.0, 99.0, requests=5), "2": run(10.0, 40.0)}, "second.json")
    simulated: list[tuple[str, int]] = []

    def fake_job(job: capacity_sweep.Job) -> tuple[capacity_sweep.Job, dict[str, object]]:
        simulated.append((job.case.label, job.seed))
        return job, {**run(10.0, 30.0), "wall_s": 0.0}

    monkeypatch.setattr(capacity_sweep, "run_job", fake_job)
    monkeypatch.setattr(capacity_sweep, "plot_capacity_bars", lambda *a, **k: None)  # matplotlib: bench group
    argv = ["--quick", "--seeds", "0,1,2", "--workloads", "lora", "--policies", ",".join(policies)]
    argv += ["--add-runs", str(first), "--add-runs", str(second), "--out", str(tmp_path / "out")]
    assert capacity_sweep.main(argv) == 0
    assert simulated == [("lora", 1)], "only the seed no earlier sweep measured on this trace length"
    doc = json.loads((tmp_path / "out" / "capacity-sweep-quick.json").read_text(encoding="utf-8"))
    caps = {s: r["capacity"]["default"]["capacity_rps"] for s, r in doc["workloads"]["lora"]["runs"].items()}
    assert caps == {"0": 20.0, "1": 30.0, "2": 40.0}
    out = capsys.readouterr().out
    assert "2.88x [2.00-4.00]" in out  # the geometric mean of 2, 3 and 4
    assert "s for the 1 run(s) simulated now, with 1 worker(s)" in out
    assert "2 run(s) from earlier sweeps (--add-runs)" in out
    # report only: seed 1 is left out, nothing runs
    simulated.clear()
    assert capacity_sweep.main([*argv, "--no-simulate"]) == 0
    assert simulated == []
    doc = json.loads((tmp_path / "out" / "capacity-sweep-quick.json").read_text(encoding="utf-8"))
    assert set(doc["workloads"]["lora"]["runs"]) == {"0", "2"}
    out = capsys.readouterr().out
    assert "2.83x [2.00-4.00]" in out  # the geometric mean of 2 and 4
    assert "Wall time" not in out, "nothing was simulated: no wall time of 0 s"
    assert "2 run(s) from earlier sweeps (--add-runs), 0 s of simulator time as they recorded it" in out
    with pytest.raises(SystemExit, match="not a capacity sweep"):
        capacity_sweep.main([*argv[:7], "--add-runs", str(tmp_path / "missing.json"), "--no-write"])


def test_sweep_simulates_only_the_policies_earlier_runs_lack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = next(c for c in capacity_sweep.CASES if c.label == "lora")

    def run(caps: dict[str, float], wall: float) -> dict[str, object]:
        return {
            "requests": case.quick_requests,
            "capacity": {p: {"capacity_rps": c, "prefix_hit_rate": None} for p, c in caps.items()},
            "evaluations": {p: [] for p in caps},
            "policy_wall_s": dict.fromkeys(caps, wall),
            "wall_s": wall * len(caps),
            "publish": SERVICE_PUBLISH,
        }

    # seed 0: round-robin and ours in one file, the oracle in another; seed 1: ours only (no round-robin)
    runs = {"0": run({"round-robin": 10.0, "default": 20.0}, 1.0), "1": run({"default": 99.0}, 1.0)}
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"workloads": {"lora": {"slo": slo_dict(case.slo), "runs": runs}}}), "utf-8")
    second = tmp_path / "second.json"
    doc2 = {
        "lora": {"slo": slo_dict(case.slo), "runs": {"0": run({"round-robin": 10.0, "oracle": 15.0}, 2.0)}}
    }
    second.write_text(json.dumps({"workloads": doc2}), "utf-8")
    jobs: list[capacity_sweep.Job] = []

    def fake_job(job: capacity_sweep.Job) -> tuple[capacity_sweep.Job, dict[str, object]]:
        jobs.append(job)
        caps = {"round-robin": 12.0, "default": 30.0, "oracle": 33.0, "least-in-flight": 11.0}
        return job, run(
            {p: caps[p] for p in job.policies if p != "round-robin" or job.baseline_rps is None}, 3.0
        )

    monkeypatch.setattr(capacity_sweep, "run_job", fake_job)
    monkeypatch.setattr(capacity_sweep, "plot_capacity_bars", lambda *a, **k: None)  # matplotlib: bench group
    policies = "round-robin,least-in-flight,default,oracle"
    argv = ["--quick", "--seeds", "0,1", "--workloads", "lora", "--policies", policies]
    argv += ["--add-runs", str(first), "--add-runs", str(second), "--out", str(tmp_path / "out")]
    assert capacity_sweep.main(argv) == 0
    planned = {(j.seed, j.policies, j.baseline_rps) for j in jobs}
    assert planned == {
        (0, ("least-in-flight",), 10.0),  # from the earlier round-robin's capacity
        (1, ("round-robin", "least-in-flight", "default", "oracle"), None),  # no round-robin to start from
    }
    out = json.loads((tmp_path / "out" / "capacity-sweep-quick.json").read_text(encoding="utf-8"))
    seed0 = out["workloads"]["lora"]["runs"]["0"]
    caps = {p: r["capacity_rps"] for p, r in seed0["capacity"].items()}
    assert caps == {"round-robin": 10.0, "default": 20.0, "oracle": 15.0, "least-in-flight": 11.0}
    assert seed0["policy_wall_s"] == {
        "round-robin": 2.0,
        "default": 1.0,
        "oracle": 2.0,
        "least-in-flight": 3.0,
    }
    assert seed0["wall_s"] == pytest.approx(2.0 + 4.0 + 3.0)
    assert out["workloads"]["lora"]["runs"]["1"]["capacity"]["default"]["capacity_rps"] == 30.0
    title = (tmp_path / "out" / "capacity-sweep-quick.md").read_text(encoding="utf-8").splitlines()[0]
    assert title == "# Capacity at SLO — lora: seeds 0, 1", "one workload of the sweep, not every workload"
    whole = {c.label: {seed: {} for seed in (0, 1, 2)} for c in capacity_sweep.CASES}
    assert covered(whole, [0, 1, 2], list(whole)) == "every workload, seeds 0, 1, 2"


def test_without_matplotlib_a_plot_is_skipped_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep's JSON and Markdown are written before its plot: without matplotlib (it is in the bench
    dependency group) the plot is left out with a reason, and the sweep does not fail at its last step."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it imports
    path = tmp_path / "bars.png"
    table = {"lora": {"round-robin": 1.0, "default": 2.0}}
    assert plot_capacity_bars(table, ["round-robin", "default"], path, title="t") is None
    assert not path.exists()
    assert f"no plot {path}: matplotlib is not installed" in capsys.readouterr().err


def test_earlier_runs_under_another_publish_rule_are_simulated_again(tmp_path: Path) -> None:
    case = next(c for c in capacity_sweep.CASES if c.label == "lora")
    now = SERVICE_PUBLISH

    def run(**extra: object) -> dict[str, object]:
        caps = {"round-robin": {"capacity_rps": 10.0, "prefix_hit_rate": None}}
        return {"requests": case.quick_requests, "capacity": caps, **extra}

    # seed 0 under today's rule, seed 1 recorded before the publish was modelled, seed 2 at another interval
    runs = {"0": run(publish=now), "1": run(), "2": run(publish={**now, "interval_s": 0.02})}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"workloads": {"lora": {"slo": slo_dict(case.slo), "runs": runs}}}), "utf-8")
    got = capacity_sweep.earlier_runs(path, [case], [0, 1, 2], quick=True, publish=now)
    assert set(got["lora"]) == {0}
    unmodelled = capacity_sweep.earlier_runs(path, [case], [0, 1, 2], quick=True, publish=UNMODELLED_PUBLISH)
    assert set(unmodelled["lora"]) == {1}
    assert set(capacity_sweep.earlier_runs(path, [case], [0, 1, 2], quick=True)["lora"]) == {0, 1, 2}
