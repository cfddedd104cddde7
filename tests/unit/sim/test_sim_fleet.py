"""The fleet loop, the picker's view of it, the traces, and the benchmark command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_quality
from benchmarks.sim.fleet import FleetConfig, server_capacity_rps, simulate
from benchmarks.sim.metrics import summarize
from benchmarks.sim.policies import LeastInFlight, RandomPick, RoundRobin
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.traces import (
    AZURE_CONV,
    MOONCAKE_CONV,
    Workload,
    detect_format,
    load_lora_spec,
    load_trace_file,
    lora_workload,
    named_trace,
)
from scoring.matrix import EndpointMatrix
from scoring.types import PickRequest


@pytest.fixture(scope="module")
def azure() -> Workload:
    return load_trace_file(AZURE_CONV)


def poisson_workload(n: int, rate: float, seed: int) -> Workload:
    rng = np.random.default_rng(seed)
    return Workload(
        name="poisson",
        arrival_s=np.cumsum(rng.exponential(1.0 / rate, n)),
        prompt_tokens=rng.integers(200, 2000, n),
        output_tokens=rng.integers(20, 400, n),
        units=tuple(() for _ in range(n)),
        unit_tokens=0,
        adapter=np.full(n, -1, dtype=np.int64),
    )


# ------------------------------------------------------------------------------------------------ traces
def test_azure_trace_loads_with_its_documented_counts(azure: Workload) -> None:
    assert len(azure) == 19366
    assert azure.prompt_tokens.min() == 2
    assert azure.prompt_tokens.max() == 14050
    assert azure.output_tokens.min() == 7
    assert azure.output_tokens.max() == 1000
    assert azure.arrival_s[0] == 0.0
    assert np.all(np.diff(azure.arrival_s) >= 0)
    # 18:15:46.68 → 19:14:08.40
    assert azure.duration_s == pytest.approx(58 * 60 + 21.72, abs=0.01)
    assert not azure.has_prefixes


def test_mooncake_trace_carries_prefix_units() -> None:
    w = load_trace_file(MOONCAKE_CONV)
    assert len(w) == 12031
    assert w.unit_tokens == 512
    assert w.has_prefixes
    lengths = np.asarray([len(u) for u in w.units])
    assert np.all(lengths * 512 >= w.prompt_tokens)


def test_format_is_detected_from_the_header(tmp_path: Path) -> None:
    assert detect_format(AZURE_CONV) == "azure"
    assert detect_format(MOONCAKE_CONV) == "mooncake"
    bad = tmp_path / "x.txt"
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match="neither"):
        detect_format(bad)


def test_lora_workload_follows_the_values_file_split(azure: Workload) -> None:
    spec = load_lora_spec()
    assert len(spec.adapters) == 15
    assert sum(spec.split) == pytest.approx(1.0)
    w = lora_workload(spec, azure, seed=3)
    expected = sum(rate * duration for rate, duration in spec.stages)
    assert len(w) == pytest.approx(expected, rel=0.05)
    shares = np.bincount(w.adapter, minlength=15) / len(w)
    assert shares == pytest.approx(np.asarray(spec.split), abs=0.01)
    assert w.prompt_tokens.max() <= spec.max_input
    assert w.output_tokens.max() <= spec.max_output


def test_rescaling_hits_the_target_rate_and_keeps_the_burst_shape(azure: Workload) -> None:
    fast = azure.with_rate(200.0)
    assert fast.mean_rate == pytest.approx(200.0)
    gaps, fast_gaps = np.diff(azure.arrival_s), np.diff(fast.arrival_s)
    assert np.std(fast_gaps) / np.mean(fast_gaps) == pytest.approx(np.std(gaps) / np.mean(gaps))


# ------------------------------------------------------------------------------------------------ fleet
def test_every_request_finishes_once_across_the_fleet(azure: Workload) -> None:
    w = azure.head(2000)
    cap = server_capacity_rps(w, LLAMA3_8B_H100)
    res = simulate(w.with_rate(0.9 * 4 * cap), LeastInFlight(), FleetConfig(LLAMA3_8B_H100, n_servers=4))
    assert not np.isnan(res.finish).any()
    assert np.bincount(res.server, minlength=4).sum() == 2000
    assert (res.first_token >= res.arrival).all()
    assert (res.finish >= res.first_token).all()


def test_queueing_delay_grows_sharply_near_capacity() -> None:
    base = poisson_workload(1500, rate=1.0, seed=5)
    cap = server_capacity_rps(base, LLAMA3_8B_H100) * 2
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=2)
    mean_ttft = {}
    for load in (0.3, 0.7, 0.95, 1.2):
        res = simulate(base.with_rate(load * cap), RoundRobin(), cfg)
        mean_ttft[load] = float(np.mean(res.first_token - res.arrival))
    assert mean_ttft[0.3] < mean_ttft[0.7] < mean_ttft[0.95] < mean_ttft[1.2]
    # gentle while there is headroom, sharp past it
    assert mean_ttft[0.7] < 3 * mean_ttft[0.3]
    assert mean_ttft[1.2] > 10 * mean_ttft[0.7]


def test_same_seed_same_result_other_seed_other_result(azure: Workload) -> None:
    w = azure.head(800).with_rate(60.0)
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=4, seed=11)
    a = simulate(w, RandomPick(), cfg)
    b = simulate(w, RandomPick(), cfg)
    c = simulate(w, RandomPick(), FleetConfig(LLAMA3_8B_H100, n_servers=4, seed=12))
    assert np.array_equal(a.server, b.server)
    assert np.array_equal(a.finish, b.finish)
    assert not np.array_equal(a.server, c.server)


class Spy:
    """Records what the picker is shown and checks the service's accounting rules on every pick."""

    def __init__(self, interval: float, latency: float, publish: float = 0.0) -> None:
        self.name = "spy"
        self.inner = LeastInFlight()
        self.max_age = interval + latency + publish
        self.picks = 0
        self.snapshots = 0
        self._last: object = None

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:
        self.picks += 1
        if m.waiting is not self._last:
            self.snapshots += 1
            self._last = m.waiting
        assert (m.dispatched >= 0).all()
        assert (m.inflight >= 0).all()
        age = now - m.scraped_at
        assert (age >= 0).all()
        assert (age <= self.max_age + 1e-9).all(), "no page older than an interval and a publish"
        assert not np.isnan(m.waiting).any()
        return self.inner.pick(m, req, now, rng)


