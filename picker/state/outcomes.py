"""What routed requests came to, per endpoint: the input of passive health and of the latency averages.

Each finished stream reports one :class:`Outcome` through its lease (:meth:`picker.state.accounting.Lease.
report`). :func:`classify` turns it into per-endpoint events, which the writer adds to **outcome counter
rows**, the same shape as the load accounting's (:mod:`picker.state.accounting`): ``outcomes[row, kind,
slot]``, one row per writing process, the endpoint's accounting slot, monotonic float64 counts and sums
(one writer per word, so ``--workers`` need no atomics). Each row also counts its reports in
``ticks[row]``, so the owner can tell in one comparison that nothing happened.

The owner (the datastore: one process, or the ``--workers`` supervisor) drains the rows at every snapshot
or publish (:meth:`OutcomeLedger.drain`): the totals over every row minus what it had seen, per endpoint,
fed to :class:`~picker.state.health.OutlierDetector` and :class:`~picker.state.latency.LatencyTracker`.
A slot handed to a new endpoint continues from the old totals (only increases are events), and the
accounting quarantines a removed endpoint's slot while its streams are open, so a late outcome cannot land
on a newcomer.

Classification (:func:`classify`; failure kinds in :class:`~picker.state.health.FailureKind`):

* the served endpoint — the one the gateway reports in ``x-gateway-destination-endpoint-served``, else the
  primary — gets the response's verdict: a status >= 500 is a failure (504: ``timeout``, others ``5xx``),
  no response headers at all is a failure (``reset``: connect failure, reset or timeout the gateway did
  not turn into a response; counted once the process has seen the gateway send any response, see
  :class:`OutcomeWriter`), anything else a success;
* every endpoint of our list before the served one failed first (``retried``): the gateway walked past
  it, as Envoy does on ``retry_on: 5xx,reset,connect-failure``;
* latency samples (only for a success, and only when the primary served it: a retried request's timing
  includes the failed attempt) go to the served endpoint.

A served endpoint that is not in our list (a gateway that ignores the list) gets the verdict all the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple, cast

import numpy as np

from picker.state.health import FailureKind

__all__ = [
    "OUTCOME_KINDS",
    "Outcome",
    "OutcomeLedger",
    "OutcomeRows",
    "OutcomeWriter",
    "classify",
]

#: counter kinds per slot: successes, failures by kind, then (sum, count) of each latency signal
OUTCOME_KINDS: Final = (
    "ok",
    FailureKind.STATUS_5XX.value,
    FailureKind.TIMEOUT.value,
    FailureKind.RESET.value,
    FailureKind.RETRIED.value,
    "ttft_per_1k_sum",
    "ttft_per_1k_n",
    "tpot_sum",
    "tpot_n",
    "ntpot_sum",
    "ntpot_n",
)
OK: Final = 0
#: index of each failure kind
FAILURE_INDEX: Final = {kind: OUTCOME_KINDS.index(kind.value) for kind in FailureKind}
FAILURES: Final = slice(1, 5)
#: first index of the latency (sum, count) pairs, in :class:`~picker.state.latency.LatencySignal` order
LATENCY: Final = 5

#: prompts shorter than this count as this many tokens in ``ttft_per_1k`` (see picker/state/latency.py)
MIN_PROMPT_TOKENS: Final = 256

NAN = math.nan


class Outcome(NamedTuple):
    """What one routed request came to, as the ext_proc stream saw it at its end (seconds; NaN unknown)."""

    #: our list as sent to the gateway, primary first (``ip:port``)
    endpoints: tuple[str, ...]
    #: ``x-gateway-destination-endpoint-served`` of the response, when the gateway reported it
    served: str | None
    #: the response ``:status``; 0 = the stream ended without response headers
    status: int
    #: time from the request (its headers reaching the EPP) to the first response body byte of a streamed
    #: response
    ttfb_s: float = NAN
    #: the request's prompt-size estimate (tokens), for ``ttft_per_1k``
    prompt_tokens: int = 0
    #: mean time between the response's body chunks (streamed, at least two chunks)
    tpot_s: float = NAN
    #: time per output token of a non-streamed response (request to the end of the response / completion
    #: tokens)
    ntpot_s: float = NAN


def classify(outcome: Outcome) -> tuple[list[tuple[str, int]], str | None]:
    """``([(address, kind index), ...], address that gets the latency samples or None)``."""
    endpoints = outcome.endpoints
    if not endpoints:
        return [], None
    served = outcome.served or endpoints[0]
    events: list[tuple[str, int]] = []
    try:
        position = endpoints.index(served)
    except ValueError:
        position = -1  # not ours: nothing is known about the endpoints of our list
    retried = FAILURE_INDEX[FailureKind.RETRIED]
    events.extend((endpoints[k], retried) for k in range(max(position, 0)))
    status = outcome.status
    if status == 0:
        verdict = FAILURE_INDEX[FailureKind.RESET]
    elif status == 504:
        verdict = FAILURE_INDEX[FailureKind.TIMEOUT]
    elif status >= 500:
        verdict = FAILURE_INDEX[FailureKind.STATUS_5XX]
    else:
        verdict = OK
    events.append((served, verdict))
    sampled = served if verdict == OK and position == 0 and 200 <= status < 300 else None
    return events, sampled


class OutcomeRows:
    """The outcome counters ``[rows, kinds, capacity]`` and per-row report counts ``ticks[rows]``; this
    process writes row ``writer``."""

    def __init__(self, counters: np.ndarray, ticks: np.ndarray, writer: int) -> None:
        rows, kinds, capacity = counters.shape
        if kinds != len(OUTCOME_KINDS) or ticks.shape != (rows,) or not 0 <= writer < rows:
            raise ValueError(f"outcome arrays of shapes {counters.shape}, {ticks.shape} have no row {writer}")
        self.counters = counters
        self.ticks = ticks
        self.writer = writer
        self.capacity = capacity
        # float64 rows: memoryviews make ``cell[slot] += x`` a plain C double update (see accounting)
        self.cells = tuple(cast("memoryview[float]", counters[writer, k].data) for k in range(kinds))
        self._tick = cast("memoryview[float]", ticks[writer : writer + 1].data)
        self._ticks = cast("memoryview[float]", ticks.data)

    @classmethod
    def local(cls, capacity: int) -> OutcomeRows:
        """One process, one row, in this process's memory."""
        return cls(np.zeros((1, len(OUTCOME_KINDS), capacity)), np.zeros(1), 0)

    def add(self, slot: int, kind: int, amount: float = 1.0) -> None:
        self.cells[kind][slot] += amount

    def tick(self) -> None:
        """One report is complete (after its counters were written)."""
        self._tick[0] += 1.0

    def total_ticks(self) -> float:
        """Reports over every row (a handful of plain reads: the owner asks at every snapshot)."""
        cells = self._ticks
        total = 0.0
        for row in range(len(cells)):
            total += cells[row]
        return total


