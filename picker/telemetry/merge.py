"""``--workers``: each worker's request-path metrics as plain data, merged for the supervisor's
``/metrics``."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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

    def sample_sum(self, names: Collection[str]) -> float:
        """The samples called ``names`` (every label set) summed over the workers, live and retired."""
        total = 0.0
        for retired in self._retired.values():
            total += sum(v for (sample, _labels), v in retired.items() if sample in names)
        for families in list(self._live.values()):
            for _name, _doc, _typ, _unit, samples in families:
                total += sum(v for sample, _labels, v in samples if sample in names)
        return total

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