def test_picker_sees_fresh_snapshots_and_consistent_accounting(azure: Workload) -> None:
    cfg = FleetConfig(LLAMA3_8B_H100, n_servers=4, scrape_interval_s=0.05, scrape_latency_s=0.002)
    spy = Spy(cfg.scrape_interval_s, cfg.scrape_latency_s, cfg.publish_interval_s)
    res = simulate(azure.head(1500).with_rate(50.0), spy, cfg)
    assert spy.picks == 1500
    assert spy.snapshots > 100, "scrapes publish new snapshots"
    assert not np.isnan(res.finish).any()


def test_dispatched_drops_by_what_the_scrape_already_saw() -> None:
    # a burst of 40 requests at t≈0 onto 2 idle servers: the first scrape after the burst must bring
    # dispatched back to 0 (all 40 were sent before it started)
    n = 40
    w = Workload(
        name="burst",
        arrival_s=np.linspace(0.0, 0.001, n),
        prompt_tokens=np.full(n, 100),
        output_tokens=np.full(n, 2000),
        units=tuple(() for _ in range(n)),
        unit_tokens=0,
        adapter=np.full(n, -1, dtype=np.int64),
    )
    seen: list[tuple[float, float]] = []

    class Probe:
        name = "probe"

        def __init__(self) -> None:
            self.rr = RoundRobin()

        def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:
            seen.append((float(m.dispatched.sum()), float(m.inflight.sum())))
            return self.rr.pick(m, req, now, rng)

    simulate(w, Probe(), FleetConfig(LLAMA3_8B_H100, n_servers=2, scrape_interval_s=0.05))
    assert [d for d, _ in seen] == [float(i) for i in range(n)]
    assert [f for _, f in seen] == [float(i) for i in range(n)]


