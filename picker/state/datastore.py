"""The datastore: pool membership + last good metrics per endpoint + our own load accounting.

Single writer, many readers, one event loop. Writers are the watchers (membership), the scraper
(metrics) and the ext_proc streams (load accounting). Readers take :meth:`Datastore.snapshot`, an
:class:`~scoring.matrix.EndpointMatrix` whose signal columns are read-only copies, so a pick sees one
consistent view and never locks.

Why columns are kept here and copied on read instead of rebuilding rows: with hundreds of endpoints
scraped every 50 ms there are thousands of metric updates per second. Each update writes a few floats
into preallocated arrays (O(1)); a snapshot is only rebuilt when a pick asks for one after a change, and
then costs a handful of ``ndarray.copy()`` calls. Membership changes (rare) rebuild everything.

Load accounting (the four mutable columns shared with every snapshot):

* ``dispatched[i]`` +1 when we pick endpoint i as primary. When a scrape of i *starts* we remember how
  many requests we had sent to i in all; when that scrape lands, the requests sent before it started are
  visible in the scraped gauges, so they leave ``dispatched``. What remains is exactly "sent since the
  scrape began". The drop is applied when the landed gauges are published into a snapshot, not when they
  land: gauges and ``dispatched`` always change together, so a pick never sees the drop without the
  gauges that account for it (between the two, the endpoint would look emptier than it is).
* ``inflight[i]`` +1 at pick, -1 when the stream ends (:class:`EndpointLease.release`, idempotent).
* ``prefill_tokens[i]`` and ``inflight_tokens[i]``: the request's :class:`~scoring.matrix.LoadCharge`
  (prompt-token estimate) added at pick; the prefill part leaves at the first response body byte
  (:meth:`EndpointLease.first_byte`) or at stream end, whichever comes first, the rest at stream end.
  The lease remembers the charge, so exactly what was added is subtracted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import cast

import numpy as np

from picker.state.endpoints import Endpoint, PoolInfo
from picker.state.metrics import EndpointMetrics
from picker.state.objectives import ObjectiveStore, RewriteStore
from scoring.matrix import ENGINE_NAMES, NEVER, EndpointMatrix, LoadCharge, engine_code, split_host_port

#: the float scoring columns the datastore keeps per endpoint (shared memory mirrors them, in this order)
FLOAT_COLUMNS = (
    "waiting",
    "running",
    "kv_usage",
    "gpu_util",
    "scraped_at",
    "max_lora",
    "block_size",
    "num_blocks",
)
#: the per-endpoint accounting arrays that follow their endpoint through membership changes (module doc)
_LOAD_ATTRS = ("_dispatched", "_inflight", "_prefill", "_inflight_tokens", "_baseline", "_pending")

#: the charge of a request with no token estimate (header-only requests, callers that count requests only)
NO_CHARGE = LoadCharge(0.0, 0.0)

_METRIC_FIELDS = ("waiting", "running", "kv_usage", "max_lora", "block_size", "num_blocks")


@dataclass(slots=True)
class EndpointStatus:
    """Per-endpoint bookkeeping that is not a scoring column (debug output, transitions)."""

    endpoint: Endpoint
    lora_active: tuple[str, ...] = ()
    lora_waiting: tuple[str, ...] = ()
    detected_engine: str | None = None
    last_error: str | None = None
    scrapes_ok: int = 0
    scrapes_failed: int = 0
    #: dispatched count remembered when the in-progress scrape started (see module doc)
    scrape_mark: float = 0.0

    @property
    def engine(self) -> str | None:
        return self.endpoint.engine or self.detected_engine


class ChargedLease:
    """One routed request's load on its primary endpoint: the prefill part of its charge is given back at
    the first response byte (:meth:`first_byte`), everything else when the stream ends (:meth:`release`,
    which also gives back the prefill if no byte came). Both idempotent, so exactly what was added is
    subtracted once. Subclasses say where the give-backs go."""

    __slots__ = ("_charge", "prefill_released", "released")

    def __init__(self, charge: LoadCharge) -> None:
        self._charge = charge
        self.prefill_released = charge.prefill == 0.0
        self.released = False

    def first_byte(self) -> None:
        """The first response body byte came back: the prompt's prefill is done."""
        if not self.prefill_released:
            self.prefill_released = True
            self._give_back_prefill(self._charge.prefill)

    def release(self) -> None:
        if not self.released:
            self.first_byte()
            self.released = True
            self._give_back_rest(self._charge.tokens)

    def _give_back_prefill(self, prefill: float) -> None:
        raise NotImplementedError

    def _give_back_rest(self, tokens: float) -> None:
        """The in-flight slot and the in-flight tokens."""
        raise NotImplementedError


