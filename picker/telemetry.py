"""Our metrics OUT: the reference EPP's metric names, types, labels and buckets, plus ``picker_*`` extras.

Design points:

* The registry is injected (a fresh ``CollectorRegistry`` per process or per test); nothing registers in
  ``prometheus_client``'s global default registry.
* Pool and per-endpoint gauges are computed *at scrape time* by a custom collector from the datastore, so
  a removed endpoint leaves no series behind and there is no refresher loop to go stale (the reference
  refreshes pool gauges every 5 s in a goroutine).
* Request-path observations go through label children cached per ``(model, target)``: a per-stream cost
  of a few dict lookups instead of a ``labels()`` resolution per metric.
* ``model_name`` comes from client bodies, so its cardinality is capped (:data:`MAX_MODEL_LABELS`); past
  the cap new names are recorded as ``other``. The reference has no cap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from picker.state.config_store import ActiveConfig, ReloadResult
from picker.state.datastore import Datastore

ALPHA = "[ALPHA] "
MAX_MODEL_LABELS = 1000
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


class Telemetry:
    """Owns every metric the EPP exports. Implements the ext_proc StreamObserver protocol."""

    def __init__(
        self,
        datastore: Datastore,
        *,
        registry: CollectorRegistry | None = None,
        pool_name: Callable[[], str] | str = "",
        staleness_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        commit: str = "",
        build_ref: str = "",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.datastore = datastore
        self.staleness_s = staleness_s
        self.clock = clock
        self._pool_name = pool_name if callable(pool_name) else (lambda: str(pool_name))
        r = self.registry
        mt = ["model_name", "target_model_name"]
        self.request_total = Counter(
            "inference_objective_request_total",
            ALPHA + "Counter of inference objective requests broken out for each model and target model.",
            [*mt, "priority"],
            registry=r,
        )
        self.request_error_total = Counter(
            "inference_objective_request_error_total",
            ALPHA + "Counter of inference objective requests errors broken out for each model and target "
            "model.",
            [*mt, "error_code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "inference_objective_request_duration_seconds",
            ALPHA + "Inference objective response latency distribution in seconds for each model and target "
            "model.",
            mt,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ntpot = Histogram(
            "inference_objective_normalized_time_per_output_token_seconds",
            ALPHA + "Inference objective latency divided by number of output tokens in seconds for each "
            "model and target model.",
            mt,
            buckets=NTPOT_BUCKETS,
            registry=r,
        )
        self.request_sizes = Histogram(
            "inference_objective_request_sizes",
            ALPHA + "Inference objective requests size distribution in bytes for each model and target "
            "model.",
            mt,
            buckets=REQUEST_SIZE_BUCKETS,
            registry=r,
        )
        self.response_sizes = Histogram(
            "inference_objective_response_sizes",
            ALPHA + "Inference objective responses size distribution in bytes for each model and target "
            "model.",
            mt,
            buckets=RESPONSE_SIZE_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens",
            ALPHA + "Inference objective input token count distribution for requests in each model.",
            mt,
            buckets=INPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens",
            ALPHA + "Inference objective output token count distribution for requests in each model.",
            mt,
            buckets=OUTPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_cached_tokens = Histogram(
            "inference_objective_prompt_cached_tokens",
            ALPHA + "Inference objective prompt cached token count distribution for requests in each model.",
            mt,
            buckets=INPUT_TOKEN_BUCKETS,
            registry=r,
        )
        self.running_requests = Gauge(
            "inference_objective_running_requests",
            ALPHA + "Inference objective number of running requests in each model.",
            ["model_name"],
            registry=r,
        )
        self.scheduler_e2e = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds",
            ALPHA + "End-to-end scheduling latency distribution in seconds.",
            buckets=SCHEDULER_BUCKETS,
            registry=r,
        )
        self.model_rewrite_decisions = Counter(
            "inference_extension_model_rewrite_decisions_total",
            ALPHA + "Total number of model rewrite decisions.",
            ["model_rewrite_name", "model_name", "target_model"],
            registry=r,
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
        self.scrape_duration = Histogram(
            "picker_scrape_duration_seconds",
            "Duration of one model-server metric scrape.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.model_server_errors_total = Counter(
            "picker_model_server_responses_not_ok_total",
            "Responses whose upstream :status was not 200 (counted as ModelServerError).",
            mt,
            registry=r,
        )
        r.register(_PoolCollector(self))
        self._models: set[str] = set()
        self._children: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._running: set[int] = set()

    def pool_name(self) -> str:
        return self._pool_name()

    # -------------------------------------------------------------------------------------- helpers
    def _label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODEL_LABELS:
            return OTHER
        self._models.add(model)
        return model

    def _pair(self, incoming: str, target: str) -> tuple[Any, ...]:
        key = (incoming, target)
        c = self._children.get(key)
        if c is None:
            a, b = self._label(incoming), self._label(target)
            c = (
                self.request_sizes.labels(a, b),
                self.request_duration.labels(a, b),
                self.response_sizes.labels(a, b),
                self.input_tokens.labels(a, b),
                self.output_tokens.labels(a, b),
                self.prompt_cached_tokens.labels(a, b),
                self.ntpot.labels(a, b),
                self.running_requests.labels(a),
                a,
                b,
            )
            if len(self._children) < MAX_MODEL_LABELS * 4:
                self._children[key] = c
        return c

    # -------------------------------------------------------------------- StreamObserver protocol
    def routed(self, decision: _Decision, request_bytes: int) -> None:
        c = self._pair(decision.incoming_model, decision.target_model)
        self.request_total.labels(c[8], c[9], str(decision.priority)).inc()
        c[0].observe(request_bytes)
        if decision.incoming_model:
            c[7].inc()
            self._running.add(id(decision))

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
        if decision is None:  # a response-only stream: token counts with empty model labels (reference)
            c = self._pair("", "")
        else:
            c = self._pair(decision.incoming_model, decision.target_model)
        if latency_s > 0:
            c[1].observe(latency_s)
        c[2].observe(response_bytes)
        if not status_ok:
            self.model_server_errors_total.labels(c[8], c[9]).inc()
        if usage is not None:
            if usage.prompt_tokens > 0:
                c[3].observe(usage.prompt_tokens)
            if usage.completion_tokens > 0:
                c[4].observe(usage.completion_tokens)
                if latency_s > 0:
                    c[6].observe(latency_s / usage.completion_tokens)
            if usage.cached_tokens > 0:
                c[5].observe(usage.cached_tokens)

    def stream_closed(self, decision: _Decision | None) -> None:
        # Only streams counted by routed() are uncounted: a stream cancelled between the pick and the
        # replies never incremented the gauge. id() is safe: the decision lives until this call.
        if decision is not None and id(decision) in self._running:
            self._running.discard(id(decision))
            self._pair(decision.incoming_model, decision.target_model)[7].dec()

    # --------------------------------------------------------------------------- other observers
    def scheduled(self, duration_s: float) -> None:
        self.scheduler_e2e.observe(duration_s)

    def rewrite_decision(self, rewrite_name: str, model: str, target: str) -> None:
        self.model_rewrite_decisions.labels(rewrite_name, self._label(model), self._label(target)).inc()

    def config_reloaded(self, result: ReloadResult, _active: ActiveConfig) -> None:
        self.config_reload_total.labels(result.result).inc()

    def scrape_observed(self, duration_s: float, ok: bool) -> None:
        self.scrape_duration.observe(duration_s)
        if not ok:
            self.scrape_errors_total.inc()
