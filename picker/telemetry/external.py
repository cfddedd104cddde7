"""External endpoints' metrics (``picker.routing.external``), computed from their budgets when Prometheus
scrapes: what was sent to each, and how full each limited meter is in its current window.

No series without ``externalEndpoints`` (a custom collector yields nothing), and a removed endpoint leaves
none behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ExternalCollector"]

#: the meters whose window usage is exported, as ``/debug/external`` names them
METERS = ("requestsPerMinute", "tokensPerMinute", "tokensPerHour", "concurrent", "costPerDay", "costPerMonth")


class ExternalCollector(Collector):
    """``picker_external_requests_total{pool,endpoint}``, ``picker_external_window_usage{pool,endpoint,
    meter}`` (used + reserved in the meter's current window; costs in currency units) and
    ``picker_external_limit{pool,endpoint,meter}`` (the limits this process holds) and
    ``picker_external_ejected{pool,endpoint}`` (1 while passive health keeps it from taking requests:
    ejected, or probing; its ejections count in ``picker_endpoint_ejections_total``)."""

    def __init__(self, stats: Callable[[], list[Mapping[str, Any]]], pool: Callable[[], str]) -> None:
        self._stats = stats
        self._pool = pool

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        rows = self._stats()
        if not rows:
            return
        pool = self._pool()
        sent = CounterMetricFamily(
            "picker_external_requests",
            "Requests sent to each external endpoint first (spill-over, or asked by the objective).",
            labels=["pool", "endpoint"],
        )
        usage = GaugeMetricFamily(
            "picker_external_window_usage",
            "Used plus reserved in each meter's current window of an external endpoint (costs in currency "
            "units).",
            labels=["pool", "endpoint", "meter"],
        )
        limit = GaugeMetricFamily(
            "picker_external_limit",
            "The limits of an external endpoint this EPP replica holds (1/R each with spillover.replicas R).",
            labels=["pool", "endpoint", "meter"],
        )
        ejected = GaugeMetricFamily(
            "picker_external_ejected",
            "1 while passive health keeps an external endpoint from taking requests (ejected, or waiting for "
            "its probe's outcome), else 0.",
            labels=["pool", "endpoint"],
        )
        for row in rows:
            name = str(row["name"])
            sent.add_metric([pool, name], float(row["dispatched"]))
            health = row.get("health")
            out = health is not None and health["state"] != "healthy"
            ejected.add_metric([pool, name], 1.0 if out else 0.0)
            for meter in METERS:
                scale = 1e-9 if meter.startswith("cost") else 1.0
                used = float(row["used"].get(meter, 0)) + float(row["reserved"].get(meter, 0))
                usage.add_metric([pool, name, meter], used * scale)
                if meter in row["limits"]:
                    limit.add_metric([pool, name, meter], float(row["limits"][meter]) * scale)
        yield sent
        yield usage
        yield limit
        yield ejected
