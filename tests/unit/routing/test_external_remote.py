"""External endpoints across ``--workers`` (``picker.routing.external_remote``): workers reserve on the
supervisor's one budget over a pipe (here an in-memory one, delivering on the next loop turn as a socket
would), so a limit is never passed and is reachable from any worker; a dead worker's reservations are
settled; the director waits for the answer, spills, queues or stays in the pool as in one process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from picker.errors import ResourceExhausted
from picker.routing.director import Director
from picker.routing.external import ExternalCapacity, JointReservation
from picker.routing.external_remote import GRANT, ExternalClient, ExternalHost, Grant, RemoteTicket
from picker.routing.types import Dispatch, PendingRoute, RoutingRequest
from picker.state.outcomes import Outcome
from picker.tenants.flow import FlowController, FlowLimits
from tests.unit.routing.doubles import State
from tests.unit.routing.test_external import MANAGED, POOL, Clock, picker_doc, pool, request, store

ONLY_MANAGED = picker_doc(limits="{concurrent: 3, requestsPerMinute: 100}", backup="{requestsPerMinute: 0}")


class Supervisor:
    """The supervisor's capacity and host, and one in-memory pipe per worker."""

    def __init__(self, text: str = ONLY_MANAGED) -> None:
        self.capacity = ExternalCapacity(clock=Clock())
        settings = store(text).active.config.settings
        self.capacity.sync(settings.external_endpoints, settings.spillover)
        self.host = ExternalHost(self.capacity)
        self.clients: dict[int, ExternalClient] = {}

    def worker(self, index: int) -> ExternalClient:
        def send(message: list[Any]) -> None:
            reply = self.host.handle(index, message)
            if reply is not None:
                assert reply[0] == GRANT
                asyncio.get_running_loop().call_soon(self.clients[index].deliver, reply)

        client = self.clients[index] = ExternalClient(send)
        return client

    def row(self) -> dict[str, Any]:
        (row,) = [s for s in self.capacity.stats() if s["name"] == "managed"]
        return row


async def grants(client: ExternalClient, n: int) -> list[Grant]:
    return list(await asyncio.gather(*(client.reserve(10, 10) for _ in range(n))))


async def settled(check: Callable[[], bool]) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("never settled")


async def test_two_workers_reach_the_limit_and_never_pass_it() -> None:
    sup = Supervisor()
    a, b = sup.worker(0), sup.worker(1)
    got = await grants(a, 2) + await grants(b, 3)
    granted = [g.ticket for g in got if g.ticket is not None]
    assert len(granted) == 3, "concurrent: 3 across both workers, not 1 each"
    assert [g.refusal for g in got if g.ticket is None] == ["over_limits", "over_limits"]
    assert sup.row()["reserved"]["concurrent"] == 3
    first = granted[0]
    assert first.endpoint.address == MANAGED
    first.sent = True
    first.complete(None, status_ok=True)
    first.release()
    (again,) = await grants(b, 1)
    assert again.ticket is not None, "a slot given back by one worker is free for the other"
    assert sup.row()["reserved"]["concurrent"] == 3


async def test_a_dead_workers_reservations_are_settled_as_sent() -> None:
    sup = Supervisor()
    a = sup.worker(0)
    assert all(g.ticket is not None for g in await grants(a, 3))
    assert sup.host.retire(0) == 3
    row = sup.row()
    assert row["reserved"]["concurrent"] == 0
    assert row["used"]["requestsPerMinute"] == 3, "we cannot know what the provider counted: the most"


async def test_the_fallback_serving_and_failures_reach_the_supervisors_health() -> None:
    sup = Supervisor()
    a = sup.worker(0)
    (grant,) = await grants(a, 1)
    ticket = grant.ticket
    assert ticket is not None
    ticket.sent = True
    ticket.served_by(POOL[0])
    ticket.complete(None, status_ok=True)
    ticket.report(Outcome(endpoints=(MANAGED, *POOL), served=POOL[0], status=200))
    ticket.release()
    row = sup.row()
    assert row["used"]["requestsPerMinute"] == 1
    assert row["used"]["tokensPerMinute"] == 0
    assert row["reserved"]["concurrent"] == 0
    assert row["health"]["last_failure"] == "retried"
    for _ in range(4):
        (grant,) = await grants(a, 1)
        assert grant.ticket is not None
        grant.ticket.sent = True
        grant.ticket.report(Outcome(endpoints=(MANAGED, *POOL), served=MANAGED, status=503))
        grant.ticket.release()
    assert sup.row()["health"]["state"] == "ejected"
    (refused,) = await grants(a, 1)
    assert refused.ticket is None, "ejected: it takes nothing (the backup is over its limit)"


async def test_a_request_gone_while_asking_gives_its_reservation_back() -> None:
    sup = Supervisor()
    a = sup.worker(0)
    future = a.reserve(10, 10)
    future.cancel()
    await settled(lambda: sup.row()["reserved"]["concurrent"] == 0)
    assert sup.row()["used"]["requestsPerMinute"] == 0


# ----------------------------------------------------------------------------------------- the director
def worker_director(sup: Supervisor, index: int, st: State, flow: FlowController | None = None) -> Director:
    return Director(
        st,
        store(ONLY_MANAGED),
        rng=np.random.default_rng(0),
        clock=lambda: 0.0,
        flow=flow,
        external=ExternalCapacity(remote=sup.worker(index)),
    )


