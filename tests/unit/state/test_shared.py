"""The ``--workers`` state: what the supervisor's datastore publishes is what workers pick from, and the
load accounting adds up across workers (and across processes)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest

from picker.state.codec import HealthInputs
from picker.state.columns import FLOAT_COLUMNS
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint, PoolInfo, parse_static_endpoints
from picker.state.health import OutlierPolicy
from picker.state.latency import LatencySettings
from picker.state.metrics import EndpointMetrics
from picker.state.objectives import ModelRewrite, Objective, RewriteRule, RewriteTarget
from picker.state.outcomes import Outcome
from picker.state.prices import PriceBook
from picker.state.publisher import SharedPublisher
from picker.state.segment import SharedLayout, SharedSegment
from picker.state.view import SharedView
from scoring.matrix import LoadCharge


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def segment() -> Iterator[SharedSegment]:
    seg = SharedSegment.create(SharedLayout(capacity=64, workers=2, blob_bytes=1 << 16))
    yield seg
    seg.close()
    seg.unlink()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def supervisor(segment: SharedSegment, clock: Clock, addresses: str = "") -> Datastore:
    publisher = SharedPublisher(
        segment,
        health=lambda: HealthInputs(synced=True),
        config=lambda: ("kind: PickerConfig\n", "file:/etc/picker.yaml", "d1"),
    )
    ds = Datastore(clock=clock, quarantine_s=5.0, publisher=publisher)
    ds.set_pool(PoolInfo(name="pool", namespace="ns", target_ports=(8000,), app_protocol="http"))
    ds.replace_endpoints(parse_static_endpoints(addresses or "10.0.0.1:8000,10.0.0.2:8000,10.0.0.3:8000"))
    return ds


def slot_of(ds: Datastore, name: str) -> int:
    st = ds.status(name)
    assert st is not None
    return st.slot


def scrape(ds: Datastore, name: str, waiting: float, **kw: object) -> None:
    ds.begin_scrape(name)
    ds.record_scrape(name, EndpointMetrics(waiting=waiting, running=1.0, kv_usage=0.5, **kw))  # type: ignore[arg-type]


def test_attach_sees_the_creators_layout_and_rejects_foreign_segments(segment: SharedSegment) -> None:
    other = SharedSegment.attach(segment.name)
    try:
        assert other.layout == segment.layout
        segment.counters[1, 0, 5] = 7.0
        assert other.counters[1, 0, 5] == 7.0
    finally:
        other.close()
    from multiprocessing import shared_memory

    junk = shared_memory.SharedMemory(create=True, size=4096)
    try:
        with pytest.raises(ValueError, match="not a picker segment"):
            SharedSegment.attach(junk.name)
    finally:
        junk.close()
        junk.unlink()


def test_a_worker_snapshot_matches_the_supervisor_snapshot(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock)
    scrape(ds, "10.0.0.1:8000", 3.0, lora_active=("a",), lora_waiting=("b",), max_lora=2.0, models=("m",))
    scrape(ds, "10.0.0.2:8000", 1.0, block_size=16.0, num_blocks=900.0)
    ds.record_scrape("10.0.0.3:8000", EndpointMetrics(), engine="sglang")  # reported nothing: no change
    ds.set_gpu_utilization({})
    ds.set_prices(PriceBook(default=(0.1, 0.4), engines={"sglang": (0.05, 0.2)}))
    ds.set_signal("p95", {"10.0.0.1:8000": 2.0, "10.0.0.3:8000": 5.0})  # static endpoints: by address
    assert ds.publish()
    view = SharedView(segment, 0)
    got, want = view.snapshot(), ds.snapshot()
    np.testing.assert_array_equal(got.signals["p95"], want.signals["p95"])
    assert np.isnan(got.signals["p95"][1])
    ds.set_signal("p95", {"10.0.0.2:8000": 1.0})
    assert ds.publish()
    assert view.snapshot().signals["p95"].tolist()[1] == 1.0, "a new reading reaches the worker"
    got = view.snapshot()
    assert got.names == want.names
    assert got.addresses == want.addresses
    assert got.ips == want.ips
    assert got.price_in.tolist() == [0.1, 0.1, 0.05]
    for column in FLOAT_COLUMNS:
        np.testing.assert_array_equal(getattr(got, column), getattr(want, column), err_msg=column)
    np.testing.assert_array_equal(got.engine, want.engine)
    assert dict(got.lora_vocab) == dict(want.lora_vocab)
    np.testing.assert_array_equal(got.lora_active, want.lora_active)
    np.testing.assert_array_equal(got.lora_waiting, want.lora_waiting)
    assert dict(got.model_vocab) == dict(want.model_vocab) == {"m": 0}
    np.testing.assert_array_equal(got.served_models, want.served_models)
    assert view.pool == ds.pool
    assert view.health == HealthInputs(synced=True)
    assert view.synced
    assert view.static is not None
    assert view.static.config_text == "kind: PickerConfig\n"
    assert view.static.config_source == "file:/etc/picker.yaml"


def test_nothing_changed_means_nothing_published_and_the_same_matrix(
    segment: SharedSegment, clock: Clock
) -> None:
    ds = supervisor(segment, clock)
    assert ds.publish()
    view = SharedView(segment, 0)
    first = view.snapshot()
    assert not ds.publish()
    assert view.snapshot() is first  # the scheduler's per-snapshot caches stay warm
    scrape(ds, "10.0.0.1:8000", 9.0)
    assert ds.publish()
    second = view.snapshot()
    assert second is not first
    assert second.waiting[0] == 9.0
    assert not second.waiting.flags.writeable


def test_in_flight_and_dispatched_count_every_workers_picks(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock)
    ds.publish()
    w0, w1 = SharedView(segment, 0), SharedView(segment, 1)
    a = w0.acquire("10.0.0.1:8000")
    b = w1.acquire("10.0.0.1:8000")
    c = w1.acquire("10.0.0.2:8000")
    for view in (w0, w1):
        m = view.snapshot()
        assert m.inflight.tolist() == [2.0, 1.0, 0.0]
        assert m.dispatched.tolist() == [2.0, 1.0, 0.0]
    a.release()
    a.release()  # idempotent
    c.release()
    m = w0.snapshot()
    assert m.inflight.tolist() == [1.0, 0.0, 0.0]
    assert m.dispatched.tolist() == [2.0, 1.0, 0.0]  # dispatched falls only when a scrape lands
    assert ds.snapshot().inflight.tolist() == [1.0, 0.0, 0.0]
    assert ds.inflight_total() == 1.0
    b.release()
    assert w1.snapshot().inflight.tolist() == [0.0, 0.0, 0.0]
    assert [ds.ledger.row_stats(w) for w in (0, 1)] == [(1.0, 0.0), (2.0, 0.0)]


def test_dispatched_counts_picks_since_the_landed_scrape_began(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock)
    ds.publish()
    view = SharedView(segment, 0)
    name = "10.0.0.3:8000"
    for _ in range(3):
        view.acquire(name)
    ds.begin_scrape(name)  # the page fetched now reflects those three
    view.acquire(name)
    view.acquire(name)  # sent while the scrape is in flight
    assert view.snapshot().dispatched[2] == 5.0
    ds.record_scrape(name, EndpointMetrics(waiting=3.0))
    ds.publish()
    assert view.snapshot().dispatched[2] == 2.0
    assert ds.snapshot().dispatched[2] == 2.0
    ds.begin_scrape(name)
    ds.record_scrape_failure(name, "timeout")  # a failed scrape moves nothing
    ds.publish()
    assert view.snapshot().dispatched[2] == 2.0


def test_membership_changes_keep_slots_and_quarantine_removed_ones(
    segment: SharedSegment, clock: Clock
) -> None:
    ds = supervisor(segment, clock)
    ds.publish()
    view = SharedView(segment, 0)
    held = view.acquire("10.0.0.2:8000")
    slot_removed = slot_of(ds, "10.0.0.2:8000")
    ds.remove_endpoint("10.0.0.2:8000")
    ds.upsert_endpoint(Endpoint(name="10.0.0.9:8000", ip="10.0.0.9", port=8000))
    ds.publish()
    m = view.snapshot()
    assert m.names == ("10.0.0.1:8000", "10.0.0.3:8000", "10.0.0.9:8000")
    assert slot_of(ds, "10.0.0.9:8000") != slot_removed  # an open stream still counts on the old slot
    assert m.inflight.tolist() == [0.0, 0.0, 0.0]
    clock.now += 60
    ds.publish()
    ds.upsert_endpoint(Endpoint(name="10.0.0.10:8000", ip="10.0.0.10", port=8000))
    assert slot_of(ds, "10.0.0.10:8000") != slot_removed  # not reused while its stream is open
    held.release()
    ds.publish()  # reclaims: quarantine over and nothing in flight
    ds.upsert_endpoint(Endpoint(name="10.0.0.11:8000", ip="10.0.0.11", port=8000))
    assert slot_of(ds, "10.0.0.11:8000") == slot_removed
    ds.publish()
    m = view.snapshot()
    assert m.names[-1] == "10.0.0.11:8000"
    assert m.inflight[-1] == 0.0
    assert m.dispatched[-1] == 0.0
    assert math.isnan(m.waiting[-1])


def test_an_address_change_gets_a_fresh_slot(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock, "10.0.0.1:8000")
    ds.publish()
    SharedView(segment, 0).acquire("10.0.0.1:8000")
    before = slot_of(ds, "10.0.0.1:8000")
    ds.upsert_endpoint(Endpoint(name="10.0.0.1:8000", ip="10.0.0.7", port=8000))
    assert slot_of(ds, "10.0.0.1:8000") != before
    ds.publish()
    assert SharedView(segment, 1).snapshot().inflight.tolist() == [0.0]


def test_a_dead_workers_streams_are_settled(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock)
    ds.publish()
    dead, alive = SharedView(segment, 0), SharedView(segment, 1)
    for _ in range(3):
        dead.acquire("10.0.0.1:8000")
    alive.acquire("10.0.0.1:8000")
    assert ds.ledger.settle_row(0) == 3.0
    assert alive.snapshot().inflight.tolist() == [1.0, 0.0, 0.0]
    restarted = SharedView(segment, 0)  # a replacement continues the same row
    restarted.acquire("10.0.0.2:8000").release()
    assert alive.snapshot().inflight.tolist() == [1.0, 0.0, 0.0]


def test_objectives_rewrites_and_config_reach_the_workers(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock)
    ds.objectives.replace_all([Objective("critical", 10), Objective("batch", -1)])
    rule = RewriteRule(("small",), (RewriteTarget("small-v1", 90), RewriteTarget("small-v2", 10)))
    ds.rewrites.replace_all([ModelRewrite("canary", (rule,), created=3.0)])
    ds.publish()
    view = SharedView(segment, 1)
    view.snapshot()
    assert view.objectives.priority("critical") == 10
    assert view.objectives.priority("batch") == -1
    assert view.rewrites.all() == ds.rewrites.all()
    ds.objectives.delete("batch")
    assert ds.publish()
    view.snapshot()
    assert view.objectives.priority("batch") == 0


def test_a_corrupt_blob_is_never_decoded(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock)
    ds.publish()
    got = segment.read_blob()
    assert got is not None
    gen, data = got
    slot = int(segment.header[7])
    segment.blob[slot, 0] ^= 0xFF  # a torn or garbled write: the CRC no longer matches
    assert segment.read_blob() is None
    segment.blob[slot, 0] ^= 0xFF
    assert segment.read_blob() == (gen, data)


def test_the_supervisors_own_picks_count_in_its_row(segment: SharedSegment, clock: Clock) -> None:
    """The supervisor routes nothing in service, but its datastore is the same model: a pick there is
    one more writer row, seen by every worker."""
    ds = supervisor(segment, clock)
    ds.publish()
    lease = ds.acquire("10.0.0.1:8000", LoadCharge.of(50))
    m = SharedView(segment, 0).snapshot()
    assert (m.inflight[0], m.dispatched[0], m.inflight_tokens[0]) == (1.0, 1.0, 50.0)
    lease.release()
    assert ds.snapshot().inflight.tolist() == [0.0, 0.0, 0.0]


def test_a_worker_rejects_unknown_endpoints_and_indexes(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock)
    ds.publish()
    with pytest.raises(KeyError):
        SharedView(segment, 0).acquire("10.9.9.9:8000")
    with pytest.raises(ValueError, match="out of range"):
        SharedView(segment, 2)


def test_a_full_segment_fails_loudly(clock: Clock) -> None:
    seg = SharedSegment.create(SharedLayout(capacity=2, workers=1, blob_bytes=1 << 14))
    try:
        ds = supervisor(seg, clock, "10.0.0.1:8000,10.0.0.2:8000")
        with pytest.raises(RuntimeError, match="accounting is full"):
            ds.upsert_endpoint(Endpoint(name="10.0.0.3:8000", ip="10.0.0.3", port=8000))
    finally:
        seg.close()
        seg.unlink()


def test_accounting_across_processes(segment: SharedSegment, clock: Clock) -> None:
    """Two other processes pick and release on the same segment; the supervisor sees the sums."""
    ds = supervisor(segment, clock)
    ds.publish()
    script = textwrap.dedent(
        """
        import sys
        from picker.state.segment import SharedSegment
        from picker.state.view import SharedView
        seg = SharedSegment.attach(sys.argv[1], untrack=True)
        view = SharedView(seg, int(sys.argv[2]))
        leases = [view.acquire("10.0.0.1:8000") for _ in range(int(sys.argv[3]))]
        for lease in leases[: int(sys.argv[4])]:
            lease.release()
        print(view.snapshot().inflight[0])
        """
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", script, segment.name, str(worker), str(picks), str(released)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        for worker, picks, released in ((0, 5, 2), (1, 4, 4))
    ]
    assert float(outputs[0]) == 3.0  # the first process saw only its own
    assert float(outputs[1]) == 3.0  # the second saw the first's three still open
    assert ds.snapshot().inflight[0] == 3.0
    assert ds.snapshot().dispatched[0] == 9.0
    assert [ds.ledger.row_stats(w)[0] for w in (0, 1)] == [5.0, 4.0]


def test_token_charges_add_up_across_workers_and_come_back_in_two_steps(
    segment: SharedSegment, clock: Clock
) -> None:
    ds = supervisor(segment, clock)
    ds.publish()
    w0, w1 = SharedView(segment, 0), SharedView(segment, 1)
    a = w0.acquire("10.0.0.1:8000", LoadCharge.of(1000))
    b = w1.acquire("10.0.0.1:8000", LoadCharge.of(300))
    c = w1.acquire("10.0.0.2:8000", LoadCharge.of(500, stream=False))  # no prefill charge
    for m in (w0.snapshot(), w1.snapshot(), ds.snapshot()):
        assert m.prefill_tokens.tolist() == [1300.0, 0.0, 0.0]
        assert m.inflight_tokens.tolist() == [1300.0, 500.0, 0.0]
    a.first_byte()
    a.first_byte()  # idempotent
    assert w1.snapshot().prefill_tokens.tolist() == [300.0, 0.0, 0.0]
    assert w1.snapshot().inflight_tokens.tolist() == [1300.0, 500.0, 0.0]
    a.release()
    b.release()  # no first byte ever came: the prefill leaves with the stream
    b.release()
    m = w0.snapshot()
    assert m.prefill_tokens.tolist() == [0.0, 0.0, 0.0]
    assert m.inflight_tokens.tolist() == [0.0, 500.0, 0.0]
    c.release()
    assert w0.snapshot().inflight_tokens.tolist() == [0.0, 0.0, 0.0]


def test_a_dead_workers_token_charges_are_settled(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock)
    ds.publish()
    dead, alive = SharedView(segment, 0), SharedView(segment, 1)
    dead.acquire("10.0.0.1:8000", LoadCharge.of(700))
    alive.acquire("10.0.0.1:8000", LoadCharge.of(100))
    ds.ledger.settle_row(0)
    m = alive.snapshot()
    assert m.prefill_tokens.tolist() == [100.0, 0.0, 0.0]
    assert m.inflight_tokens.tolist() == [100.0, 0.0, 0.0]


def test_failures_seen_by_any_worker_count_for_the_endpoint(segment: SharedSegment, clock: Clock) -> None:
    """Passive health across ``--workers``: each worker reports outcomes into its own rows, the supervisor
    folds them all into one detector when it publishes, and the workers pick from its verdict."""
    ds = supervisor(segment, clock)
    ds.configure_health(OutlierPolicy(consecutive_failures=6), LatencySettings())
    ds.publish()
    views = [SharedView(segment, 0), SharedView(segment, 1)]
    target = "10.0.0.2:8000"
    for view in views:
        view.snapshot()
        for _ in range(3):  # three failures each: neither worker alone saw six
            lease = view.acquire(target, LoadCharge(10.0, 0.0))
            lease.report(Outcome((target,), None, 503))
            lease.release()
    assert ds.publish()
    for view in views:
        m = view.snapshot()
        assert m.health.tolist() == [0.0, 1.0, 0.0]
    view = ds.health_view(target)
    assert view is not None
    assert view.reason == "consecutive_5xx"
    # the latency a worker measured reaches every worker's snapshot too
    lease = views[0].acquire("10.0.0.1:8000", LoadCharge(0.0, 0.0))
    lease.report(Outcome(("10.0.0.1:8000",), None, 200, ttfb_s=0.5, prompt_tokens=1000))
    lease.release()
    ds.publish()
    assert views[1].snapshot().ttft_per_1k[0] == pytest.approx(0.5)


def test_the_scalers_draining_mark_reaches_the_workers(segment: SharedSegment, clock: Clock) -> None:
    """``Datastore.set_draining`` (the scaler, in the supervisor) marks the pods' endpoints in the ``health``
    column; every worker sees it with the next publish, and un-draining clears it. Passive health's own
    verdicts are kept for the other endpoints, and a marked pod's new endpoints are marked too."""
    ds = supervisor(segment, clock)
    ds.configure_health(OutlierPolicy(consecutive_failures=1), LatencySettings())
    ds.publish()
    view = SharedView(segment, 0)
    lease = view.acquire("10.0.0.3:8000", LoadCharge(0.0, 0.0))
    lease.report(Outcome(("10.0.0.3:8000",), None, 503))
    lease.release()
    ds.set_draining(frozenset({"10.0.0.1:8000"}))  # static endpoints: the endpoint's name is its pod
    assert ds.publish()
    assert view.snapshot().health.tolist() == [3.0, 0.0, 1.0]
    assert ds.draining == {"10.0.0.1:8000"}
    ds.set_draining(frozenset())
    ds.publish()
    assert view.snapshot().health.tolist() == [0.0, 0.0, 1.0]
    ds.set_draining(frozenset({"vllm-0"}))
    ds.replace_endpoints([*ds.endpoints(), Endpoint("vllm-0-rank-0", "10.0.0.9", 8000, pod="vllm-0")])
    ds.publish()
    assert view.snapshot().health.tolist() == [0.0, 0.0, 1.0, 3.0]


