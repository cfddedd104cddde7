"""The spill decision before the pool's first scrapes (``ExternalCapacity.wants``): the utilization
detector reads a never-scraped endpoint as saturated (the reference's rule for missing metrics), but that
is no reason to send a request to paid capacity. Saturation for spilling is read over the candidates
scraped at least once; none scraped: the pool takes the request. An empty or entirely ejected pool still
spills, and a detector that does not read scrapes (``concurrency-detector``) is unaffected."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from picker.errors import ResourceExhausted
from picker.routing.types import Dispatch
from picker.state.objectives import Objective
from scoring import EndpointMatrix, EndpointRow
from tests.unit.routing.doubles import State
from tests.unit.routing.test_external import MANAGED, POOL, director, picker_doc, request, route

#: a pool endpoint's scrape: (queued requests, scraped_at); None: never scraped
Scrape = tuple[float, float] | None


def pool_of(*scrapes: Scrape, health: float = 0.0, inflight: float = 0.0) -> State:
    rows = [
        EndpointRow(name=f"p{i}", address=POOL[i], health=health, inflight=inflight)
        if s is None
        else EndpointRow(name=f"p{i}", address=POOL[i], waiting=s[0], scraped_at=s[1], health=health)
        for i, s in enumerate(scrapes)
    ]
    st = State(EndpointMatrix.from_rows(rows))
    st.objectives.set(Objective("sheddable", -1))
    return st


def test_a_pool_never_scraped_keeps_a_request_that_does_not_ask() -> None:
    st = pool_of(None, None)
    d, obs, _ = director(st)
    decision = route(d)
    assert decision.external == "", "unknown load is not saturation: no spill to paid capacity"
    assert decision.ticket is None
    assert decision.endpoints[0] in POOL
    assert decision.failover is None
    assert obs.failovers == Counter()
    assert d.external.stats()[0]["dispatched"] == 0


def test_explain_says_no_candidate_was_scraped_yet() -> None:
    d, _, _ = director(pool_of(None, None))
    explained = d.explain(request())
    assert explained.spill is not None
    assert explained.spill["would_spill"] is False
    assert explained.spill["why"] == (
        "no candidate scraped yet (2 never scraped): their load is unknown, which is no reason to spill; "
        "the pool takes it"
    )


def test_once_scrapes_show_the_pool_saturated_the_same_request_spills() -> None:
    st = pool_of(None, None)
    d, obs, _ = director(st)
    assert route(d).external == ""
    st.matrix = pool_of((10.0, 0.0), (11.0, 0.0)).matrix  # the first scrapes land: both over 5 queued
    decision = route(d)
    assert decision.external == "managed"
    assert decision.endpoints == (MANAGED, *POOL)
    assert obs.failovers == Counter({"saturated": 1})


def test_a_mixed_pool_spills_on_the_reading_of_its_scraped_candidates() -> None:
    """One endpoint scraped and saturated, one never scraped: the never-scraped one is not primary while
    the scraped one remains (``picker.routing.avoid``), so the request would land on the saturated one;
    its reading alone decides, and it spills."""
    d, obs, _ = director(pool_of((10.0, 0.0), None))
    decision = route(d)
    assert decision.external == "managed"
    assert obs.failovers == Counter({"saturated": 1})
    explained = d.explain(request())
    assert explained.spill is not None
    assert explained.spill["why"] == (
        "the pool is saturated: the saturation detector reads 2 over the candidates scraped (1 never "
        "scraped, left out) >= spillover.saturationThreshold 1"
    )


def test_a_never_scraped_candidate_does_not_push_a_mixed_pool_over_the_threshold() -> None:
    """The scraped endpoint at 0.8 (4 queued of 5), the other never scraped, threshold 0.85: counting the
    never-scraped one as 1.0 (the detector's own reading, 0.9) would spill; the scraped reading does not."""
    text = picker_doc(extra=", saturationThreshold: 0.85")
    d, obs, _ = director(pool_of((4.0, 0.0), None), text)
    decision = route(d)
    assert decision.external == ""
    assert decision.endpoints[0] == POOL[0], "the scraped endpoint is primary"
    assert obs.failovers == Counter()
    explained = d.explain(request())
    assert explained.spill is not None
    assert explained.spill["why"].startswith(
        "the pool can take it: the saturation detector reads 0.8 over the candidates scraped (1 never"
    )


def test_a_pool_never_scraped_and_entirely_ejected_still_spills() -> None:
    d, obs, _ = director(pool_of(None, None, health=1.0))
    decision = route(d)
    assert decision.external == "managed"
    assert decision.failover == "ejected"
    assert obs.failovers == Counter({"ejected": 1})


def test_flow_control_pressing_on_a_pool_never_scraped_queues_rather_than_spills() -> None:
    """Flow control would queue the request (its saturation reads the same missing metrics): no external
    endpoint is tried, the director declines (the caller queues it), nothing is reserved."""
    d, obs, _ = director(pool_of(None, None))
    req = request()
    assert d.schedule(req, d.resolve(req), explain=False, pressed=True) is None
    assert d.external.stats()[0]["dispatched"] == 0
    assert obs.failovers == Counter()
    d, _, _ = director(pool_of((1.0, 0.0), None))
    pressed = d.schedule(req, d.resolve(req), explain=False, pressed=True)
    assert isinstance(pressed, Dispatch)
    assert pressed.external == "managed", "with a candidate scraped, flow control's pressure spills as before"


def test_a_sheddable_request_at_a_pool_never_scraped_is_shed_not_spilled() -> None:
    d, obs, _ = director(pool_of(None, None), picker_doc(extra=", minPriority: -1"))
    with pytest.raises(ResourceExhausted):
        route(d, request("sheddable"))
    assert d.external.stats()[0]["dispatched"] == 0
    assert obs.failovers == Counter()
    d, _, _ = director(pool_of((10.0, 0.0), (10.0, 0.0)), picker_doc(extra=", minPriority: -1"))
    assert route(d, request("sheddable")).external == "managed", "scraped and saturated: it spills"


CONCURRENCY = picker_doc().replace(
    "---\n",
    "- {type: concurrency-detector, parameters: {maxConcurrency: 1}}\n"
    "saturationDetector: {pluginRef: concurrency-detector}\n---\n",
    1,
)


def test_a_detector_that_does_not_read_scrapes_spills_a_never_scraped_pool_it_finds_full() -> None:
    """``concurrency-detector`` counts our own requests in flight: a pool whose metrics were never scraped
    (or cannot be) but is full by that count still spills."""
    assert "saturationDetector" in CONCURRENCY
    d, obs, _ = director(pool_of(None, None, inflight=1.0), CONCURRENCY)
    assert route(d).external == "managed"
    assert obs.failovers == Counter({"saturated": 1})
    d, _, _ = director(pool_of(None, None), CONCURRENCY)
    assert route(d).external == "", "idle by its count"


def test_the_subset_hint_decides_which_candidates_count() -> None:
    """The same mixed pool (one endpoint scraped and saturated, one never scraped): a subset hint naming
    only the never-scraped one leaves no candidate scraped, so no spill; naming the scraped one, it
    spills. The pool-wide answer kept for the snapshot does not leak into either."""
    d, _, _ = director(pool_of((10.0, 0.0), None))
    assert route(d).external == "managed", "no hint: the scraped candidate's reading"
    unscraped = replace(request(), subset=(POOL[1].partition(":")[0],))
    assert route(d, unscraped).external == ""
    scraped = replace(request(), subset=(POOL[0].partition(":")[0],))
    assert route(d, scraped).external == "managed"
