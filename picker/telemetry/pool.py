"""Pool averages and per-endpoint gauges, computed from the datastore when Prometheus scrapes.

Computed at scrape time by a custom collector, so a removed endpoint leaves no series behind and there is
no refresher loop to go stale (the reference refreshes pool gauges every 5 s in a goroutine).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from picker.telemetry.buckets import ALPHA
from scoring.matrix import EndpointMatrix


class SnapshotSource(Protocol):
    """Where the pool gauges come from: a :class:`picker.state.datastore.Datastore` (or a worker's
    :class:`picker.state.view.SharedView`, whose pool gauges are never exported)."""

    def snapshot(self) -> EndpointMatrix: ...


class PoolGaugeSettings(Protocol):
    """What the collector reads at each scrape (the :class:`~picker.telemetry.Telemetry` that owns it:
    the staleness threshold follows configuration reloads, the pool name may be learned late)."""

    datastore: SnapshotSource
    staleness_s: float
    clock: Callable[[], float]

    def pool_name(self) -> str: ...


class PoolCollector(Collector):
    """Pool averages and per-endpoint gauges, computed from the datastore when Prometheus scrapes."""

    def __init__(self, telemetry: PoolGaugeSettings) -> None:
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
        ejected = GaugeMetricFamily(
            "picker_endpoint_ejected",
            "1 while passive health keeps the endpoint from being primary (ejected, or waiting for its "
            "probe's outcome), else 0.",
            labels=labels,
        )
        for i, (ep_name, addr) in enumerate(zip(m.names, m.addresses, strict=True)):
            inflight.add_metric([ep_name, addr], float(m.inflight[i]))
            age.add_metric([ep_name, addr], float(now - m.scraped_at[i]))
            stale.add_metric([ep_name, addr], 0.0 if fresh[i] else 1.0)
            ejected.add_metric([ep_name, addr], 1.0 if m.health[i] > 0.0 else 0.0)
        yield inflight
        yield age
        yield stale
        yield ejected


class EjectionCounts(Protocol):
    """What :class:`HealthCollector` reads: :class:`picker.state.health.OutlierDetector`."""

    @property
    def ejections_total(self) -> Mapping[str, int]: ...

    @property
    def ejections_refused(self) -> int: ...


class HealthCollector(Collector):
    """Passive-health counters, read from the detectors at scrape time (they count; we only export): the
    pool's and, when given, the external endpoints' (``picker.routing.external``), summed."""

    def __init__(self, *health: EjectionCounts) -> None:
        self._health = health

    def collect(self) -> Iterator[CounterMetricFamily]:
        ejections = CounterMetricFamily(
            "picker_endpoint_ejections",
            "Endpoints ejected by passive health, by reason (consecutive_5xx, failure_percentage, "
            "probe_failed).",
            labels=["reason"],
        )
        totals: dict[str, int] = {}
        for detector in self._health:
            for reason, count in detector.ejections_total.items():
                totals[str(reason)] = totals.get(str(reason), 0) + count
        for reason, count in totals.items():
            ejections.add_metric([reason], float(count))
        yield ejections
        refused = CounterMetricFamily(
            "picker_endpoint_ejections_refused",
            "Ejections not made because the pool's maxEjectionPercent was reached.",
        )
        refused.add_metric([], float(sum(d.ejections_refused for d in self._health)))
        yield refused
