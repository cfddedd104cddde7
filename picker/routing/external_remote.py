"""External endpoints under ``--workers``: one budget and one passive health in the supervisor; workers
reserve and settle over their pipe, as they do for the tenants' memory budget (``picker.tenants.remote``).

Why not a share per worker (what this replaced): ``1/N`` of every limit per worker never passes the limit
but cannot reach it (a worker refuses while another has room; a limit below N is 0 everywhere), and every
worker would keep its own ejection state from a fraction of the outcomes. Why not shared memory: a
reservation reads and writes the six meters of the endpoints it tries, in order, atomically, which the
supervisor's single event loop gives for free; and it costs one local round trip only for requests that
spill (the pool's picks never wait for it).

* :class:`ExternalClient` (worker side): :meth:`~ExternalClient.reserve` sends
  ``["external.reserve", id, input_tokens, max_tokens | null]`` and returns a future of a :class:`Grant`;
  the :class:`RemoteTicket` it carries forwards what the stream tells it: ``["external.served", hold,
  address]`` (the gateway's served endpoint, at the response headers), ``["external.complete", hold,
  prompt | null, completion | null]`` (the response's usage), ``["external.outcome", hold, served | null,
  status, endpoints]`` (for passive health) and ``["external.release", hold, sent]`` (stream end).
* :class:`ExternalHost` (supervisor side) answers a reservation from the supervisor's
  :class:`~picker.routing.external.ExternalCapacity` with ``["external.grant", id, hold, name, address,
  refusal]`` (``hold`` "" when refused; ``refusal`` the ``ai_failover_total`` reason an asking request
  counts: ``over_limits`` or ``ejected``), applies the rest to the :class:`~picker.routing.external.
  ExternalTicket` it holds, and when a worker dies settles that worker's tickets as sent requests with their
  whole reservation (never under-counted).

So ``/debug/external`` and the ``picker_external_*`` metrics are the supervisor's, as in one process.
Across EPP replicas nothing is shared: see ``ExternalCapacity``'s ``share`` (``spillover.replicas``).
Messages are JSON lists of integers, our own endpoint names and addresses, and the served address the
gateway reported (compared, never logged).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

from picker.routing.external import ExternalCapacity, ExternalTicket
from picker.state.outcomes import Outcome

__all__ = [
    "COMPLETE",
    "GRANT",
    "OUTCOME",
    "RELEASE",
    "RESERVE",
    "SERVED",
    "EndpointRef",
    "ExternalClient",
    "ExternalHost",
    "Grant",
    "RemoteTicket",
    "give_back",
]

RESERVE = "external.reserve"
GRANT = "external.grant"
SERVED = "external.served"
COMPLETE = "external.complete"
OUTCOME = "external.outcome"
RELEASE = "external.release"


class EndpointRef(NamedTuple):
    """The endpoint a worker's request was granted (name and address, all the director needs)."""

    name: str
    address: str


class _Usage(NamedTuple):
    prompt_tokens: int
    completion_tokens: int


class RemoteTicket:
    """A worker's side of a reservation the supervisor holds: the stream drives it as an
    :class:`~picker.routing.external.ExternalTicket`, each call a message. Not thread-safe (one stream)."""

    __slots__ = ("_hold", "_send", "done", "endpoint", "sent")

    def __init__(self, send: Callable[[list[Any]], None], hold: str, endpoint: EndpointRef) -> None:
        self._send = send
        self._hold = hold
        self.endpoint = endpoint
        self.sent = False
        self.done = False

    def response_headers(self) -> list[tuple[str, bytes]]:
        return []

    def chunk(self, chunk: bytes) -> None:
        pass

    def served_by(self, address: str) -> None:
        if not self.done and address != self.endpoint.address:
            self._send([SERVED, self._hold, address])

    def complete(self, usage: Any, *, status_ok: bool, body: bytes | None = None) -> None:  # noqa: ARG002 - Reservation protocol
        if self.done:
            return
        if usage is None:
            self._send([COMPLETE, self._hold, None, None])
        else:
            self._send([COMPLETE, self._hold, int(usage.prompt_tokens), int(usage.completion_tokens)])

    def report(self, outcome: Outcome) -> None:
        if not self.done:
            self._send([OUTCOME, self._hold, outcome.served, outcome.status, list(outcome.endpoints)])

    def release(self) -> None:
        if not self.done:
            self.done = True
            self._send([RELEASE, self._hold, self.sent])