def test_a_failed_scrape_of_an_endpoint_never_scraped_reaches_the_workers(
    segment: SharedSegment, clock: Clock
) -> None:
    """The spill decision runs in the workers: they must tell an endpoint whose scrapes fail from one not
    scraped yet, as the supervisor does."""
    ds = supervisor(segment, clock)
    ds.publish()
    view = SharedView(segment, 0)
    assert view.snapshot().scrape_failed.tolist() == [0.0, 0.0, 0.0]
    ds.record_scrape_failure("10.0.0.2:8000", "connection refused")
    assert ds.publish()
    assert view.snapshot().scrape_failed.tolist() == [0.0, 1.0, 0.0]
    scrape(ds, "10.0.0.2:8000", 1.0)
    ds.publish()
    assert view.snapshot().scrape_failed.tolist() == [0.0, 0.0, 0.0]


def test_requests_sent_count_every_workers_picks_per_endpoint(segment: SharedSegment, clock: Clock) -> None:
    ds = supervisor(segment, clock)
    ds.publish()
    w0, w1 = SharedView(segment, 0), SharedView(segment, 1)
    for view, name in ((w0, "10.0.0.1:8000"), (w1, "10.0.0.1:8000"), (w1, "10.0.0.2:8000")):
        view.acquire(name).release()
    scrape(ds, "10.0.0.1:8000", 1.0)  # a landed scrape moves dispatched, not what was sent
    ds.publish()
    assert ds.requests_sent() == {"10.0.0.1:8000": 2.0, "10.0.0.2:8000": 1.0, "10.0.0.3:8000": 0.0}
