"""The small-pool path (Python floats) picks exactly what the numpy path picks, with the same random draws."""

from __future__ import annotations

import math
from collections.abc import Callable

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
    build_scheduler,
    default_scheduler,
    reference_default_scheduler,
)
from scoring.matrix import LoadCharge
from scoring.profile import SMALL_POOL
from scoring.scorers.load import weighted_min_max, weighted_min_max_floats

NOW = 10.0
ADAPTERS = ("a", "b", "c")
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

gauge = st.one_of(
    st.floats(min_value=0, max_value=50),
    st.integers(0, 6).map(float),  # equal loads: ties in the picker
    st.sampled_from([math.nan, math.inf, -math.inf, -3.0, -0.0, 1e300]),
)
tokens = st.one_of(st.integers(0, 200_000).map(float), st.sampled_from([0.0, 1e9, 2.0**40]))
fraction = st.one_of(st.floats(min_value=0, max_value=1), st.sampled_from([math.nan, 1.5, -0.2]))


@st.composite
def matrices(draw: st.DrawFn) -> EndpointMatrix:
    n = draw(st.integers(1, SMALL_POOL))
    rows = [
        EndpointRow(
            name=f"e{i}",
            address=f"10.0.{i % 3}.{i}:8000",
            waiting=draw(gauge),
            running=draw(gauge),
            kv_usage=draw(fraction),
            gpu_util=draw(fraction),
            scraped_at=NOW - draw(st.sampled_from([0.0, 0.05, 0.5])),
            dispatched=float(draw(st.integers(0, 3))),
            inflight=float(draw(st.integers(0, 50))),
            prefill_tokens=draw(tokens),
            inflight_tokens=draw(tokens),
            lora_active=tuple(draw(st.sets(st.sampled_from(ADAPTERS)))),
            max_lora=draw(st.sampled_from([math.nan, 1.0, 4.0])),
        )
        for i in range(n)
    ]
    return EndpointMatrix.from_rows(rows)


requests = st.builds(
    PickRequest,
    target_model=st.sampled_from([*ADAPTERS, "base"]),
    prompt_tokens_estimate=st.integers(0, 130_000),
    stream=st.booleans(),
)


def _token_profile(min_range: float, endpoints: int) -> Scheduler:
    specs = [
        PluginSpec("queue-scorer", "queue-scorer"),
        PluginSpec("prefill-queue-scorer", "prefill-queue-scorer", {"minRangeTokens": min_range}),
        PluginSpec("lora-affinity-scorer", "lora-affinity-scorer"),
        PluginSpec("pick", "max-score-picker", {"maxNumOfEndpoints": endpoints}),
    ]
    refs: list[tuple[str, float | None]] = [
        ("queue-scorer", 1.0),
        ("prefill-queue-scorer", 2.5),
        ("lora-affinity-scorer", 0.7),
        ("pick", None),
    ]
    return build_scheduler(specs, [ProfileSpec("p", refs)])


def _loads_only() -> Scheduler:
    """Load terms and nothing else: no static part at all."""
    specs = [PluginSpec("queue-scorer", "queue-scorer"), PluginSpec("r", "running-requests-size-scorer")]
    return build_scheduler(specs, [ProfileSpec("p", [("queue-scorer", 1.0), ("r", 3.0)])])


PROFILES: dict[str, Callable[[], Scheduler]] = {
    "ours": default_scheduler,
    "reference": reference_default_scheduler,
    "floored, one endpoint": lambda: _token_profile(8192.0, 1),
    "min-max, two endpoints": lambda: _token_profile(0.0, 2),
    "loads only": _loads_only,
}


def test_the_profiles_under_test_use_the_small_pool_path() -> None:
    for name, make in PROFILES.items():
        assert make().small_pool == SMALL_POOL > 0, name


@SETTINGS
@given(
    m=matrices(),
    reqs=st.lists(requests, min_size=1, max_size=25),
    seed=st.integers(0, 2**32 - 1),
    profile=st.sampled_from(list(PROFILES)),
    masked=st.booleans(),
)
def test_small_pool_picks_equal_numpy_picks(
    m: EndpointMatrix, reqs: list[PickRequest], seed: int, profile: str, masked: bool
) -> None:
    floats, arrays = PROFILES[profile](), PROFILES[profile]()
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
