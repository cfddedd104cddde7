"""Load accounting: one counter-row model for one process and for ``--workers`` alike.

The four load columns of a snapshot (``dispatched``, ``inflight``, ``prefill_tokens``,
``inflight_tokens``; see :class:`scoring.matrix.LoadCharge` for what each event adds and gives back) are
kept as **counter rows**: a float64 array ``counters[row, kind, slot]``.

* A **slot** is an endpoint's place in the accounting. The owner (:class:`LoadLedger`, held by the
  :class:`~picker.state.datastore.Datastore`) gives each endpoint (name and address) a slot while it is in
  the pool. A removed endpoint's slot is quarantined: reused only after ``quarantine_s`` and once nothing is
  in flight on it, so a stream still open on a removed endpoint never gives back into a newcomer's count.
  A lease therefore holds its slot, not a name, and releases without asking anyone.
* A **row** is one writer: every process writes exactly one row (single writer per word, so several
  processes need no atomics). One process: one row. ``--workers N``: N worker rows plus the supervisor's
  row, in shared memory (:mod:`picker.state.segment`).
* A **column** of the matrix is the sum over rows at the endpoint's slot. With one row and a pool whose
  slots are consecutive (a pool without churn) the columns are views of the row itself: live, and free to
  read. Otherwise they are refreshed at every :meth:`~picker.state.datastore.Datastore.snapshot` (one
  gather, or one sum over the rows).

Rows hold *net* values: a pick adds ``+1`` dispatched and in flight and its :class:`~scoring.matrix.
LoadCharge`; the lease gives back in flight and the charge into the same row. Charges are whole numbers,
so what comes back is bit for bit what went in and a closed slot sums to exactly zero.

"Dispatched since the scrape began", tracked once, by the owner: when a scrape of an endpoint *starts*
the ledger notes the requests sent to it in all (``mark``); when that scrape's gauges are published, the
requests sent before it started are visible in them, so the owner subtracts them in its own row
(``baseline`` remembers what was subtracted so far). The column is then exactly "sent since the scrape
began". The subtraction is applied when the gauges are published (snapshot rebuilt, shared columns
written), not when they land, so a pick never sees the drop without the gauges that account for it.

A row of a worker that died is settled by the supervisor (:meth:`LoadLedger.settle_row`): its streams
died with it, so its in-flight counts and token charges go to zero. Its ``dispatched`` stays (those
requests were sent) until scrapes account for them.

Why one module of this size: rows, leases, columns and the ledger read and write the same words of one
array under one invariant (a closed slot sums to zero; a slot is reused only when nothing is in flight on
it); split, that invariant would be spread over files that cannot be read alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Final, cast

import numpy as np

from picker.state.outcomes import Outcome, OutcomeWriter
from scoring.matrix import LoadCharge

__all__ = [
    "DEFAULT_CAPACITY",
    "KINDS",
    "NO_CHARGE",
    "CounterRows",
    "Lease",
    "LoadColumns",
    "LoadLedger",
    "NullLease",
]

#: the counter kinds, in the order of the matrix's load columns
KINDS: Final = ("dispatched", "inflight", "prefill_tokens", "inflight_tokens")
_DISPATCHED: Final = 0
_INFLIGHT: Final = 1
_PREFILL: Final = 2
_TOKENS: Final = 3

#: endpoints alive (plus quarantined) at once; the arrays are zero pages until touched
DEFAULT_CAPACITY: Final = 16384

#: the charge of a request with no token estimate (header-only requests, callers that count requests only)
NO_CHARGE: Final = LoadCharge(0.0, 0.0)

#: one row as four memoryviews, one per kind: ``view[slot] += x`` is a plain C double read and write,
#: where ``array[i] += x`` goes through numpy's scalar machinery (about half of the accounting's cost in
#: the server, where every stream runs with cold caches)
RowCells = tuple["memoryview[float]", "memoryview[float]", "memoryview[float]", "memoryview[float]"]


def _cells(row: np.ndarray) -> RowCells:
    # float64 rows: their buffers' items are Python floats (typeshed types ``.data`` as int items)
    d, i, p, t = (cast("memoryview[float]", row[k].data) for k in range(len(KINDS)))
    return d, i, p, t


class Lease:
    """One routed request's load on its primary endpoint's slot, in the row of the process that routed it.

    :meth:`first_byte` (the first response body byte: the prompt's prefill is done) gives back the prefill
    part of the charge; :meth:`release` (the stream ended, for any reason) gives back the rest, and the
    prefill if no byte came. Both idempotent, so exactly what was added is subtracted once.
    """

    __slots__ = ("_cells", "_prefill", "_reporter", "_slot", "_tokens", "prefill_released", "released")

    def __init__(
        self, cells: RowCells, slot: int, charge: LoadCharge, reporter: OutcomeWriter | None = None
    ) -> None:
        self._cells = cells
        self._slot = slot
        self._prefill = charge.prefill
        self._tokens = charge.tokens
        self._reporter = reporter
        self.prefill_released = charge.prefill == 0.0
        self.released = False

    def report(self, outcome: Outcome) -> None:
        """What the request came to (passive health, latency): call once, before :meth:`release`, so the
        owner can see the outcome of a probe before the endpoint shows nothing in flight."""
        reporter = self._reporter
        if reporter is not None:
            self._reporter = None
            reporter.write(outcome)

    def first_byte(self) -> None:
        if not self.prefill_released:
            self.prefill_released = True
            self._cells[_PREFILL][self._slot] -= self._prefill

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        _, inflight, prefill, tokens = self._cells
        slot = self._slot
        if not self.prefill_released:
            self.prefill_released = True
            prefill[slot] -= self._prefill
        tokens[slot] -= self._tokens
        inflight[slot] -= 1.0  # last: the owner reclaims a removed slot once nothing is in flight


class NullLease:
    """For picks that are not dispatched (``/debug/explain``, header-only requests)."""

    __slots__ = ()

    def first_byte(self) -> None:
        return None

    def report(self, outcome: Outcome) -> None:  # noqa: ARG002 - the Lease interface
        return None

    def release(self) -> None:
        return None


class LoadColumns:
    """The four load columns of a matrix whose rows are ``slots`` (in matrix row order).

    ``arrays`` are handed to every snapshot of this membership. ``refresh`` is None when they are live
    views of the only row (nothing to do); otherwise call it before each read of the columns.
    """

    __slots__ = ("arrays", "refresh")

    def __init__(
        self,
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        refresh: Callable[[], None] | None,
    ) -> None:
        self.arrays = arrays
        self.refresh = refresh


def _contiguous(slots: np.ndarray) -> slice | None:
    """``slots`` as a slice when they are consecutive and ascending, else None."""
    n = len(slots)
    if n == 0:
        return slice(0, 0)
    first = int(slots[0])
    if int(slots[-1]) - first == n - 1 and bool((np.diff(slots) == 1).all()):
        return slice(first, first + n)
    return None


class CounterRows:
    """The counter array ``[rows, kinds, capacity]`` and the one row this process writes (``writer``)."""

    def __init__(self, counters: np.ndarray, writer: int) -> None:
        rows, kinds, capacity = counters.shape
        if kinds != len(KINDS) or not 0 <= writer < rows:
            raise ValueError(f"counter array of shape {counters.shape} has no writer row {writer}")
        self.counters = counters
        self.writer = writer
        self.rows = rows
        self.capacity = capacity
        self.cells = _cells(counters[writer])

    @classmethod
    def local(cls, capacity: int = DEFAULT_CAPACITY) -> CounterRows:
        """One process, one row, in this process's memory."""
        return cls(np.zeros((1, len(KINDS), capacity)), 0)

    def acquire(
        self, slot: int, charge: LoadCharge = NO_CHARGE, reporter: OutcomeWriter | None = None
    ) -> Lease:
        """Count a request dispatched to ``slot`` with its token ``charge``; the lease gives it back (and
        hands the request's outcome to ``reporter``)."""
        cells = self.cells
        dispatched, inflight, prefill, tokens = cells
        dispatched[slot] += 1.0
        inflight[slot] += 1.0
        prefill[slot] += charge.prefill
        tokens[slot] += charge.tokens
        return Lease(cells, slot, charge, reporter)

    def columns(self, slots: np.ndarray) -> LoadColumns:
        """The load columns of a matrix over ``slots`` (see :class:`LoadColumns`)."""
        counters = self.counters
        span = _contiguous(slots)
        if self.rows == 1 and span is not None:
            row = counters[0]
            return LoadColumns((row[0, span], row[1, span], row[2, span], row[3, span]), None)
        out = np.zeros((len(KINDS), len(slots)))
        arrays = (out[0], out[1], out[2], out[3])
        if not len(slots):
            return LoadColumns(arrays, None)
        if self.rows == 1:
            row = counters[0]
            index = slots.copy()

            def gather() -> None:
                np.take(row, index, axis=1, out=out)

            return LoadColumns(arrays, gather)
        selector: slice | np.ndarray = span if span is not None else slots.copy()
        dispatched = out[_DISPATCHED]

        def total() -> None:
            np.sum(counters[:, :, selector], axis=0, out=out)
            # another process's rows may be read a moment later than the owner's subtraction (a scrape
            # landing between the two reads): never show fewer than zero
            np.maximum(dispatched, 0.0, out=dispatched)

        return LoadColumns(arrays, total)

    def open_streams(self, until: int) -> float:
        """Streams in flight over every row and the slots below ``until``."""
        return float(self.counters[:, _INFLIGHT, :until].sum())


class LoadLedger:
    """The owner's side of the accounting: slots, scrape marks and the ``dispatched`` subtraction.

    Written by one process (the one with the datastore); the rows it reads may be written by others.
    """

    def __init__(
        self,
        counters: CounterRows,
        *,
        clock: Callable[[], float] = time.monotonic,
        quarantine_s: float = 10.0,
    ) -> None:
        self.counters = counters
        self._clock = clock
        self._quarantine_s = quarantine_s
        capacity = counters.capacity
        self._slot_of: dict[tuple[str, str], int] = {}
        self._free: list[int] = []
        self._next_slot = 0
        self._quarantined: dict[int, float] = {}
        #: dispatches already subtracted, per slot (the owner row holds ``-baseline`` plus its own picks)
        self._baseline = np.zeros(capacity)
        #: dispatches sent in all when the scrape in progress began (NaN: none in progress)
        self._mark = np.full(capacity, math.nan)
        #: the mark of a scrape that landed and is not published yet (NaN: none)
        self._pending = np.full(capacity, math.nan)
        self._baseline_cells = cast("memoryview[float]", self._baseline.data)
        self._mark_cells = cast("memoryview[float]", self._mark.data)
        self._pending_cells = cast("memoryview[float]", self._pending.data)
        self._owner = counters.cells[_DISPATCHED]
        self._dispatched_rows = tuple(
            cast("memoryview[float]", counters.counters[r, _DISPATCHED].data) for r in range(counters.rows)
        )

    # ------------------------------------------------------------------------------------------ slots
    @property
    def slots_used(self) -> int:
        """Slots ever handed out: every slot in use or quarantined is below this."""
        return self._next_slot

    def slot_of(self, name: str, address: str) -> int | None:
        return self._slot_of.get((name, address))

    def assign(self, keys: Sequence[tuple[str, str]]) -> np.ndarray:
        """The slots of exactly these ``(name, address)`` endpoints, in order: kept ones keep theirs,
        removed ones are quarantined, new ones get a fresh slot (nothing dispatched, nothing in flight)."""
        wanted = set(keys)
        now = self._clock()
        removed = {key: slot for key, slot in self._slot_of.items() if key not in wanted}
        for key, slot in removed.items():
            del self._slot_of[key]
            self._quarantined[slot] = now
        added: list[tuple[str, str]] = []
        try:
            for key in keys:
                if key not in self._slot_of:
                    self._slot_of[key] = self._alloc()
                    added.append(key)
        except RuntimeError:  # full: leave everything as it was, so the caller's state stays consistent
            for key in added:
                self._free.append(self._slot_of.pop(key))
            for key, slot in removed.items():
                self._slot_of[key] = slot
                self._quarantined.pop(slot, None)
                if slot in self._free:
                    self._free.remove(slot)
            self._free.sort(reverse=True)
            raise
        for slot in removed.values():
            self._mark_cells[slot] = math.nan
            self._pending_cells[slot] = math.nan
        for key in added:
            self._start_fresh(self._slot_of[key])
        return np.fromiter((self._slot_of[k] for k in keys), dtype=np.intp, count=len(keys))

    def _start_fresh(self, slot: int) -> None:
        """A slot handed to a new endpoint: whatever was dispatched there before counts as seen."""
        total = self._sent(slot)
        self._owner[slot] -= total - self._baseline_cells[slot]
        self._baseline_cells[slot] = total

    def _alloc(self) -> int:
        self._reclaim()
        if self._free:
            return self._free.pop()
        if self._next_slot < self.counters.capacity:
            slot = self._next_slot
            self._next_slot += 1
            return slot
        self._reclaim(force=True)
        if self._free:
            return self._free.pop()
        raise RuntimeError(
            f"more than {self.counters.capacity} endpoints (live plus recently removed ones with "
            "open streams): the load accounting is full"
        )

    def _reclaim(self, *, force: bool = False) -> None:
        """Free quarantined slots with nothing in flight (after ``quarantine_s``, or at once if full)."""
        if not self._quarantined:
            return
        now = self._clock()
        slots = np.fromiter(self._quarantined, dtype=np.intp)
        open_now = self.counters.counters[:, _INFLIGHT, slots].sum(axis=0)
        for slot, in_flight in zip(slots.tolist(), open_now.tolist(), strict=True):
            if in_flight <= 0 and (force or now - self._quarantined[slot] >= self._quarantine_s):
                del self._quarantined[slot]
                self._free.append(slot)
        self._free.sort(reverse=True)  # pop() hands out the lowest slot: touched pages stay few

    # ---------------------------------------------------------------------------------------- scrapes
    def sent(self, slot: int) -> float:
        """Requests sent to ``slot`` in all (every writer row), since the slot was handed to its endpoint."""
        return self._sent(slot)

    def _sent(self, slot: int) -> float:
        """Requests sent to ``slot`` in all: every row's dispatched plus what was subtracted."""
        total = self._baseline_cells[slot]
        for row in self._dispatched_rows:
            total += row[slot]
        return total

    def begin_scrape(self, slot: int) -> None:
        """A scrape of the endpoint at ``slot`` is about to fetch its page."""
        self._mark_cells[slot] = self._sent(slot)

    def scrape_landed(self, slot: int) -> None:
        """That scrape's gauges landed: its mark is subtracted when they are published."""
        mark = self._mark_cells[slot]
        if not math.isnan(mark):  # a scrape that was begun
            self._pending_cells[slot] = mark
            self._mark_cells[slot] = math.nan

    def scrape_failed(self, slot: int) -> None:
        self._mark_cells[slot] = math.nan

    def landed(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The subtraction owed for the landed scrapes among ``slots``: ``(slots, amounts)``, or None.
        Apply it with :meth:`subtract` once the gauges it goes with are published."""
        pending = self._pending[slots]
        landed = ~np.isnan(pending)
        if not landed.any():
            return None
        which = slots[landed]
        marks = pending[landed]
        amounts = marks - self._baseline[which]
        self._baseline[which] = marks
        self._pending[which] = math.nan
        return which, amounts

    def subtract(self, owed: tuple[np.ndarray, np.ndarray]) -> None:
        which, amounts = owed
        self.counters.counters[self.counters.writer, _DISPATCHED, which] -= amounts

    # ----------------------------------------------------------------------------------------- rows
    def row_stats(self, row: int) -> tuple[float, float]:
        """``(picks, in flight)`` of one writer row over every slot (a worker's row: its own picks)."""
        used = max(self._next_slot, 1)
        counters = self.counters.counters[row]
        return float(counters[_DISPATCHED, :used].sum()), float(counters[_INFLIGHT, :used].sum())

    def settle_row(self, row: int) -> float:
        """A writer process died with its streams: zero its in-flight counts and charges. Returns how
        many streams were open."""
        counters = self.counters.counters[row]
        open_streams = float(counters[_INFLIGHT].sum())
        counters[_INFLIGHT:] = 0.0
        return open_streams

    def open_streams(self) -> float:
        """Streams in flight over every row and slot (live and quarantined)."""
        return self.counters.open_streams(max(self._next_slot, 1))