class Grant(NamedTuple):
    """The supervisor's answer: a ticket, or None and why (``over_limits`` / ``ejected``)."""

    ticket: RemoteTicket | None
    refusal: str


class ExternalClient:
    """A worker's view of the supervisor's external budgets. ``send`` queues one message on the pipe."""

    def __init__(self, send: Callable[[list[Any]], None]) -> None:
        self._send = send
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Grant]] = {}

    def reserve(self, input_tokens: int, max_tokens: int | None) -> asyncio.Future[Grant]:
        rid = next(self._ids)
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        self._send([RESERVE, rid, int(input_tokens), None if max_tokens is None else int(max_tokens)])
        return future

    def deliver(self, message: list[Any]) -> None:
        """An ``external.grant`` from the supervisor."""
        _, rid, hold, name, address, refusal = message
        future = self._waiting.pop(rid, None)
        if future is None or future.done():
            if hold:  # the request went away while asking: give the reservation back
                self._send([RELEASE, hold, False])
            return
        ticket = RemoteTicket(self._send, hold, EndpointRef(name, address)) if hold else None
        future.set_result(Grant(ticket, str(refusal)))

    def abandon(self) -> None:
        """The supervisor is gone: every waiting reservation is refused (the request stays in the pool)."""
        for future in self._waiting.values():
            if not future.done():
                future.set_result(Grant(None, "over_limits"))
        self._waiting.clear()


def give_back(future: asyncio.Future[Grant]) -> None:
    """A request that went away while (or after) asking, before it used the answer: the answer still to
    come is given back on arrival (:meth:`ExternalClient.deliver`), one already here at once."""
    if not future.done():
        future.cancel()
    elif not future.cancelled() and (ticket := future.result().ticket) is not None:
        ticket.release()


class ExternalHost:
    """The supervisor's side: every worker's reservations against its one :class:`ExternalCapacity`."""

    def __init__(self, capacity: ExternalCapacity) -> None:
        self._capacity = capacity
        self._holds: dict[int, dict[str, ExternalTicket]] = {}
        self._ids = itertools.count(1)

    def handle(self, worker: int, message: list[Any]) -> list[Any] | None:
        """Apply one worker message; returns the reply to send, if any."""
        kind = message[0]
        if kind == RESERVE:
            _, rid, input_tokens, max_tokens = message
            capacity = self._capacity
            ticket = capacity.reserve(int(input_tokens), None if max_tokens is None else int(max_tokens))
            if ticket is None:
                return [GRANT, rid, "", None, None, capacity.refusal().value]
            hold = f"{worker}:{next(self._ids)}"
            self._holds.setdefault(worker, {})[hold] = ticket
            return [GRANT, rid, hold, ticket.endpoint.name, ticket.endpoint.address, ""]
        holds = self._holds.get(worker, {})
        ticket = holds.get(message[1])
        if ticket is None:
            return None  # unknown, or already settled when its worker was retired
        if kind == SERVED:
            ticket.served_by(str(message[2]))
        elif kind == COMPLETE:
            _, _, prompt, completion = message
            usage = None if prompt is None else _Usage(int(prompt), int(completion))
            ticket.sent = True
            ticket.complete(usage, status_ok=True)
        elif kind == OUTCOME:
            _, _, served, status, endpoints = message
            ticket.report(Outcome(tuple(str(e) for e in endpoints), served, int(status)))
        elif kind == RELEASE:
            del holds[message[1]]
            ticket.sent = bool(message[2])
            ticket.release()
        return None

    def retire(self, worker: int) -> int:
        """The worker is gone: its streams died with it; settle each of its reservations as a sent request
        with its whole reservation (we cannot know what the provider counted)."""
        holds = self._holds.pop(worker, {})
        for ticket in holds.values():
            ticket.sent = True
            ticket.release()
        return len(holds)
