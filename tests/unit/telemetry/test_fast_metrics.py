"""The fast request-path metric families export exactly what prometheus_client exports for the same
observations (values included; only the ``_created`` timestamps differ)."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from picker.telemetry import DURATION_BUCKETS, FastCounter, FastGauge, FastHistogram

CREATED = re.compile(r"^(\S+_created(?:\{.*\})?) \S+$", re.MULTILINE)


def exposition(registry: CollectorRegistry) -> str:
    return CREATED.sub(r"\1 <created>", generate_latest(registry).decode())


@pytest.mark.parametrize(
    "values",
    [[0.001, 0.005, 0.0051, 1.0, 1.25, 3599.0, 3600.0, 3601.0, 1e9, 0.0], [], [7.0] * 3],
    ids=["edges", "none", "repeated"],
)
def test_histograms_match_prometheus_client(values: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = ["model_name", "target"]
    fast = FastHistogram("h_seconds", "doc", labels, buckets=DURATION_BUCKETS, registry=ours)
    ref = Histogram("h_seconds", "doc", labels, buckets=DURATION_BUCKETS, registry=theirs)
    for i, v in enumerate(values):
        fast.labels("a", str(i % 2)).observe(v)
        ref.labels("a", str(i % 2)).observe(v)
    fast.labels("b", "never")
    ref.labels("b", "never")
    assert exposition(ours) == exposition(theirs)


def test_unlabelled_histograms_exist_from_the_start_and_match() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("s_seconds", "doc", buckets=(0.1, 1.0), registry=ours)
    ref = Histogram("s_seconds", "doc", buckets=(0.1, 1.0), registry=theirs)
    assert exposition(ours) == exposition(theirs)
    for v in (0.05, 0.1, 0.5, 5.0):
        fast.observe(v)
        ref.observe(v)
    assert exposition(ours) == exposition(theirs)
    with pytest.raises(ValueError, match="has labels"):
        FastHistogram("l_seconds", "doc", ["x"], buckets=(1.0,), registry=ours).observe(1.0)


def test_counters_and_gauges_match_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fc = FastCounter("requests_total", "doc", ["model_name", "priority"], registry=ours)
    rc = Counter("requests_total", "doc", ["model_name", "priority"], registry=theirs)
    fg = FastGauge("running", "doc", ["model_name"], registry=ours)
    rg = Gauge("running", "doc", ["model_name"], registry=theirs)
    for model, priority in (("m", "0"), ("m", "0"), ("n", "2")):
        fc.labels(model, priority).inc()
        rc.labels(model, priority).inc()
        fg.labels(model).inc()
        rg.labels(model).inc()
    fg.labels("m").dec()
    rg.labels("m").dec()
    assert exposition(ours) == exposition(theirs)


def test_wrong_label_counts_and_duplicate_names_are_refused() -> None:
    registry = CollectorRegistry()
    counter = FastCounter("x_total", "doc", ["a"], registry=registry)
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels("1", "2")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("x_total", "doc", ["a"], registry=registry)
