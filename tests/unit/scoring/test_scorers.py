"""Table-driven tests of every scorer: formula, imputation of missing gauges, the load estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scoring import EndpointMatrix, EndpointRow, PickRequest, View
from scoring.errors import ConfigurationError
from scoring.plugin import Category, Dependence, Scorer
from scoring.scorers import (
    GpuUtilizationScorer,
    KvCacheUtilizationScorer,
    LatencyScorer,
    LoraAffinityScorer,
    PrefixCacheScorer,
    QueueScorer,
    RunningRequestsScorer,
)
from scoring.scorers.load import LoadTrack, weighted_min_max

NAN = math.nan


def matrix(**columns: list[float]) -> EndpointMatrix:
    n = len(next(iter(columns.values())))
    rows = [
        EndpointRow(
            name=f"e{i}", address=f"10.0.0.{i}:8000", **{k: v[i] for k, v in columns.items()}, scraped_at=0.0
        )
        for i in range(n)
    ]
    return EndpointMatrix.from_rows(rows)


def run(scorer: Scorer[object], m: EndpointMatrix, req: PickRequest | None = None) -> list[float]:
    v = View(m)
    out = scorer.score(v, scorer.prepare(v), req or PickRequest(), m.dispatched)
    return [float(x) for x in out]


@pytest.mark.parametrize(
    ("waiting", "dispatched", "expected"),
    [
        ([3.0, 0.0, 10.0], [0.0, 0.0, 0.0], [0.7, 1.0, 0.0]),
        ([5.0, 5.0, 5.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),  # all equal → 1.0 (reference)
        ([0.0, 0.0], [2.0, 0.0], [0.0, 1.0]),  # what we sent since the scrape counts as load
        ([1.0, 3.0], [2.0, 0.0], [1.0, 1.0]),  # 1+2 == 3+0
        ([NAN, 2.0, 4.0], [0.0, 0.0, 0.0], [0.5, 1.0, 0.0]),  # unknown → mean of known (3)
        ([NAN, NAN], [1.0, 0.0], [0.0, 1.0]),  # none known → 0, the dispatched count still decides
        ([-5.0, 2.0], [0.0, 0.0], [1.0, 0.0]),  # junk negative clipped to 0
        ([math.inf, 2.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.0, 1.0]),  # inf is junk → mean of known (1)
    ],
)
def test_queue_scorer(waiting: list[float], dispatched: list[float], expected: list[float]) -> None:
    m = matrix(waiting=waiting, dispatched=dispatched)
    assert run(QueueScorer("q"), m) == pytest.approx(expected)


def test_running_scorer_reads_running_plus_dispatched() -> None:
    m = matrix(running=[4.0, 1.0, 2.0], waiting=[0.0, 9.0, 0.0], dispatched=[0.0, 0.0, 2.0])
    # loads 4, 1, 4
    assert run(RunningRequestsScorer("r"), m) == pytest.approx([0.0, 1.0, 0.0])


@pytest.mark.parametrize(
    ("kv", "expected"),
    [
        ([0.2, 0.1, 0.85], [0.8, 0.9, 0.15]),
        ([1.5, -0.5], [0.0, 1.0]),  # clipped to [0, 1]
        ([NAN, 0.2, 0.6], [0.6, 0.8, 0.4]),  # unknown → mean usage of known (0.4)
        ([NAN, NAN], [1.0, 1.0]),  # none known → usage 0, the reference's zero value
    ],
)
def test_kv_cache_scorer(kv: list[float], expected: list[float]) -> None:
    assert run(KvCacheUtilizationScorer("kv"), matrix(kv_usage=kv)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("util", "expected"),
    [
        ([0.25, 1.0, 0.0], [0.75, 0.0, 1.0]),
        ([NAN, 0.2, 0.6], [0.6, 0.8, 0.4]),  # missing exporter: neither rewarded nor punished
        ([NAN, NAN, NAN], [0.5, 0.5, 0.5]),  # nobody reports: neutral constant
    ],
)
def test_gpu_utilization_scorer(util: list[float], expected: list[float]) -> None:
    assert run(GpuUtilizationScorer("gpu"), matrix(gpu_util=util)) == pytest.approx(expected)


def lora_matrix() -> EndpointMatrix:
    rows = [
        EndpointRow("active", "10.0.0.1:8000", lora_active=("a",), max_lora=1.0),
        EndpointRow("room", "10.0.0.2:8000", lora_active=("b",), max_lora=4.0),
        EndpointRow("waiting", "10.0.0.3:8000", lora_active=("b",), lora_waiting=("a",), max_lora=2.0),
        EndpointRow("full", "10.0.0.4:8000", lora_active=("b", "c"), max_lora=2.0),
        EndpointRow("unknown-max", "10.0.0.5:8000", lora_active=("b",)),
        EndpointRow("active-and-full", "10.0.0.6:8000", lora_active=("a", "b"), max_lora=2.0),
        EndpointRow("waiting-with-room", "10.0.0.7:8000", lora_waiting=("a",), max_lora=4.0),
    ]
    return EndpointMatrix.from_rows(rows)


def test_lora_affinity_reference_cascade() -> None:
    scores = run(LoraAffinityScorer("lora"), lora_matrix(), PickRequest(target_model="a"))
    assert scores == [1.0, 0.8, 0.6, 0.0, 0.0, 1.0, 0.8]


def test_lora_affinity_unknown_adapter_scores_by_room_only() -> None:
    scores = run(LoraAffinityScorer("lora"), lora_matrix(), PickRequest(target_model="never-seen"))
    assert scores == [0.0, 0.8, 0.0, 0.0, 0.0, 0.0, 0.8]


def mixed_engine_matrix() -> EndpointMatrix:
    rows = [
        EndpointRow("vllm-room", "10.0.0.1:8000", models=("base",), lora_active=("a",), max_lora=4.0),
        EndpointRow("vllm-full", "10.0.0.2:8000", models=("base",), lora_active=("a", "b"), max_lora=2.0),
        EndpointRow("sglang", "10.0.0.3:8000", models=("base",)),
        EndpointRow("tgi", "10.0.0.4:8000"),  # reports no model names
        EndpointRow("other-base", "10.0.0.5:8000", models=("other",), max_lora=4.0),
    ]
    return EndpointMatrix.from_rows(rows)


def test_lora_affinity_is_neutral_for_a_pods_base_model() -> None:
    s = LoraAffinityScorer("lora")
    m = mixed_engine_matrix()
    # the base model: every pod serving it, or not saying what it serves, scores 1.0 (neutral)
    assert run(s, m, PickRequest(target_model="base")) == [1.0, 1.0, 1.0, 1.0, 0.8]
    # an adapter: the reference cascade, unchanged
    assert run(s, m, PickRequest(target_model="a")) == [1.0, 1.0, 0.0, 0.0, 0.8]
    assert run(s, m, PickRequest(target_model="new-adapter")) == [0.8, 0.0, 0.0, 0.0, 0.8]
    sub = View(m, np.array([4, 2]))
    assert s.score(
        sub, s.prepare(sub), PickRequest(target_model="base"), sub.take(m.dispatched)
    ).tolist() == [
        0.8,
        1.0,
    ]


def test_served_models_survive_row_round_trips() -> None:
    m = mixed_engine_matrix()
    assert m.row(0).models == ("base",)
    assert m.row(3).models == ()
    assert m.take([4, 3]).row(0).models == ("other",)
    assert dict(m.model_vocab) == {"base": 0, "other": 1}


def test_lora_affinity_on_a_subset_view() -> None:
    m = lora_matrix()
    v = View(m, np.array([6, 0, 3]))
    s = LoraAffinityScorer("lora")
    out = s.score(v, s.prepare(v), PickRequest(target_model="a"), v.take(m.dispatched))
    assert out.tolist() == [0.8, 1.0, 0.0]


@pytest.mark.parametrize(
    ("cls", "category", "dependence"),
    [
        (QueueScorer, Category.DISTRIBUTION, Dependence.LOAD),
        (RunningRequestsScorer, Category.DISTRIBUTION, Dependence.LOAD),
        (KvCacheUtilizationScorer, Category.DISTRIBUTION, Dependence.SNAPSHOT),
        (GpuUtilizationScorer, Category.DISTRIBUTION, Dependence.SNAPSHOT),
        (LoraAffinityScorer, Category.AFFINITY, Dependence.REQUEST),
        (PrefixCacheScorer, Category.AFFINITY, Dependence.LOAD),
    ],
)
def test_scorer_metadata(cls: type[Scorer[object]], category: Category, dependence: Dependence) -> None:
    assert cls.category is category
    assert cls.dependence is dependence
    assert cls.__doc__ is not None
    assert "Formula" in cls.__doc__
    assert "Inputs" in cls.__doc__


@pytest.mark.parametrize(
    "cls", [QueueScorer, RunningRequestsScorer, KvCacheUtilizationScorer, LoraAffinityScorer]
)
def test_parameterless_scorers_reject_parameters(cls: type[Scorer[object]]) -> None:
    with pytest.raises(ConfigurationError, match="unknown parameter"):
        cls("x", {"weight": 2})


@pytest.mark.parametrize(
    ("load", "weight", "floor", "expected"),
    [
        # the least loaded scores the weight, the most loaded 0, linear in between
        ([3.0, 0.0, 10.0, 4.5], 1.0, 0.0, [0.7, 1.0, 0.0, 0.55]),
        ([3.0, 0.0, 10.0, 4.5], 2.0, 0.0, [1.4, 2.0, 0.0, 1.1]),
        # all equal: nobody is worse, everyone scores the weight
        ([5.0, 5.0, 5.0], 2.0, 0.0, [2.0, 2.0, 2.0]),
        # without a floor a spread of one request swings the whole range
        ([100.0, 101.0], 1.0, 0.0, [1.0, 0.0]),
        # a spread under the floor only shades the score (4 of 16 tokens: 0.75, not 0)
        ([100.0, 104.0], 1.0, 16.0, [1.0, 0.75]),
        ([7.0, 7.0], 1.0, 16.0, [1.0, 1.0]),
        # past the floor it is plain min-max again
        ([100.0, 132.0, 116.0], 1.0, 16.0, [1.0, 0.0, 0.5]),
    ],
)
def test_weighted_min_max(load: list[float], weight: float, floor: float, expected: list[float]) -> None:
    assert weighted_min_max(np.array(load), weight, floor).tolist() == pytest.approx(expected)


def test_load_track_incremental_updates_equal_full_recomputation() -> None:
    """The batch's O(1) update must produce exactly (bit for bit) what a full recomputation does."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 5, size=50).astype(float) + rng.random(50) / 3
    dispatched = np.zeros(50)
    track = LoadTrack(base, dispatched, 1.7)
    recomputed = 0
    for _ in range(300):
        p = int(rng.integers(50))
        dispatched[p] += 1
        recomputed += track.bump(p, float(dispatched[p]))
        assert np.array_equal(track.contribution, weighted_min_max(base + dispatched, 1.7))
    assert 0 < recomputed < 300  # both paths were exercised


