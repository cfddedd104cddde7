"""Our metrics OUT: the reference EPP's metric names, types, labels and buckets, plus ``picker_*`` extras.

Design points:

* The registry is injected (a fresh ``CollectorRegistry`` per process or per test); nothing registers in
  ``prometheus_client``'s global default registry.
* Pool and per-endpoint gauges are computed *at scrape time* by a custom collector from the datastore, so
  a removed endpoint leaves no series behind and there is no refresher loop to go stale (the reference
  refreshes pool gauges every 5 s in a goroutine).
* Request-path observations go through label children cached per ``(model, target)``: a per-stream cost
  of a few dict lookups instead of a ``labels()`` resolution per metric. The metrics every stream touches
  (:class:`FastCounter`, :class:`FastHistogram`, :class:`FastGauge`) keep plain Python numbers instead of
  prometheus_client's locked values: about a fifth of the cost per observation, same exposition.
* The stream hooks do not touch the metrics: they queue the stream's facts, which are applied in a batch
  when a request-path family is collected (every ``/metrics`` scrape and ``--workers`` export) or when
  :data:`FLUSH_EVENTS` are pending. Why: a stream's hooks run between gRPC messages, with caches the gRPC
  stack has cooled, where updating a dozen metric children cost about 20 µs per stream; a batch updates
  them warm. Every scrape still sees every stream that reached the hooks before it.
* ``model_name`` comes from client bodies, so its cardinality is capped (:data:`MAX_MODEL_LABELS`); past
  the cap new names are recorded as ``other``. The reference has no cap.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from picker.state.config_store import ActiveConfig, ReloadResult
from scoring.matrix import EndpointMatrix

ALPHA = "[ALPHA] "
MAX_MODEL_LABELS = 1000
#: queued stream facts that trigger a flush on the event loop when no scrape came: about 16 streams, so the
#: loop stalls for under 100 µs (tail latency) while the batch still pays the cold start once for many
FLUSH_EVENTS = 64
OTHER = "other"

DURATION_BUCKETS = (
    0.005,
    0.025,
    0.05,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    6,
    8,
    10,
    15,
    20,
    30,
    45,
    60,
    120,
    180,
    240,
    300,
    360,
    480,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
)
REQUEST_SIZE_BUCKETS = (
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32768,
    65536,
    131072,
    262144,
    524288,
    1048576,
    2097152,
    4194304,
    8388608,
    16777216,
    33554432,
    67108864,
    134217728,
    268435456,
    536870912,
    1073741824,
)
# 32778 (not 32768) is the reference's typo; kept so dashboards and recording rules line up.
RESPONSE_SIZE_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778, 65536)
INPUT_TOKEN_BUCKETS = (
    1,
    8,
    16,
    32,
    64,
    128,
    256,
    512,
    1024,
    2048,
    4096,
    8192,
    16384,
    32778,
    65536,
    131072,
    262144,
    524288,
    1048576,
)
OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
SCHEDULER_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


# ------------------------------------------------------------------------------------------ fast families
class _FastFamily(Collector):
    """A labelled metric family on plain Python numbers, exported exactly as prometheus_client would
    export the same Counter/Histogram/Gauge (sample names, ``_created``, label order, child order).

    Why: a prometheus_client observation takes a lock per value and walks the buckets in Python (a
    histogram observation costs about 2 µs); every ext_proc stream makes about ten. Here a histogram
    observation is a bisect and two additions. Updates happen on one thread at a time (the event loop, or
    a :class:`Telemetry` flush under its lock); ``collect()`` (run by the admin server, possibly on another
    thread) reads whole Python numbers, so a scrape may see one observation in the buckets and not yet in
    the sum, never a torn value.
    """

    _type = ""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], *, registry: CollectorRegistry
    ) -> None:
        self._name = name.removesuffix("_total") if self._type == "counter" else name
        self._doc = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        #: run before every collect: applies the owner's queued observations (see the module doc)
        self.before_collect: Callable[[], None] | None = None
        registry.register(self)

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {values}")
            child = self._children[values] = self._child()
        return child

    def _child(self) -> Any:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return [Metric(self._name, self._doc, self._type)]

    def _samples(self, metric: Metric, labels: dict[str, str], child: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        if self.before_collect is not None:
            self.before_collect()
        metric = Metric(self._name, self._doc, self._type)
        for values, child in list(self._children.items()):
            self._samples(metric, dict(zip(self._labelnames, values, strict=True)), child)
        yield metric


class _CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class FastCounter(_FastFamily):
    """A labelled counter (see :class:`_FastFamily`); ``labels(...).inc()``."""

    _type = "counter"

    def _child(self) -> _CounterChild:
        return _CounterChild()

    def _samples(self, metric: Metric, labels: dict[str, str], child: _CounterChild) -> None:
        metric.add_sample(self._name + "_total", labels, child.value)
        metric.add_sample(self._name + "_created", labels, child.created)


class _GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class FastGauge(_FastFamily):
    """A labelled gauge (see :class:`_FastFamily`); ``labels(...).inc()`` / ``.dec()``."""

    _type = "gauge"

    def _child(self) -> _GaugeChild:
        return _GaugeChild()

    def _samples(self, metric: Metric, labels: dict[str, str], child: _GaugeChild) -> None:
        metric.add_sample(self._name, labels, child.value)


class _HistogramChild:
    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # bucket i counts amount <= bounds[i] (the last bound is +Inf), as prometheus_client does
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class FastHistogram(_FastFamily):
    """A histogram, labelled or not (see :class:`_FastFamily`); ``labels(...).observe(v)``, or
    ``observe(v)`` on an unlabelled one."""

    _type = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        self._le = tuple(floatToGoString(b) for b in bounds)  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry=registry)
        self._only = self.labels() if not self._labelnames else None

    def _child(self) -> _HistogramChild:
        return _HistogramChild(self._bounds)

    def observe(self, amount: float) -> None:
        only = self._only
        if only is None:
            raise ValueError(f"{self._name} has labels: observe through labels(...)")
        only.observe(amount)

    def _samples(self, metric: Metric, labels: dict[str, str], child: _HistogramChild) -> None:
        total = 0
        bucket = self._name + "_bucket"
        for le, count in zip(self._le, list(child.counts), strict=True):
            total += count
            metric.add_sample(bucket, {**labels, "le": le}, float(total))
        metric.add_sample(self._name + "_count", labels, float(total))
        metric.add_sample(self._name + "_sum", labels, child.sum)
        metric.add_sample(self._name + "_created", labels, child.created)


class SnapshotSource(Protocol):
    """Where the pool gauges come from: a :class:`picker.state.datastore.Datastore` (or a worker's
    :class:`picker.state.shared.SharedView`, whose pool gauges are never exported)."""

    def snapshot(self) -> EndpointMatrix: ...


class _Decision(Protocol):
    """The fields of a routing decision that metrics need (structural, see picker.routing.types)."""

    @property
    def incoming_model(self) -> str: ...

    @property
    def target_model(self) -> str: ...

    @property
    def priority(self) -> int: ...


class _Usage(Protocol):
    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def cached_tokens(self) -> int: ...


class _PoolCollector(Collector):
    """Pool averages and per-endpoint gauges, computed from the datastore when Prometheus scrapes."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._t = telemetry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        t = self._t
        ds = t.datastore
        pool = t.pool_name()
        m = ds.snapshot()
        now = t.clock()
        fresh = (now - m.scraped_at) <= t.staleness_s
        n_fresh = int(fresh.sum())

        def avg(col: np.ndarray) -> float:
            vals = col[fresh]
            vals = vals[~np.isnan(vals)]
            return float(vals.mean()) if vals.size else 0.0

        specs = (
            (
                "inference_pool_average_kv_cache_utilization",
                "The average kv cache utilization for an inference server pool.",
                avg(m.kv_usage),
            ),
            (
                "inference_pool_average_queue_size",
                "The average number of requests pending in the model server queue.",
                avg(m.waiting),
            ),
            (
                "inference_pool_average_running_requests",
                "The average number of running requests in the model server.",
                avg(m.running),
            ),
            (
                "inference_pool_ready_pods",
                "The number of ready pods in the inference server pool.",
                float(n_fresh),
            ),
        )
        for name, doc, value in specs:
            g = GaugeMetricFamily(name, ALPHA + doc, labels=["name"])
            g.add_metric([pool], value)
            yield g
        per_pod = GaugeMetricFamily(
            "inference_pool_per_pod_queue_size",
            ALPHA + "The total number of queue for each model server pod under the inference pool",
            labels=["model_server_pod", "name"],
        )
        for i, ep_name in enumerate(m.names):
            if fresh[i] and not math.isnan(m.waiting[i]):
                per_pod.add_metric([ep_name, pool], float(m.waiting[i]))
        yield per_pod

        labels = ["endpoint", "address"]
        inflight = GaugeMetricFamily(
            "picker_endpoint_inflight_requests",
            "Streams currently open through this EPP to the endpoint.",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "picker_endpoint_metrics_age_seconds",
            "Seconds since the endpoint's last successful scrape (+Inf: never).",
            labels=labels,
        )
        stale = GaugeMetricFamily(
            "picker_endpoint_stale",
            "1 when the endpoint's metrics are older than the staleness threshold.",
            labels=labels,
        )
        for i, (ep_name, addr) in enumerate(zip(m.names, m.addresses, strict=True)):
            inflight.add_metric([ep_name, addr], float(m.inflight[i]))
            age.add_metric([ep_name, addr], float(now - m.scraped_at[i]))
            stale.add_metric([ep_name, addr], 0.0 if fresh[i] else 1.0)
        yield inflight
        yield age
        yield stale


