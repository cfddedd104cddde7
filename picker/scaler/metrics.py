"""The scaler's metrics (``picker_scaler_*``) on an injected registry; :class:`ScalerMetrics` is the
controller's :class:`~picker.scaler.ports.ScalerObserver`.

Registered only in a process that runs the scaler (Kubernetes mode). Gauges follow the last tick; with
the section removed or on a standby they keep their last values, except ``picker_scaler_active``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from picker.scaler.decision import Decision
from picker.scaler.ports import TickReport

#: drains last from seconds (a pod with no streams) to the drain timeout (minutes)
DRAIN_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class ScalerMetrics:
    def __init__(self, registry: CollectorRegistry, *, held: Callable[[], int] | None = None) -> None:
        """``held``: the live count of requests held for a first replica; read at every scrape (a hold
        often ends before the next tick), else the count of the last tick."""

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(name, text, registry=registry)

        self.active = gauge("picker_scaler_active", "1 while this process runs the scaler (leader, section).")
        self.dry_run = gauge("picker_scaler_dry_run", "1 when the scaler only decides (dryRun: true).")
        self.current = gauge("picker_scaler_current_replicas", "The workload's spec.replicas.")
        self.desired = gauge("picker_scaler_desired_replicas", "The replica count the scaler wants.")
        self.ready = gauge("picker_scaler_ready_replicas", "The workload's ready replicas.")
        self.max_replicas = gauge("picker_scaler_max_replicas", "The maximum in force (schedule window).")
        self.demand = gauge("picker_scaler_demand_rps", "Requests per second routed to the pool, last tick.")
        self.forecast = gauge(
            "picker_scaler_forecast_rps", "Forecast peak demand over the next warm-up (NaN: no forecast)."
        )
        self.capacity = gauge("picker_scaler_capacity_rps", "Per-replica capacity at the SLO in use.")
        self.demand_tokens = gauge(
            "picker_scaler_demand_tps",
            "Tokens per second (prompt + completion) served by the pool, last tick (NaN: not measured).",
        )
        self.forecast_tokens = gauge(
            "picker_scaler_forecast_tps", "Forecast peak token rate over the next warm-up (NaN: no forecast)."
        )
        self.capacity_tokens = gauge(
            "picker_scaler_capacity_tps",
            "Per-replica token capacity at the SLO in use (NaN: sizing on requests only).",
        )
        self.saturated = gauge(
            "picker_scaler_saturated", "1 while the saturation detector says the pool is full."
        )
        self.held = gauge("picker_scaler_held_requests", "Requests held waiting for a first replica.")
        self._live_held = held is not None
        if held is not None:
            self.held.set_function(held)
        self.hpa = gauge("picker_scaler_hpa", "1 when an HPA targets the workload (its bounds are moved).")
        self.gpu_hours_saved = Counter(
            "picker_scaler_gpu_hours_saved",
            "Estimated GPU-hours saved against the schedule's maximum (max - replicas, x GPUs per replica).",
            registry=registry,
        )
        self.decisions = Counter(
            "picker_scaler_decisions",
            "Scaling decisions (dry run included), by direction and reason.",
            ["direction", "reason"],
            registry=registry,
        )
        self.drain_duration = Histogram(
            "picker_scaler_drain_duration_seconds",
            "From the draining mark to the victim's removal (its streams ended, or the drain timeout).",
            buckets=DRAIN_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "picker_scaler_errors",
            "Failed scaler operations (Kubernetes API, Prometheus), by operation.",
            ["operation"],
            registry=registry,
        )

    def tick(self, r: TickReport) -> None:
        self.active.set(1)
        self.hpa.set(1 if r.hpa else 0)
        self.dry_run.set(1 if r.dry_run else 0)
        self.current.set(r.current)
        self.desired.set(r.desired)
        self.ready.set(r.ready)
        self.max_replicas.set(r.max_replicas)
        self.demand.set(r.demand_rps)
        self.forecast.set(_or_nan(r.forecast_rps))
        self.capacity.set(r.capacity_rps)
        self.demand_tokens.set(_or_nan(r.demand_tps))
        self.forecast_tokens.set(_or_nan(r.forecast_tps))
        self.capacity_tokens.set(_or_nan(r.capacity_tps))
        self.saturated.set(1 if r.saturated else 0)
        if not self._live_held:
            self.held.set(r.held)
        if r.gpu_hours_saved > 0:
            self.gpu_hours_saved.inc(r.gpu_hours_saved)

    def inactive(self) -> None:
        self.active.set(0)

    def decided(self, decision: Decision) -> None:
        self.decisions.labels(decision.direction, decision.reason).inc()

    def drained(self, seconds: float) -> None:
        self.drain_duration.observe(seconds)

    def failed(self, operation: str) -> None:
        self.errors.labels(operation).inc()


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value
