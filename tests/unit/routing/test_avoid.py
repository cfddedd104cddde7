"""Endpoints that must not be primary (``picker.routing.avoid``) as the director applies them: ejected
endpoints and endpoints with stale (or no) metrics are left out while better ones remain, fill empty
fallback places, are used when nothing else is left; a probe in flight holds a probing endpoint back; the
failover reason says when the scorer's own choice was avoided; ``/debug/explain`` names them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import orjson
import pytest

from picker.config import load_config_text
from picker.routing.avoid import Avoidance, FailoverReason
from picker.routing.director import Director
from picker.routing.types import Dispatch, RoutingRequest
from picker.state.config_store import ConfigStore
from scoring import EndpointMatrix, EndpointRow
from tests.unit.routing.doubles import Observer, State

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
PICKER = "apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
NAMES = ("a", "b", "c", "d")
STALE_S = 2.0
NEVER = float("-inf")


def config(max_endpoints: int, extra: str = "") -> ConfigStore:
    text = (
        f"{EPP}plugins:\n- {{type: queue-scorer}}\n"
        f"- {{name: p, type: max-score-picker, parameters: {{maxNumOfEndpoints: {max_endpoints}}}}}\n"
    )
    if extra:
        text += f"---\n{PICKER}{extra}"
    return ConfigStore(load_config_text(text), source="test", text=text)


def state(
    health: list[float],
    waiting: list[float] | None = None,
    inflight: list[float] | None = None,
    scraped_at: list[float] | None = None,
) -> State:
    waiting = waiting or [0.0, 1.0, 2.0, 3.0]
    inflight = inflight or [0.0] * len(health)
    scraped_at = scraped_at or [0.0] * len(health)
    rows = [
        EndpointRow(name=n, address=f"10.0.0.{i + 1}:8000", waiting=w, scraped_at=t, health=h, inflight=f)
        for i, (n, h, w, f, t) in enumerate(zip(NAMES, health, waiting, inflight, scraped_at, strict=True))
    ]
    return State(EndpointMatrix.from_rows(rows))


def director(
    st: State, max_endpoints: int = 1, *, now: float = 0.0, extra: str = ""
) -> tuple[Director, Observer]:
    observer = Observer()
    d = Director(
        st,
        config(max_endpoints, extra),
        rng=np.random.default_rng(0),
        clock=lambda: now,
        observer=observer,
        staleness_s=STALE_S,
    )
    return d, observer


def request(subset: tuple[str, ...] | None = None) -> RoutingRequest:
    body = orjson.dumps({"model": "m", "prompt": "hi"})
    return RoutingRequest("r", {}, "/v1/completions", body, subset=subset)


def route(d: Director, req: RoutingRequest) -> Dispatch:
    """Resolve and route as the ext_proc stream does (no tenants, no flow control: never pending)."""
    dispatch = d.route(req, d.resolve(req))
    assert isinstance(dispatch, Dispatch)
    return dispatch


def test_nothing_avoided_costs_nothing_and_changes_nothing() -> None:
    st = state([0.0, 0.0, 0.0, 0.0])
    d, obs = director(st, max_endpoints=2)
    decision = route(d, request())
    assert decision.endpoints == ("10.0.0.1:8000", "10.0.0.2:8000")
    assert (decision.avoided, decision.failover, obs.failovers) == (None, None, Counter())
    assert Avoidance().levels(st.matrix, 0.0, STALE_S) is None


def test_an_ejected_best_endpoint_is_not_primary_and_counts_a_failover() -> None:
    st = state([1.0, 0.0, 0.0, 0.0])
    d, obs = director(st)
    decision = route(d, request())
    assert decision.endpoints == ("10.0.0.2:8000",)
    assert st.acquired == ["b"]
    assert dict(decision.avoided or {}) == {"a": "ejected"}
    assert decision.failover == FailoverReason.EJECTED
    assert obs.failovers == Counter({"ejected": 1})


def test_an_ejected_endpoint_the_scorer_did_not_want_is_no_failover() -> None:
    st = state([0.0, 0.0, 0.0, 1.0])
    d, obs = director(st)
    decision = route(d, request())
    assert decision.endpoints == ("10.0.0.1:8000",)
    assert decision.failover is None
    assert obs.failovers == Counter()


def test_ejected_endpoints_fill_empty_fallback_places_probing_first() -> None:
    st = state([1.0, 2.0, 0.0, 1.0], inflight=[0.0, 1.0, 0.0, 0.0])
    d, _ = director(st, max_endpoints=3)
    decision = route(d, request())
    # c is the only one allowed; b (its probe in flight) then a (ejected) are the last resort
    assert decision.endpoints == ("10.0.0.3:8000", "10.0.0.2:8000", "10.0.0.1:8000")
    assert dict(decision.avoided or {}) == {"a": "ejected", "b": "probing", "d": "ejected"}


def test_a_probing_endpoint_takes_one_probe_at_a_time() -> None:
    idle = state([2.0, 0.0, 0.0, 0.0])
    d, obs = director(idle)
    assert route(d, request()).endpoints == ("10.0.0.1:8000",), "nothing in flight: it may get the probe"
    assert obs.failovers == Counter()
    busy = state([2.0, 0.0, 0.0, 0.0], inflight=[1.0, 0.0, 0.0, 0.0])
    d, obs = director(busy)
    assert route(d, request()).endpoints == ("10.0.0.2:8000",)
    assert obs.failovers == Counter({"ejected": 1})


def test_when_every_candidate_is_avoided_the_pick_uses_them_anyway() -> None:
    st = state([1.0, 1.0, 0.0, 0.0])
    d, obs = director(st)
    decision = route(d, request(subset=("10.0.0.1", "10.0.0.2")))
    assert decision.endpoints == ("10.0.0.1:8000",)
    assert (decision.avoided, decision.failover, obs.failovers) == (None, None, Counter())


def test_the_subset_hint_still_bounds_the_pick() -> None:
    st = state([1.0, 0.0, 0.0, 0.0])
    d, _ = director(st, max_endpoints=3)
    decision = route(d, request(subset=("10.0.0.1", "10.0.0.3")))
    assert decision.endpoints == ("10.0.0.3:8000", "10.0.0.1:8000")


def test_explain_names_the_avoided_without_counting() -> None:
    st = state([1.0, 0.0, 0.0, 0.0])
    d, obs = director(st)
    decision = d.explain(request())
    assert dict(decision.avoided or {}) == {"a": "ejected"}
    assert decision.failover == "ejected"
    assert decision.decision is not None
    assert "a" not in decision.decision.candidates
    assert obs.failovers == Counter()
    assert st.acquired == []


@pytest.mark.parametrize("seed", range(5))
def test_header_only_requests_avoid_ejected_endpoints(seed: int) -> None:
    st = state([1.0, 1.0, 0.0, 1.0])
    d = Director(st, config(1), rng=np.random.default_rng(seed), clock=lambda: 0.0)
    picks = {
        d.route_headers_only(RoutingRequest("r", {}, "/", b"", headers_only=True)).endpoints for _ in range(8)
    }
    assert picks == {("10.0.0.3:8000",)}


# ------------------------------------------------------------------------------------------ staleness
# Endpoint a is the scorer's choice (queue 0) in every case below; "now" is 10 s, the threshold 2 s.
NOW = 10.0
FRESH = NOW - 0.5
OLD = NOW - 5.0


@pytest.mark.parametrize("scraped_at", [OLD, NEVER], ids=["old", "never"])
def test_a_stale_best_endpoint_is_not_primary_and_counts_a_failover(scraped_at: float) -> None:
    st = state([0.0] * 4, scraped_at=[scraped_at, FRESH, FRESH, FRESH])
    d, obs = director(st, now=NOW)
    decision = route(d, request())
    assert decision.endpoints == ("10.0.0.2:8000",)
    assert st.acquired == ["b"]
    assert dict(decision.avoided or {}) == {"a": "stale"}
    assert decision.failover == FailoverReason.STALE
    assert obs.failovers == Counter({"stale": 1})


def test_a_stale_endpoint_stays_a_last_resort_fallback() -> None:
    st = state([0.0] * 4, scraped_at=[OLD, FRESH, NEVER, NEVER])
    d, _ = director(st, max_endpoints=3, now=NOW)
    decision = route(d, request())
    assert decision.endpoints == ("10.0.0.2:8000", "10.0.0.1:8000", "10.0.0.3:8000")


def test_when_every_endpoint_is_stale_the_pick_uses_them_all() -> None:
    st = state([0.0] * 4, scraped_at=[OLD, OLD, NEVER, OLD])
    d, obs = director(st, max_endpoints=2, now=NOW)
    decision = route(d, request())
    assert decision.endpoints == ("10.0.0.1:8000", "10.0.0.2:8000")
    assert (decision.avoided, decision.failover, obs.failovers) == (None, None, Counter())


@pytest.mark.parametrize(
    ("scraped_at", "stale_rows"),
    [
        ([OLD, OLD, NEVER, OLD], None),  # every row equally avoided: no levels, as when none is
        ([OLD, float("nan"), NEVER, OLD], None),
        ([float("nan")] * 4, None),
        ([OLD, float("nan"), FRESH, NEVER], [0, 1, 3]),  # NaN is "not fresh"
        ([FRESH, FRESH, FRESH, OLD], [3]),
    ],
)
def test_levels_are_none_unless_some_row_is_avoided_more_than_another(
    scraped_at: list[float], stale_rows: list[int] | None
) -> None:
    st = state([0.0] * 4, scraped_at=scraped_at)
    levels = Avoidance().levels(st.matrix, NOW, STALE_S)
    if stale_rows is None:
        assert levels is None
    else:
        assert levels is not None
        assert np.flatnonzero(levels).tolist() == stale_rows


def test_with_every_endpoint_stale_an_ejected_one_is_still_avoided() -> None:
    # scraping down everywhere must not switch passive health off
    st = state([1.0, 0.0, 0.0, 0.0], scraped_at=[OLD] * 4)
    d, obs = director(st, max_endpoints=4, now=NOW)
    decision = route(d, request())
    assert decision.endpoints[0] == "10.0.0.2:8000"
    assert decision.endpoints[-1] == "10.0.0.1:8000"
    assert dict(decision.avoided or {}) == {"a": "ejected"}
    assert obs.failovers == Counter({"ejected": 1})


def test_fallbacks_come_least_avoided_first() -> None:
    # a ejected, b probing with its probe in flight, c stale, d fresh
    st = state([1.0, 2.0, 0.0, 0.0], inflight=[0.0, 1.0, 0.0, 0.0], scraped_at=[FRESH, FRESH, OLD, FRESH])
    d, _ = director(st, max_endpoints=4, now=NOW)
    decision = route(d, request())
    assert decision.endpoints == ("10.0.0.4:8000", "10.0.0.3:8000", "10.0.0.2:8000", "10.0.0.1:8000")
    assert dict(decision.avoided or {}) == {"a": "ejected", "b": "probing", "c": "stale"}


def test_stale_endpoints_allow_scores_stale_values_as_the_reference() -> None:
    st = state([0.0] * 4, scraped_at=[NEVER, FRESH, FRESH, FRESH])
    d, obs = director(st, now=NOW, extra="staleEndpoints: Allow\n")
    decision = route(d, request())
    assert decision.endpoints == ("10.0.0.1:8000",)
    assert (decision.avoided, obs.failovers) == (None, Counter())


def test_the_documents_threshold_overrides_the_flag() -> None:
    st = state([0.0] * 4, scraped_at=[OLD, FRESH, FRESH, FRESH])
    d, _ = director(st, now=NOW, extra="stalenessThreshold: 10s\n")
    assert route(d, request()).endpoints == ("10.0.0.1:8000",)


def test_an_endpoint_goes_stale_as_time_passes_on_one_snapshot() -> None:
    clock = [NOW]
    st = state([0.0] * 4, scraped_at=[FRESH, NOW, NOW, NOW])
    d = Director(st, config(1), rng=np.random.default_rng(0), clock=lambda: clock[0], staleness_s=STALE_S)
    assert route(d, request()).endpoints == ("10.0.0.1:8000",)
    clock[0] = NOW + 1.8  # a is 2.3 s old, the others 1.8 s
    assert route(d, request()).endpoints == ("10.0.0.2:8000",)


@pytest.mark.parametrize("seed", range(5))
def test_header_only_requests_avoid_stale_endpoints(seed: int) -> None:
    st = state([0.0] * 4, scraped_at=[OLD, NEVER, FRESH, OLD])
    d = Director(st, config(1), rng=np.random.default_rng(seed), clock=lambda: NOW, staleness_s=STALE_S)
    picks = {
        d.route_headers_only(RoutingRequest("r", {}, "/", b"", headers_only=True)).endpoints for _ in range(8)
    }
    assert picks == {("10.0.0.3:8000",)}


def test_a_draining_endpoint_is_not_primary_and_is_the_last_fallback() -> None:
    # a is the scorer's choice but drains (health 3); b is ejected: both fill fallback places, draining last
    st = state([3.0, 1.0, 0.0, 0.0])
    d, obs = director(st, max_endpoints=4)
    decision = route(d, request())
    assert decision.endpoints == ("10.0.0.3:8000", "10.0.0.4:8000", "10.0.0.2:8000", "10.0.0.1:8000")
    assert st.acquired == ["c"]
    assert dict(decision.avoided or {}) == {"a": "draining", "b": "ejected"}
    assert decision.failover == FailoverReason.DRAINING
    assert obs.failovers == Counter({"draining": 1})


def test_a_pool_of_draining_endpoints_still_serves() -> None:
    st = state([3.0, 3.0, 3.0, 3.0])
    d, _ = director(st)
    assert route(d, request()).endpoints == ("10.0.0.1:8000",)