class EndpointLease(ChargedLease):
    """A :class:`ChargedLease` on this process's :class:`Datastore` (rows found by endpoint name)."""

    __slots__ = ("_name", "_store")

    def __init__(self, store: Datastore, name: str, charge: LoadCharge) -> None:
        super().__init__(charge)
        self._store = store
        self._name = name

    def _give_back_prefill(self, prefill: float) -> None:
        self._store._release_prefill(self._name, prefill)

    def _give_back_rest(self, tokens: float) -> None:
        self._store._release(self._name, tokens)


class NullLease:
    """For picks that are not dispatched (header-only requests still count; explain never does)."""

    __slots__ = ()

    def first_byte(self) -> None:
        return None

    def release(self) -> None:
        return None


def lora_columns(
    per_endpoint: Sequence[tuple[tuple[str, ...], tuple[str, ...]]],
) -> tuple[Mapping[str, int], np.ndarray, np.ndarray, np.ndarray]:
    """The matrix's LoRA columns from ``(active, waiting)`` adapter names per endpoint, in row order:
    the adapter vocabulary, the read-only boolean ``active`` / ``waiting`` matrices and ``count``."""
    vocab: dict[str, int] = {}
    for active_names, waiting_names in per_endpoint:
        for a in (*active_names, *waiting_names):
            vocab.setdefault(a, len(vocab))
    n = len(per_endpoint)
    active = np.zeros((n, len(vocab)), dtype=np.bool_)
    waiting = np.zeros((n, len(vocab)), dtype=np.bool_)
    count = np.zeros(n)
    for i, (active_names, waiting_names) in enumerate(per_endpoint):
        for a in active_names:
            active[i, vocab[a]] = True
        for a in waiting_names:
            waiting[i, vocab[a]] = True
        count[i] = len(active_names) + len(waiting_names)
    for arr in (active, waiting, count):
        arr.flags.writeable = False
    return MappingProxyType(vocab), active, waiting, count


def snapshot_matrix(
    *,
    names: tuple[str, ...],
    addresses: tuple[str, ...],
    ips: tuple[str, ...],
    cols: np.ndarray,
    load: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    lora: tuple[Mapping[str, int], np.ndarray, np.ndarray, np.ndarray],
    engine: np.ndarray,
    address_index: dict[str, int],
) -> EndpointMatrix:
    """An :class:`EndpointMatrix` from read-only float rows in :data:`FLOAT_COLUMNS` order (``cols``; more
    rows after them are ignored), the live load arrays ``(dispatched, inflight, prefill_tokens,
    inflight_tokens)``, the LoRA columns of :func:`lora_columns`, engine codes and the address index.
    Used by the datastore and by a ``--workers`` worker's shared view."""
    k = FLOAT_COLUMNS.index
    vocab, active, waiting, count = lora
    dispatched, inflight, prefill, tokens = load
    return EndpointMatrix(
        names=names,
        addresses=addresses,
        ips=ips,
        waiting=cols[k("waiting")],
        running=cols[k("running")],
        kv_usage=cols[k("kv_usage")],
        gpu_util=cols[k("gpu_util")],
        scraped_at=cols[k("scraped_at")],
        dispatched=dispatched,
        inflight=inflight,
        prefill_tokens=prefill,
        inflight_tokens=tokens,
        lora_vocab=vocab,
        lora_active=active,
        lora_waiting=waiting,
        lora_count=count,
        max_lora=cols[k("max_lora")],
        block_size=cols[k("block_size")],
        num_blocks=cols[k("num_blocks")],
        engine=engine,
        engine_names=ENGINE_NAMES,
        _address_index=address_index,
    )


