"""External endpoints: capacity outside the pool that takes the overflow, within its limits.

The config's ``externalEndpoints`` (``picker.config.costs``) name addresses the gateway can reach (an
in-cluster Service forwarding to a managed API, an egress proxy) with a price, a priority and limits.
They are not pool members: nothing scrapes them, and their load is what this process sent them.

When the director sends a request there (:meth:`ExternalCapacity.reserve`):

* the request's objective is listed in ``spillover.objectives`` (it asks for external capacity first;
  the pool stays its fallback), or
* the pool cannot take it well: no candidate at all (``unavailable``), every candidate ejected by passive
  health (``ejected``), or the profile's saturation detector at or above ``spillover.saturationThreshold``
  (``saturated``) — the ``reason`` label of ``ai_failover_total`` for the request.

Among the external endpoints, the lowest ``priority`` first, then the cheapest for the request's token mix,
then the one with the fewest requests open; the first whose limits admit the request takes it. None
admits → the request stays in the pool as if nothing were configured (and an objective that asked counts
``over_limits``).

Limits never passed: each endpoint's budget is a :class:`picker.tenants.ledger.Account` (the tenants'
arithmetic: fixed UTC windows, a reservation held from dispatch to the end of the response). A request
reserves one request, one concurrency slot, ``prompt estimate + max_tokens`` tokens (or
``spillover.defaultOutputTokens`` without ``max_tokens``) and their cost; admission requires
``used + reserved + asked <= limit`` on every limited meter, so ``requestsPerMinute`` and ``concurrent``
can never be passed, and the token and cost meters only by what responses use beyond their reservation
(a prompt estimate below the real count, or an answer longer than ``defaultOutputTokens`` from a request
without ``max_tokens``). At the end the reservation is settled with the response's ``usage`` (exact), or
with the whole reservation when the response reported none or the stream broke off (we cannot know what
the provider counted, so we assume the most). With ``--workers N`` every worker gets ``1/N`` of each limit
(rounded down): the sum cannot pass the limit, at the price of one worker refusing while another has room.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
from numpy.typing import NDArray

from picker.config.costs import ExternalEndpointConfig, SpilloverConfig
from picker.routing.avoid import FailoverReason, Level
from picker.tenants.ledger import (
    CONCURRENT,
    LIMIT_NAMES,
    Account,
    Limits,
    Vector,
    actual_vector,
    now_wall,
    reservation_vector,
    window_ids,
)
from picker.tenants.policy import compile_limits
from scoring import EndpointMatrix, Scheduler
from scoring.types import PickRequest

__all__ = ["ExternalCapacity", "ExternalEndpoint", "ExternalTicket", "JointReservation"]

_UNLIMITED: Final[Limits] = (None, None, None, None, None, None)


class _Usage(Protocol):
    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ExternalEndpoint:
    """One ``externalEndpoints`` entry, compiled: prices in nano-units per million tokens, limits as the
    ledger's six meters (already scaled to this process's share)."""

    name: str
    address: str
    priority: int
    price_in: float
    price_out: float
    limits: Limits

    def cost_nano(self, input_tokens: int, output_tokens: int) -> int:
        """What ``input_tokens`` + ``output_tokens`` cost here, in nano-units (rounded up)."""
        return math.ceil((input_tokens * self.price_in + output_tokens * self.price_out) * 1000.0)


def _scaled(limits: Limits, share: float) -> Limits:
    if share >= 1.0:
        return limits
    return tuple(None if v is None else int(v * share) for v in limits)  # type: ignore[return-value]


class ExternalTicket:
    """One request's reservation on an external endpoint (the stream drives it as it drives a tenant's
    ticket: ``picker.routing.types.Reservation``). Not thread-safe (one stream)."""

    __slots__ = ("_account", "_clock", "amounts", "done", "endpoint", "input_tokens", "output_tokens", "sent")

    def __init__(
        self,
        account: Account,
        endpoint: ExternalEndpoint,
        *,
        amounts: Vector,
        input_tokens: int,
        output_tokens: int,
        clock: Callable[[], float],
    ) -> None:
        self._account = account
        self._clock = clock
        self.endpoint = endpoint
        self.amounts = amounts
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.sent = False
        self.done = False

    def response_headers(self) -> list[tuple[str, bytes]]:
        return []

    def chunk(self, chunk: bytes) -> None:
        pass

    def complete(self, usage: _Usage | None, *, status_ok: bool, body: bytes | None = None) -> None:  # noqa: ARG002 - Reservation protocol
        """Settle with the response's usage; without one, with the whole reservation."""
        if self.done:
            return
        tokens = cost = 0
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
            tokens = prompt + completion
            cost = self.endpoint.cost_nano(prompt, completion)
        if tokens <= 0:
            self._settle(self.amounts[0], self.amounts[4])
        else:
            self._settle(tokens, cost)

    def release(self) -> None:
        """Stream end: a request never sent gives everything back; one that was sent and did not
        complete is counted as the whole reservation. Idempotent."""
        if self.done:
            return
        if self.sent:
            self._settle(self.amounts[0], self.amounts[4])
        else:
            self.done = True
            self._account.settle(self.amounts, actual_vector(0, 0, counted=False), window_ids(self._clock()))

    def _settle(self, tokens: int, cost_nano: int) -> None:
        self.done = True
        self._account.settle(self.amounts, actual_vector(tokens, cost_nano), window_ids(self._clock()))


