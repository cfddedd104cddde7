"""Lease leader election between replicas sharing one emulated API server.

Timings are shortened (lease 2 s, renew deadline 1.4 s, retry 0.3 s; a renewal request may then take
0.7 s, which a loaded 2-core machine running server and clients in one process needs) except where a
test must show that something happened *without* waiting out a lease: there the lease is 30 s and every
wait is bounded well below that, so success can only come from the mechanism under test (release, not
expiry).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes import client as k8s_client

from picker.kube import KubeSources, LeaderElector, lease_name
from picker.state.datastore import Datastore
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import inference_pool, pod
from tests.integration.kube.conftest import FAST_WATCH

pytestmark = pytest.mark.integration

NS = "inference"
POOL = "qwen"
LEASE = lease_name(NS, POOL)
SHORT: dict[str, float] = {"lease_duration": 2.0, "renew_deadline": 1.4, "retry_period": 0.3}


class Leaders:
    """Tracks how many electors believe they lead, and the most that ever did at once."""

    def __init__(self) -> None:
        self.current: set[str] = set()
        self.max_concurrent = 0
        self.history: list[tuple[str, bool]] = []

    def callback(self, identity: str) -> Callable[[bool], None]:
        def changed(leader: bool) -> None:
            self.history.append((identity, leader))
            if leader:
                self.current.add(identity)
            else:
                self.current.discard(identity)
            self.max_concurrent = max(self.max_concurrent, len(self.current))

        return changed


@pytest.fixture
async def electors(
    api: k8s_client.ApiClient,
) -> AsyncIterator[Callable[..., tuple[LeaderElector, asyncio.Task[None]]]]:
    running: list[tuple[LeaderElector, asyncio.Task[None]]] = []

    def start(identity: str, leaders: Leaders, **timings: float) -> tuple[LeaderElector, asyncio.Task[None]]:
        e = LeaderElector(
            api,
            namespace=NS,
            name=LEASE,
            identity=identity,
            on_change=leaders.callback(identity),
            **(timings or SHORT),
        )
        entry = (e, asyncio.create_task(e.run()))
        running.append(entry)
        return entry

    yield start
    for e, task in running:
        await e.close()
        await asyncio.wait_for(task, 5)


def lease(emulator: KubeApiEmulator) -> dict[str, Any]:
    obj = emulator.get("coordination.k8s.io/v1", "Lease", NS, LEASE)
    assert obj is not None
    return obj


async def test_two_electors_elect_exactly_one_and_the_other_takes_over_on_expiry(
    emulator, electors, eventually
):
    leaders = Leaders()
    a, _ = electors("epp-a", leaders)
    b, _ = electors("epp-b", leaders)
    await eventually(lambda: len(leaders.current) == 1)
    first = next(iter(leaders.current))
    # keep competing through many renew rounds: still exactly one
    renewals = lease(emulator)["metadata"]["resourceVersion"]
    await eventually(lambda: int(lease(emulator)["metadata"]["resourceVersion"]) >= int(renewals) + 5)
    assert leaders.current == {first}
    assert leaders.max_concurrent == 1
    assert lease(emulator)["spec"]["holderIdentity"] == first
    assert lease(emulator)["spec"]["leaseDurationSeconds"] == 2

    # the leader stops renewing without releasing (a crash): the standby waits out the lease, then leads
    leader, standby = (a, b) if first == "epp-a" else (b, a)
    transitions = int(lease(emulator)["spec"].get("leaseTransitions") or 0)
    await leader.close(release=False)
    await eventually(lambda: leaders.current == {standby.identity}, within=10)
    assert leaders.max_concurrent == 1
    spec = lease(emulator)["spec"]
    assert spec["holderIdentity"] == standby.identity
    assert spec["leaseTransitions"] == transitions + 1


async def test_release_on_close_hands_over_without_waiting_for_expiry(emulator, electors, eventually):
    leaders = Leaders()
    long = {"lease_duration": 30.0, "renew_deadline": 20.0, "retry_period": 0.2}
    a, _ = electors("epp-a", leaders, **long)
    await eventually(lambda: leaders.current == {"epp-a"})
    electors("epp-b", leaders, **long)
    await eventually(lambda: emulator.count("get", "leases") >= 6, what="the standby saw the lease held")
    assert leaders.current == {"epp-a"}
    await a.close()
    spec = lease(emulator)["spec"]
    assert spec.get("holderIdentity") in {"", None, "epp-b"}
    # a 30 s lease: taking over within 5 s is only possible because it was released
    await eventually(lambda: leaders.current == {"epp-b"}, within=5)
    assert leaders.history[:3] == [("epp-a", True), ("epp-a", False), ("epp-b", True)]


async def test_a_leader_that_cannot_renew_steps_down_before_the_lease_expires(emulator, electors, eventually):
    leaders = Leaders()
    electors("epp-a", leaders)
    await eventually(lambda: leaders.current == {"epp-a"})
    emulator.fail("update", plural="leases", status=500, times=50)
    await eventually(lambda: leaders.current == set(), what="stepped down after the renew deadline")
    assert ("epp-a", False) in leaders.history


async def test_conflicting_writes_are_retried_not_fatal(emulator, electors, eventually):
    leaders = Leaders()
    emulator.fail("create", plural="leases", status=409, times=2, message="already exists")
    electors("epp-a", leaders)
    await eventually(lambda: leaders.current == {"epp-a"})
    # both conflicts were answered, and the elector tried again after each
    assert emulator.count("create", "leases") >= 3


def test_timings_are_validated(api):
    with pytest.raises(ValueError, match="lease_duration > renew_deadline"):
        LeaderElector(api, namespace=NS, name=LEASE, identity="x", lease_duration=5, renew_deadline=10)


async def test_only_the_leading_replica_loads_the_pool(emulator, api, eventually):
    emulator.create(inference_pool(POOL, NS, selector={"app": "q"}))
    emulator.create(pod("p1", NS, labels={"app": "q"}))
    replicas = []
    for name in ("epp-a", "epp-b"):
        ds = Datastore()
        changes: list[bool] = []
        src = KubeSources(
            api,
            ds,
            namespace=NS,
            pool_name=POOL,
            leader_election=True,
            identity=name,
            on_leader_change=changes.append,
            watch=FAST_WATCH,
            **SHORT,
        )
        replicas.append((src, ds, changes, asyncio.create_task(src.run())))
    try:
        await eventually(lambda: sum(ds.synced for _, ds, _, _ in replicas) == 1)
        leader = next(r for r in replicas if r[1].synced)
        standby = next(r for r in replicas if not r[1].synced)
        assert leader[0].is_leader
        assert not standby[0].is_leader
        assert len(leader[1]) == 1
        assert len(standby[1]) == 0
        assert leader[2][-1] is True, "the standby never led"
        assert standby[2] == [], "the standby never led"

        await leader[0].close()  # releases: the standby takes over and loads the pool
        await asyncio.wait_for(leader[3], 5)
        assert not leader[1].synced, "a replica that stopped leading unloads"
        assert len(leader[1]) == 0, "a replica that stopped leading unloads"
        await eventually(lambda: standby[1].synced and len(standby[1]) == 1)
        assert standby[0].is_leader
        assert standby[2][-1] is True
    finally:
        for src, _, _, task in replicas:
            await src.close()
            await asyncio.wait_for(task, 5)


async def test_several_pools_of_one_replica_lead_and_hand_over_together(emulator, api, eventually):
    """``--pool`` with leader election: the first pool's sources hold the one Lease, the other pool follows
    them, so a replica loads both pools or neither (a Pod has one readiness)."""
    for name in (POOL, "llama"):
        emulator.create(inference_pool(name, NS, selector={"app": name}))
        emulator.create(pod(f"{name}-1", NS, labels={"app": name}))
    replicas = []
    for identity in ("epp-a", "epp-b"):
        pools = []
        for name in (POOL, "llama"):
            ds = Datastore()
            src = KubeSources(
                api,
                ds,
                namespace=NS,
                pool_name=name,
                leader_election=True,
                identity=identity,
                watch=FAST_WATCH,
                **SHORT,
            )
            pools.append((src, ds))
        pools[1][0].follow(pools[0][0])
        replicas.append([(src, ds, asyncio.create_task(src.run())) for src, ds in pools])

    def loaded(replica: list[Any]) -> list[bool]:
        return [ds.synced and len(ds) == 1 for _, ds, _ in replica]

    try:
        await eventually(lambda: sorted(loaded(r) for r in replicas) == [[False, False], [True, True]])
        leader, standby = (replicas[0], replicas[1]) if loaded(replicas[0])[0] else (replicas[1], replicas[0])
        assert [src.is_leader for src, _, _ in leader] == [True, True]
        assert [src.is_leader for src, _, _ in standby] == [False, False]
        leases = {
            lease["metadata"]["name"]
            for lease in emulator.list_objects("coordination.k8s.io/v1", "Lease", NS)
        }
        assert leases == {LEASE}, "one Lease, the first pool's"

        for src, _, task in reversed(
            leader
        ):  # the leader stops: its lease is released, the standby loads both
            await src.close()
            await asyncio.wait_for(task, 5)
        assert loaded(leader) == [False, False]
        await eventually(lambda: loaded(standby) == [True, True])
        assert [src.is_leader for src, _, _ in standby] == [True, True]
    finally:
        for replica in replicas:
            for src, _, task in replica:
                await src.close()
                await asyncio.wait_for(task, 5)
