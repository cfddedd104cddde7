"""The EPP's own metrics: every family the reference exports plus ``picker_*`` extras, and the ext_proc
observer hooks that feed them.

* The registry is injected (a fresh ``CollectorRegistry`` per process or per test); nothing registers in
  ``prometheus_client``'s global default registry.
* Request-path observations go through label children cached per ``(model, target)``: a per-stream cost
  of a few dict lookups instead of a ``labels()`` resolution per metric. The metrics every stream touches
  are :mod:`picker.telemetry.fast` families.
* The stream hooks do not touch the metrics: they queue the stream's facts, applied in a batch
  (:mod:`picker.telemetry.batch`).
* ``model_name`` comes from client bodies, so its cardinality is capped (:data:`MAX_MODEL_LABELS`); past
  the cap new names are recorded as ``other``. The reference has no cap.

Why one module of this size: the metric families are defined once, in one registration order (the order
``/metrics``, the golden exposition and the ``--workers`` merge rely on), next to the hooks that feed them
(they share the label children cache and the batched facts); most of its length is those definitions'
names and help texts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from picker.labels import MAX_LABEL_LENGTH, MAX_LABEL_VALUES, BoundedLabel
from picker.state.config_store import ActiveConfig, ReloadResult
from picker.telemetry.batch import FactQueue
from picker.telemetry.buckets import (
    ALPHA,
    DURATION_BUCKETS,
    INPUT_TOKEN_BUCKETS,
    NTPOT_BUCKETS,
    OUTPUT_TOKEN_BUCKETS,
    REQUEST_SIZE_BUCKETS,
    RESPONSE_SIZE_BUCKETS,
    SCHEDULER_BUCKETS,
)
from picker.telemetry.fast import FastCounter, FastFamily, FastGauge, FastHistogram
from picker.telemetry.merge import MergedRequestMetrics
from picker.telemetry.pool import EjectionCounts, HealthCollector, PoolCollector, SnapshotSource
from picker.telemetry.prefix import (
    HIT_BYTES_HELP,
    HIT_RATIO_HELP,
    PREFIX_BYTES_BUCKETS,
    PREFIX_RATIO_BUCKETS,
    PrefixSizeCollector,
)

MAX_MODEL_LABELS = MAX_LABEL_VALUES
#: the token counters' samples: the scaler's token demand (``DEFAULT_TOKEN_QUERY`` reads them in Prometheus)
TOKEN_SUM_SAMPLES = frozenset(
    {"inference_objective_input_tokens_sum", "inference_objective_output_tokens_sum"}
)


class _Decision(Protocol):
    """The fields of a routing decision that metrics need (structural, see picker.routing.types)."""

    @property
    def incoming_model(self) -> str: ...

    @property
    def target_model(self) -> str: ...

    @property
    def priority(self) -> int: ...

    @property
    def scheduled_s(self) -> float | None: ...


class _Usage(Protocol):
    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def cached_tokens(self) -> int: ...


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
        health: EjectionCounts | tuple[EjectionCounts, ...] | None = None,
        label_values: int = MAX_MODEL_LABELS,
        label_length: int = MAX_LABEL_LENGTH,
        prefix_size: Callable[[], int] | None = None,
    ) -> None:
        """``label_values`` / ``label_length`` bound the model-name labels (:mod:`picker.labels`).

        ``request_registry``: where the request-path metrics (:meth:`request_metrics`) register;
        default the main ``registry``. A ``--workers`` supervisor routes no requests and exports the
        workers' merged request metrics instead (:class:`MergedRequestMetrics`), so it passes a private
        registry here to keep its own, unused ones out of ``/metrics``. ``prefix_size``: entries of the
        process's prefix index (``inference_extension_prefix_indexer_size``; 0 without one). ``health``:
        the passive-health detector(s) whose ejections ``picker_endpoint_ejections_total`` counts (the
        pool's, and the external endpoints' of ``picker.routing.external``)."""
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
        self.prefix_hit_ratio = FastHistogram(
            "inference_extension_prefix_indexer_hit_ratio",
            HIT_RATIO_HELP,
            buckets=PREFIX_RATIO_BUCKETS,
            registry=rr,
        )
        self.prefix_hit_bytes = FastHistogram(
            "inference_extension_prefix_indexer_hit_bytes",
            HIT_BYTES_HELP,
            buckets=PREFIX_BYTES_BUCKETS,
            registry=rr,
        )
        r.register(PrefixSizeCollector(prefix_size if prefix_size is not None else (lambda: 0)))
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
        self.failover_total = Counter(
            "ai_failover_total",
            "Requests routed away from the endpoint the scorer preferred, by reason (ejected: passive "
            "health ejected it; draining: the scaler is removing its pod; stale: its metrics are stale or "
            "missing; saturated, unavailable: the pool was, so it went to an external endpoint; "
            "over_limits: the external endpoint it asked for was over its limits).",
            ["pool", "reason"],
            registry=rr,
        )
        r.register(PoolCollector(self))
        if health is not None:
            r.register(HealthCollector(*(health if isinstance(health, tuple) else (health,))))
        #: model names (incoming and target share the vocabulary) and rewrite names, bounded
        self._models = BoundedLabel(max_values=label_values, max_length=label_length)
        self._rewrites = BoundedLabel(max_values=label_values, max_length=label_length)
        self._label_length = label_length
        self._children: dict[tuple[str, str], _Series] = {}
        self._running: set[int] = set()
        #: stream facts not applied yet (see :mod:`picker.telemetry.batch`)
        self._facts = FactQueue()
        self._queue = self._facts.push
        # bound once: ``self._apply_x`` would build a bound method per queued fact
        self._on_routed = self._apply_routed
        self._on_complete = self._apply_complete
        self._on_closed = self._apply_closed
        self._on_prefix = self._apply_prefix
        for family in self.request_metrics():
            if isinstance(family, FastFamily):
                family.before_collect = self.flush
        #: the workers' request-path metrics (the ``--workers`` supervisor), see :meth:`merge_workers`
        self._merged: MergedRequestMetrics | None = None

    def pool_name(self) -> str:
        return self._pool_name()

    def merge_workers(self, merged: MergedRequestMetrics) -> None:
        """The ``--workers`` supervisor: export the workers' merged request-path metrics, and count their
        tokens in :meth:`tokens_served` (this process routes nothing itself)."""
        self.registry.register(merged)
        self._merged = merged

    def tokens_served(self) -> float:
        """Prompt + completion tokens the model servers reported (``usage``) in all, every ``--workers``
        process included: the ``_sum`` of ``inference_objective_input_tokens`` and ``_output_tokens``, the
        counters the scaler's token forecast reads in Prometheus. Its growth is the live token rate."""
        if self._merged is not None:
            return self._merged.sample_sum(TOKEN_SUM_SAMPLES)
        self.flush()
        return self.input_tokens.total_sum() + self.output_tokens.total_sum()

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
            self.prefix_hit_ratio,
            self.prefix_hit_bytes,
            self.model_rewrite_decisions,
            self.model_server_errors_total,
            self.failover_total,
        )

    # -------------------------------------------------------------------------------------- helpers
    def _label(self, model: str) -> str:
        return self._models(model)

    def _pair(self, incoming: str, target: str) -> _Series:
        limit = self._label_length
        if len(incoming) > limit or len(target) > limit:
            # never a cache key: a long name would be kept alive by the cache
            incoming, target = self._label(incoming), self._label(target)
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
                decision.scheduled_s,
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

    def failover(self, reason: str) -> None:
        """A request went elsewhere than the scorer's choice (``picker.routing.avoid.FailoverReason``: a
        bounded set, so the label cannot grow without bound)."""
        self.failover_total.labels(self.pool_name(), reason).inc()

    def prefix_matched(self, matched_bytes: int, total_bytes: int) -> None:
        """A routed request's prompt (``total_bytes`` > 0) matched ``matched_bytes`` at its endpoint."""
        self._queue((self._on_prefix, matched_bytes, total_bytes))

    # ------------------------------------------------------------------------------------ batching
    def flush(self) -> None:
        """Apply every queued stream fact. Safe from any thread; run before each request-path family is
        collected, so exports and scrapes include every stream reported so far."""
        self._facts.flush()

    def _apply_routed(  # noqa: PLR0917 - one queued fact's fields
        self,
        incoming: str,
        target: str,
        priority: int,
        request_bytes: int,
        key: int,
        scheduled_s: float | None,
    ) -> None:
        if scheduled_s is not None:  # the director's schedule, carried by the dispatch (one fact per stream)
            self.scheduler_e2e.observe(scheduled_s)
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

    def _apply_prefix(self, matched_bytes: int, total_bytes: int) -> None:
        self.prefix_hit_ratio.observe(matched_bytes / total_bytes)
        self.prefix_hit_bytes.observe(matched_bytes)

    # --------------------------------------------------------------------------- other observers
    def rewrite_decision(self, rewrite_name: str, model: str, target: str) -> None:
        self.model_rewrite_decisions.labels(
            self._rewrites(rewrite_name), self._label(model), self._label(target)
        ).inc()

    def config_reloaded(self, result: ReloadResult, _active: ActiveConfig) -> None:
        self.config_reload_total.labels(result.result).inc()

    def scrape_observed(self, duration_s: float, ok: bool) -> None:
        self.scrape_duration.observe(duration_s)
        if not ok:
            self.scrape_errors_total.inc()