class _Reservation(Protocol):
    sent: bool

    def response_headers(self) -> list[tuple[str, bytes]]: ...

    def chunk(self, chunk: bytes) -> None: ...

    def complete(self, usage: Any, *, status_ok: bool, body: bytes | None = None) -> None: ...

    def release(self) -> None: ...


class JointReservation:
    """A tenant's ticket and an external endpoint's, driven as one by the stream (the tenant's headers)."""

    __slots__ = ("external", "tenant")

    def __init__(self, tenant: _Reservation, external: ExternalTicket) -> None:
        self.tenant = tenant
        self.external = external

    @property
    def sent(self) -> bool:
        return self.tenant.sent

    @sent.setter
    def sent(self, value: bool) -> None:
        self.tenant.sent = value
        self.external.sent = value

    def response_headers(self) -> list[tuple[str, bytes]]:
        return self.tenant.response_headers()

    def chunk(self, chunk: bytes) -> None:
        self.tenant.chunk(chunk)

    def complete(self, usage: Any, *, status_ok: bool, body: bytes | None = None) -> None:
        try:
            self.tenant.complete(usage, status_ok=status_ok, body=body)
        finally:
            self.external.complete(usage, status_ok=status_ok)

    def release(self) -> None:
        try:
            self.tenant.release()
        finally:
            self.external.release()