async def test_a_worker_waits_for_the_supervisor_then_spills_or_stays_in_the_pool() -> None:
    sup = Supervisor()
    d0 = worker_director(sup, 0, pool(waiting=10.0))
    d1 = worker_director(sup, 1, pool(waiting=10.0))
    routed = [d.route(request(), d.resolve(request())) for d in (d0, d1, d0, d1)]
    assert all(isinstance(r, PendingRoute) for r in routed), "a spill asks the supervisor first"
    got = [await r.wait() for r in routed if isinstance(r, PendingRoute)]
    assert [g.endpoints[0] for g in got].count(MANAGED) == 3
    assert got[3].endpoints == POOL, "the fourth found the limit used: the pool takes it"
    assert all(isinstance(g.ticket, RemoteTicket) for g in got[:3])
    assert got[0].failover == "saturated"
    assert sup.row()["dispatched"] == 3


FILTERED = picker_doc(limits="{concurrent: 3}", backup="{requestsPerMinute: 0}").replace(
    "- {type: queue-scorer}\n", "- {type: queue-scorer}\n- {type: header-based-testing-filter}\n", 1
)


def filtered_out() -> RoutingRequest:
    """A request whose profile's filter leaves no pool candidate (it names an address not in the pool)."""
    body = orjson.dumps({"model": "m", "prompt": "x" * 400, "max_tokens": 100})
    headers = {"test-epp-endpoint-selection": "10.9.9.9:8000"}
    return RoutingRequest("r", headers, "/v1/completions", body)


async def test_a_request_the_filters_leave_no_pool_candidate_spills_from_a_worker_too() -> None:
    """As in one process (``test_external``): the worker asks the supervisor, and the answer sends it
    external as unavailable; once the limit is used, the next one gets the filter's 429."""
    sup = Supervisor(FILTERED)
    d = Director(
        pool(waiting=0.0),
        store(FILTERED),
        rng=np.random.default_rng(0),
        clock=lambda: 0.0,
        external=ExternalCapacity(remote=sup.worker(0)),
    )
    got = []
    for _ in range(3):
        routed = d.route(filtered_out(), d.resolve(filtered_out()))
        assert isinstance(routed, PendingRoute), "the worker asks the supervisor"
        got.append(await routed.wait())
    assert [g.endpoints for g in got] == [(MANAGED,)] * 3
    assert {g.failover for g in got} == {"unavailable"}
    assert sup.row()["reserved"]["concurrent"] == 3
    routed = d.route(filtered_out(), d.resolve(filtered_out()))
    assert isinstance(routed, PendingRoute)
    with pytest.raises(ResourceExhausted):
        await routed.wait()
    assert sup.row()["reserved"]["concurrent"] == 3, "the refused ask reserved nothing"


async def test_a_pending_ask_cancelled_before_its_wait_gives_the_reservation_back() -> None:
    sup = Supervisor()
    d = worker_director(sup, 0, pool(waiting=10.0))
    routed = d.route(request(), d.resolve(request()))
    assert isinstance(routed, PendingRoute)
    routed.cancel()
    await settled(lambda: sup.row()["reserved"]["concurrent"] == 0)


async def test_a_worker_under_flow_control_spills_first_then_queues() -> None:
    sup = Supervisor(picker_doc(limits="{concurrent: 1}", backup="{requestsPerMinute: 0}"))
    flow = FlowController(lambda: 1.0, registry=CollectorRegistry())
    flow.configure(enabled=True, limits=FlowLimits(ttl_s=None))
    d = worker_director(sup, 0, pool(waiting=0.0), flow)
    first = d.route(request(), d.resolve(request()))
    assert isinstance(first, PendingRoute)
    spilled = await first.wait()
    assert spilled.endpoints[0] == MANAGED
    second = d.route(request(), d.resolve(request()))
    assert isinstance(second, PendingRoute)
    waiting = asyncio.ensure_future(second.wait())
    await settled(lambda: flow.waiting == 1)
    assert not waiting.done(), "no room outside: it waits in the queue"
    waiting.cancel()


async def test_a_tenant_ticket_joins_the_remote_one() -> None:
    sup = Supervisor()
    d = worker_director(sup, 0, pool(waiting=10.0))

    class Tenant:
        sent = False
        released = 0
        tenant = "t"

        def response_headers(self) -> list[tuple[str, bytes]]:
            return []

        def chunk(self, chunk: bytes) -> None:
            pass

        def served_by(self, address: str) -> None:
            pass

        def complete(self, usage: object, *, status_ok: bool, body: bytes | None = None) -> None:
            pass

        def release(self) -> None:
            self.released += 1

    tenant = Tenant()
    routed = d.admission.admitted(tenant, request(), d.resolve(request()))  # type: ignore[arg-type]
    assert isinstance(routed, PendingRoute)
    dispatch = await routed.wait()
    assert isinstance(dispatch, Dispatch)
    assert isinstance(dispatch.ticket, JointReservation)
    dispatch.ticket.release()
    assert tenant.released == 1
    await settled(lambda: sup.row()["reserved"]["concurrent"] == 0)