class _Series:
    """The label children of one ``(model_name, target_model_name)`` pair, resolved once.

    A stream then costs attribute reads instead of a ``labels()`` call (a lock, a tuple and a dict
    lookup) per metric; the ``inference_objective_request_total`` children are cached per priority too.
    """

    __slots__ = (
        "_t",
        "_totals",
        "cached_tokens",
        "duration",
        "input_tokens",
        "model",
        "ntpot",
        "output_tokens",
        "request_sizes",
        "response_sizes",
        "running",
        "target",
    )

    def __init__(self, t: Telemetry, model: str, target: str) -> None:
        self._t = t
        self.model = model
        self.target = target
        self.request_sizes = t.request_sizes.labels(model, target)
        self.duration = t.request_duration.labels(model, target)
        self.response_sizes = t.response_sizes.labels(model, target)
        self.input_tokens = t.input_tokens.labels(model, target)
        self.output_tokens = t.output_tokens.labels(model, target)
        self.cached_tokens = t.prompt_cached_tokens.labels(model, target)
        self.ntpot = t.ntpot.labels(model, target)
        self.running = t.running_requests.labels(model)
        self._totals: dict[int, Any] = {}

    def total(self, priority: int) -> Any:
        child = self._totals.get(priority)
        if child is None:
            child = self._t.request_total.labels(self.model, self.target, str(priority))
            if len(self._totals) < 64:  # priorities come from objectives: a handful in practice
                self._totals[priority] = child
        return child


