"""The trace's reuse ceilings (benchmarks.sim.reuse) and the per-pick audit of lost hits (hit_losses)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from benchmarks.sim.fleet import FleetConfig
from benchmarks.sim.hit_losses import CLASSES, audit_run
from benchmarks.sim.metrics import Slo
from benchmarks.sim.oracle import Oracle
from benchmarks.sim.policies import RoundRobin, make_policy
from benchmarks.sim.profiles import LLAMA3_8B_H100
from benchmarks.sim.reuse import reuse
from benchmarks.sim.traces import Workload
from tests.unit.sim.workloads import prefix_workload


def units_workload(units: Sequence[tuple[int, ...]], unit_tokens: int = 64, rate: float = 1.0) -> Workload:
    n = len(units)
    return Workload(
        name="u",
        arrival_s=np.arange(n, dtype=np.float64) / rate,
        prompt_tokens=np.asarray([len(u) * unit_tokens for u in units], dtype=np.int64),
        output_tokens=np.full(n, 10, dtype=np.int64),
        units=tuple(units),
        unit_tokens=unit_tokens,
        adapter=np.full(n, -1, dtype=np.int64),
    )


def test_the_infinite_cache_counts_leading_units_seen_before() -> None:
    # 2 of 9 tokens' units repeat as a prefix: (1, 2) then (1, 2, 3) hits 2 units; (4,) and (2,) miss
    # (unit 2 alone is not a prefix the first prompts' chains started with: keys are per unit, as the
    # simulator's cache keys are, so it does hit), then (1, 2, 3) again hits all 3
    w = units_workload([(1, 2), (1, 2, 3), (4,), (1, 2, 3)])
    r = reuse(w)
    assert r["infinite"] == pytest.approx((2 + 3) / 9)
    assert r["fleet_lru"] == pytest.approx(r["infinite"]), "4 small units fit any cache"


def test_a_cache_smaller_than_the_reuse_distance_evicts_what_would_hit() -> None:
    # 20 distinct 4-unit prompts (16 blocks each of 16 tokens at 64-token units), then the same 20 again:
    # an unbounded cache hits the whole second pass, a 40-block server only what two prompts span
    first = [(i * 10, i * 10 + 1, i * 10 + 2, i * 10 + 3) for i in range(20)]
    w = units_workload(first + first)
    small = LLAMA3_8B_H100.with_overrides(num_blocks=40)
    r = reuse(w, small, n_servers=2)
    assert r["infinite"] == pytest.approx(0.5)
    assert r["server_lru"] == 0.0, (
        "one 40-block server holds the last 2 prompts, the pass comes back after 20"
    )
    assert r["fleet_lru"] == 0.0, "80 blocks: 5 prompts"
    big = reuse(w, LLAMA3_8B_H100.with_overrides(num_blocks=200), n_servers=2)
    assert big["fleet_lru"] == pytest.approx(0.5)
    assert 0.0 < big["affinity_lru"] <= big["fleet_lru"]


def test_the_audit_puts_every_lost_token_in_one_class() -> None:
    w = prefix_workload(300, rate=40.0, seed=3, groups=12)
    cfg = FleetConfig(LLAMA3_8B_H100.with_overrides(num_blocks=2000), n_servers=4, seed=3)
    for policy in (RoundRobin(), make_policy("default", seed=3), Oracle()):
        out = audit_run(w, policy, cfg, Slo())
        lost = sum(out[k] for k in CLASSES)
        assert out["best"] >= out["hit"] > 0.0
        # lost at the pick + lost after it account for best - hit (up to units that arrived early)
        assert lost >= out["best"] - out["hit"] - 1e-9
        if policy.name != "default":  # no index: nothing believed, every loss its own class
            assert lost - out["after_pick"] == pytest.approx(out["no_index"])
            assert out["phantom"] == 0.0
        else:
            assert out["no_index"] == 0.0


def test_the_audit_sees_our_index_follow_the_holders_where_round_robin_does_not() -> None:
    w = prefix_workload(300, rate=40.0, seed=4, groups=12)
    cfg = FleetConfig(LLAMA3_8B_H100.with_overrides(num_blocks=2000), n_servers=4, seed=4)
    rr = audit_run(w, RoundRobin(), cfg, Slo())
    ours = audit_run(w, make_policy("default", seed=4), cfg, Slo())
    assert ours["hit"] > rr["hit"]
    assert ours["index_forgot"] + ours["index_stale"] < rr["no_index"]
