"""Reservations on external endpoints (``picker.routing.external``) as the stream drives them: the
endpoints compiled from the config, :class:`ExternalTicket` (one request's reservation, settled once),
:class:`ExternalLease` (its outcome to passive health) and :class:`JointReservation` (with a tenant's).

**Settled from the endpoint that served.** The gateway tries the external endpoint first and, when it
fails (5xx, reset, connect failure, timeout), retries on the pool's fallback. When the gateway reports the
served endpoint (``x-gateway-destination-endpoint-served``, :meth:`ExternalTicket.served_by`, told at the
response headers) and it is not the external one, the reservation is settled at once as one request with
no tokens and no cost: the attempt reached (or tried to reach) the provider, which may count it against
its requests per minute, but produced no completion to bill. Without that report nothing tells the two
apart and the reservation is settled as if the external endpoint served (never under-counted).

Settlement otherwise: the response's ``usage`` (exact), or the whole reservation when the response reported
none or the stream broke off after it was sent; nothing for a request never sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from picker.state.outcomes import Outcome
from picker.tenants.ledger import Account, Limits, Vector, actual_vector, window_ids

__all__ = ["ExternalEndpoint", "ExternalLease", "ExternalTicket", "JointReservation", "SpillTicket"]


class _Usage(Protocol):
    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ExternalEndpoint:
    """One ``externalEndpoints`` entry, compiled: prices in nano-units per million tokens, limits as the
    ledger's six meters (already scaled to this replica's share, ``spillover.replicas``)."""

    name: str
    address: str
    priority: int
    price_in: float
    price_out: float
    limits: Limits

    def cost_nano(self, input_tokens: int, output_tokens: int) -> int:
        """What ``input_tokens`` + ``output_tokens`` cost here, in nano-units (rounded up)."""
        return math.ceil((input_tokens * self.price_in + output_tokens * self.price_out) * 1000.0)


class ExternalTicket:
    """One request's reservation on an external endpoint (the stream drives it as it drives a tenant's
    ticket: ``picker.routing.types.Reservation``). Not thread-safe (one stream)."""

    __slots__ = (
        "_account",
        "_clock",
        "_observe",
        "amounts",
        "done",
        "endpoint",
        "input_tokens",
        "output_tokens",
        "sent",
        "served_elsewhere",
    )

    def __init__(
        self,
        account: Account,
        endpoint: ExternalEndpoint,
        *,
        amounts: Vector,
        input_tokens: int,
        output_tokens: int,
        clock: Callable[[], float],
        observe: Callable[[str, Outcome], None] | None = None,
    ) -> None:
        self._account = account
        self._clock = clock
        self._observe = observe
        self.endpoint = endpoint
        self.amounts = amounts
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.sent = False
        self.done = False
        #: the gateway reported another endpoint (the pool's fallback) as the one that served
        self.served_elsewhere = False

    def response_headers(self) -> list[tuple[str, bytes]]:
        return []

    def chunk(self, chunk: bytes) -> None:
        pass

    def served_by(self, address: str) -> None:
        """The gateway's served endpoint, at the response headers: another one than ours (its retry landed
        on the pool's fallback) settles now as one request without tokens or cost (module docstring), and
        counts as a failure of ours for passive health now, not at the stream's end: a fallback's answer
        may stream for a long time, and every request spilled meanwhile would go to a failing endpoint."""
        if self.done or address == self.endpoint.address:
            return
        self.served_elsewhere = True
        self.sent = True
        self._settle(0, 0)
        ours = self.endpoint.address
        self.report(Outcome(endpoints=(ours, address), served=address, status=200))

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

    def report(self, outcome: Outcome) -> None:
        """What the request came to, for the external endpoints' passive health (:class:`ExternalLease`);
        once (a request served elsewhere was reported at :meth:`served_by`)."""
        observe = self._observe
        if observe is not None:
            self._observe = None
            observe(self.endpoint.address, outcome)

    def _settle(self, tokens: int, cost_nano: int) -> None:
        self.done = True
        self._account.settle(self.amounts, actual_vector(tokens, cost_nano), window_ids(self._clock()))


class _Endpoint(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...


class SpillTicket(Protocol):
    """A reservation on an external endpoint as the director and the stream drive it: an
    :class:`ExternalTicket`, or a ``--workers`` worker's ``RemoteTicket`` on the supervisor's."""

    sent: bool

    @property
    def endpoint(self) -> _Endpoint: ...

    def response_headers(self) -> list[tuple[str, bytes]]: ...

    def chunk(self, chunk: bytes) -> None: ...

    def served_by(self, address: str) -> None: ...

    def complete(self, usage: Any, *, status_ok: bool, body: bytes | None = None) -> None: ...

    def report(self, outcome: Outcome) -> None: ...

    def release(self) -> None: ...


class ExternalLease:
    """The lease of a request sent to an external endpoint first (``Dispatch.lease``): it holds nothing of
    the pool's load (the pool's endpoints are only its fallback list); its outcome goes to the external
    endpoints' passive health through the ticket, and to the pool's (``pool``: the pool endpoints the
    gateway's retry reached, when it did, learn their part as for any request)."""

    __slots__ = ("_pool", "_ticket")

    def __init__(self, ticket: SpillTicket, pool: Callable[[Outcome], None] | None = None) -> None:
        self._ticket = ticket
        self._pool = pool

    def first_byte(self) -> None:
        pass

    def report(self, outcome: Outcome, /) -> None:
        try:
            self._ticket.report(outcome)
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool(outcome)

    def release(self) -> None:
        pass


class _Reservation(Protocol):
    sent: bool

    def response_headers(self) -> list[tuple[str, bytes]]: ...

    def chunk(self, chunk: bytes) -> None: ...

    def served_by(self, address: str) -> None: ...

    def complete(self, usage: Any, *, status_ok: bool, body: bytes | None = None) -> None: ...

    def release(self) -> None: ...


class JointReservation:
    """A tenant's ticket and an external endpoint's, driven as one by the stream (the tenant's headers)."""

    __slots__ = ("external", "tenant")

    def __init__(self, tenant: _Reservation, external: SpillTicket) -> None:
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

    def served_by(self, address: str) -> None:
        try:
            self.tenant.served_by(address)
        finally:
            self.external.served_by(address)

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