class Telemetry:
    """Owns every metric the EPP exports. Implements the ext_proc StreamObserver protocol."""

    def __init__(
        self,
        datastore: SnapshotSource,
        *,
        registry: CollectorRegistry | None = None,
        pool_name: Callable[[], str] | str = "",
        staleness_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        commit: str = "",
        build_ref: str = "",
        request_registry: CollectorRegistry | None = None,
    ) -> None:
        """``request_registry``: where the request-path metrics (:meth:`request_metrics`) register;
        default the main ``registry``. A ``--workers`` supervisor routes no requests and exports the
        workers' merged request metrics instead (:class:`MergedRequestMetrics`), so it passes a private
        registry here to keep its own, unused ones out of ``/metrics``."""
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.datastore = datastore
        self.staleness_s = staleness_s
        self.clock = clock
        self._pool_name = pool_name if callable(pool_name) else (lambda: str(pool_name))
        r = self.registry
        rr = request_registry if request_registry is not None else r
        mt = ["model_name", "target_model_name"]
        self.request_total = FastCounter(
            "inference_objective_request_total",
            ALPHA + "Counter of inference objective requests broken out for each model and target model.",
            [*mt, "priority"],
            registry=rr,
        )
        self.request_error_total = Counter(
            "inference_objective_request_error_total",
            ALPHA + "Counter of inference objective requests errors broken out for each model and target "
            "model.",
            [*mt, "error_code"],
            registry=rr,
        )
        self.request_duration = FastHistogram(
            "inference_objective_request_duration_seconds",
            ALPHA + "Inference objective response latency distribution in seconds for each model and target "
            "model.",
            mt,
            buckets=DURATION_BUCKETS,
            registry=rr,
        )
        self.ntpot = FastHistogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            ALPHA + "Inference objective latency divided by number of output tokens in seconds for each "
            "model and target model.",
            mt,
            buckets=NTPOT_BUCKETS,
            registry=rr,
        )
        self.request_sizes = FastHistogram(
            "inference_objective_request_sizes",
            ALPHA + "Inference objective requests size distribution in bytes for each model and target "
            "model.",
            mt,
            buckets=REQUEST_SIZE_BUCKETS,
            registry=rr,
        )
        self.response_sizes = FastHistogram(
            "inference_objective_response_sizes",
            ALPHA + "Inference objective responses size distribution in bytes for each model and target "
            "model.",
            mt,
            buckets=RESPONSE_SIZE_BUCKETS,
            registry=rr,
        )
        self.input_tokens = FastHistogram(
            "inference_objective_input_tokens",
            ALPHA + "Inference objective input token count distribution for requests in each model.",
            mt,
            buckets=INPUT_TOKEN_BUCKETS,
            registry=rr,
        )
        self.output_tokens = FastHistogram(
            "inference_objective_output_tokens",
            ALPHA + "Inference objective output token count distribution for requests in each model.",
            mt,
            buckets=OUTPUT_TOKEN_BUCKETS,
            registry=rr,
        )
        self.prompt_cached_tokens = FastHistogram(
            "inference_objective_prompt_cached_tokens",
            ALPHA + "Inference objective prompt cached token count distribution for requests in each model.",
            mt,
            buckets=INPUT_TOKEN_BUCKETS,
            registry=rr,
        )
        self.running_requests = FastGauge(
            "inference_objective_running_requests",
            ALPHA + "Inference objective number of running requests in each model.",
            ["model_name"],
            registry=rr,
        )
        self.scheduler_e2e = FastHistogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            ALPHA + "End-to-end scheduling latency distribution in seconds.",
            buckets=SCHEDULER_BUCKETS,
            registry=rr,
        )
        self.model_rewrite_decisions = Counter(
            "inference_extension_model_rewrite_decisions_total",
            ALPHA + "Total number of model rewrite decisions.",
            ["model_rewrite_name", "model_name", "target_model"],
            registry=rr,
        )
        info = Gauge(
            "inference_extension_info",
            ALPHA + "General information of the current build of Inference Extension.",
            ["commit", "build_ref"],
            registry=r,
        )
        info.labels(commit, build_ref).set(1)
        self.config_reload_total = Counter(
            "picker_config_reload_total", "Configuration reload attempts by outcome.", ["result"], registry=r
        )
        for result in ("applied", "unchanged", "rejected"):
            self.config_reload_total.labels(result)
        self.scrape_errors_total = Counter(
            "picker_scrape_errors_total", "Failed model-server metric scrapes.", registry=r
        )
        self.scrape_duration = FastHistogram(  # observed on every scrape: thousands per second
            "picker_scrape_duration_seconds",
            "Duration of one model-server metric scrape.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.model_server_errors_total = Counter(
            "picker_model_server_responses_not_ok_total",
            "Responses whose upstream :status was not 200 (counted as ModelServerError).",
            mt,
            registry=rr,
        )
        r.register(_PoolCollector(self))
        self._models: set[str] = set()
        self._children: dict[tuple[str, str], _Series] = {}
        self._running: set[int] = set()
        #: stream facts not applied yet, as (function, arguments...): appended on the event loop, applied
        #: by flush() on whichever thread collects (deque appends and pops are atomic)
        self._pending: deque[tuple[Any, ...]] = deque()
        self._flush_lock = threading.Lock()
        # bound once: ``self._apply_x`` would build a bound method per queued fact
        self._on_routed = self._apply_routed
        self._on_complete = self._apply_complete
        self._on_closed = self._apply_closed
        self._on_scheduled = self._apply_scheduled
        for family in self.request_metrics():
            if isinstance(family, _FastFamily):
                family.before_collect = self.flush

    def pool_name(self) -> str:
        return self._pool_name()

    def request_metrics(self) -> tuple[Any, ...]:
        """The metrics observed on the request path (by ext_proc streams and the director), in
        registration order: what a ``--workers`` worker ships to the supervisor."""
        return (
            self.request_total,
            self.request_error_total,
            self.request_duration,
            self.ntpot,
            self.request_sizes,
            self.response_sizes,
            self.input_tokens,
            self.output_tokens,
            self.prompt_cached_tokens,
            self.running_requests,
            self.scheduler_e2e,
            self.model_rewrite_decisions,
            self.model_server_errors_total,
        )

    # -------------------------------------------------------------------------------------- helpers
    def _label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODEL_LABELS:
            return OTHER
        self._models.add(model)
        return model

    def _pair(self, incoming: str, target: str) -> _Series:
        key = (incoming, target)
        c = self._children.get(key)
        if c is None:
            a, b = self._label(incoming), self._label(target)
            c = _Series(self, a, b)
            if len(self._children) < MAX_MODEL_LABELS * 4:
                self._children[key] = c
        return c

    # -------------------------------------------------------------------- StreamObserver protocol
    # Each hook queues what it was told (see the module doc); the _apply_* methods do the work.
    def routed(self, decision: _Decision, request_bytes: int) -> None:
        self._queue(
            (
                self._on_routed,
                decision.incoming_model,
                decision.target_model,
                decision.priority,
                request_bytes,
                id(decision),
            )
        )

    def failed(self, error_code: str, incoming_model: str, target_model: str) -> None:
        self.request_error_total.labels(
            self._label(incoming_model), self._label(target_model), error_code
        ).inc()

    def response_complete(
        self,
        decision: _Decision | None,
        *,
        latency_s: float,
        response_bytes: int,
        usage: _Usage | None,
        status_ok: bool,
    ) -> None:
        # decision None: a response-only stream, token counts with empty model labels (reference)
        incoming = decision.incoming_model if decision is not None else ""
        target = decision.target_model if decision is not None else ""
        if not status_ok:  # an error counter, read by scrapes that may not flush first: at once
            self.model_server_errors_total.labels(self._label(incoming), self._label(target)).inc()
        self._queue((self._on_complete, incoming, target, latency_s, response_bytes, usage))

    def stream_closed(self, decision: _Decision | None) -> None:
        if decision is not None:
            self._queue((self._on_closed, decision.incoming_model, decision.target_model, id(decision)))

    def scheduled(self, duration_s: float) -> None:
        self._queue((self._on_scheduled, duration_s))

    # ------------------------------------------------------------------------------------ batching
    def _queue(self, event: tuple[Any, ...]) -> None:
        pending = self._pending
        pending.append(event)
        if len(pending) >= FLUSH_EVENTS:
            self.flush()

    def flush(self) -> None:
        """Apply every queued stream fact. Safe from any thread; run before each request-path family is
        collected, so exports and scrapes include every stream reported so far."""
        pending = self._pending
        with self._flush_lock:
            for _ in range(len(pending)):
                event = pending.popleft()
                event[0](*event[1:])

    def _apply_routed(self, incoming: str, target: str, priority: int, request_bytes: int, key: int) -> None:
        c = self._pair(incoming, target)
        c.total(priority).inc()
        c.request_sizes.observe(request_bytes)
        if incoming:
            c.running.inc()
            self._running.add(key)

    def _apply_complete(
        self, incoming: str, target: str, latency_s: float, response_bytes: int, usage: _Usage | None
    ) -> None:
        c = self._pair(incoming, target)
        if latency_s > 0:
            c.duration.observe(latency_s)
        c.response_sizes.observe(response_bytes)
        if usage is not None:
            if usage.prompt_tokens > 0:
                c.input_tokens.observe(usage.prompt_tokens)
            if usage.completion_tokens > 0:
                c.output_tokens.observe(usage.completion_tokens)
                if latency_s > 0:
                    c.ntpot.observe(latency_s / usage.completion_tokens)
            if usage.cached_tokens > 0:
                c.cached_tokens.observe(usage.cached_tokens)

    def _apply_closed(self, incoming: str, target: str, key: int) -> None:
        # Only streams counted by routed() are uncounted: a stream cancelled between the pick and the
        # replies never incremented the gauge. The key is the decision's id(), unique while it lived; the
        # queue keeps each stream's facts in order, so a reused id is added only after it was removed.
        if key in self._running:
            self._running.discard(key)
            self._pair(incoming, target).running.dec()

    def _apply_scheduled(self, duration_s: float) -> None:
        self.scheduler_e2e.observe(duration_s)

    # --------------------------------------------------------------------------- other observers
    def rewrite_decision(self, rewrite_name: str, model: str, target: str) -> None:
        self.model_rewrite_decisions.labels(rewrite_name, self._label(model), self._label(target)).inc()

    def config_reloaded(self, result: ReloadResult, _active: ActiveConfig) -> None:
        self.config_reload_total.labels(result.result).inc()

    def scrape_observed(self, duration_s: float, ok: bool) -> None:
        self.scrape_duration.observe(duration_s)
        if not ok:
            self.scrape_errors_total.inc()