class ExternalCapacity:
    """The external endpoints of the active config and their budgets (see the module docstring).

    Accounts are kept by endpoint name across config reloads (a reload cannot reset a minute's count).
    One per process; the director calls :meth:`sync` with the active settings on each request, which is
    an identity comparison unless the config changed.
    """

    def __init__(self, *, share: float = 1.0, clock: Callable[[], float] = now_wall) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self._share = share
        self._clock = clock
        self._source: tuple[ExternalEndpointConfig, ...] | None = None
        self.endpoints: tuple[ExternalEndpoint, ...] = ()
        self.spill = SpilloverConfig()
        self._objectives: frozenset[str] = frozenset()
        self._accounts: dict[str, Account] = {}
        #: requests sent per endpoint name since start (``/debug``, the benchmark)
        self.dispatched: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return bool(self.endpoints)

    def sync(self, endpoints: tuple[ExternalEndpointConfig, ...], spill: SpilloverConfig) -> bool:
        """Follow the active config; returns :attr:`active`."""
        if endpoints is not self._source or spill is not self.spill:
            self._source = endpoints
            self.spill = spill
            self._objectives = frozenset(spill.objectives)
            self.endpoints = tuple(
                ExternalEndpoint(
                    name=e.name,
                    address=e.address,
                    priority=e.priority,
                    price_in=e.price.input_per1_m,
                    price_out=e.price.output_per1_m,
                    limits=_UNLIMITED if e.limits is None else _scaled(compile_limits(e.limits), self._share),
                )
                for e in endpoints
            )
            self._accounts = {e.name: self._accounts.get(e.name) or Account() for e in self.endpoints}
        return bool(self.endpoints)

    def choose(
        self,
        m: EndpointMatrix,
        mask: NDArray[np.bool_] | None,
        scheduler: Scheduler,
        req: PickRequest,
        *,
        levels: Callable[[], NDArray[np.uint8] | None],
        objective: str,
        saturation: float | None,
        empty: bool,
        now: Callable[[], float],
    ) -> tuple[ExternalTicket | None, str | None]:
        """``(reservation on an external endpoint or None, ai_failover_total reason or None)``: the request
        goes external when its objective asks, or when the pool is empty, every candidate ejected, probing
        or draining (``levels``: ``picker.routing.avoid``; stale metrics alone are no reason, the scraper
        is the likelier fault) or saturated (the profile's detector at ``spillover.saturationThreshold``)."""
        asked = self.asks(objective)
        reason: FailoverReason | None = None
        if not asked:
            if empty:
                reason = FailoverReason.UNAVAILABLE
            else:
                lv = levels()
                candidates = None if lv is None else (lv if mask is None else lv[mask])
                if candidates is not None and candidates.size and (candidates >= Level.PROBING).all():
                    reason = FailoverReason.EJECTED
                else:
                    if saturation is None:
                        saturation = scheduler.saturation(m, now=now(), candidates=mask)
                    if saturation >= self.spill.saturation_threshold:
                        reason = FailoverReason.SATURATED
            if reason is None:
                return None, None
        ticket = self.reserve(req.prompt_tokens_estimate, req.output_tokens_estimate or None)
        if ticket is None:
            return None, FailoverReason.OVER_LIMITS.value if asked else None
        return ticket, None if reason is None else reason.value

    def asks(self, objective: str) -> bool:
        """The request's objective asks for external capacity first."""
        return bool(objective) and objective in self._objectives

    def reserve(self, input_tokens: int, max_tokens: int | None) -> ExternalTicket | None:
        """A reservation on the first external endpoint (priority, then cost, then open requests) whose
        limits admit the request, or None when none does."""
        output_tokens = self.spill.default_output_tokens if max_tokens is None else max(0, max_tokens)
        input_tokens = max(0, input_tokens)
        ids = window_ids(self._clock())
        accounts = self._accounts
        order = sorted(
            self.endpoints,
            key=lambda e: (
                e.priority,
                e.cost_nano(input_tokens, output_tokens),
                accounts[e.name].reserved[CONCURRENT],
            ),
        )
        tokens = input_tokens + output_tokens
        for e in order:
            amounts = reservation_vector(tokens, e.cost_nano(input_tokens, output_tokens))
            account = accounts[e.name]
            if account.admit(amounts, e.limits, ids) is None:
                self.dispatched[e.name] = self.dispatched.get(e.name, 0) + 1
                return ExternalTicket(
                    account,
                    e,
                    amounts=amounts,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    clock=self._clock,
                )
        return None

    def stats(self) -> list[Mapping[str, Any]]:
        """Per endpoint: address, priority, limits, what is used and reserved in the current windows."""
        ids = window_ids(self._clock())
        out: list[Mapping[str, Any]] = []
        for e in self.endpoints:
            account = self._accounts[e.name]
            account.roll(ids)
            out.append(
                {
                    "name": e.name,
                    "address": e.address,
                    "priority": e.priority,
                    "price": {"input_per_1m": e.price_in, "output_per_1m": e.price_out},
                    "limits": {n: v for n, v in zip(LIMIT_NAMES, e.limits, strict=True) if v is not None},
                    "used": dict(zip(LIMIT_NAMES, account.used, strict=True)),
                    "reserved": dict(zip(LIMIT_NAMES, account.reserved, strict=True)),
                    "dispatched": self.dispatched.get(e.name, 0),
                }
            )
        return out
