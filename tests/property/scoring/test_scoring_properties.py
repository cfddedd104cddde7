"""Properties of scoring that must hold for any snapshot, including junk gauges (NaN, inf, negative)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import (
    EndpointMatrix,
    EndpointRow,
    Kind,
    NoEndpointsAvailable,
    PickRequest,
    PluginSpec,
    ProfileSpec,
    Scheduler,
    View,
    build_scheduler,
    default_registry,
    default_scheduler,
    reference_default_scheduler,
)
from scoring.matrix import LoadCharge
from scoring.scorers.signal import signal_key

NOW = 10.0
ADAPTERS = ("a", "b", "c")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

gauge = st.one_of(
    st.floats(min_value=0, max_value=50),
    st.sampled_from([math.nan, math.inf, -math.inf, -3.0, 1e300]),
)
fraction = st.one_of(st.floats(min_value=0, max_value=1), st.sampled_from([math.nan, 1.5, -0.2, math.inf]))
price = st.one_of(st.floats(min_value=0, max_value=20), st.sampled_from([math.nan, -1.0, math.inf, 1e300]))
#: parameters of the scorers that cannot be built without some (every other type takes its defaults)
PARAMETERS: dict[str, dict[str, Any]] = {"prometheus-scorer": {"query": "q"}}
SIGNAL = signal_key("q", "pod")


@st.composite
def rows(draw: st.DrawFn, index: int) -> EndpointRow:
    return EndpointRow(
        name=f"e{index}",
        address=f"10.0.{index % 3}.{index}:{8000 + index % 2}",
        waiting=draw(gauge),
        running=draw(gauge),
        kv_usage=draw(fraction),
        gpu_util=draw(fraction),
        scraped_at=NOW - draw(st.sampled_from([0.0, 0.05, 0.19, 0.5, math.inf])),
        dispatched=float(draw(st.integers(0, 5))),
        inflight=float(draw(st.integers(0, 200))),
        lora_active=tuple(draw(st.sets(st.sampled_from(ADAPTERS)))),
        lora_waiting=tuple(draw(st.sets(st.sampled_from(ADAPTERS), max_size=1))),
        max_lora=draw(st.sampled_from([math.nan, 0.0, 1.0, 2.0, 4.0])),
        price_in=draw(price),
        price_out=draw(price),
        signals=draw(st.sampled_from([{}, {SIGNAL: draw(gauge)}])),
    )


@st.composite
def matrices(draw: st.DrawFn, min_size: int = 1, max_size: int = 12) -> EndpointMatrix:
    n = draw(st.integers(min_size, max_size))
    return EndpointMatrix.from_rows([draw(rows(i)) for i in range(n)])


requests = st.builds(
    PickRequest,
    target_model=st.sampled_from([*ADAPTERS, "base"]),
    prompt_tokens_estimate=st.integers(0, 100_000),
    output_tokens_estimate=st.integers(0, 10_000),
    headers=st.sampled_from([{}, {"test-epp-endpoint-selection": "10.0.1.1,10.0.2.2:8000"}]),
    prefix=st.none(),  # matches are tied to one matrix: tests/property/scoring/test_prefix_index.py
)


def all_filters_profile() -> Scheduler:
    """Every filter (fail-open or not) followed by every scorer."""
    registry = default_registry()
    filters = [
        "metrics-staleness-filter",
        "utilization-detector",
        "concurrency-detector",
        "lora-capacity-filter",
    ]
    scorers = list(registry.types(Kind.SCORER))
    plugins = [PluginSpec(t, t, PARAMETERS.get(t, {})) for t in [*filters, *scorers]]
    plugins.append(PluginSpec("pick", "max-score-picker", {"maxNumOfEndpoints": 2}))
    refs: list[tuple[str, float | None]] = [(t, None) for t in filters]
    refs += [(t, 1.5) for t in scorers]
    refs.append(("pick", None))
    return build_scheduler(plugins, [ProfileSpec("p", refs)])


PROFILES: dict[str, Any] = {
    "reference": reference_default_scheduler,
    "ours": default_scheduler,
    "all filters": all_filters_profile,
}


@SETTINGS
@given(m=matrices(), req=requests)
def test_every_scorer_scores_in_unit_interval(m: EndpointMatrix, req: PickRequest) -> None:
    registry = default_registry()
    v = View(m)
    for type_name in registry.types(Kind.SCORER):
        scorer = registry.create(PluginSpec(type_name, type_name, PARAMETERS.get(type_name, {})))
        assert hasattr(scorer, "score")
        scores = scorer.score(v, scorer.prepare(v), req, m.dispatched)
        assert scores.shape == (len(m),)
        assert np.all(np.isfinite(scores)), type_name
        assert np.all((scores >= 0.0) & (scores <= 1.0)), type_name


@SETTINGS
@given(
    m=matrices(min_size=2),
    req=requests,
    seed=st.integers(0, 2**32 - 1),
    profile=st.sampled_from(list(PROFILES)),
)
def test_permuting_endpoints_permutes_results(
    m: EndpointMatrix, req: PickRequest, seed: int, profile: str
) -> None:
    s = PROFILES[profile]()
    perm = np.random.default_rng(seed).permutation(len(m))
    shuffled = m.take(perm)
    try:
        a = s.schedule(m, req, now=NOW, rng=np.random.default_rng(1), explain=True)
    except NoEndpointsAvailable:
        try:
            s.schedule(shuffled, req, now=NOW, rng=np.random.default_rng(1))
        except NoEndpointsAvailable:
            return
        raise AssertionError("only the permuted matrix had endpoints left") from None
    b = s.schedule(shuffled, req, now=NOW, rng=np.random.default_rng(1), explain=True)
    assert a.decision is not None
    assert b.decision is not None
    assert set(a.decision.totals) == set(b.decision.totals)
    for name, total in a.decision.totals.items():
        assert math.isclose(total, b.decision.totals[name], rel_tol=1e-9, abs_tol=1e-9)
    for ra, rb in zip(a.decision.scorers, b.decision.scorers, strict=True):
        for name, score in ra.scores.items():
            assert math.isclose(score, rb.scores[name], rel_tol=1e-9, abs_tol=1e-9)
    # the primary is a best endpoint in both (which one of several tied is up to the random tie-break)
    for result, matrix in ((a, m), (b, shuffled)):
        assert result.decision is not None
        best = max(result.decision.totals.values())
        assert math.isclose(
            result.decision.totals[matrix.names[result.primary]], best, rel_tol=1e-9, abs_tol=1e-9
        )


@SETTINGS
@given(m=matrices(), req=requests, data=st.data(), profile=st.sampled_from(list(PROFILES)))
def test_filters_never_add_endpoints(
    m: EndpointMatrix, req: PickRequest, data: st.DataObject, profile: str
) -> None:
    s = PROFILES[profile]()
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(m), max_size=len(m))), dtype=bool)
    if not mask.any():
        return
    try:
        result = s.schedule(m, req, now=NOW, rng=np.random.default_rng(0), candidates=mask, explain=True)
    except NoEndpointsAvailable:
        return
    allowed = {m.names[i] for i in np.flatnonzero(mask)}
    assert result.decision is not None
    assert set(result.decision.candidates) == allowed
    remaining = set(allowed)
    for record in result.decision.filters:
        assert set(record.removed) <= remaining
        remaining -= set(record.removed)
    assert set(result.decision.totals) == remaining
    assert all(mask[i] for i in result.indices)
    assert len(set(result.indices)) == len(result.indices)


@SETTINGS
@given(
    m=matrices(max_size=20),
    reqs=st.lists(requests, min_size=1, max_size=40),
    seed=st.integers(0, 2**32 - 1),
    profile=st.sampled_from(list(PROFILES)),
)
def test_batch_equals_sequential(m: EndpointMatrix, reqs: list[PickRequest], seed: int, profile: str) -> None:
    s = PROFILES[profile]()
    copy = m.with_load_copies()
    rng = np.random.default_rng(seed)
    expected: list[tuple[int, ...]] = []
    try:
        for req in reqs:
            result = s.schedule(copy, req, now=NOW, rng=rng)
            # the owner's accounting of a pick (dispatched and inflight + 1, tokens + the estimate)
            LoadCharge.for_request(req).add(copy, result.primary)
            expected.append(result.indices)
    except NoEndpointsAvailable:
        expected.append(())
    try:
        got = [r.indices for r in s.schedule_batch(m, reqs, now=NOW, rng=np.random.default_rng(seed))]
    except NoEndpointsAvailable:
        # the batch raises where the sequential run stopped, with nothing returned
        assert expected[-1] == ()
        return
    assert got == expected