# ------------------------------------------------------------------------------------ observed latency
@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"ttft_per_1k": [0.1, 0.3, 0.1]}, [1.0, 1 / 3, 1.0]),  # ratio to the fastest
        ({"ttft_per_1k": [0.2, NAN, 0.4]}, [1.0, 2 / 3, 0.5]),  # unknown → mean of known (0.3)
        ({"ttft_per_1k": [NAN, NAN]}, [1.0, 1.0]),  # no information: no effect
        (  # the mean over the signals some candidate has
            {"ttft_per_1k": [0.1, 0.2], "tpot": [0.04, 0.02], "ntpot": [NAN, NAN]},
            [(1.0 + 0.5) / 2, (0.5 + 1.0) / 2],
        ),
        ({"tpot": [0.0, 0.05]}, [1.0, 2e-5]),  # a zero latency is floored at 1 µs
        ({"ntpot": [math.inf, 0.05]}, [1.0, 1.0]),  # junk is unknown
    ],
)
def test_latency_scorer(columns: dict[str, list[float]], expected: list[float]) -> None:
    assert run(LatencyScorer("l"), matrix(**columns)) == pytest.approx(expected)


def test_latency_scorer_weights_and_view() -> None:
    m = matrix(ttft_per_1k=[0.1, 0.2, 0.4], tpot=[0.02, 0.02, 0.01])
    only_ttft = LatencyScorer("l", {"tpotWeight": 0})
    assert run(only_ttft, m) == pytest.approx([1.0, 0.5, 0.25])
    heavy_tpot = LatencyScorer("l", {"ttftWeight": 1, "tpotWeight": 3})
    assert run(heavy_tpot, m) == pytest.approx([(1 + 3 * 0.5) / 4, (0.5 + 3 * 0.5) / 4, (0.25 + 3) / 4])
    # over a subset of candidates the fastest of the subset scores 1
    v = View(m, np.array([1, 2]))
    assert list(only_ttft.prepare(v)) == pytest.approx([1.0, 0.5])


def test_latency_scorer_parameters() -> None:
    s = LatencyScorer("l", {"halfLife": "5s", "maxAge": "2m"})
    assert (s.half_life, s.max_age) == (5.0, 120.0)
    assert s.parameters["halfLife"] == "5s"
    assert (LatencyScorer.category, LatencyScorer.dependence) == (Category.DISTRIBUTION, Dependence.SNAPSHOT)
    with pytest.raises(ConfigurationError, match="'maxAge' must be > 0"):
        LatencyScorer("l", {"maxAge": 0})
    with pytest.raises(ConfigurationError, match="ttftWeight"):
        LatencyScorer("l", {"ttftWeight": -1})
