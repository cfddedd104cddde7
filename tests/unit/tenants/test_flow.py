"""The flow-control queues (picker.tenants.flow) with a saturation the test sets: order and bounds."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from picker.errors import TenantRefused
from picker.tenants.flow import Band, FlowController, FlowLimits


class Pool:
    """A saturation the test turns: full until opened, then one slot per ``open()``."""

    def __init__(self) -> None:
        self.free = 0

    def saturation(self) -> float:
        return 0.0 if self.free > 0 else 1.0


async def drain(
    flow: FlowController, pool: Pool, waiting: dict[str, list[asyncio.Future[None]]]
) -> list[str]:
    """Open one slot at a time and record whose request went through."""
    order: list[str] = []
    total = sum(len(v) for v in waiting.values())
    for _ in range(total):
        pool.free = 1
        flow.poke()
        for _ in range(50):
            await asyncio.sleep(0)
            done = [(k, f) for k, fs in waiting.items() for f in fs if f.done()]
            if done:
                break
        (name, fut), *rest = done
        assert not rest
        waiting[name].remove(fut)
        order.append(name)
        pool.free = 0  # the dispatched request took the slot
    return order


async def test_strict_priority_between_bands_and_round_robin_within() -> None:
    pool = Pool()
    flow = FlowController(pool.saturation, registry=CollectorRegistry())
    flow.configure(enabled=True, limits=FlowLimits(ttl_s=None))
    waiting: dict[str, list[asyncio.Future[None]]] = {}
    for name, priority, count in (("low-a", 0, 3), ("low-b", 0, 1), ("high", 10, 2)):
        for _ in range(count):
            fut = flow.admit(name, priority, 10)
            assert fut is not None
            waiting.setdefault(name, []).append(fut)
    assert flow.waiting == 6
    order = await drain(flow, pool, waiting)
    assert order == ["high", "high", "low-a", "low-b", "low-a", "low-a"]
    assert flow.waiting == 0


async def test_nothing_waits_when_the_pool_has_room_and_nobody_queues() -> None:
    pool = Pool()
    pool.free = 1
    flow = FlowController(pool.saturation)
    flow.configure(enabled=True, limits=FlowLimits())
    assert flow.admit("a", 0, 1) is None


async def test_band_bounds_evict_the_longest_flow_or_refuse_its_own_request() -> None:
    pool = Pool()
    flow = FlowController(pool.saturation)
    flow.configure(enabled=True, limits=FlowLimits(bands={0: Band(max_requests=3)}, ttl_s=None))
    flood = [flow.admit("flood", 0, 1) for _ in range(3)]
    newcomer = flow.admit("newcomer", 0, 1)
    assert newcomer is not None
    assert flood[-1] is not None
    assert flood[-1].done()
    with pytest.raises(TenantRefused, match="evicted"):
        flood[-1].result()
    with pytest.raises(TenantRefused, match="queue full"):
        flow.admit("flood", 0, 1)
    assert sorted((f, n) for f, _p, n, _b in flow.flows()) == [("flood", 2), ("newcomer", 1)]


async def test_fairness_id_labels_are_bounded_in_number_and_length() -> None:
    """Without a tenants section the fairness id is the raw header: its label is bounded (picker.labels)."""
    pool = Pool()
    registry = CollectorRegistry()
    flow = FlowController(pool.saturation, registry=registry, label_values=2, label_length=16)
    flow.configure(enabled=True, limits=FlowLimits(ttl_s=None))
    waiting: dict[str, list[asyncio.Future[None]]] = {}
    names = ["a", "b", "c", "d", "x" * 100_000]
    for name in names:
        fut = flow.admit(name, 0, 10)
        assert fut is not None
        waiting[name] = [fut]
    sizes = {
        s.labels["fairness_id"]: s.value
        for f in registry.collect()
        if f.name == "inference_extension_flow_control_queue_size"
        for s in f.samples
    }
    assert sizes == {"a": 1, "b": 1, "other": 3}
    await drain(flow, pool, waiting)
    ids = {
        s.labels["fairness_id"]
        for f in registry.collect()
        if f.name == "inference_extension_flow_control_request_queue_duration_seconds"
        for s in f.samples
    }
    assert ids == {"a", "b", "other"}