class Datastore:
    """Pool, endpoints, objectives and rewrites of one EPP. See the module docstring."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, min_publish_interval_s: float = 0.0
    ) -> None:
        self._clock = clock
        #: metric-only changes are published at most this often (membership changes: at once)
        self._min_publish = min_publish_interval_s
        self._dirty = False
        self._published_at = float("-inf")
        self._pool: PoolInfo | None = None
        self.objectives = ObjectiveStore()
        self.rewrites = RewriteStore()
        self._status: dict[str, EndpointStatus] = {}
        self._order: list[str] = []
        self._index: dict[str, int] = {}
        #: the float columns as rows of one array (one copy publishes them all); ``_cols`` are row views
        self._colmat = np.empty((len(FLOAT_COLUMNS), 0))
        self._cols: dict[str, np.ndarray] = {c: self._colmat[k] for k, c in enumerate(FLOAT_COLUMNS)}
        self._engine = np.zeros(0, dtype=np.int8)
        self._dispatched = np.zeros(0)
        self._inflight = np.zeros(0)
        self._prefill = np.zeros(0)
        self._inflight_tokens = np.zeros(0)
        #: requests sent in all at the start of the scrape whose gauges are published (see module doc)
        self._baseline = np.zeros(0)
        #: the same for scrapes that landed but are not published yet (NaN: none)
        self._pending = np.zeros(0)
        self._counters = self._counter_views()
        self._snapshot: EndpointMatrix | None = None
        #: names, addresses, ips, address index and engine codes of the published snapshot: they change
        #: with membership and engine detection only, so metric-only snapshots reuse them
        self._static: (
            tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], dict[str, int], np.ndarray] | None
        ) = None
        self._lora_cache: tuple[Mapping[str, int], np.ndarray, np.ndarray, np.ndarray] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._gpu_by_pod: Mapping[str, float] = MappingProxyType({})
        self.membership_version = 0

    # ------------------------------------------------------------------------------------------ pool
    @property
    def pool(self) -> PoolInfo | None:
        return self._pool

    @property
    def synced(self) -> bool:
        """True once the pool is known (standalone: at start). Health reports SERVING only then."""
        return self._pool is not None

    def set_pool(self, pool: PoolInfo | None) -> None:
        """Set/replace the pool; ``None`` (pool deleted) clears endpoints, objectives and rewrites."""
        self._pool = pool
        if pool is None:
            self.objectives.clear()
            self.rewrites.clear()
            self.replace_endpoints(())

    # ------------------------------------------------------------------------------------ membership
    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (synchronously, on the loop) after every membership change."""
        self._listeners.append(callback)

    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(self._status[n].endpoint for n in self._order)

    def status(self, name: str) -> EndpointStatus | None:
        return self._status.get(name)

    def __len__(self) -> int:
        return len(self._order)

    def upsert_endpoint(self, endpoint: Endpoint) -> None:
        current = self._status.get(endpoint.name)
        if current is not None:
            if current.endpoint == endpoint:
                return
            if current.endpoint.address == endpoint.address:
                # labels/engine changed only: keep metrics and load, no re-layout needed
                current.endpoint = endpoint
                self._engine[self._index[endpoint.name]] = engine_code(current.engine)
                self._snapshot = None
                self._static = None
                self._changed()
                return
        self._apply(lambda eps: {**eps, endpoint.name: endpoint})

    def remove_endpoint(self, name: str) -> None:
        if name in self._status:
            self._apply(lambda eps: {k: v for k, v in eps.items() if k != name})

    def remove_pod(self, pod: str) -> None:
        """Remove every rank of a pod (pod deleted, unready, or no longer matching the selector)."""
        if any(s.endpoint.pod == pod for s in self._status.values()):
            self._apply(lambda eps: {k: v for k, v in eps.items() if v.pod != pod})

    def replace_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        """Resync: exactly these endpoints, keeping metrics and load of the ones that stay."""
        new = {e.name: e for e in endpoints}
        if new.keys() == self._status.keys() and all(self._status[k].endpoint == v for k, v in new.items()):
            return
        self._apply(lambda _eps: new)

    def _apply(self, change: Callable[[dict[str, Endpoint]], dict[str, Endpoint]]) -> None:
        old_eps = {n: s.endpoint for n, s in self._status.items()}
        new_eps = change(old_eps)
        old_index, old_cols = self._index, self._colmat
        old_load = [getattr(self, f) for f in _LOAD_ATTRS]
        status: dict[str, EndpointStatus] = {}
        for name, ep in new_eps.items():
            st = self._status.get(name)
            if st is None or st.endpoint.address != ep.address:
                st = EndpointStatus(endpoint=ep)
            else:
                st.endpoint = ep
            status[name] = st
        order = list(new_eps)
        n = len(order)
        colmat = np.full((len(FLOAT_COLUMNS), n), math.nan)
        colmat[FLOAT_COLUMNS.index("scraped_at")] = NEVER
        cols = {c: colmat[k] for k, c in enumerate(FLOAT_COLUMNS)}
        engine = np.zeros(n, dtype=np.int8)
        load = [np.full(n, math.nan if f == "_pending" else 0.0) for f in _LOAD_ATTRS]
        for i, name in enumerate(order):
            j = old_index.get(name)
            kept = j is not None and old_eps[name].address == new_eps[name].address
            if kept and j is not None:
                colmat[:, i] = old_cols[:, j]
                for new, old in zip(load, old_load, strict=True):
                    new[i] = old[j]
            engine[i] = engine_code(status[name].engine)
            if not kept:
                gpu = self._gpu_by_pod.get(status[name].endpoint.pod)
                if gpu is not None:
                    cols["gpu_util"][i] = gpu
        self._status = status
        self._order = order
        self._index = {name: i for i, name in enumerate(order)}
        self._colmat = colmat
        self._cols = cols
        self._engine = engine
        for f, arr in zip(_LOAD_ATTRS, load, strict=True):
            setattr(self, f, arr)
        self._counters = self._counter_views()
        self._snapshot = None
        self._static = None
        self._lora_cache = None
        self.membership_version += 1
        self._changed()

    def _changed(self) -> None:
        for cb in tuple(self._listeners):
            cb()

    # --------------------------------------------------------------------------------------- metrics
    def begin_scrape(self, name: str) -> None:
        """The scraper is about to request this endpoint's metrics page."""
        st = self._status.get(name)
        if st is not None:
            i = self._index[name]
            st.scrape_mark = float(self._dispatched[i] + self._baseline[i])  # sent in all, so far

    def record_scrape(
        self, name: str, metrics: EndpointMetrics, *, at: float | None = None, engine: str | None = None
    ) -> None:
        """A scrape landed: store reported fields (unreported ones keep their last value)."""
        st = self._status.get(name)
        if st is None:
            return
        i = self._index[name]
        cols = self._cols
        for f in _METRIC_FIELDS:
            v = getattr(metrics, f)
            if not math.isnan(v):
                cols[f][i] = v
        cols["scraped_at"][i] = self._clock() if at is None else at
        if metrics.lora_active is not None or metrics.lora_waiting is not None:
            active = metrics.lora_active or ()
            waiting = metrics.lora_waiting or ()
            if active != st.lora_active or waiting != st.lora_waiting:
                st.lora_active, st.lora_waiting = active, waiting
                self._lora_cache = None
        if engine is not None and engine != st.detected_engine:
            st.detected_engine = engine
            self._engine[i] = engine_code(st.engine)
            self._static = None
        self._pending[i] = st.scrape_mark  # leaves ``dispatched`` when these gauges are published
        st.scrape_mark = 0.0
        st.scrapes_ok += 1
        st.last_error = None
        self._dirty = True

    def record_scrape_failure(self, name: str, error: str) -> None:
        """A scrape failed: keep last good values and their age; staleness decides, not deletion."""
        st = self._status.get(name)
        if st is not None:
            st.scrapes_failed += 1
            st.last_error = error
            st.scrape_mark = 0.0

    def set_gpu_utilization(self, by_pod: Mapping[str, float] | None) -> None:
        """GPU utilization (0..1) per pod name from the optional Prometheus source; None = unknown."""
        self._gpu_by_pod = MappingProxyType(dict(by_pod or {}))
        col = self._cols["gpu_util"]
        for i, name in enumerate(self._order):
            v = self._gpu_by_pod.get(self._status[name].endpoint.pod)
            col[i] = math.nan if v is None else v
        self._dirty = True

    # ----------------------------------------------------------------------------------------- reads
    def snapshot(self) -> EndpointMatrix:
        """The current pool as a matrix; cached until the next change.

        Metric updates are folded in at most every ``min_publish_interval_s`` (a few milliseconds in the
        service): with hundreds of endpoints scraped every 50 ms nearly every pick would otherwise pay
        for a fresh snapshot and the scheduler's per-snapshot preparation. The load columns are shared
        live arrays, so our own accounting is never delayed.
        """
        snap = self._snapshot
        if snap is None or (self._dirty and self._clock() - self._published_at >= self._min_publish):
            self._apply_landed_scrapes()
            snap = self._snapshot = self._build_snapshot()
            self._dirty = False
            self._published_at = self._clock()
        return snap

    def _apply_landed_scrapes(self) -> None:
        """Move the baselines of scrapes whose gauges are about to be published (see module doc)."""
        pending = self._pending
        landed = ~np.isnan(pending)
        if landed.any():
            d, b = self._dispatched, self._baseline
            d[landed] = np.maximum(d[landed] + b[landed] - pending[landed], 0.0)
            b[landed] = pending[landed]
            pending[landed] = math.nan

    def _lora(self) -> tuple[Mapping[str, int], np.ndarray, np.ndarray, np.ndarray]:
        cache = self._lora_cache
        if cache is None:
            sts = [self._status[n] for n in self._order]
            cache = self._lora_cache = lora_columns([(st.lora_active, st.lora_waiting) for st in sts])
        return cache

    def _static_parts(
        self,
    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], dict[str, int], np.ndarray]:
        static = self._static
        if static is None:
            addresses = tuple(self._status[n].endpoint.address for n in self._order)
            engine = self._engine.copy()
            engine.flags.writeable = False
            static = self._static = (
                tuple(self._order),
                addresses,
                tuple(split_host_port(a)[0] for a in addresses),
                {a: i for i, a in enumerate(addresses)},
                engine,
            )
        return static

    def _build_snapshot(self) -> EndpointMatrix:
        cols = self._colmat.copy()  # one copy of every float column; its rows are the matrix's columns
        cols.flags.writeable = False
        names, addresses, ips, address_index, engine = self._static_parts()
        return snapshot_matrix(
            names=names,
            addresses=addresses,
            ips=ips,
            cols=cols,
            load=(self._dispatched, self._inflight, self._prefill, self._inflight_tokens),
            lora=self._lora(),
            engine=engine,
            # shared by every snapshot of this membership: the matrix treats it as read-only
            address_index=address_index,
        )

    # ----------------------------------------------------------------------------------- accounting
    def _counter_views(self) -> tuple[memoryview[float], ...]:
        """Memoryviews of the four accounting arrays, for the per-stream updates below.

        Why: ``array[i] += x`` goes through numpy's scalar machinery; on a memoryview it is a plain
        C double read and write. Inside the server every stream runs with cold caches, where that is
        about half the cost. The views share the arrays' memory, so the snapshot columns see every update;
        they are rebuilt whenever membership replaces the arrays.
        """
        arrays = (self._dispatched, self._inflight, self._prefill, self._inflight_tokens)
        # float64 arrays: their buffers' items are Python floats (typeshed types ``.data`` as int items)
        return tuple(cast("memoryview[float]", a.data) for a in arrays)

    def acquire(self, name: str, charge: LoadCharge = NO_CHARGE) -> EndpointLease:
        """Count a request dispatched to ``name`` (primary) with its token ``charge``. Call the lease's
        ``first_byte()`` at the first response body byte and ``release()`` when the stream ends."""
        i = self._index.get(name)
        if i is not None:
            dispatched, inflight, prefill, tokens = self._counters
            dispatched[i] += 1.0
            inflight[i] += 1.0
            prefill[i] += charge.prefill
            tokens[i] += charge.tokens
        return EndpointLease(self, name, charge)

    def _release_prefill(self, name: str, prefill: float) -> None:
        i = self._index.get(name)
        if i is not None:
            # never below zero: a row re-created by a membership change starts from zero
            column = self._counters[2]
            column[i] = max(0.0, column[i] - prefill)

    def _release(self, name: str, tokens: float) -> None:
        i = self._index.get(name)
        if i is not None:
            _, inflight, _, column = self._counters
            if inflight[i] > 0:
                inflight[i] -= 1.0
            column[i] = max(0.0, column[i] - tokens)

    def inflight_total(self) -> float:
        return float(self._inflight.sum())
