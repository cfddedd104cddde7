"""The datastore: pool membership + last good metrics per endpoint + our own load accounting.

Single writer, many readers, one event loop. Writers are the watchers (membership), the scraper
(metrics) and the ext_proc streams (load accounting). Readers take :meth:`Datastore.snapshot`, an
:class:`~scoring.matrix.EndpointMatrix` whose signal columns are read-only copies, so a pick sees one
consistent view and never locks. Why one module: that consistency; what stands alone is beside it.

Why columns are kept here and copied on read instead of rebuilding rows: with hundreds of endpoints
scraped every 50 ms there are thousands of metric updates per second. Each update writes a few floats
into preallocated arrays (O(1)); a snapshot is only rebuilt when a pick asks for one after a change, and
then costs a handful of ``ndarray.copy()`` calls. Membership changes (rare) rebuild everything.

Load accounting (the four live load columns of every snapshot: ``dispatched``, ``inflight``,
``prefill_tokens``, ``inflight_tokens``) is the counter-row model of :mod:`picker.state.accounting`, the
same in one process and with ``--workers``: the datastore gives each endpoint an accounting slot
(:class:`~picker.state.accounting.LoadLedger`), :meth:`Datastore.acquire` counts a pick in this process's
counter row and returns the :class:`~picker.state.accounting.Lease` that gives it back, and the scraper's
:meth:`Datastore.begin_scrape` / :meth:`Datastore.record_scrape` drive "dispatched since the scrape began".

Passive health and observed latency: every lease reports what its request came to
(:mod:`picker.state.outcomes`, counter rows like the load's); at each snapshot (and each ``--workers``
publish) the datastore drains what is new into its :class:`~picker.state.health.OutlierDetector`
(:attr:`Datastore.health`) and :class:`~picker.state.latency.LatencyTracker` (:attr:`Datastore.latency`)
and writes their results into the snapshot's ``health`` and latency columns. A change of health is
published at once (like a membership change); latency with the metrics.

With ``--workers`` the supervisor's datastore holds a :class:`~picker.state.publisher.SharedPublisher`:
its counter rows are then the shared segment's, and every publish also writes the metric columns and, when
they changed, the endpoints, pool, objectives, rewrites and config into the segment for the workers'
:class:`~picker.state.view.SharedView`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from picker.state.accounting import DEFAULT_CAPACITY, NO_CHARGE, CounterRows, Lease, LoadColumns, LoadLedger
from picker.state.columns import FLOAT_COLUMNS, LoraColumns, blank_columns, lora_columns, snapshot_matrix
from picker.state.endpoints import Endpoint, PoolInfo
from picker.state.health import EndpointHealthView, FailureKind, Health, OutlierDetector, OutlierPolicy
from picker.state.latency import LATENCY_COLUMNS, LatencySettings, LatencySignal, LatencyTracker
from picker.state.metrics import GAUGE_FIELDS, EndpointMetrics
from picker.state.objectives import ObjectiveStore, RewriteStore
from picker.state.outcomes import (
    FAILURE_INDEX,
    LATENCY,
    OK,
    Outcome,
    OutcomeLedger,
    OutcomeRows,
    OutcomeWriter,
)
from picker.state.prices import NO_PRICES, PriceBook, Priced
from picker.state.publisher import SharedPublisher, StaticParts
from picker.state.signals import SignalStore
from scoring.matrix import EndpointMatrix, LoadCharge, engine_code, split_host_port

__all__ = ["Datastore", "EndpointStatus"]

#: the latency columns are rewritten at least this often (seconds), so averages age out (``maxAge``)
_LATENCY_REFRESH_S = 1.0
#: the ``health`` column's value for an endpoint of a pod the scaler drains
DRAINING = float(Health.DRAINING)

#: names, addresses, ips, address index and engine codes of a published snapshot
_StaticParts = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], dict[str, int], np.ndarray]


@dataclass(slots=True)
class EndpointStatus:
    """Per-endpoint bookkeeping that is not a scoring column (debug output, transitions)."""

    endpoint: Endpoint
    #: the endpoint's place in the load accounting (:class:`~picker.state.accounting.LoadLedger`)
    slot: int = -1
    lora_active: tuple[str, ...] = ()
    lora_waiting: tuple[str, ...] = ()
    #: model names its pages label their series with (empty: not reported)
    models: tuple[str, ...] = ()
    detected_engine: str | None = None
    last_error: str | None = None
    scrapes_ok: int = 0
    scrapes_failed: int = 0
    #: the prices in the ``price_in`` / ``price_out`` columns and where they came from
    priced: Priced | None = None

    @property
    def engine(self) -> str | None:
        return self.endpoint.engine or self.detected_engine


class Datastore:
    """Pool, endpoints, objectives, rewrites and load accounting of one EPP. See the module docstring.

    ``capacity`` bounds the endpoints alive plus those removed recently that still have open streams
    (:class:`~picker.state.accounting.LoadLedger`); with a ``publisher`` the segment's capacity applies.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_publish_interval_s: float = 0.0,
        capacity: int = DEFAULT_CAPACITY,
        quarantine_s: float = 10.0,
        publisher: SharedPublisher | None = None,
    ) -> None:
        self._clock = clock
        #: metric-only changes are published at most this often (membership changes: at once)
        self._min_publish = min_publish_interval_s
        self._dirty = False
        self._published_at = float("-inf")
        self._publisher = publisher
        counters = publisher.counters() if publisher is not None else CounterRows.local(capacity)
        self._counters = counters
        #: slots, scrape marks and the ``dispatched`` subtraction (public for ``--workers``' row upkeep)
        self.ledger = LoadLedger(counters, clock=clock, quarantine_s=quarantine_s)
        outcome_rows = publisher.outcomes() if publisher is not None else OutcomeRows.local(counters.capacity)
        self.outcomes = OutcomeLedger(outcome_rows)
        self._outcome_writer = OutcomeWriter(outcome_rows, self._slot_of_address)
        #: passive health of the pool's endpoints (other owners of endpoints may keep their own)
        self.health = OutlierDetector()
        #: observed latency averages per endpoint
        self.latency = LatencyTracker()
        self._health_version = self.health.version
        #: a health change waits for no publish interval (see :meth:`snapshot`)
        self._health_changed = False
        #: pods marked draining by the scaler (see :meth:`set_draining`)
        self._draining: frozenset[str] = frozenset()
        self._latency_written_at = float("-inf")
        self._slot_by_address: dict[str, int] = {}
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
        self._slots = np.zeros(0, dtype=np.intp)
        self._load: LoadColumns = counters.columns(self._slots)
        self._snapshot: EndpointMatrix | None = None
        #: names, addresses, ips, address index and engine codes of the published snapshot: they change
        #: with membership and engine detection only, so metric-only snapshots reuse them
        self._static: _StaticParts | None = None
        self._lora_cache: LoraColumns | None = None
        self._lora_version = 0
        self._listeners: list[Callable[[], None]] = []
        self._gpu_by_pod: Mapping[str, float] = MappingProxyType({})
        self._prices: PriceBook = NO_PRICES
        #: the operator's Prometheus signals (``prometheus-scorer``; one process only, see set_signal)
        self.signals = SignalStore()
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
                i = self._index[endpoint.name]
                self._engine[i] = engine_code(current.engine)
                self._price_row(i, current)
                self._snapshot = None
                self._static = None
                self._notify()
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
        status: dict[str, EndpointStatus] = {}
        for name, ep in new_eps.items():
            st = self._status.get(name)
            if st is None or st.endpoint.address != ep.address:
                st = EndpointStatus(endpoint=ep)
            else:
                st.endpoint = ep
            status[name] = st
        order = list(new_eps)
        # outcomes reported so far belong to the endpoints that had the slots until now
        self._ingest(self._clock())
        # an endpoint keeps its accounting slot while its name and address stay (see accounting)
        slots = self.ledger.assign([(name, new_eps[name].address) for name in order])
        kept_slots = {self._status[n].slot for n in order if n in self._status}
        self.outcomes.forget([int(x) for x in slots if int(x) not in kept_slots])
        n = len(order)
        colmat = blank_columns(n)
        cols = {c: colmat[k] for k, c in enumerate(FLOAT_COLUMNS)}
        engine = np.zeros(n, dtype=np.int8)
        for i, name in enumerate(order):
            st = status[name]
            st.slot = int(slots[i])
            j = old_index.get(name)
            kept = j is not None and old_eps[name].address == new_eps[name].address
            if kept and j is not None:
                colmat[:, i] = old_cols[:, j]
            engine[i] = engine_code(st.engine)
            st.priced = priced = self._prices.price(st.endpoint, st.engine)
            cols["price_in"][i] = priced.input
            cols["price_out"][i] = priced.output
            if not kept:
                gpu = self._gpu_by_pod.get(st.endpoint.pod)
                if gpu is not None:
                    cols["gpu_util"][i] = gpu
        self._status = status
        self._order = order
        self._index = {name: i for i, name in enumerate(order)}
        self._colmat = colmat
        self._cols = cols
        self._engine = engine
        self._slots = slots
        self._slot_by_address = {status[name].endpoint.address: int(slots[i]) for i, name in enumerate(order)}
        self._load = self._counters.columns(slots)
        self.health.retain(order)
        self.latency.retain(order)
        if self._draining:
            self._write_health()
        self._snapshot = None
        self._static = None
        self._lora_cache = None
        self.membership_version += 1
        self._notify()

    def _notify(self) -> None:
        for cb in tuple(self._listeners):
            cb()

    # --------------------------------------------------------------------------------------- metrics
    def begin_scrape(self, name: str) -> None:
        """The scraper is about to request this endpoint's metrics page."""
        st = self._status.get(name)
        if st is not None:
            self.ledger.begin_scrape(st.slot)

    def record_scrape(
        self, name: str, metrics: EndpointMetrics, *, at: float | None = None, engine: str | None = None
    ) -> None:
        """A scrape landed: store reported fields (unreported ones keep their last value)."""
        st = self._status.get(name)
        if st is None:
            return
        i = self._index[name]
        cols = self._cols
        for f, v in zip(GAUGE_FIELDS, metrics.gauges(), strict=True):
            if not math.isnan(v):
                cols[f][i] = v
        cols["scraped_at"][i] = self._clock() if at is None else at
        cols["scrape_failed"][i] = 0.0
        if metrics.lora_active is not None or metrics.lora_waiting is not None:
            active = metrics.lora_active or ()
            waiting = metrics.lora_waiting or ()
            if active != st.lora_active or waiting != st.lora_waiting:
                st.lora_active, st.lora_waiting = active, waiting
                self._lora_cache = None
                self._lora_version += 1
        if metrics.models is not None and metrics.models != st.models:
            st.models = metrics.models
            self._lora_cache = None
            self._lora_version += 1
        if engine is not None and engine != st.detected_engine:
            st.detected_engine = engine
            self._engine[i] = engine_code(st.engine)
            self._price_row(i, st)  # an engine's price may apply now
            self._static = None
        self.ledger.scrape_landed(st.slot)  # leaves ``dispatched`` when these gauges are published
        st.scrapes_ok += 1
        st.last_error = None
        self._dirty = True

    def record_scrape_failure(self, name: str, error: str) -> None:
        """A scrape failed: keep last good values and their age; staleness decides, not deletion. Never
        scraped, there is no age: the first failure sets ``scrape_failed`` (unreachable, not unread yet)."""
        st = self._status.get(name)
        if st is not None:
            st.scrapes_failed += 1
            st.last_error = error
            self.ledger.scrape_failed(st.slot)
            if st.scrapes_failed == 1 and not st.scrapes_ok:  # only that transition publishes
                self._cols["scrape_failed"][self._index[name]] = 1.0
                self._dirty = True

    def set_gpu_utilization(self, by_pod: Mapping[str, float] | None) -> None:
        """GPU utilization (0..1) per pod name from the optional Prometheus source; None = unknown."""
        self._gpu_by_pod = MappingProxyType(dict(by_pod or {}))
        col = self._cols["gpu_util"]
        for i, name in enumerate(self._order):
            v = self._gpu_by_pod.get(self._status[name].endpoint.pod)
            col[i] = math.nan if v is None else v
        self._dirty = True

    def set_signal(self, key: str, by_pod: Mapping[str, float] | None) -> None:
        """One Prometheus signal's fresh values per pod name (None: gone); picker/state/signals.py."""
        self.signals.set(key, by_pod)
        self._dirty = True

    def set_prices(self, book: PriceBook) -> None:
        """The config's ``endpointPrices`` (``picker.state.prices``): every endpoint's price columns again."""
        self._prices = book
        for i, name in enumerate(self._order):
            self._price_row(i, self._status[name])
        self._dirty = True

    def _price_row(self, i: int, st: EndpointStatus) -> None:
        st.priced = priced = self._prices.price(st.endpoint, st.engine)
        self._cols["price_in"][i] = priced.input
        self._cols["price_out"][i] = priced.output
        self._dirty = True

    @property
    def currency(self) -> str:
        return self._prices.currency

    # ----------------------------------------------------------------------------------------- reads
    def snapshot(self) -> EndpointMatrix:
        """The current pool as a matrix; cached until the next change.

        Metric updates are folded in at most every ``min_publish_interval_s`` (in the service one scrape
        period, at most 50 ms: ``picker.wiring.snapshot_interval``): with hundreds of endpoints scraped
        every 50 ms nearly every pick would otherwise pay for a fresh snapshot and the scheduler's
        per-snapshot preparation. The load columns are live (see :mod:`picker.state.accounting`), so our
        own accounting is never delayed.
        """
        now = self._clock()
        self._ingest(now)
        snap = self._snapshot
        if (
            snap is None
            or self._health_changed
            or (self._dirty and now - self._published_at >= self._min_publish)
        ):
            snap = self._publish_snapshot()
        refresh = self._load.refresh
        if refresh is not None:
            refresh()
        return snap

    def publish(self) -> bool:
        """Publish what changed now, whatever the interval; True if anything was written.

        The ``--workers`` supervisor calls this every ``min_publish_interval_s``: the metric columns go
        to the segment with the snapshot, and the endpoints, pool, objectives, rewrites, health inputs
        and config document when they changed (columns first: the rows a new membership names must be
        there before it).
        """
        wrote = False
        self._ingest(self._clock())
        if self._snapshot is None or self._dirty or self._health_changed:
            self._publish_snapshot()
            wrote = True
        publisher = self._publisher
        if publisher is not None:
            key = (
                self.membership_version,
                self._lora_version,
                self.objectives.version,
                self.rewrites.version,
                self._pool,
                self.signals.version,
            )
            wrote = publisher.write_static(key, self._shared_parts) or wrote
        return wrote

    def _publish_snapshot(self) -> EndpointMatrix:
        """Fold landed scrapes and metric updates into a new snapshot (and into shared memory)."""
        owed = self.ledger.landed(self._slots)
        publisher = self._publisher
        if publisher is not None:
            publisher.write_columns(self._slots, self._colmat, self._engine)
        if owed is not None:
            # after the gauges that account for them are visible (to a worker too): never before
            self.ledger.subtract(owed)
        self._dirty = False
        self._health_changed = False
        self._published_at = self._clock()
        snap = self._snapshot = self._build_snapshot()
        return snap

    def _shared_parts(self) -> StaticParts:
        return StaticParts(
            pool=self._pool,
            endpoints=[
                (n, st.endpoint.address, st.slot, st.lora_active, st.lora_waiting, st.models)
                for n in self._order
                for st in (self._status[n],)
            ],
            objectives=self.objectives.all().values(),
            rewrites=self.rewrites.all(),
            signals=self.signals.by_name(self._order, self._pods()),
        )

    def _lora(self) -> LoraColumns:
        cache = self._lora_cache
        if cache is None:
            sts = [self._status[n] for n in self._order]
            cache = self._lora_cache = lora_columns(
                [(st.lora_active, st.lora_waiting, st.models) for st in sts]
            )
        return cache

    def _static_parts(self) -> _StaticParts:
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
            load=self._load.arrays,
            lora=self._lora(),
            engine=engine,
            # shared by every snapshot of this membership: the matrix treats it as read-only
            address_index=address_index,
            signals=self.signals.columns(self._pods(), self.membership_version)
            if self.signals.version
            else None,
        )

    def _pods(self) -> list[str]:
        """The names signals are matched on: the pod, or the address of a static endpoint (no pod)."""
        return [st.endpoint.pod or st.endpoint.address for n in self._order for st in (self._status[n],)]

    # ------------------------------------------------------------------------------- passive health
    def configure_health(self, policy: OutlierPolicy, latency: LatencySettings) -> None:
        """The outlier detector's policy and the latency averages' settings (at start and on reload)."""
        self.health.set_policy(policy)
        self.latency.settings = latency
        self._latency_written_at = float("-inf")

    def set_draining(self, pods: frozenset[str]) -> None:
        """The scaler's draining mark (``picker.scaler``): the endpoints of these pods get no new picks
        while another candidate remains and stay last-resort fallbacks (``picker.routing.avoid``). Carried
        in the ``health`` column as :data:`DRAINING`, so ``--workers`` see it with the next publish."""
        pods = frozenset(pods)
        if pods != self._draining:
            self._draining = pods
            self._write_health()

    @property
    def draining(self) -> frozenset[str]:
        return self._draining

    def _write_health(self) -> None:
        states = self.health.states(self._order)
        if self._draining:
            for i, name in enumerate(self._order):
                endpoint = self._status[name].endpoint
                if (endpoint.pod or name) in self._draining:
                    states[i] = DRAINING
        self._cols["health"][:] = states
        self._health_changed = True

    def requests_sent(self) -> dict[str, float]:
        """Requests ever routed to each endpoint while it held its accounting slot (every ``--workers``
        process included): the scaler's demand is the growth of their sum between two reads."""
        return {name: self.ledger.sent(self._status[name].slot) for name in self._order}

    def health_view(self, name: str) -> EndpointHealthView | None:
        """One endpoint's passive health, for ``/debug/endpoints``."""
        return self.health.view(name, self._clock())

    def _slot_of_address(self, address: str) -> int | None:
        return self._slot_by_address.get(address)

    def _ingest(self, now: float) -> None:
        """Fold new outcomes into health and latency, run the detector's clock, and write their columns.

        Cheap when nothing happened: one read of the rows' report counts and one comparison each for the
        detector's next due time and the latency columns' age.
        """
        outcomes = self.outcomes
        sampled = False
        if outcomes.pending():
            drained = outcomes.drain(self._slots)
            if drained is not None:
                sampled = self._observe(*drained, now=now)
        health = self.health
        health.sweep(now)
        if health.version != self._health_version:
            self._health_version = health.version
            self._write_health()
        if sampled or now - self._latency_written_at >= _LATENCY_REFRESH_S:
            self._latency_written_at = now
            columns = self.latency.columns(self._order, now)
            for name, values in zip(LATENCY_COLUMNS, columns, strict=True):
                self._cols[name][:] = values
            self._dirty = True

    def _observe(self, positions: np.ndarray, deltas: np.ndarray, *, now: float) -> bool:
        """Feed drained outcomes (:meth:`OutcomeLedger.drain`) to the detector and the tracker; True if a
        latency sample came."""
        order = self._order
        sampled = False
        failures = [(kind, FAILURE_INDEX[kind]) for kind in FailureKind]
        for column, position in enumerate(positions.tolist()):
            name = order[position]
            d = deltas[:, column].tolist()
            failed = {kind: d[index] for kind, index in failures if d[index] > 0}
            if d[OK] > 0 or failed:
                total = sum(failed.values())
                worst = max(failed, key=failed.__getitem__) if failed else None
                self.health.observe(name, ok=round(d[OK]), failed=round(total), kind=worst, now=now)
            for signal in LatencySignal:
                count = d[LATENCY + 2 * signal + 1]
                if count > 0:
                    self.latency.observe(name, signal, d[LATENCY + 2 * signal], round(count), now)
                    sampled = True
        return sampled

    # ----------------------------------------------------------------------------------- accounting
    def acquire(self, name: str, charge: LoadCharge = NO_CHARGE) -> Lease:
        """Count a request dispatched to ``name`` (primary) with its token ``charge``. Call the lease's
        ``first_byte()`` at the first response body byte, ``report()`` with what the request came to and
        ``release()`` when the stream ends. Raises KeyError for a name not in the pool."""
        return self._counters.acquire(self._status[name].slot, charge, self._outcome_writer)

    def report(self, outcome: Outcome) -> None:
        """What a request the pool only backed came to (sent to an external endpoint first, the pool's
        pick its fallback list: no lease of ours): the pool endpoints it names learn their part."""
        self._outcome_writer.write(outcome)

    def inflight_total(self) -> float:
        """Streams in flight through this EPP (every process with ``--workers``)."""
        return self.ledger.open_streams()
