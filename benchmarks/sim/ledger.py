"""The service's load accounting in the fleet simulator, driven by what a proxy in front of the servers sees.

:class:`Ledger` charges each routed request to the endpoint matrix's four accounting columns exactly as the
service does (``scoring.matrix.LoadCharge``) and releases the charges at the first token and the end of
the response, in time order, never before simulated time has passed them (:mod:`benchmarks.sim.fleet`).
"""

from __future__ import annotations

import heapq

import numpy as np
from numpy.typing import NDArray

from benchmarks.sim.server import FIRST_TOKEN, RequestTable
from scoring.matrix import EndpointMatrix, LoadCharge
from scoring.types import PickRequest

#: placeholder of a request not charged yet
_NO_CHARGE = LoadCharge(0.0, 0.0)


class Ledger:
    """The service's load accounting (``scoring.matrix.LoadCharge``) driven by what a proxy observes.

    ``m`` is any snapshot of the fleet view (all share the four accounting arrays). Requests are charged
    at their pick (a non-streaming one charges no prefill tokens); :meth:`observe` applies the first-token
    and end-of-response events the servers have recorded up to a time, in time order, releasing each
    charge exactly as the service will: ``prefill_tokens`` at a stream's first token (or its end if no
    token came), ``inflight`` and ``inflight_tokens`` at the end.
    """

    __slots__ = ("_charges", "_events", "_m", "_pending", "_server", "_streaming", "_until_end")

    def __init__(
        self, m: EndpointMatrix, table: RequestTable, streaming: NDArray[np.bool_], *, until_end: bool = False
    ) -> None:
        self._m = m
        self._until_end = until_end
        self._events = table.events
        self._server = table.server
        self._streaming: list[bool] = streaming.tolist()
        self._charges: list[LoadCharge] = [_NO_CHARGE] * table.n
        self._pending = [False] * table.n

    def charge(self, r: int, i: int, req: PickRequest) -> None:
        """Request ``r`` was routed to row ``i``; its prefix match, if any, is credited as the service does
        (pending prefill = the uncached part)."""
        charge = LoadCharge.for_request(req, i)
        if self._until_end and not req.stream:
            charge = LoadCharge(charge.tokens, charge.tokens)  # the what-if rule (FleetConfig)
        charge.add(self._m, i)
        self._charges[r] = charge
        self._pending[r] = True

    def observe(self, until: float) -> None:
        """Apply every recorded event at or before ``until``."""
        events = self._events
        m = self._m
        while events and events[0][0] <= until:
            _, kind, r = heapq.heappop(events)
            if kind == FIRST_TOKEN and not self._streaming[r]:
                continue  # a non-streaming response shows nothing before its end
            i = self._server[r]
            charge = self._charges[r]
            if self._pending[r]:
                self._pending[r] = False
                m.prefill_tokens[i] -= charge.prefill
            if kind != FIRST_TOKEN:
                m.inflight[i] -= 1.0
                m.inflight_tokens[i] -= charge.tokens
