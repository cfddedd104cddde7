"""Outcomes through the datastore: leases report what requests came to, the datastore folds them into its
outlier detector and latency averages at the next snapshot and publishes the ``health`` and latency
columns; classification of one outcome; the counter rows of several writers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint
from picker.state.health import FailureKind, Health, OutlierPolicy
from picker.state.latency import LatencySettings
from picker.state.outcomes import (
    FAILURE_INDEX,
    OK,
    OUTCOME_KINDS,
    Outcome,
    OutcomeLedger,
    OutcomeRows,
    OutcomeWriter,
    classify,
)
from scoring.matrix import LoadCharge

A, B, C = "10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def store() -> tuple[Datastore, Clock]:
    clock = Clock()
    ds = Datastore(clock=clock)
    ds.replace_endpoints([Endpoint(name=f"e{i}", ip=f"10.0.0.{i}", port=8000) for i in (1, 2, 3)])
    ds.configure_health(OutlierPolicy(base_ejection_s=30.0), LatencySettings(half_life_s=10.0))
    return ds, clock


def request(ds: Datastore, outcome: Outcome, name: str = "e1") -> None:
    lease = ds.acquire(name, LoadCharge(0.0, 0.0))
    lease.report(outcome)
    lease.release()


# ------------------------------------------------------------------------------------------ classify
@pytest.mark.parametrize(
    ("outcome", "events", "sampled"),
    [
        (Outcome((A, B), None, 200), [(A, OK)], A),
        (Outcome((A, B), A, 503), [(A, FAILURE_INDEX[FailureKind.STATUS_5XX])], None),
        (Outcome((A, B), None, 504), [(A, FAILURE_INDEX[FailureKind.TIMEOUT])], None),
        (Outcome((A, B), None, 0), [(A, FAILURE_INDEX[FailureKind.RESET])], None),
        (Outcome((A, B), None, 404), [(A, OK)], None),  # a client error is no endpoint failure
        (  # the gateway walked past A: A failed, B answered (no latency sample: it includes A's attempt)
            Outcome((A, B, C), C, 200),
            [(A, FAILURE_INDEX[FailureKind.RETRIED]), (B, FAILURE_INDEX[FailureKind.RETRIED]), (C, OK)],
            None,
        ),
        (Outcome((A, B), B, 503), [(A, FAILURE_INDEX[FailureKind.RETRIED]), (B, 1)], None),
        (Outcome((A,), "10.9.9.9:1", 200), [("10.9.9.9:1", OK)], None),  # not ours: verdict only
        (Outcome((), None, 200), [], None),
    ],
)
def test_classify(outcome: Outcome, events: list[tuple[str, int]], sampled: str | None) -> None:
    assert classify(outcome) == (events, sampled)


# ------------------------------------------------------------------------------------------ rows
def test_the_owner_sums_every_writer_row_and_drains_only_news() -> None:
    counters = np.zeros((3, len(OUTCOME_KINDS), 8))
    ticks = np.zeros(3)
    ledger = OutcomeLedger(OutcomeRows(counters, ticks, 2))
    slots = {A: 5, B: 6}
    w0 = OutcomeWriter(OutcomeRows(counters, ticks, 0), slots.get)
    w1 = OutcomeWriter(OutcomeRows(counters, ticks, 1), slots.get)
    assert not ledger.pending()
    w0.write(Outcome((A,), None, 503))
    w1.write(Outcome((A,), None, 503))
    w1.write(Outcome((B, A), None, 200, ttfb_s=0.5, prompt_tokens=1000))
    assert ledger.pending()
    got = ledger.drain(np.array([5, 6, 7]))
    assert got is not None
    positions, deltas = got
    assert positions.tolist() == [0, 1]
    assert deltas[FAILURE_INDEX[FailureKind.STATUS_5XX]].tolist() == [2.0, 0.0]
    assert deltas[OK].tolist() == [0.0, 1.0]
    assert deltas[OUTCOME_KINDS.index("ttft_per_1k_sum"), 1] == pytest.approx(0.5)
    assert not ledger.pending()
    assert ledger.drain(np.array([5, 6, 7])) is None
    w0.write(Outcome(("10.9.9.9:1",), None, 200))  # unknown address: no event, no report
    assert not ledger.pending()


# ------------------------------------------------------------------------------------------ datastore
def test_failures_eject_at_the_next_snapshot_and_a_probe_reinstates() -> None:
    ds, clock = store()
    for _ in range(4):
        request(ds, Outcome((A, B), None, 503))
    assert ds.snapshot().health.tolist() == [0.0, 0.0, 0.0]
    request(ds, Outcome((A, B), None, 503))
    m = ds.snapshot()
    assert m.health.tolist() == [1.0, 0.0, 0.0]
    view = ds.health_view("e1")
    assert view is not None
    assert (view.state, view.reason, view.last_failure) == (Health.EJECTED, "consecutive_5xx", "5xx")
    clock.t += 30.0
    assert ds.snapshot().health.tolist() == [2.0, 0.0, 0.0]
    request(ds, Outcome((A, B), None, 200))
    assert ds.snapshot().health.tolist() == [0.0, 0.0, 0.0]
    assert ds.health.ejections_total["consecutive_5xx"] == 1


def test_a_health_change_does_not_wait_for_the_publish_interval() -> None:
    clock = Clock()
    ds = Datastore(clock=clock, min_publish_interval_s=10.0)
    ds.replace_endpoints(
        [Endpoint(name="e1", ip="10.0.0.1", port=8000), Endpoint(name="e2", ip="10.0.0.2", port=8000)]
    )
    first = ds.snapshot()
    for _ in range(5):
        request(ds, Outcome((A,), None, 502))
    m = ds.snapshot()
    assert m is not first
    assert m.health.tolist() == [1.0, 0.0]


def test_retried_requests_count_against_the_endpoints_walked_past() -> None:
    ds, _ = store()
    for _ in range(5):
        request(ds, Outcome((A, B), B, 200))
    assert ds.snapshot().health.tolist() == [1.0, 0.0, 0.0]
    view = ds.health_view("e1")
    assert view is not None
    assert view.last_failure == "retried"


def test_latency_samples_reach_the_columns() -> None:
    ds, clock = store()
    request(ds, Outcome((A,), None, 200, ttfb_s=0.4, prompt_tokens=2000, tpot_s=0.02))
    request(ds, Outcome((B,), None, 200, ntpot_s=0.05), name="e2")
    m = ds.snapshot()
    assert m.ttft_per_1k[0] == pytest.approx(0.2)
    assert m.tpot[0] == pytest.approx(0.02)
    assert math.isnan(m.ntpot[0])
    assert m.ntpot[1] == pytest.approx(0.05)
    assert math.isnan(m.ttft_per_1k[2])
    clock.t += 61.0  # older than maxAge: unknown again
    m = ds.snapshot()
    assert np.isnan(m.ttft_per_1k).all()


def test_membership_changes_keep_the_health_of_those_that_stay() -> None:
    ds, _ = store()
    for _ in range(5):
        request(ds, Outcome((B,), None, 503), name="e2")
    assert ds.snapshot().health.tolist() == [0.0, 1.0, 0.0]
    ds.replace_endpoints([Endpoint(name=f"e{i}", ip=f"10.0.0.{i}", port=8000) for i in (2, 3, 4)])
    assert ds.snapshot().health.tolist() == [1.0, 0.0, 0.0]
    ds.remove_endpoint("e2")
    assert ds.snapshot().health.tolist() == [0.0, 0.0]
    assert ds.health.out == 0


def test_disabled_detection_ejects_nothing() -> None:
    ds, _ = store()
    ds.configure_health(OutlierPolicy(enabled=False), LatencySettings())
    for _ in range(10):
        request(ds, Outcome((A,), None, 503))
    assert ds.snapshot().health.tolist() == [0.0, 0.0, 0.0]


def test_no_response_counts_only_once_the_gateway_is_known_to_send_responses() -> None:
    ds, _ = store()
    for _ in range(10):  # a proxy that never sends response phases: nothing to judge
        request(ds, Outcome((A,), None, 0))
    assert ds.snapshot().health.tolist() == [0.0, 0.0, 0.0]
    request(ds, Outcome((B,), None, 200), name="e2")
    for _ in range(5):
        request(ds, Outcome((A,), None, 0))
    assert ds.snapshot().health.tolist() == [1.0, 0.0, 0.0]
