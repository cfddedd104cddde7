"""The scheduler: load estimate, batch picks, candidate masks, filters, decision records, caching."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from scoring import (
    ConfigurationError,
    EndpointMatrix,
    EndpointRow,
    NoEndpointsAvailable,
    PickRequest,
    PluginSpec,
    PluginTiming,
    ProfileSpec,
    Scheduler,
    build_scheduler,
    default_scheduler,
    reference_default_scheduler,
)
from scoring.cache import Prepared
from scoring.filters import MetricsStalenessFilter
from scoring.pickers import MaxScorePicker
from scoring.plugin import Scorer, View
from scoring.scorers import QueueScorer

NOW = 50.0


def fleet(n: int, *, kv: float = 0.3, **overrides: dict[str, float]) -> EndpointMatrix:
    rows = []
    for i in range(n):
        fields: dict[str, object] = {
            "name": f"e{i}",
            "address": f"10.0.0.{i}:8000",
            "waiting": 0.0,
            "running": 0.0,
            "kv_usage": kv,
            "gpu_util": 0.5,
            "scraped_at": NOW,
        }
        for column, values in overrides.items():
            if i in values:
                fields[column] = values[i]
        rows.append(EndpointRow(**fields))  # type: ignore[arg-type]
    return EndpointMatrix.from_rows(rows)


def profile(*entries: tuple[str, str, float | None, dict[str, object] | None]) -> Scheduler:
    """Build from (name, type, weight, parameters) tuples, all in one profile."""
    plugins = [PluginSpec(name, type_, params or {}) for name, type_, _, params in entries]
    refs = [(name, weight) for name, _, weight, _ in entries]
    return build_scheduler(plugins, [ProfileSpec("p", refs)])


# ------------------------------------------------------------------------------------ load estimate
@pytest.mark.parametrize("make", [reference_default_scheduler, default_scheduler])
def test_64_simultaneous_picks_spread_over_8_equal_endpoints(make: type[Scheduler]) -> None:
    """Between two scrapes the gauges do not move; counting what we dispatched keeps a burst spread."""
    s = make()
    m = fleet(8)
    rng = np.random.default_rng(0)
    counts: Counter[int] = Counter()
    for _ in range(64):
        primary = s.schedule(m, PickRequest(), now=NOW, rng=rng).primary
        m.dispatched[primary] += 1
        counts[primary] += 1
    assert sorted(counts.values()) == [8] * 8


@pytest.mark.parametrize("make", [reference_default_scheduler, default_scheduler])
def test_burst_onto_a_slightly_better_endpoint_spreads_only_with_the_load_estimate(
    make: type[Scheduler],
) -> None:
    """e0 has a little less KV in use. Without counting dispatched requests every pick of the burst lands
    on it (the scraped gauges cannot change until the next scrape); with the estimate the burst spreads."""
    s = make()
    m = fleet(8, kv_usage={0: 0.25})
    rng = np.random.default_rng(0)
    stale_view = [s.schedule(m, PickRequest(), now=NOW, rng=rng).primary for _ in range(64)]
    assert set(stale_view) == {0}
    counts: Counter[int] = Counter()
    for _ in range(64):
        primary = s.schedule(m, PickRequest(), now=NOW, rng=rng).primary
        m.dispatched[primary] += 1
        counts[primary] += 1
    assert len(counts) == 8
    assert max(counts.values()) <= 9


def test_schedule_does_not_modify_the_matrix() -> None:
    m = fleet(4, waiting={1: 3.0})
    before = m.dispatched.copy()
    default_scheduler().schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(0), explain=True)
    assert np.array_equal(m.dispatched, before)


# ------------------------------------------------------------------------------------ batch
def sequential(
    s: Scheduler, m: EndpointMatrix, reqs: list[PickRequest], seed: int, **kw: object
) -> list[tuple[int, ...]]:
    copy = m.with_load(m.dispatched.copy())
    rng = np.random.default_rng(seed)
    out = []
    for req in reqs:
        result = s.schedule(copy, req, now=NOW, rng=rng, **kw)  # type: ignore[arg-type]
        copy.dispatched[result.primary] += 1
        out.append(result.indices)
    return out


def batch(
    s: Scheduler, m: EndpointMatrix, reqs: list[PickRequest], seed: int, **kw: object
) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [r.indices for r in s.schedule_batch(m, reqs, now=NOW, rng=rng, **kw)]  # type: ignore[arg-type]


def random_fleet(n: int, seed: int) -> EndpointMatrix:
    rng = np.random.default_rng(seed)
    adapters = ["a", "b", "c"]
    rows = [
        EndpointRow(
            name=f"e{i}",
            address=f"10.1.{i // 200}.{i % 200}:8000",
            waiting=float(rng.integers(0, 4)) if rng.random() > 0.1 else float("nan"),
            running=float(rng.integers(0, 6)),
            kv_usage=float(rng.random()),
            gpu_util=float(rng.random()) if rng.random() > 0.3 else float("nan"),
            scraped_at=NOW - float(rng.random()) * 0.3,
            dispatched=float(rng.integers(0, 3)),
            inflight=float(rng.integers(0, 5)),
            lora_active=tuple(a for a in adapters if rng.random() < 0.3),
            max_lora=float(rng.integers(1, 4)),
        )
        for i in range(n)
    ]
    return EndpointMatrix.from_rows(rows)


BATCH_PROFILES = {
    "reference": reference_default_scheduler,
    "ours": default_scheduler,
    "fallbacks+filter": lambda: profile(
        ("stale", "metrics-staleness-filter", None, {"threshold": "150ms"}),
        ("q", "queue-scorer", 2.0, None),
        ("r", "running-requests-size-scorer", 1.5, None),
        ("l", "lora-affinity-scorer", 1.0, None),
        ("pick", "max-score-picker", None, {"maxNumOfEndpoints": 3}),
    ),
    "weighted-random": lambda: profile(
        ("q", "queue-scorer", 1.0, None),
        ("kv", "kv-cache-utilization-scorer", 1.0, None),
        ("pick", "weighted-random-picker", None, {"maxNumOfEndpoints": 2}),
    ),
    "request filter (sequential path)": lambda: profile(
        ("cap", "lora-capacity-filter", None, None),
        ("q", "queue-scorer", 1.0, None),
        ("l", "lora-affinity-scorer", 2.0, None),
    ),
    "queue only": lambda: profile(("q", "queue-scorer", 1.0, None)),
    "no scorers": lambda: profile(("pick", "random-picker", None, None)),
}


@pytest.mark.parametrize("name", list(BATCH_PROFILES))
@pytest.mark.parametrize("n", [1, 5, 60])
def test_batch_equals_sequential(name: str, n: int) -> None:
    s = BATCH_PROFILES[name]()
    m = random_fleet(n, seed=n)
    reqs = [PickRequest(target_model=["a", "b", "base"][i % 3]) for i in range(64)]
    before = m.dispatched.copy()
    assert batch(s, m, reqs, seed=9) == sequential(s, m, reqs, seed=9)
    assert np.array_equal(m.dispatched, before)  # the batch worked on a copy


def test_batch_with_candidate_mask_equals_sequential() -> None:
    s = default_scheduler()
    m = random_fleet(40, seed=4)
    mask = np.arange(40) % 3 == 0
    reqs = [PickRequest(target_model="a")] * 30
    got = batch(s, m, reqs, seed=1, candidates=mask)
    assert got == sequential(s, m, reqs, seed=1, candidates=mask)
    assert all(mask[i] for picked in got for i in picked)


def test_batch_of_nothing() -> None:
    assert default_scheduler().schedule_batch(fleet(2), [], now=NOW, rng=np.random.default_rng(0)) == []


# ------------------------------------------------------------------------------------ candidates & filters
def test_candidate_mask_restricts_and_maps_back_to_matrix_rows() -> None:
    s = reference_default_scheduler()
    m = fleet(6, waiting={0: 0.0, 1: 9.0, 2: 9.0, 3: 1.0, 4: 9.0, 5: 9.0})
    mask = np.array([False, True, True, True, False, False])
    assert s.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(0), candidates=mask).primary == 3
    full = np.ones(6, dtype=bool)
    assert s.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(0), candidates=full).primary == 0


def test_candidate_mask_of_the_wrong_length_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        default_scheduler().schedule(
            fleet(3), PickRequest(), now=NOW, rng=np.random.default_rng(0), candidates=np.ones(2, dtype=bool)
        )


def test_empty_pool_raises() -> None:
    with pytest.raises(NoEndpointsAvailable, match="no candidate endpoints"):
        default_scheduler().schedule(
            EndpointMatrix.empty(), PickRequest(), now=NOW, rng=np.random.default_rng(0)
        )


def test_a_filter_that_removes_everything_ends_the_pick() -> None:
    s = profile(("h", "header-based-testing-filter", None, None), ("q", "queue-scorer", 1.0, None))
    with pytest.raises(
        NoEndpointsAvailable, match=r"failed to find target endpoint: no endpoints available: filter 'h'"
    ):
        s.schedule(fleet(3), PickRequest(), now=NOW, rng=np.random.default_rng(0))
    req = PickRequest(headers={"test-epp-endpoint-selection": "10.0.0.2"})
    assert s.schedule(fleet(3), req, now=NOW, rng=np.random.default_rng(0)).indices == (2,)


def test_fail_open_filter_keeps_everything_and_says_so() -> None:
    s = profile(("stale", "metrics-staleness-filter", None, None), ("q", "queue-scorer", 1.0, None))
    m = fleet(3, scraped_at={0: 0.0, 1: 0.0, 2: 0.0}, waiting={2: 5.0})
    result = s.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(0), explain=True)
    assert result.primary in (0, 1)
    assert result.decision is not None
    (record,) = result.decision.filters
    assert record.failed_open
    assert record.removed == ()


def test_filters_run_in_order_and_scorers_see_only_survivors() -> None:
    s = profile(
        ("stale", "metrics-staleness-filter", None, None),
        ("q", "queue-scorer", 1.0, None),
    )
    # e0 has the shortest queue but stale metrics; among the fresh ones e2 is best
    m = fleet(3, scraped_at={0: NOW - 1.0}, waiting={0: 0.0, 1: 4.0, 2: 1.0})
    result = s.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(0), explain=True)
    assert result.primary == 2
    assert result.decision is not None
    assert result.decision.filters[0].removed == ("e0",)
    assert set(result.decision.totals) == {"e1", "e2"}
    # min/max normalization over the survivors only: e1 = 0, e2 = 1
    assert result.decision.scorers[0].scores == {"e1": 0.0, "e2": 1.0}


# ------------------------------------------------------------------------------------ decision record
def test_decision_record_explains_the_pick() -> None:
    s = profile(
        ("stale", "metrics-staleness-filter", None, None),
        ("q", "queue-scorer", 2.0, None),
        ("kv", "kv-cache-utilization-scorer", 1.0, None),
        ("prefix", "prefix-cache-scorer", 3.0, None),
        ("pick", "max-score-picker", None, {"maxNumOfEndpoints": 2}),
    )
    m = fleet(4, waiting={0: 2.0, 1: 0.0, 2: 4.0, 3: 0.0}, kv_usage={1: 0.5}, scraped_at={3: 0.0})
    result = s.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(0), explain=True)
    d = result.decision
    assert d is not None
    assert d.profile == "p"
    assert d.candidates == ("e0", "e1", "e2", "e3")
    assert d.filters[0].filter_name == "stale"
    assert d.filters[0].filter_type == "metrics-staleness-filter"
    assert d.filters[0].removed == ("e3",)
    assert "older than" in d.filters[0].reason
    q, kv, prefix = d.scorers
    assert (q.scorer_name, q.scorer_type, q.weight) == ("q", "queue-scorer", 2.0)
    assert q.scores == pytest.approx({"e0": 0.5, "e1": 1.0, "e2": 0.0})
    assert kv.scores == pytest.approx({"e0": 0.7, "e1": 0.5, "e2": 0.7})
    assert prefix.scores == {"e0": 0.0, "e1": 0.0, "e2": 0.0}
    for name in ("e0", "e1", "e2"):
        expected = 2.0 * q.scores[name] + kv.scores[name] + 3.0 * prefix.scores[name]
        assert d.totals[name] == pytest.approx(expected)
    assert d.picker == "pick"
    assert d.chosen == ("e1", "e0")
    assert d.chosen == tuple(m.names[i] for i in result.indices)
    assert d.saturation == pytest.approx(s.saturation(m, now=NOW))


def test_without_explain_there_is_no_decision() -> None:
    result = default_scheduler().schedule(fleet(2), PickRequest(), now=NOW, rng=np.random.default_rng(0))
    assert result.decision is None


# ------------------------------------------------------------------------------------ caching
def test_a_new_snapshot_is_never_scored_with_the_previous_one() -> None:
    s = default_scheduler()
    first = fleet(3, waiting={0: 0.0, 1: 5.0, 2: 5.0})
    second = fleet(3, waiting={0: 5.0, 1: 0.0, 2: 5.0})
    rng = np.random.default_rng(0)
    assert s.schedule(first, PickRequest(), now=NOW, rng=rng).primary == 0
    assert s.schedule(second, PickRequest(), now=NOW, rng=rng).primary == 1
    assert s.schedule(first, PickRequest(), now=NOW, rng=rng).primary == 0


def test_a_load_copy_shares_the_cache_but_uses_its_own_dispatched_counts() -> None:
    s = reference_default_scheduler()
    m = fleet(2, kv_usage={0: 0.1})
    rng = np.random.default_rng(0)
    assert s.schedule(m, PickRequest(), now=NOW, rng=rng).primary == 0
    busy = m.with_load(np.array([3.0, 0.0]))
    assert s.schedule(busy, PickRequest(), now=NOW, rng=rng).primary == 1
    assert s.schedule(m, PickRequest(), now=NOW, rng=rng).primary == 0


def test_subset_cache_follows_the_candidate_rows() -> None:
    s = reference_default_scheduler()
    m = fleet(4, waiting={0: 1.0, 1: 0.0, 2: 5.0, 3: 6.0})
    rng = np.random.default_rng(0)
    first, second = np.array([True, True, False, False]), np.array([False, False, True, True])
    assert s.schedule(m, PickRequest(), now=NOW, rng=rng, candidates=first).primary == 1
    assert s.schedule(m, PickRequest(), now=NOW, rng=rng, candidates=second).primary == 2
    assert s.schedule(m, PickRequest(), now=NOW, rng=rng, candidates=first).primary == 1
    assert s.schedule(m, PickRequest(), now=NOW, rng=rng).primary == 1


def test_subset_cache_follows_what_a_filter_removes() -> None:
    """Imputation is over the survivors, so a different survivor set must not reuse a cached state."""
    s = profile(
        ("stale", "metrics-staleness-filter", None, None), ("gpu", "gpu-utilization-scorer", 1.0, None)
    )
    m = fleet(
        3,
        scraped_at={0: NOW - 1.0, 1: NOW, 2: NOW - 0.15},
        gpu_util={0: 0.0, 1: float("nan"), 2: 0.8},
    )
    rng = np.random.default_rng(0)
    # e0 stale: e1's unknown utilization is imputed as 0.8 (the mean of e2) → tie → both possible
    now_early = s.schedule(m, PickRequest(), now=NOW, rng=rng, explain=True)
    assert now_early.decision is not None
    assert now_early.decision.scorers[0].scores == pytest.approx({"e1": 0.2, "e2": 0.2})
    # later e2 is stale too: e1 alone, nothing known → neutral 0.5
    later = s.schedule(m, PickRequest(), now=NOW + 0.1, rng=rng, explain=True)
    assert later.decision is not None
    assert later.decision.scorers[0].scores == {"e1": 0.5}
    again = s.schedule(m, PickRequest(), now=NOW, rng=rng, explain=True)
    assert again.decision is not None
    assert again.decision.scorers[0].scores == pytest.approx({"e1": 0.2, "e2": 0.2})


def test_a_new_snapshot_keeps_the_state_of_each_scorer_whose_inputs_did_not_change() -> None:
    """A scrape moves the queue and KV gauges: the LoRA and GPU states (and, while KV holds, the sum
    of the snapshot terms and the static totals) are kept; every snapshot is built anew, as the
    datastore publishes them, so "unchanged" means the same values, not the same arrays."""
    s = default_scheduler()
    position = {ws.scorer.type_name: i for i, ws in enumerate(s.scorers)}
    req = PickRequest(target_model="m")
    rng = np.random.default_rng(0)

    def prepared(m: EndpointMatrix) -> Prepared:
        s.schedule(m, req, now=NOW, rng=rng)
        return s.prepared(m, View(m))

    first = prepared(fleet(3, waiting={0: 1.0}))
    queue_moved = prepared(fleet(3, waiting={0: 2.0}))
    kept = [a is b for a, b in zip(first.states, queue_moved.states, strict=True)]
    assert not kept[position["queue-scorer"]]
    assert kept[position["kv-cache-utilization-scorer"]]
    assert kept[position["lora-affinity-scorer"]]
    assert kept[position["gpu-utilization-scorer"]]
    assert queue_moved.snapshot_sum is first.snapshot_sum
    assert queue_moved.statics is first.statics
    kv_moved = prepared(fleet(3, waiting={0: 2.0}, kv_usage={1: 0.9}))
    kv, lora = position["kv-cache-utilization-scorer"], position["lora-affinity-scorer"]
    assert kv_moved.states[kv] is not first.states[kv]
    assert kv_moved.states[lora] is first.states[lora]
    assert kv_moved.snapshot_sum is not first.snapshot_sum
    assert kv_moved.statics is not first.statics
    same_values = fleet(3, waiting={0: 2.0}, kv_usage={1: 0.9})
    assert prepared(same_values) is kv_moved
    # the kept state scores the new snapshot: e1's KV moved to 0.9, so e2 wins where e1 and e2 tied
    assert s.schedule(same_values, req, now=NOW, rng=rng).primary == 2


def test_a_scorer_that_names_no_inputs_is_prepared_again_when_any_column_changes() -> None:
    class Plain(QueueScorer):
        inputs = Scorer.inputs  # the default: every read-only column

    reference = reference_default_scheduler()
    s = Scheduler(
        profile_name="p",
        filters=(),
        scorers=[(Plain("q"), 1.0)],
        picker=reference.picker,
        saturation_detector=reference.saturation_detector,
    )
    first, moved = fleet(2), fleet(2, gpu_util={0: 0.9})
    state = s.prepared(first, View(first)).states[0]
    assert s.prepared(fleet(2), View(first)).states[0] is state  # the same values: kept
    assert s.prepared(moved, View(moved)).states[0] is not state


# ------------------------------------------------------------------------------------ construction
def test_zero_weight_scorers_change_nothing_but_are_recorded() -> None:
    s = profile(("q", "queue-scorer", 1.0, None), ("kv", "kv-cache-utilization-scorer", 0.0, None))
    m = fleet(2, waiting={0: 1.0}, kv_usage={1: 0.99})
    result = s.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(0), explain=True)
    assert result.primary == 1
    assert result.decision is not None
    assert result.decision.scorers[1].weight == 0.0
    assert result.decision.totals == {"e0": 0.0, "e1": 1.0}


def test_scheduler_rejects_negative_and_non_finite_weights() -> None:
    for weight in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigurationError, match="weight"):
            Scheduler(
                profile_name="p",
                filters=[MetricsStalenessFilter("s")],
                scorers=[(QueueScorer("q"), weight)],
                picker=MaxScorePicker("m"),
                saturation_detector=reference_default_scheduler().saturation_detector,
            )


def test_introspection() -> None:
    s = profile(
        ("stale", "metrics-staleness-filter", None, None),
        ("q", "queue-scorer", 2.0, None),
        ("pick", "max-score-picker", None, {"maxNumOfEndpoints": 3}),
    )
    assert s.profile_name == "p"
    assert s.max_endpoints == 3
    assert s.weights == {"q": 2.0}
    assert s.plugins == (
        ("stale", "metrics-staleness-filter", None),
        ("q", "queue-scorer", 2.0),
        ("pick", "max-score-picker", None),
    )
    described = s.describe()
    assert described["profileHandler"] == "single-profile-handler"
    assert described["profiles"][0]["picker"]["parameters"] == {"maxNumOfEndpoints": 3}
    assert described["profiles"][0]["filters"][0]["parameters"] == {"threshold": "200ms", "failOpen": True}
    assert described["saturationDetector"]["type"] == "utilization-detector"


def test_saturation_over_candidates() -> None:
    s = default_scheduler()
    m = fleet(2, waiting={0: 10.0, 1: 0.0}, kv_usage={0: 0.0, 1: 0.0})
    assert s.saturation(m, now=NOW) == pytest.approx(1.0)
    assert s.saturation(m, now=NOW, candidates=np.array([True, False])) == pytest.approx(2.0)
    assert s.saturation(m, now=NOW, candidates=np.array([False, False])) == 1.0


# ------------------------------------------------------------------------------------ plugin timings
@pytest.mark.parametrize("small_pool", [0, 64], ids=["arrays", "floats"])
def test_a_timed_pick_times_each_plugin_in_order_and_picks_what_an_untimed_one_does(small_pool: int) -> None:
    s = profile(
        ("stale", "metrics-staleness-filter", None, {"threshold": "150ms"}),
        ("q", "queue-scorer", 2.0, None),
        ("kv", "kv-cache-utilization-scorer", 1.0, None),
        ("best", "max-score-picker", None, None),
    )
    s.small_pool = small_pool
    m = fleet(6, waiting={1: 0.0, 2: 5.0}, kv_usage={3: 0.9}, scraped_at={5: NOW - 1.0})
    timings: list[PluginTiming] = []
    timed = s.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(1), timings=timings)
    untimed = s.schedule(m, PickRequest(), now=NOW, rng=np.random.default_rng(1))
    assert timed == untimed
    assert [(t.point, t.name) for t in timings] == [
        ("filter", "stale"),
        ("picker", "best"),
        ("scorer", "q"),
        ("scorer", "kv"),
    ]
    assert all(t.duration_ns >= 0 for t in timings)


def test_a_filter_that_removes_everything_is_timed_before_the_pick_fails() -> None:
    s = profile(("stale", "metrics-staleness-filter", None, {"threshold": "150ms", "failOpen": False}))
    timings: list[PluginTiming] = []
    with pytest.raises(NoEndpointsAvailable):
        s.schedule(
            fleet(2, scraped_at={0: 0.0, 1: 0.0}),
            PickRequest(),
            now=NOW,
            rng=np.random.default_rng(),
            timings=timings,
        )
    assert [(t.point, t.name) for t in timings] == [("filter", "stale")]
