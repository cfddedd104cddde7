"""A stream that ends before its admission wait ends gives back what admission reserved for it.

The stream cancels a :class:`PendingRoute` it never awaited (``PendingRoute.cancel`` closes the unstarted
coroutine, so nothing in it runs): whatever admission already holds must come back through ``on_cancel``:
the tenant's reservation of a request queued by flow control and its place in the queue, and a
reservation asked of the ``--workers`` supervisor whose answer arrives after the stream is gone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from picker.config.tenants import TenantsConfig
from picker.routing.director import Director
from picker.routing.types import PendingRoute
from picker.tenants import MemoryBackend, Tenancy
from picker.tenants.flow import FlowController, FlowLimits
from picker.tenants.ledger import CONCURRENT
from picker.tenants.policy import TenantsPolicy
from picker.tenants.remote import VERDICT, BudgetHost, SupervisorBackend
from tests.unit.routing.test_external import pool, request, store

DOC = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    "plugins:\n- {type: queue-scorer}\n- {type: max-score-picker}\n"
)
POLICY = TenantsPolicy.from_config(
    TenantsConfig.model_validate({"defaultTier": "t", "tiers": [{"name": "t", "limits": {"concurrent": 5}}]})
)


def tenancy(backend: Any) -> Tenancy:
    t = Tenancy(backend)
    t.apply(POLICY)
    return t


def director(t: Tenancy, flow: FlowController | None = None) -> Director:
    return Director(
        pool(waiting=0.0), store(DOC), rng=np.random.default_rng(0), clock=lambda: 0.0, tenancy=t, flow=flow
    )


def reserved(backend: MemoryBackend) -> int:
    return sum(v.reserved[CONCURRENT] for v in backend.accounts())


async def test_a_queued_request_cancelled_before_its_wait_leaves_the_queue_and_its_budget() -> None:
    backend = MemoryBackend()
    flow = FlowController(lambda: 1.0, registry=CollectorRegistry())  # saturated: everything queues
    flow.configure(enabled=True, limits=FlowLimits(ttl_s=None))
    d = director(tenancy(backend), flow)
    routed = d.route(request(), d.resolve(request()))
    assert isinstance(routed, PendingRoute)
    assert flow.waiting == 1
    assert reserved(backend) == 1
    routed.cancel()
    assert flow.waiting == 0
    assert reserved(backend) == 0


async def test_a_supervisor_reservation_cancelled_before_its_wait_is_given_back() -> None:
    host_backend = MemoryBackend()
    host = BudgetHost(lambda: host_backend, lambda _t, _r: None)
    client: SupervisorBackend

    def send(message: list[Any]) -> None:  # the pipe: answered on a later loop turn, as over a socket
        reply = host.handle(0, message)
        if reply is not None:
            assert reply[0] == VERDICT
            asyncio.get_running_loop().call_soon(client.deliver, reply)

    client = SupervisorBackend(send)
    d = director(tenancy(client))
    routed = d.route(request(), d.resolve(request()))
    assert isinstance(routed, PendingRoute)
    assert reserved(host_backend) == 1, "the supervisor reserved at once"
    routed.cancel()
    for _ in range(20):
        await asyncio.sleep(0)
    assert reserved(host_backend) == 0, "its answer came to nobody: the hold was given back"


async def test_an_awaited_supervisor_reservation_still_admits() -> None:
    host_backend = MemoryBackend()
    host = BudgetHost(lambda: host_backend, lambda _t, _r: None)
    client: SupervisorBackend

    def send(message: list[Any]) -> None:
        reply = host.handle(0, message)
        if reply is not None:
            asyncio.get_running_loop().call_soon(client.deliver, reply)

    client = SupervisorBackend(send)
    d = director(tenancy(client))
    routed = d.route(request(), d.resolve(request()))
    assert isinstance(routed, PendingRoute)
    dispatch = await routed.wait()
    assert dispatch.ticket is not None
    dispatch.ticket.release()
    for _ in range(5):
        await asyncio.sleep(0)
    assert reserved(host_backend) == 0
