"""What ``/metrics`` renders: the registry without the ``*_created`` samples.

prometheus_client exports, next to every counter, histogram and summary series, a ``<name>_created``
series holding the Unix time the series appeared (and :mod:`picker.telemetry.fast` mirrors it exactly).
In the Prometheus text format these are ordinary gauges: they double the series count of every counter
family, nothing in our dashboards or alerts reads them, and the reference EPP (Go client) has none. The
library's own switch, ``prometheus_client.disable_created_metrics()``, flips a process-wide flag; a view
over the injected registry does the same for this exposition only, and covers our fast families and the
``--workers`` merge too. A gauge family whose own name ends in ``_created`` is kept.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

#: families whose exposition carries ``<name>_created`` samples
_WITH_CREATED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


class WithoutCreated:
    """A read-only view of ``registry`` whose :meth:`collect` leaves out every ``*_created`` sample."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            if metric.type not in _WITH_CREATED:
                yield metric
                continue
            created = metric.name + "_created"
            # a copy: a collector may hand out the same Metric object on every scrape
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            out.samples = [s for s in metric.samples if s.name != created]
            yield out


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry`` without ``*_created`` series."""
    return generate_latest(WithoutCreated(registry))