def test_summary_has_the_documented_keys(azure: Workload) -> None:
    res = simulate(azure.head(300).with_rate(30.0), RoundRobin(), FleetConfig(LLAMA3_8B_H100, n_servers=2))
    s = summarize(res)
    for key in (
        "ttft_p50_s",
        "ttft_p99_s",
        "tpot_p50_s",
        "e2e_p99_s",
        "output_tok_per_s",
        "goodput_rps",
        "prefix_hit_rate",
        "load_imbalance",
    ):
        assert np.isfinite(s[key]), key
    assert s["completed"] == 300
    assert s["goodput_rps"] <= s["completed"] / s["makespan_s"] + 1e-9


def test_named_traces_are_the_three_bundled_workloads(azure: Workload) -> None:
    conv = named_trace("azure-conv")
    assert len(conv) == len(azure)
    assert np.array_equal(conv.prompt_tokens, azure.prompt_tokens)
    assert not conv.has_prefixes
    assert (conv.adapter == -1).all(), "the conversation trace names no adapter"

    mooncake = named_trace("mooncake-conv")
    assert len(mooncake) == 12031
    assert mooncake.has_prefixes
    assert mooncake.unit_tokens == 512

    lora = named_trace("lora", seed=1)
    assert (lora.adapter >= 0).all(), "every LoRA request names an adapter"
    assert len(np.unique(lora.adapter)) == len(load_lora_spec().adapters)
    assert np.array_equal(lora.adapter, named_trace("lora", seed=1).adapter), "seeded"
    assert not np.array_equal(lora.adapter, named_trace("lora", seed=2).adapter)

    with pytest.raises(ValueError, match="unknown trace 'nope'; known: azure-conv, mooncake-conv, lora"):
        named_trace("nope")


# ------------------------------------------------------------------------------------------------ command
def test_bench_quality_json_has_every_policy(capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench_quality.main(["--requests", "400", "--servers", "4", "--no-write", "--no-progress", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    keys = {
        "ttft_p50_s",
        "ttft_p99_s",
        "tpot_p50_s",
        "e2e_p99_s",
        "output_tok_per_s",
        "goodput_rps",
        "prefix_hit_rate",
    }
    assert set(doc["policies"]) == {
        "round-robin",
        "random",
        "least-in-flight",
        "reference-default",
        "default",
    }
    for row in doc["policies"].values():
        assert keys <= set(row)
    assert doc["requests"] == 400
    assert doc["capacity_rps_per_server"] > 0


def test_slo_misses_split_by_kind_and_arrival_window() -> None:
    from benchmarks.sim.fleet import SimResult
    from benchmarks.sim.metrics import Slo, slo_misses

    # four requests: on time; late first token; slow tokens; both late and slow (SLO 1 s, 0.1 s/token)
    arrival = np.array([0.0, 5.0, 12.0, 25.0])
    first = arrival + np.array([0.2, 2.0, 0.5, 3.0])
    tokens = np.array([11, 11, 11, 11])
    finish = first + np.array([0.5, 0.5, 5.0, 5.0])  # 0.05 s or 0.5 s per token after the first
    z = np.zeros(4, dtype=np.int64)
    res = SimResult(
        policy="p",
        arrival=arrival,
        first_token=first,
        finish=finish,
        prompt_tokens=z + 100,
        output_tokens=tokens,
        cached_tokens=z,
        preemptions=z,
        server=z,
        server_busy_s=np.ones(1),
        server_prefill_tokens=np.ones(1, dtype=np.int64),
        server_decode_tokens=np.ones(1, dtype=np.int64),
        server_lora_loads=np.zeros(1, dtype=np.int64),
        wall_s=0.0,
        picks_s=0.0,
    )
    out = slo_misses(res, Slo(1.0, 0.1), window_s=10.0)
    assert (out["ttft_only"], out["tpot_only"], out["both"]) == (0.25, 0.25, 0.25)
    assert out["by_arrival"] == [
        {"from_s": 0.0, "requests": 2, "missed": 0.5},
        {"from_s": 10.0, "requests": 1, "missed": 1.0},
        {"from_s": 20.0, "requests": 1, "missed": 1.0},
    ]
