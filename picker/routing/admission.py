"""Admission, the waits before a request is scheduled (step 4-5 of :mod:`picker.routing.director`).

In order: an empty pool that the ``scaling`` section lets go to zero holds the request for a first
replica (:mod:`picker.routing.hold`); the tenant's budget reserves the request's tokens, one request and
its cost (:mod:`picker.tenants`; with a remote budget - Redis, ``--workers`` - the reservation is I/O);
with the ``flowControl`` gate, a request with priority >= 0 that finds the pool saturated (or others
already waiting) goes to an external endpoint that takes it now (spill-first), else waits in its
tenant's queue (:mod:`picker.tenants.flow`). Then the director schedules it. Whatever needs waiting comes
back as a :class:`~picker.routing.types.PendingRoute` that the stream awaits; everything after the wait
runs then. Every refusal after a reservation gives it back, here or where the dispatch ends.

Why here and not in the director: these are the request's waits and reservations, the director's part is
the pick over one snapshot; the two meet in :meth:`Admission.admitted` (schedule, holding a reservation).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from picker.errors import PickerError, ServiceUnavailable
from picker.routing.external import ExternalCapacity, ExternalTicket, JointReservation
from picker.routing.external_remote import RemoteTicket, give_back
from picker.routing.hold import HOLD_MARGIN_S, EmptyPoolHold
from picker.routing.openai import prompt_text
from picker.routing.spill import RemoteAsk, SpillDecision
from picker.routing.types import Dispatch, PendingRoute, Resolved, RoutingRequest
from picker.state.config_store import ConfigStore
from picker.tenants import FAIRNESS_HEADER, PendingTicket, Tenancy, Ticket
from picker.tenants.flow import FlowController
from scoring import EndpointMatrix
from scoring.profiles import ProfileChoice

__all__ = ["DEFAULT_FLOW", "MSG_HOLD_FULL", "MSG_HOLD_TIMEOUT", "Admission", "Scheduling"]

MSG_HOLD_FULL = "no model-server replica is running and too many requests already wait for one"
MSG_HOLD_TIMEOUT = "no model-server replica became ready within the hold timeout ({:g}s)"
#: the reference's flow id of a request without a fairness id (used without a tenants section)
DEFAULT_FLOW = "default-flow"


class Scheduling(Protocol):
    """The director's side: the pick once admitted, and which external endpoints a request may use.

    It restates :meth:`~picker.routing.director.Director.schedule`'s signature on purpose: the director
    imports this module (an :class:`Admission` is its step 4-5), so this module cannot import the
    director; the Protocol is what admission needs of it, and mypy checks that the director satisfies it
    where the director passes itself in."""

    external: ExternalCapacity

    def schedule(
        self,
        request: RoutingRequest,
        resolved: Resolved,
        *,
        explain: bool,
        pressed: bool = False,
        decided: SpillDecision | None = None,
    ) -> Dispatch | RemoteAsk | None: ...

    def external_for(self, priority: int, choice: ProfileChoice) -> ExternalCapacity | None: ...


class PoolSize(Protocol):
    def snapshot(self) -> EndpointMatrix: ...


class Admission:
    """The waits and reservations before the director's pick, for one pool."""

    def __init__(
        self,
        director: Scheduling,
        config: ConfigStore,
        pool: PoolSize,
        *,
        tenancy: Tenancy | None = None,
        flow: FlowController | None = None,
        hold: EmptyPoolHold | None = None,
    ) -> None:
        self._director = director
        self._config = config
        self._ds = pool
        self._tenancy = tenancy
        self._flow = flow
        self._hold = hold

    def route(self, request: RoutingRequest, resolved: Resolved) -> Dispatch | PendingRoute:
        """An empty pool's hold, the tenant's budget, flow control (or spill-first), then the director's
        schedule: a Dispatch now, or a :class:`PendingRoute` when one of them needs waiting first."""
        if self._hold is not None:
            held = self._hold_if_empty(request, resolved)
            if held is not None:
                return held
        tenancy, flow = self._tenancy, self._flow
        if (tenancy is None or not tenancy.active) and (flow is None or not flow.enabled):
            # nothing to reserve or queue (most requests): the pick now, one call in (a request's path is
            # priced by the code it touches with cold caches, see benchmarks/bench_stream.py)
            routed = self._director.schedule(request, resolved, explain=False)
            if isinstance(routed, RemoteAsk):
                return self._ask(None, request, resolved, routed, pressed=False)
            assert routed is not None  # only a pressed schedule may decline
            return routed
        return self._admit(request, resolved)

    def _hold_if_empty(self, request: RoutingRequest, resolved: Resolved) -> PendingRoute | None:
        """Scale from zero: the wait for a first replica when the pool is empty and the config holds."""
        hold = self._config.active.hold_empty_pool
        if hold is None or self._hold is None or len(self._ds.snapshot()) > 0:
            return None
        if self._hold.full(hold.max_held_requests):
            raise ServiceUnavailable(MSG_HOLD_FULL)
        extend = hold.hold_timeout + HOLD_MARGIN_S
        return PendingRoute(self._held(request, resolved, hold.hold_timeout), extend_s=extend)

    def _admit(self, request: RoutingRequest, resolved: Resolved) -> Dispatch | PendingRoute:
        """Tenant budget and flow control, then scheduling (now or after a wait)."""
        ticket: Ticket | None = None
        tenancy = self._tenancy
        if tenancy is not None and tenancy.active:
            info = resolved.info
            admitted = tenancy.admit(
                request.headers,
                model=resolved.target_model,
                prompt_chars=info.prompt_chars if info is not None else len(request.body),
                max_tokens=info.max_tokens if info is not None else None,
                text=(lambda: _prompt_text(request)) if info is not None else None,
            )
            if not isinstance(admitted, Ticket):
                return PendingRoute(self._later(request, resolved, None, admitted), on_cancel=admitted.cancel)
            ticket = admitted
        if self._flow is not None and self._flow.enabled:
            spilled = self._spill_first(request, resolved, ticket)
            if spilled is not None:
                return spilled
            try:
                waiting = self._enqueue(request, resolved, ticket)
            except PickerError:
                if ticket is not None:
                    ticket.release()
                raise
            if waiting is not None:
                # the queue may hold it up to the TTL: ask the proxy's message timer to wait as long (the
                # margin lets our own 503 at the TTL arrive first); no TTL: the operator's timer decides
                ttl = self._flow.limits.ttl_s
                extend = ttl + HOLD_MARGIN_S if ttl is not None else None
                return PendingRoute(
                    self._later(request, resolved, ticket, None, waiting),
                    extend_s=extend,
                    on_cancel=lambda: _withdraw(self._flow, waiting, ticket),
                )
        return self._scheduled(ticket, request, resolved)

    async def _held(self, request: RoutingRequest, resolved: Resolved, hold_s: float) -> Dispatch:
        """Scale from zero: wait for a first replica, then admit and schedule as usual; 503 after
        ``hold_s`` seconds."""
        assert self._hold is not None
        if not await self._hold.wait(hold_s):
            raise ServiceUnavailable(MSG_HOLD_TIMEOUT.format(hold_s))
        routed = self._admit(request, resolved)
        return await routed.wait() if isinstance(routed, PendingRoute) else routed

    def _enqueue(
        self, request: RoutingRequest, resolved: Resolved, ticket: Ticket | None
    ) -> tuple[asyncio.Future[None], str, int] | None:
        """Flow control: None to schedule now, or the queue position to wait on (sheddable requests are
        not queued: they are shed by saturation as without flow control)."""
        flow = self._flow
        assert flow is not None
        priority = resolved.priority
        if priority < 0:
            return None
        if ticket is not None:
            fairness_id = ticket.tenant
        elif self._tenancy is not None:
            fairness_id = self._tenancy.ids.resolve(request.headers)
        else:
            fairness_id = request.headers.get(FAIRNESS_HEADER) or DEFAULT_FLOW
        future = flow.admit(fairness_id, priority, len(request.body))
        return None if future is None else (future, fairness_id, priority)

    def _spill_first(
        self, request: RoutingRequest, resolved: Resolved, ticket: Ticket | None
    ) -> Dispatch | PendingRoute | None:
        """Flow control would queue the request (the pool is saturated, or others wait): an external
        endpoint that takes it serves it now, the queue is for requests none takes. Sheddable requests
        are never queued (shed or spilled by the director's ``schedule`` as without flow control)."""
        assert self._flow is not None
        settings = self._config.active.config.settings
        if resolved.priority < 0 or not self._director.external.sync(
            settings.external_endpoints, settings.spillover
        ):
            return None  # (most requests: no external endpoints, no profile lookup)
        choice = self._config.active.profiles.choose(resolved.objective, resolved.priority, request.headers)
        if self._director.external_for(resolved.priority, choice) is None or not self._flow.would_queue():
            return None
        return self.admitted(ticket, request, resolved, pressed=True)

    async def _later(
        self,
        request: RoutingRequest,
        resolved: Resolved,
        ticket: Ticket | None,
        pending: PendingTicket | None,
        waiting: tuple[asyncio.Future[None], str, int] | None = None,
    ) -> Dispatch:
        """The rest of :meth:`route` after I/O: a remote reservation, a wait in a flow-control queue."""
        try:
            if pending is not None:
                ticket = await pending
                if self._flow is not None and self._flow.enabled:
                    spilled = self._spill_first(request, resolved, ticket)
                    if spilled is not None:
                        return await _arrived(spilled)
                    waiting = self._enqueue(request, resolved, ticket)
            if waiting is not None:
                assert self._flow is not None
                await self._flow.wait(*waiting)
                try:
                    return await _arrived(self._scheduled(ticket, request, resolved))
                finally:
                    self._flow.poke()  # its load is counted now: the next one may go
            return await _arrived(self._scheduled(ticket, request, resolved))
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise

    async def _asked(
        self,
        ticket: Ticket | None,
        request: RoutingRequest,
        resolved: Resolved,
        ask: RemoteAsk,
        *,
        pressed: bool,
    ) -> Dispatch:
        """A ``--workers`` worker's request that wants an external endpoint, once the supervisor answered:
        sent there, or (none took it) queued when flow control pressed, else scheduled in the pool."""
        try:
            decided = ask.decided(await ask.future)
            if decided.first is None and pressed:
                waiting = self._enqueue(request, resolved, ticket)
                if waiting is not None:
                    return await self._later(request, resolved, ticket, None, waiting)
                pressed = False  # the pool took a turn while we asked: no queue
            routed = self.admitted(ticket, request, resolved, pressed=pressed, decided=decided)
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise
        assert isinstance(routed, Dispatch)  # decided: nothing more to ask, nothing to decline
        return routed

    def _scheduled(
        self, ticket: Ticket | None, request: RoutingRequest, resolved: Resolved
    ) -> Dispatch | PendingRoute:
        routed = self.admitted(ticket, request, resolved)
        assert routed is not None  # only a pressed schedule may decline
        return routed

    def admitted(
        self,
        ticket: Ticket | None,
        request: RoutingRequest,
        resolved: Resolved,
        *,
        pressed: bool = False,
        decided: SpillDecision | None = None,
    ) -> Dispatch | PendingRoute | None:
        """Schedule a request (holding a reservation or not); a refusal from here on gives it back. None:
        a pressed schedule no external endpoint took (the caller queues it, reservation and all). A
        PendingRoute: a worker asks the supervisor for an external endpoint first (:meth:`_asked`)."""
        try:
            routed = self._director.schedule(
                request, resolved, explain=False, pressed=pressed, decided=decided
            )
        except BaseException:
            if ticket is not None:
                ticket.release()
            if decided is not None and decided.ticket is not None:
                decided.ticket.release()
            raise
        if isinstance(routed, RemoteAsk):
            return self._ask(ticket, request, resolved, routed, pressed=pressed)
        if routed is not None and ticket is not None:
            spilled = routed.ticket
            routed.ticket = (
                ticket
                if not isinstance(spilled, (ExternalTicket, RemoteTicket))
                else JointReservation(ticket, spilled)
            )
        return routed

    def _ask(
        self,
        ticket: Ticket | None,
        request: RoutingRequest,
        resolved: Resolved,
        ask: RemoteAsk,
        *,
        pressed: bool,
    ) -> PendingRoute:
        """A ``--workers`` worker asks the supervisor for an external endpoint first (:meth:`_asked`)."""
        queue_ttl = self._flow.limits.ttl_s if pressed and self._flow is not None else None
        return PendingRoute(
            self._asked(ticket, request, resolved, ask, pressed=pressed),
            extend_s=None if queue_ttl is None else queue_ttl + HOLD_MARGIN_S,
            on_cancel=lambda: give_back(ask.future),
        )


def _withdraw(
    flow: FlowController | None, waiting: tuple[asyncio.Future[None], str, int], ticket: Ticket | None
) -> None:
    """A queued request whose stream ended before it waited: out of the queue, its reservation back."""
    if flow is not None:
        flow.withdraw(waiting[0])
    if ticket is not None:
        ticket.release()


async def _arrived(routed: Dispatch | PendingRoute) -> Dispatch:
    return await routed.wait() if isinstance(routed, PendingRoute) else routed


def _prompt_text(request: RoutingRequest) -> str:
    """The prompt's canonical text, for a model with a configured tokenizer (a second parse)."""
    return prompt_text(request.path, request.body)