# ------------------------------------------------------------------------------------------ --workers
#: One metric family as plain, picklable data: name, documentation, type, unit and its samples as
#: ``(sample name, labels, value)``. What a worker process sends to the supervisor.
FamilyData = tuple[str, str, str, str, list[tuple[str, dict[str, str], float]]]


def export_families(metrics: Iterable[Any]) -> list[FamilyData]:
    """The current samples of ``metrics`` (prometheus_client metric objects) as :data:`FamilyData`."""
    out: list[FamilyData] = []
    for metric in metrics:
        for f in metric.collect():
            samples = [(x.name, dict(x.labels), float(x.value)) for x in f.samples]
            out.append((f.name, f.documentation, f.type, f.unit, samples))
    return out


_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class MergedRequestMetrics(Collector):
    """The request-path metrics of every worker process, merged for the supervisor's ``/metrics``.

    Why this rather than prometheus_client's multiprocess mode: that mode writes every observation to a
    memory-mapped file under a lock (slower on the request path) and needs a writable directory and
    cleanup of dead processes' files; here each worker keeps ordinary in-process metrics and sends a
    snapshot of them (:func:`export_families`) about once a second, so ``/metrics`` lags by that much.

    Merging: sample values are summed over workers, except ``*_created`` (the earliest wins). A worker
    that exits is *retired*: its counters and histograms stay counted (totals never go down when a
    worker is replaced), its gauges (``inference_objective_running_requests``) drop out, since its
    streams ended with it. ``templates`` are metric objects with the same names (the supervisor's own,
    never observed): they fix the families' order and metadata, so every family is exported even before
    the first worker reports, exactly as in a single process.
    """

    def __init__(self, templates: Iterable[Any]) -> None:
        self._base = export_families(templates)
        self._live: dict[int, list[FamilyData]] = {}
        self._retired: dict[str, dict[_SampleKey, float]] = {}

    def update(self, worker: int, families: list[FamilyData]) -> None:
        """A worker's latest snapshot (replaces its previous one)."""
        self._live[worker] = families

    def retire(self, worker: int) -> None:
        """The worker process is gone; keep what it counted, drop its gauges."""
        families = self._live.pop(worker, None)
        if families is None:
            return
        for name, _doc, typ, _unit, samples in families:
            if typ == "gauge":
                continue
            _merge_into(self._retired.setdefault(name, {}), samples)

    def collect(self) -> Iterator[Metric]:
        live = list(self._live.values())
        for name, doc, typ, unit, base in self._base:
            merged: dict[_SampleKey, float] = {}
            _merge_into(merged, base)
            retired = self._retired.get(name)
            if retired:
                _merge_into(merged, [(k[0], dict(k[1]), v) for k, v in retired.items()])
            for families in live:
                for fname, _d, _t, _u, samples in families:
                    if fname == name:
                        _merge_into(merged, samples)
            metric = Metric(name, doc, typ, unit)
            for (sample, labels), value in merged.items():
                metric.add_sample(sample, dict(labels), value)
            yield metric


def _merge_into(acc: dict[_SampleKey, float], samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
    for sample, labels, value in samples:
        key = (sample, tuple(labels.items()))
        old = acc.get(key)
        if old is None:
            acc[key] = value
        elif sample.endswith("_created"):
            acc[key] = min(old, value)
        else:
            acc[key] = old + value
