"""A ``--workers`` worker's datastore: a reader of the supervisor's published state and of the shared
load accounting, and the writer of its own counter row (:mod:`picker.state.accounting`).

It offers what the director needs (``snapshot``, ``acquire``, ``objectives``, ``rewrites``) plus the pool,
health inputs and config document for the worker's other parts. A snapshot is rebuilt only when the
supervisor published new columns; between publishes the same matrix object is returned with its load
columns refreshed from every process's counter rows, so the scheduler's per-snapshot caches stay warm.
"""

from __future__ import annotations

import math

import numpy as np

from picker.state.accounting import NO_CHARGE, CounterRows, Lease, LoadColumns
from picker.state.codec import HealthInputs, StaticState, decode_static
from picker.state.columns import LoraColumns, lora_columns, snapshot_matrix
from picker.state.endpoints import PoolInfo
from picker.state.objectives import ObjectiveStore, RewriteStore
from picker.state.outcomes import Outcome, OutcomeRows, OutcomeWriter
from picker.state.segment import ENGINE_COLUMN, SharedSegment
from scoring.matrix import EndpointMatrix, LoadCharge, split_host_port

__all__ = ["SharedView"]


class SharedView:
    """Worker ``worker``'s view of a :class:`~picker.state.segment.SharedSegment`."""

    def __init__(self, segment: SharedSegment, worker: int) -> None:
        if not 0 <= worker < segment.layout.workers:
            raise ValueError(f"worker index {worker} out of range for {segment.layout.workers} workers")
        self.segment = segment
        self.worker = worker
        self._counters = CounterRows(segment.counters, worker)
        self._outcomes = OutcomeWriter(OutcomeRows(segment.outcomes, segment.ticks, worker), self._slot_of)
        self._slot_by_address: dict[str, int] = {}
        self.objectives = ObjectiveStore()
        self.rewrites = RewriteStore()
        self.static: StaticState | None = None
        self._slots = np.zeros(0, dtype=np.intp)
        self._slot_by_name: dict[str, int] = {}
        self._names: tuple[str, ...] = ()
        self._addresses: tuple[str, ...] = ()
        self._ips: tuple[str, ...] = ()
        self._lora: LoraColumns = lora_columns([])
        self._load: LoadColumns = self._counters.columns(self._slots)
        self._seq = -1
        self._matrix: EndpointMatrix | None = None

    # ------------------------------------------------------------------------------- static part
    def refresh(self) -> bool:
        """Load a newer published blob if there is one; True if the static state changed."""
        if self.static is not None and self.segment.blob_generation == self.static.generation:
            return False
        got = self.segment.read_blob()
        if got is None or (self.static is not None and got[0] == self.static.generation):
            return False
        state = decode_static(*got)
        old = self.static
        self.static = state
        if old is None or old.objectives != state.objectives:
            self.objectives.replace_all(state.objectives)
        if old is None or old.rewrites != state.rewrites:
            self.rewrites.replace_all(state.rewrites)
        if old is None or old.signals != state.signals or old.endpoints != state.endpoints:
            self._seq = -1  # rebuild the matrix with the new signal columns
        if old is None or old.endpoints != state.endpoints:
            rows = state.endpoints
            self._names = tuple(r[0] for r in rows)
            self._addresses = tuple(r[1] for r in rows)
            self._ips = tuple(split_host_port(a)[0] for a in self._addresses)
            self._slots = np.fromiter((r[2] for r in rows), dtype=np.intp, count=len(rows))
            self._slot_by_name = {r[0]: r[2] for r in rows}
            self._slot_by_address = {r[1]: r[2] for r in rows}
            self._lora = lora_columns([(r[3], r[4], r[5]) for r in rows])
            self._load = self._counters.columns(self._slots)
            self._seq = -1  # rebuild the matrix for the new rows
        return True

    @property
    def pool(self) -> PoolInfo | None:
        return self.static.pool if self.static is not None else None

    @property
    def synced(self) -> bool:
        return self.static is not None and self.static.health.synced

    @property
    def health(self) -> HealthInputs:
        return self.static.health if self.static is not None else HealthInputs()

    def __len__(self) -> int:
        return len(self._names)

    # ------------------------------------------------------------------------------- snapshots
    def snapshot(self) -> EndpointMatrix:
        """The pool as a matrix with the load accounting of all processes as of now."""
        seg = self.segment
        if self.static is None or seg.blob_generation != self.static.generation:
            self.refresh()
        matrix = self._matrix
        if matrix is None or seg.sequence != self._seq:
            matrix = self._matrix = self._build()
        refresh = self._load.refresh
        if refresh is not None:
            refresh()
            # The supervisor writes new columns, then subtracts what their scrapes account for from
            # ``dispatched``: if that subtraction was just read, the columns are new too - take them.
            if seg.sequence != self._seq:
                matrix = self._matrix = self._build()
                refresh()
        return matrix

    def _build(self) -> EndpointMatrix:
        seq, cols = self.segment.read_columns(self._slots)
        self._seq = seq
        cols.flags.writeable = False
        engine = cols[ENGINE_COLUMN].astype(np.int8)
        engine.flags.writeable = False
        addresses = self._addresses
        return snapshot_matrix(
            names=self._names,
            addresses=addresses,
            ips=self._ips,
            cols=cols,  # COLUMNS begins with FLOAT_COLUMNS
            load=self._load.arrays,
            lora=self._lora,
            engine=engine,
            address_index={a: i for i, a in enumerate(addresses)},
            signals=self._signals(),
        )

    def _signals(self) -> dict[str, np.ndarray] | None:
        """The published signals as columns over this view's rows (NaN where an endpoint has none)."""
        signals = self.static.signals if self.static is not None else None
        if not signals:
            return None
        out: dict[str, np.ndarray] = {}
        for key, values in signals.items():
            col = np.fromiter((values.get(n, math.nan) for n in self._names), dtype=np.float64)
            col.flags.writeable = False
            out[key] = col
        return out

    # ------------------------------------------------------------------------------- accounting
    def acquire(self, name: str, charge: LoadCharge = NO_CHARGE) -> Lease:
        """Count one stream dispatched to ``name`` (primary) by this worker, with its token charge."""
        slot = self._slot_by_name.get(name)
        if slot is None and self.refresh():
            slot = self._slot_by_name.get(name)
        if slot is None:
            raise KeyError(f"endpoint {name!r} is not in this worker's view")
        return self._counters.acquire(slot, charge, self._outcomes)

    def report(self, outcome: Outcome) -> None:
        """What a request the pool only backed came to (``Datastore.report``), in this worker's rows."""
        self._outcomes.write(outcome)

    def _slot_of(self, address: str) -> int | None:
        return self._slot_by_address.get(address)

    def inflight_total(self) -> float:
        """Streams in flight through every process (live and removed endpoints)."""
        return self._counters.open_streams(self.segment.layout.capacity)
