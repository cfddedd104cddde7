"""Snapshots publish landed gauges and the matching drop of ``dispatched`` together, and a metric-only
snapshot reuses what did not change."""

from __future__ import annotations

from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint
from picker.state.metrics import EndpointMetrics


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ep(i: int) -> Endpoint:
    return Endpoint(name=f"pod-{i}-rank-0", ip=f"10.0.0.{i}", port=8000, pod=f"pod-{i}")


def test_dispatched_drops_only_with_the_gauges_that_account_for_it() -> None:
    clock = Clock()
    ds = Datastore(clock=clock, min_publish_interval_s=0.010)
    ds.replace_endpoints([ep(1)])
    name = "pod-1-rank-0"
    for _ in range(3):
        ds.acquire(name)
    ds.begin_scrape(name)  # the page will show these three
    ds.acquire(name)
    first = ds.snapshot()
    assert first.dispatched[0] == 4.0
    ds.record_scrape(name, EndpointMetrics(waiting=3.0))
    # not published yet: the old gauges are still what picks see, so the three must still count
    assert ds.snapshot() is first
    assert first.dispatched[0] == 4.0
    assert first.waiting[0] != 3.0
    clock.t += 0.011
    second = ds.snapshot()
    assert second.waiting[0] == 3.0
    assert second.dispatched[0] == 1.0
    assert second.inflight[0] == 4.0


def test_two_scrapes_landing_before_a_publish_count_from_the_later_one() -> None:
    clock = Clock()
    ds = Datastore(clock=clock, min_publish_interval_s=0.010)
    ds.replace_endpoints([ep(1)])
    name = "pod-1-rank-0"
    ds.snapshot()
    ds.acquire(name)
    ds.begin_scrape(name)
    ds.record_scrape(name, EndpointMetrics(waiting=1.0))
    ds.acquire(name)
    ds.acquire(name)
    ds.begin_scrape(name)
    ds.acquire(name)
    ds.record_scrape(name, EndpointMetrics(waiting=3.0))
    clock.t += 0.011
    m = ds.snapshot()
    assert m.waiting[0] == 3.0
    assert m.dispatched[0] == 1.0  # only the one sent after the second scrape began


def test_metric_only_snapshots_reuse_names_addresses_and_the_address_index() -> None:
    ds = Datastore(clock=Clock())
    ds.replace_endpoints([ep(1), ep(2)])
    first = ds.snapshot()
    ds.record_scrape("pod-2-rank-0", EndpointMetrics(waiting=5.0))
    second = ds.snapshot()
    assert second is not first
    assert second.names is first.names
    assert second.ips is first.ips
    assert second.index_of_address("10.0.0.2:8000") == 1
    assert not second.waiting.flags.writeable
    assert first.waiting[1] != 5.0  # an earlier snapshot never changes
    ds.record_scrape("pod-1-rank-0", EndpointMetrics(waiting=0.0), engine="sglang")
    third = ds.snapshot()
    assert third.engine_names[int(third.engine[0])] == "sglang"
    assert first.engine[0] == 0
    ds.upsert_endpoint(ep(3))
    assert ds.snapshot().names != first.names
