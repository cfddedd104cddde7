"""The spill decision before the pool's first scrapes (``ExternalCapacity.wants``): the utilization
detector reads a never-scraped endpoint as saturated (the reference's rule for missing metrics), but that
is no reason to send a request to paid capacity. Saturation for spilling is read over the candidates
scraped at least once; none scraped, over those whose scrapes failed (``scrape_failed``: their metrics
cannot be read, as saturated); no candidate's scrape answered yet: the pool takes the request. An empty or
entirely ejected pool still spills, and a detector that does not read scrapes (``concurrency-detector``)
is unaffected."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Final, Literal

import pytest

from picker.errors import ResourceExhausted
from picker.routing.types import Dispatch
from picker.state.objectives import Objective
from scoring import EndpointMatrix, EndpointRow
from tests.unit.routing.doubles import State
from tests.unit.routing.test_external import MANAGED, POOL, director, picker_doc, request, route

#: a pool endpoint never scraped whose scrape attempts failed (``scrape_failed``)
FAILED: Final = "failed"
#: a pool endpoint's scrape: (queued requests, scraped_at); None: never scraped, no attempt ended yet
Scrape = tuple[float, float] | None | Literal["failed"]


def pool_of(*scrapes: Scrape, health: float = 0.0, inflight: float = 0.0) -> State:
    rows = [
        EndpointRow(name=f"p{i}", address=POOL[i], health=health, inflight=inflight)
        if s is None
        else EndpointRow(name=f"p{i}", address=POOL[i], health=health, inflight=inflight, scrape_failed=1.0)
        if s == FAILED
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
        "no candidate scraped yet (2 whose first scrape has not answered): their load is unknown, which is "
        "no reason to spill; the pool takes it"
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


# ------------------------------------------------------------------ scrapes attempted and failed
def test_a_pool_whose_scrapes_failed_from_the_start_spills() -> None:
    """Every candidate never scraped and its scrapes failed (the model servers are down): not "not read
    yet" but unreachable, read as saturated as before any scrape-aware rule; the request spills whatever
    passive health has ejected (``maxEjectionPercent`` never ejects both of two)."""
    d, obs, _ = director(pool_of(FAILED, FAILED))
    decision = route(d)
    assert decision.external == "managed"
    assert decision.endpoints == (MANAGED, *POOL), "the pool stays the gateway's fallback"
    assert decision.failover == "saturated"
    assert obs.failovers == Counter({"saturated": 1})
    explained = d.explain(request())
    assert explained.spill is not None
    assert explained.spill["why"] == (
        "the pool is saturated: the saturation detector reads 1 over the candidates whose scrapes failed "
        "(2 never scraped, their metrics unreachable) >= spillover.saturationThreshold 1"
    )


def test_one_failed_and_one_not_answered_yet_reads_the_failed_one() -> None:
    """No candidate scraped: the one whose scrapes failed is read (saturated), the one whose first scrape
    has not ended is left out, and explain says both."""
    d, obs, _ = director(pool_of(FAILED, None))
    assert route(d).external == "managed"
    assert obs.failovers == Counter({"saturated": 1})
    explained = d.explain(request())
    assert explained.spill is not None
    assert explained.spill["why"] == (
        "the pool is saturated: the saturation detector reads 1 over the candidates whose scrapes failed "
        "(1 never scraped, their metrics unreachable; 1 not answered yet, left out) >= "
        "spillover.saturationThreshold 1"
    )


def test_in_a_mixed_pool_a_failed_endpoint_is_left_out_like_one_not_answered() -> None:
    """One endpoint scraped and idle, one whose scrapes failed, threshold 0.5: read as saturated the failed
    one would make the pool 0.5 and spill; it is not primary while the scraped one remains, so the
    scraped one's reading decides."""
    d, obs, _ = director(pool_of((0.0, 0.0), FAILED), picker_doc(extra=", saturationThreshold: 0.5"))
    decision = route(d)
    assert decision.external == ""
    assert decision.endpoints[0] == POOL[0]
    assert obs.failovers == Counter()
    explained = d.explain(request())
    assert explained.spill is not None
    assert explained.spill["why"].startswith(
        "the pool can take it: the saturation detector reads 0 over the candidates scraped (1 never scraped"
    )


def test_flow_control_pressing_on_a_pool_whose_scrapes_failed_spills() -> None:
    d, obs, _ = director(pool_of(FAILED, FAILED))
    req = request()
    pressed = d.schedule(req, d.resolve(req), explain=False, pressed=True)
    assert isinstance(pressed, Dispatch)
    assert pressed.external == "managed", "spill first, the queue second, as at any saturated pool"
    assert obs.failovers == Counter({"saturated": 1})


def test_a_sheddable_request_at_a_pool_whose_scrapes_failed_spills_rather_than_is_shed() -> None:
    d, obs, _ = director(pool_of(FAILED, FAILED), picker_doc(extra=", minPriority: -1"))
    assert route(d, request("sheddable")).external == "managed"
    assert obs.failovers == Counter({"saturated": 1})


def test_the_subset_hint_decides_between_failed_and_not_answered_candidates() -> None:
    """Pool (not answered yet, failed): a hint naming only the one not answered does not spill, one
    naming the failed one does, and neither leaks into the pool-wide answer kept for the snapshot."""
    d, _, _ = director(pool_of(None, FAILED))
    pending = replace(request(), subset=(POOL[0].partition(":")[0],))
    assert route(d, pending).external == ""
    assert route(d).external == "managed"
    failed = replace(request(), subset=(POOL[1].partition(":")[0],))
    assert route(d, failed).external == "managed"
    assert route(d, pending).external == ""


def test_a_detector_that_does_not_read_scrapes_ignores_failed_scrapes() -> None:
    d, obs, _ = director(pool_of(FAILED, FAILED), CONCURRENCY)
    assert route(d).external == "", "idle by its count"
    assert obs.failovers == Counter()
