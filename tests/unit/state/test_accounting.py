"""One accounting model: a single process and ``--workers`` (supervisor + worker views over shared memory)
compute the same four load columns from the same events, and slots keep a lease's give-back on its own
endpoint through membership changes."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest

from picker.state.accounting import Lease
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint
from picker.state.metrics import EndpointMetrics
from picker.state.publisher import SharedPublisher
from picker.state.segment import SharedLayout, SharedSegment
from picker.state.view import SharedView
from scoring.matrix import EndpointMatrix, LoadCharge

LOAD = ("dispatched", "inflight", "prefill_tokens", "inflight_tokens")


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def ep(i: int) -> Endpoint:
    return Endpoint(name=f"pod-{i}-rank-0", ip=f"10.0.1.{i}", port=8000, pod=f"pod-{i}")


def load(m: EndpointMatrix) -> dict[str, dict[str, float]]:
    return {name: {col: float(getattr(m, col)[i]) for col in LOAD} for i, name in enumerate(m.names)}


@pytest.fixture
def segment() -> Iterator[SharedSegment]:
    seg = SharedSegment.create(SharedLayout(capacity=64, workers=2, blob_bytes=1 << 16))
    yield seg
    seg.close()
    seg.unlink()


class Twins:
    """A one-process datastore and a supervisor whose picks come from two workers, fed the same events."""

    def __init__(self, segment: SharedSegment, rnd: random.Random) -> None:
        self.rnd = rnd
        self.clock = Clock()
        self.alone = Datastore(clock=self.clock, quarantine_s=1.0, capacity=64)
        self.shared = Datastore(clock=self.clock, quarantine_s=1.0, publisher=SharedPublisher(segment))
        self.workers = [SharedView(segment, 0), SharedView(segment, 1)]
        self.members = {1, 2, 3}
        self.leases: list[tuple[Lease, Lease]] = []
        for ds in self.both:
            ds.replace_endpoints([ep(i) for i in sorted(self.members)])
        self.shared.publish()

    @property
    def both(self) -> tuple[Datastore, Datastore]:
        return self.alone, self.shared

    def name(self) -> str:
        return f"pod-{self.rnd.choice(sorted(self.members))}-rank-0"

    def pick(self) -> None:
        name = self.name()
        charge = LoadCharge.of(self.rnd.randrange(0, 3000), stream=self.rnd.random() < 0.6)
        self.leases.append(
            (self.alone.acquire(name, charge), self.rnd.choice(self.workers).acquire(name, charge))
        )

    def first_byte(self) -> None:
        for lease in self.leases[self.rnd.randrange(len(self.leases))]:
            lease.first_byte()

    def release(self) -> None:
        for lease in self.leases.pop(self.rnd.randrange(len(self.leases))):
            lease.release()

    def scrape(self) -> None:
        name, outcome, waiting = self.name(), self.rnd.random(), float(self.rnd.randrange(10))
        for ds in self.both:
            if outcome < 0.4:
                ds.begin_scrape(name)
            elif outcome < 0.8:
                ds.record_scrape(name, EndpointMetrics(waiting=waiting))
            else:
                ds.record_scrape_failure(name, "timeout")

    def join(self) -> None:
        i = self.rnd.randrange(1, 8)
        for ds in self.both:
            ds.upsert_endpoint(ep(i))
        self.members.add(i)

    def leave(self) -> None:
        i = self.rnd.choice(sorted(self.members))
        for ds in self.both:
            ds.remove_pod(f"pod-{i}")
        self.members.discard(i)

    def step(self) -> None:
        self.clock.now += 0.05
        actions = [self.join]
        if self.members:
            actions += [self.pick, self.pick, self.pick, self.scrape, self.scrape, self.leave]
        if self.leases:
            actions += [self.first_byte, self.release, self.release]
        self.rnd.choice(actions)()
        self.shared.publish()


@pytest.mark.parametrize("seed", range(6))
def test_one_process_and_workers_agree_on_every_load_column(segment: SharedSegment, seed: int) -> None:
    """The same random events (picks with charges, first bytes, releases, scrapes that begin, land or
    fail, endpoints joining and leaving): every column of every endpoint agrees after every event."""
    twins = Twins(segment, random.Random(seed))
    for _ in range(400):
        twins.step()
        expected = load(twins.alone.snapshot())
        assert load(twins.shared.snapshot()) == expected
        for view in twins.workers:
            assert load(view.snapshot()) == expected
    for pair in twins.leases:
        for lease in pair:
            lease.release()
    assert twins.alone.inflight_total() == twins.shared.inflight_total() == 0.0
    left = load(twins.alone.snapshot()).values()
    assert all(v == 0.0 for row in left for k, v in row.items() if k != "dispatched")


def test_a_pool_without_churn_reads_its_row_in_place_and_a_churned_one_gathers() -> None:
    ds = Datastore(quarantine_s=0.0)
    ds.replace_endpoints([ep(1), ep(2), ep(3)])
    m = ds.snapshot()
    ds.acquire("pod-2-rank-0", LoadCharge.of(100))
    assert m.inflight.tolist() == [0.0, 1.0, 0.0], "one row, consecutive slots: the columns are the row"
    ds.remove_pod("pod-1")
    ds.upsert_endpoint(ep(4))  # pod-1's slot is free again (no quarantine, nothing open): pod-4 takes it
    lease = ds.acquire("pod-4-rank-0", LoadCharge.of(7))
    m = ds.snapshot()
    assert m.names == ("pod-2-rank-0", "pod-3-rank-0", "pod-4-rank-0")
    assert m.inflight.tolist() == [1.0, 0.0, 1.0]
    assert m.inflight_tokens.tolist() == [100.0, 0.0, 7.0]
    lease.release()
    assert ds.snapshot().inflight.tolist() == [1.0, 0.0, 0.0]


def test_a_lease_on_a_removed_endpoint_gives_back_to_its_own_slot_only() -> None:
    clock = Clock()
    ds = Datastore(clock=clock, quarantine_s=5.0)
    ds.replace_endpoints([ep(1), ep(2)])
    held = ds.acquire("pod-1-rank-0", LoadCharge.of(300))
    ds.remove_pod("pod-1")
    ds.upsert_endpoint(ep(1))  # back at once: a fresh slot, the open stream stays on the old one
    assert load(ds.snapshot())["pod-1-rank-0"] == dict.fromkeys(LOAD, 0.0)
    other = ds.acquire("pod-1-rank-0")
    held.release()
    assert ds.snapshot().inflight.tolist() == [0.0, 1.0]
    assert ds.inflight_total() == 1.0
    other.release()
    assert ds.inflight_total() == 0.0


def test_a_reused_slot_starts_with_nothing_dispatched() -> None:
    clock = Clock()
    ds = Datastore(clock=clock, quarantine_s=5.0)
    ds.replace_endpoints([ep(1)])
    for _ in range(4):
        ds.acquire("pod-1-rank-0").release()  # dispatched 4, never seen by a scrape
    ds.begin_scrape("pod-1-rank-0")  # a scrape in flight when the endpoint leaves
    ds.replace_endpoints([ep(2)])
    clock.now += 6.0
    ds.replace_endpoints([ep(2), ep(3)])  # pod-3 reuses pod-1's slot after the quarantine
    ds.record_scrape("pod-3-rank-0", EndpointMetrics(waiting=1.0))  # not pod-1's scrape: nothing moves
    m = ds.snapshot()
    assert m.names == ("pod-2-rank-0", "pod-3-rank-0")
    assert m.dispatched.tolist() == [0.0, 0.0]
    ds.acquire("pod-3-rank-0")
    assert ds.snapshot().dispatched.tolist() == [0.0, 1.0]


def test_a_full_accounting_fails_loudly_and_frees_closed_slots_first() -> None:
    clock = Clock()
    ds = Datastore(clock=clock, capacity=2, quarantine_s=60.0)
    ds.replace_endpoints([ep(1), ep(2)])
    ds.remove_pod("pod-1")
    ds.upsert_endpoint(ep(3))  # full: the quarantined slot has nothing open, so it is taken early
    lease = ds.acquire("pod-3-rank-0")
    ds.remove_pod("pod-3")
    with pytest.raises(RuntimeError, match="accounting is full"):
        ds.upsert_endpoint(ep(4))  # pod-3's slot still has a stream open
    assert [e.name for e in ds.endpoints()] == ["pod-2-rank-0"]  # the failed change changed nothing
    ds.acquire("pod-2-rank-0").release()
    lease.release()
    ds.upsert_endpoint(ep(4))
    assert len(ds) == 2
    np.testing.assert_array_equal(ds.snapshot().inflight, [0.0, 0.0])
