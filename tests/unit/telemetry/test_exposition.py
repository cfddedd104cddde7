"""/metrics renders the registry without ``*_created`` samples, for prometheus_client's families and ours."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from picker.telemetry.exposition import render
from picker.telemetry.fast import FastCounter, FastHistogram


def _names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_created_series_are_left_out_and_everything_else_kept() -> None:
    registry = CollectorRegistry()
    Counter("lib_requests", "a library counter", ["m"], registry=registry).labels("x").inc(2)
    Histogram("lib_seconds", "a library histogram", registry=registry, buckets=(1.0,)).observe(0.5)
    FastCounter("fast_requests_total", "ours", ["m"], registry=registry).labels("x").inc()
    FastHistogram("fast_seconds", "ours", buckets=(1.0,), registry=registry).observe(2.0)
    Gauge("job_created", "a gauge whose own name ends in _created", registry=registry).set(7)
    full = _names(generate_latest(registry).decode())
    assert {"lib_requests_created", "lib_seconds_created", "fast_requests_created"} <= full

    text = render(registry).decode()
    names = _names(text)
    assert {n for n in names if n.endswith("_created")} == {"job_created"}
    assert names == {n for n in full if not n.endswith("_created")} | {"job_created"}
    assert 'lib_requests_total{m="x"} 2.0' in text
    assert 'fast_seconds_bucket{le="+Inf"} 1.0' in text
    # the registry itself is untouched: a second render is the same
    assert render(registry).decode() == text
