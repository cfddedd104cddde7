"""Closed-loop sessions in the fleet simulator: requests that wait for another request's response.

A request with ``Workload.after[i] = j`` (a session's next round, :mod:`benchmarks.sim.shared_prefix`) is
held from its scheduled arrival until request ``j``'s response has ended, and sent then (or at its
scheduled time if that is later); its latency counts from when it is sent, as the client's does. The loop
(:func:`benchmarks.sim.fleet.simulate`) asks :class:`Waits` what is due; while any request is held it runs
the servers' steps one at a time in global start order (:func:`advance_in_order`), so a response that ends
before the next event releases its follower at that instant, before any server has computed a step past
it. Workloads without ``after`` never hold anything and take none of these paths.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from benchmarks.sim.server import RequestTable, SimServer


def advance_in_order(servers: Sequence[SimServer], until: float, waits: Waits) -> float:
    """Run the servers' steps that start at or before ``until`` one at a time, earliest start first; a step
    whose finished response releases a request due earlier moves ``until`` back to that instant, so no
    server computes a step past the moment that request is sent. Returns where it stopped."""
    while True:
        nxt: SimServer | None = None
        for srv in servers:
            if (
                srv.busy_until <= until
                and (srv.running or srv.n_waiting)
                and (nxt is None or srv.busy_until < nxt.busy_until)
            ):
                nxt = srv
        if nxt is None:
            return until
        nxt.advance(nxt.busy_until)  # one step: it ends after it starts
        waits.collect()
        until = min(until, waits.next_due())


class Waits:
    """Requests held until the response they wait for has ended (``Workload.after``).

    When a held request's scheduled arrival comes (:meth:`hold`) and the request it waits for has not
    finished by then, it is held; the finish (the servers list finished requests in ``RequestTable.done``,
    read by :meth:`collect`) makes it due at the larger of its arrival and that finish; :meth:`pop` hands
    out due requests in time order (ties: request order).
    """

    __slots__ = ("_after", "_arrivals", "_done", "_due", "_finish", "_held", "_read")

    def __init__(self, after: NDArray[np.int64] | None, table: RequestTable) -> None:
        self._after: list[int] = after.tolist() if after is not None and bool((after >= 0).any()) else []
        self._arrivals = table.arrival
        self._finish = table.finish
        self._done = table.done
        self._read = 0
        self._held: dict[int, list[int]] = {}
        self._due: list[tuple[float, int]] = []

    @property
    def held(self) -> bool:
        """Some request waits for a response that has not ended."""
        return bool(self._held)

    @property
    def outstanding(self) -> bool:
        """Some request is held or due but not sent yet."""
        return bool(self._held or self._due)

    def hold(self, r: int) -> bool:
        """Request ``r``'s scheduled arrival has come: True if it must wait (held or due later), False if
        it goes now."""
        p = self._after[r] if self._after else -1
        if p < 0:
            return False
        end = self._finish[p]
        if math.isnan(end):  # still running (or not sent yet)
            self._held.setdefault(p, []).append(r)
            return True
        if end <= self._arrivals[r]:
            return False
        heapq.heappush(self._due, (end, r))
        return True

    def collect(self) -> None:
        """Release the requests waiting for responses that ended since the last call."""
        if not self._held:
            return
        done = self._done
        while self._read < len(done):
            p = done[self._read]
            self._read += 1
            for r in self._held.pop(p, ()):
                heapq.heappush(self._due, (max(self._finish[p], self._arrivals[r]), r))

    def next_due(self) -> float:
        """When the earliest released request is due (inf: none)."""
        self.collect()
        return self._due[0][0] if self._due else math.inf

    def pop(self) -> int:
        """The earliest due request (it is sent now)."""
        return heapq.heappop(self._due)[1]
