"""Properties of the token accounting and the token-load scorers for any token columns and prompt sizes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import (
    EndpointMatrix,
    EndpointRow,
    NoEndpointsAvailable,
    PickRequest,
    PluginSpec,
    ProfileSpec,
    Scheduler,
    View,
    build_scheduler,
    default_scheduler,
    reference_default_scheduler,
)
from scoring.matrix import LoadCharge
from scoring.scorers import PrefillQueueScorer, TokenLoadScorer
from scoring.scorers.load import weighted_min_max, weighted_min_max_floats
from scoring.terms import SMALL_POOL
from scoring.types import PrefixMatch

NOW = 10.0
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

tokens = st.one_of(st.integers(0, 200_000).map(float), st.sampled_from([0.0, 1e9, 2.0**40]))
gauge = st.one_of(st.floats(min_value=0, max_value=50), st.sampled_from([math.nan, math.inf, -1.0]))
estimate = st.one_of(st.integers(-10, 130_000), st.sampled_from([0, 10**12]))


@st.composite
def matrices(draw: st.DrawFn, max_size: int = 12) -> EndpointMatrix:
    n = draw(st.integers(1, max_size))
    rows = [
        EndpointRow(
            name=f"e{i}",
            address=f"10.0.0.{i}:8000",
            waiting=draw(gauge),
            running=draw(gauge),
            kv_usage=draw(st.one_of(st.floats(0, 1), st.just(math.nan))),
            scraped_at=NOW,
            dispatched=float(draw(st.integers(0, 5))),
            prefill_tokens=draw(tokens),
            inflight_tokens=draw(tokens),
        )
        for i in range(n)
    ]
    return EndpointMatrix.from_rows(rows)


requests = st.builds(
    PickRequest,
    target_model=st.just("base"),
    prompt_tokens_estimate=estimate,
    stream=st.booleans(),
    prefix=st.none(),
)


def token_profile(min_range: float, *, endpoints: int = 2, lora_weight: float = 0.0) -> Scheduler:
    specs = [
        PluginSpec("queue-scorer", "queue-scorer"),
        PluginSpec("prefill-queue-scorer", "prefill-queue-scorer", {"minRangeTokens": min_range}),
        PluginSpec("kv-cache-utilization-scorer", "kv-cache-utilization-scorer"),
        PluginSpec("pick", "max-score-picker", {"maxNumOfEndpoints": endpoints}),
    ]
    refs: list[tuple[str, float | None]] = [
        ("queue-scorer", 1.0),
        ("prefill-queue-scorer", 2.5),
        ("kv-cache-utilization-scorer", 1.0),
    ]
    if lora_weight:  # a request term: statics cached per request key
        specs.append(PluginSpec("lora-affinity-scorer", "lora-affinity-scorer"))
        refs.append(("lora-affinity-scorer", lora_weight))
    refs.append(("pick", None))
    return build_scheduler(specs, [ProfileSpec("p", refs)])


def loads_only() -> Scheduler:
    """Load terms and nothing else: no static part at all."""
    specs = [PluginSpec("queue-scorer", "queue-scorer"), PluginSpec("r", "running-requests-size-scorer")]
    return build_scheduler(specs, [ProfileSpec("p", [("queue-scorer", 1.0), ("r", 3.0)])])


def three_loads() -> Scheduler:
    """Three load terms and a static one: the general summing path of the float scorer."""
    specs = [
        PluginSpec("queue-scorer", "queue-scorer"),
        PluginSpec("r", "running-requests-size-scorer"),
        PluginSpec("prefill-queue-scorer", "prefill-queue-scorer", {"minRangeTokens": 512.0}),
        PluginSpec("kv-cache-utilization-scorer", "kv-cache-utilization-scorer"),
    ]
    refs: list[tuple[str, float | None]] = [
        ("queue-scorer", 1.0),
        ("r", 0.5),
        ("prefill-queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 1.5),
    ]
    return build_scheduler(specs, [ProfileSpec("p", refs)])


def with_token_load() -> Scheduler:
    specs = [PluginSpec("token-load-scorer", "token-load-scorer", {"queueThresholdTokens": 50_000})]
    specs.append(PluginSpec("queue-scorer", "queue-scorer"))
    return build_scheduler(specs, [ProfileSpec("p", [("token-load-scorer", 1.0), ("queue-scorer", 1.0)])])


PROFILES: dict[str, Any] = {
    "ours": default_scheduler,
    "floored": lambda: token_profile(8192.0),
    "min-max": lambda: token_profile(0.0),
    "token-load": with_token_load,
}


@SETTINGS
@given(m=matrices(), req=requests, floor=st.sampled_from([0.0, 1.0, 8192.0, 1e7]))
def test_token_scorers_score_in_unit_interval(m: EndpointMatrix, req: PickRequest, floor: float) -> None:
    v = View(m)
    for scorer in (PrefillQueueScorer("p", {"minRangeTokens": floor}), TokenLoadScorer("t")):
        out = scorer.score(v, scorer.prepare(v), req, m.dispatched)  # type: ignore[arg-type]
        assert out.shape == (len(m),)
        assert np.all((out >= 0.0) & (out <= 1.0)), out
        if isinstance(scorer, PrefillQueueScorer):
            assert out.max() == 1.0, "the endpoint with the least pending prefill scores 1"


@SETTINGS
@given(m=matrices(), data=st.data())
def test_prefill_scores_follow_a_permutation(m: EndpointMatrix, data: st.DataObject) -> None:
    perm = data.draw(st.permutations(range(len(m))))
    scorer = PrefillQueueScorer("p")
    v, pv = View(m), View(m.take(perm))
    direct = scorer.score(v, scorer.prepare(v), PickRequest(), m.dispatched)
    permuted = scorer.score(pv, scorer.prepare(pv), PickRequest(), pv.m.dispatched)
    assert permuted.tolist() == direct[list(perm)].tolist()


@SETTINGS
@given(
    m=matrices(max_size=16),
    reqs=st.lists(requests, min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
    profile=st.sampled_from(list(PROFILES)),
)
def test_batch_equals_sequential_with_token_charges(
    m: EndpointMatrix, reqs: list[PickRequest], seed: int, profile: str
) -> None:
    s = PROFILES[profile]()
    copy = m.with_load_copies()
    rng = np.random.default_rng(seed)
    expected: list[tuple[int, ...]] = []
    try:
        for req in reqs:
            result = s.schedule(copy, req, now=NOW, rng=rng)
            LoadCharge.for_request(req).add(copy, result.primary)
            expected.append(result.indices)
    except NoEndpointsAvailable:
        expected.append(())
    before = (m.dispatched.copy(), m.prefill_tokens.copy(), m.inflight_tokens.copy())
    got = [r.indices for r in s.schedule_batch(m, reqs, now=NOW, rng=np.random.default_rng(seed))]
    assert got == expected
    assert m.dispatched.tolist() == before[0].tolist()
    assert m.prefill_tokens.tolist() == before[1].tolist()
    assert m.inflight_tokens.tolist() == before[2].tolist()


# ------------------------------------------------------------------ the small-pool path (Python floats)
#: profiles whose load terms are all min-max scorers, so that pools up to SMALL_POOL take the float path
SMALL_POOL_PROFILES: dict[str, Any] = {
    "ours": default_scheduler,
    "reference": reference_default_scheduler,
    "floored, one endpoint, a request term": lambda: token_profile(8192.0, endpoints=1, lora_weight=0.7),
    "min-max, two endpoints": lambda: token_profile(0.0),
    "loads only": loads_only,
    "three loads": three_loads,
}


def test_the_small_pool_profiles_use_the_float_path() -> None:
    for name, make in SMALL_POOL_PROFILES.items():
        assert make().small_pool == SMALL_POOL > 0, name


@SETTINGS
@given(
    m=matrices(max_size=SMALL_POOL),
    reqs=st.lists(requests, min_size=1, max_size=25),
    seed=st.integers(0, 2**32 - 1),
    profile=st.sampled_from(list(SMALL_POOL_PROFILES)),
    masked=st.booleans(),
)
def test_small_pool_picks_equal_numpy_picks(
    m: EndpointMatrix, reqs: list[PickRequest], seed: int, profile: str, masked: bool
) -> None:
    floats, arrays = SMALL_POOL_PROFILES[profile](), SMALL_POOL_PROFILES[profile]()
    arrays.small_pool = 0
    mask = (np.arange(len(m)) % 3 != 1) if masked else None
    runs: list[tuple[list[tuple[int, ...]], object]] = []
    for scheduler in (floats, arrays):
        copy = m.with_load_copies()
        rng = np.random.default_rng(seed)
        picks: list[tuple[int, ...]] = []
        for req in reqs:
            try:
                result = scheduler.schedule(copy, req, now=NOW, rng=rng, candidates=mask)
            except NoEndpointsAvailable:
                picks.append(())
                continue
            LoadCharge.for_request(req).add(copy, result.primary)
            picks.append(result.indices)
        runs.append((picks, rng.bit_generator.state))
    assert runs[0] == runs[1]


@SETTINGS
@given(
    load=st.lists(st.one_of(st.floats(0, 1e12), st.integers(0, 5).map(float), st.just(-0.0)), min_size=1),
    weight=st.sampled_from([1.0, 2.0, 0.5, 1e-300, 1e300]),
    floor=st.sampled_from([0.0, 1.0, 8192.0, 1e7]),
)
def test_float_min_max_is_bit_identical(load: list[float], weight: float, floor: float) -> None:
    expected = weighted_min_max(np.array(load), weight, floor)
    got = weighted_min_max_floats(list(load), weight, floor)
    assert np.array(got).tobytes() == expected.tobytes()


@SETTINGS
@given(
    m=matrices(max_size=SMALL_POOL),
    req=requests,
    profile=st.sampled_from(list(SMALL_POOL_PROFILES)),
    masked=st.booleans(),
)
def test_small_pool_totals_are_the_numpy_totals_bit_for_bit(
    m: EndpointMatrix, req: PickRequest, profile: str, masked: bool
) -> None:
    # picks alone rarely expose a changed summation order: compare the totals themselves
    scheduler = SMALL_POOL_PROFILES[profile]()
    mask = (np.arange(len(m)) % 3 != 1) if masked else None
    v = scheduler.candidates_view(m, mask)
    if v.n == 0:
        return
    prepared = scheduler.prepared(m, v)
    dispatched = v.take(m.dispatched)
    floats = scheduler.terms.floats(v, prepared, req, dispatched)
    arrays = scheduler.terms.arrays(v, prepared, req, dispatched)
    assert np.array(floats, dtype=np.float64).tobytes() == arrays.tobytes()


@st.composite
def with_prefix_matches(draw: st.DrawFn) -> tuple[EndpointMatrix, list[PickRequest]]:
    """A small pool and requests with prefix matches against it (any blocks held per endpoint)."""
    m = draw(matrices(max_size=SMALL_POOL))
    reqs = []
    for _ in range(draw(st.integers(1, 8))):
        total = draw(st.integers(1, 300))
        held = draw(st.lists(st.integers(0, total), min_size=len(m), max_size=len(m)))
        matched = np.array(held, dtype=np.float64)
        matched.flags.writeable = False
        match = PrefixMatch(tuple(range(total)), matched if max(held) else None, max(held), 16)
        reqs.append(
            PickRequest(
                target_model="base",
                prefix=match,
                prompt_tokens_estimate=draw(estimate),
                stream=draw(st.booleans()),
            )
        )
    return m, reqs


@SETTINGS
@given(case=with_prefix_matches(), profile=st.sampled_from(["ours", "floored, one endpoint, a request term"]))
def test_a_prefix_hit_in_the_prefill_term_keeps_floats_numpy_and_batch_identical(
    case: tuple[EndpointMatrix, list[PickRequest]], profile: str
) -> None:
    """``prefill-queue-scorer`` counts what a hit saves the request: the float and numpy totals stay the
    same bits, and a batch picks what sequential picks (each charged its uncached prompt) pick."""
    m, reqs = case
    scheduler = SMALL_POOL_PROFILES[profile]()
    v = scheduler.candidates_view(m, None)
    prepared = scheduler.prepared(m, v)
    dispatched = v.take(m.dispatched)
    for req in reqs:
        floats = scheduler.terms.floats(v, prepared, req, dispatched)
        arrays = scheduler.terms.arrays(v, prepared, req, dispatched)
        assert np.array(floats, dtype=np.float64).tobytes() == arrays.tobytes()
    copy = m.with_load_copies()
    rng = np.random.default_rng(5)
    expected = []
    for req in reqs:
        row = scheduler.schedule(copy, req, now=NOW, rng=rng).primary
        LoadCharge.for_request(req, row).add(copy, row)
        expected.append(row)
    got = [r.indices[0] for r in scheduler.schedule_batch(m, reqs, now=NOW, rng=np.random.default_rng(5))]
    assert got == expected