class OutcomeWriter:
    """Writes one process's reports: ``resolve`` maps an endpoint address to its slot (None: unknown).

    A stream that ends without response headers counts as a failure only once this process has seen a
    response come back through the gateway at all (:attr:`responses_seen`): a proxy configured not to send
    response phases (``response_header_mode: SKIP``), or a test client that only routes, would otherwise
    look like a fleet where every request fails.
    """

    __slots__ = ("_resolve", "_rows", "responses_seen")

    def __init__(self, rows: OutcomeRows, resolve: Callable[[str], int | None]) -> None:
        self._rows = rows
        self._resolve = resolve
        self.responses_seen = False

    def write(self, outcome: Outcome) -> None:
        if outcome.status:
            self.responses_seen = True
        elif not self.responses_seen:
            return
        events, sampled = classify(outcome)
        rows = self._rows
        resolve = self._resolve
        wrote = False
        for address, kind in events:
            slot = resolve(address)
            if slot is not None:
                rows.add(slot, kind)
                wrote = True
        if sampled is not None and (slot := resolve(sampled)) is not None:
            samples = (
                _ttft_per_1k(outcome.ttfb_s, outcome.prompt_tokens),
                outcome.tpot_s,
                outcome.ntpot_s,
            )
            for k, value in enumerate(samples):
                if math.isfinite(value) and value >= 0.0:
                    rows.add(slot, LATENCY + 2 * k, value)
                    rows.add(slot, LATENCY + 2 * k + 1)
        if wrote:
            rows.tick()


def _ttft_per_1k(ttfb_s: float, prompt_tokens: int) -> float:
    return ttfb_s * 1000.0 / max(float(prompt_tokens), float(MIN_PROMPT_TOKENS))


class OutcomeLedger:
    """The owner's side: what it has seen of every slot, and the drain of what is new."""

    def __init__(self, rows: OutcomeRows) -> None:
        self.rows = rows
        self._seen = np.zeros((len(OUTCOME_KINDS), rows.capacity))
        self._ticks_seen = 0.0

    def pending(self) -> bool:
        """Something was reported since the last drain (one sum over the rows' report counts)."""
        return self.rows.total_ticks() != self._ticks_seen

    def drain(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(positions, deltas[kinds, positions])`` of the endpoints at ``slots`` (matrix row order) with
        new outcomes, or None. Reads every row once; marks everything read as seen."""
        ticks = self.rows.total_ticks()
        if ticks == self._ticks_seen or not len(slots):
            self._ticks_seen = ticks
            return None
        self._ticks_seen = ticks
        totals = self.rows.counters[:, :, slots].sum(axis=0)
        deltas = totals - self._seen[:, slots]
        self._seen[:, slots] = totals
        changed = np.flatnonzero((deltas != 0.0).any(axis=0))
        if not changed.size:
            return None
        return changed, deltas[:, changed]

    def forget(self, slots: Sequence[int]) -> None:
        """Slots about to be handed to new endpoints: count what is there as seen."""
        if len(slots):
            index = np.asarray(slots, dtype=np.intp)
            self._seen[:, index] = self.rows.counters[:, :, index].sum(axis=0)
