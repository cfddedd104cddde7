"""bench_failover's summary of one fault run: windows, the traffic that reached the bad server, the share
after its first failures, when it stopped, broken streams, the targets."""

from __future__ import annotations

import pytest

from benchmarks.bench_failover import FailoverConfig, Record, summarize
from benchmarks.live.external import external_summary

BAD, GOOD = "127.0.0.1:1", "127.0.0.1:2"
CFG = FailoverConfig(before_s=10.0, fault_s=10.0, after_s=10.0)


def rec(t: float, *attempts: str, ok: bool = True, error: str = "") -> Record:
    return Record(
        sent_s=t,
        attempts=list(attempts),
        endpoint=attempts[-1],
        status=200 if ok else 503,
        ok=ok,
        error=error,
    )


def test_a_503_fault_summary() -> None:
    records = [rec(t / 10, BAD if t % 2 else GOOD) for t in range(100)]  # before: half to BAD
    records.append(rec(9.9, BAD, ok=False, error="response broke off: reset"))  # cut at the fault
    # the fault: five requests fail over from BAD, then 195 go to GOOD only
    records += [rec(10.0 + k * 0.01, BAD, GOOD) for k in range(5)]
    records += [rec(10.1 + k * 0.04, GOOD) for k in range(195)]
    records += [rec(20.0 + k * 0.1, GOOD) for k in range(100)]
    row = summarize(
        "error-503", CFG, records, BAD, counters={}, events={"fault_s": 10.0, "recovered_s": 20.0}
    )
    assert row["errors"] == {"before": 0, "during": 0, "after": 0}
    assert row["broken_in_flight_at_fault"] == 1
    assert row["reached_bad_after_fault"] == 5
    assert row["share_reaching_bad_after_first_failures"] == 0.0
    # from the fifth failover on, fewer than 1 % of the rest reach BAD (1 of 196)
    assert row["stopped_after_s"] == pytest.approx(0.04)
    assert row["targets"] == {"zero_client_errors": True, "under_1pct_after_first_failures": True}


def test_a_slow_fault_share_drop() -> None:
    records = [rec(5.0 + t * 0.05, BAD if t % 4 == 0 else GOOD) for t in range(100)]  # 25 % before
    records += [rec(10.0 + t * 0.05, BAD if t % 20 == 0 else GOOD) for t in range(600)]  # 5 % during
    row = summarize("slow", CFG, records, BAD, counters={}, events={"fault_s": 10.0, "recovered_s": 40.0})
    share = row["slow_share"]
    assert share["before"] == pytest.approx(0.25)
    assert share["fault_20_30s"] == pytest.approx(0.05)
    assert row["targets"] == {"share_down_half_within_30s": True}


def test_the_external_endpoints_summary() -> None:
    ext = "127.0.0.1:9"
    records = [rec(t * 0.5, GOOD) for t in range(20)]  # before: none external
    records += [rec(10.0 + t * 0.5, ext if t % 2 else GOOD) for t in range(20)]  # during: half
    records += [rec(20.0 + t * 0.5, GOOD) for t in range(20)]
    final = {"used": {"tokensPerHour": 4000, "costPerDay": 2_000_000_000}, "dispatched": 10}
    peaks = {"requestsPerMinute": 10, "tokensPerMinute": 4000, "tokensPerHour": 3000}
    got = external_summary(
        records,
        ext,
        window=(10.0, 20.0),
        peaks=peaks,
        final=final,
        prices=((3.0, 15.0), (0.3, 1.2)),
        limits=(150, 60000),
    )
    assert got["share"] == {"before": 0.0, "during": 0.5, "after": 0.0}
    assert (got["sent"], got["served"], got["tokens_accounted"]) == (10, 10, 4000)
    assert got["cost"] == 2.0
    # the same tokens at the pool's price: (0.3 + 1.2) / (3 + 15) of it
    assert got["cost_at_pool_price"] == pytest.approx(2.0 * 1.5 / 18.0)
    assert got["peak_per_minute"] == {"requestsPerMinute": 10, "tokensPerMinute": 4000}


def test_a_failing_external_endpoint_is_judged_as_a_failing_pod() -> None:
    ext = "127.0.0.1:9"
    records = [rec(t / 10, GOOD) for t in range(100)]
    records += [rec(10.0 + k * 0.01, ext, GOOD) for k in range(5)]  # five retried past it, then ejected
    records += [rec(10.1 + k * 0.04, GOOD) for k in range(195)]
    row = summarize(
        "external-503", CFG, records, ext, counters={}, events={"fault_s": 10.0, "recovered_s": 20.0}
    )
    assert row["reached_bad_after_fault"] == 5
    assert row["targets"] == {"zero_client_errors": True, "under_1pct_after_first_failures": True}
