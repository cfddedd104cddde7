"""The prometheus-scorer's source (``picker.scrape.signals``) against a fake client: values per pod into
the datastore's ``signals`` columns, kept three intervals after the last answer then neutral, removed with
their scorer; the datastore's columns follow membership."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest

from picker.scrape.signals import PrometheusSignals, queries_of, values_by_pod
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint
from scoring.scorers.signal import PrometheusScorer

NS = "inference"


def series(pod: str, value: str, **labels: str) -> dict[str, Any]:
    return {"metric": {"pod": pod, "namespace": NS, **labels}, "value": [0, value]}


def test_values_by_pod() -> None:
    samples = [
        series("a", "1"),
        series("a", "3"),  # two series for one pod: their mean
        series("b", "NaN"),
        series("c", "x"),
        series("d", "5", namespace="other"),  # another namespace's pod of the same name
        {"metric": {}, "value": [0, "7"]},
    ]
    assert values_by_pod(samples, pod_label="pod", namespace=NS) == {"a": 2.0}


def test_queries_of_deduplicates_a_shared_query() -> None:
    a = PrometheusScorer("a", {"query": "q", "refreshInterval": "30s"})
    b = PrometheusScorer("b", {"query": "q", "refreshInterval": "5s", "direction": "higher"})
    c = PrometheusScorer("c", {"query": "q", "podLabel": "exported_pod"})
    got = queries_of([a, b, c, object()])
    assert [(q.key, q.refresh_s) for q in got] == [(a.key, 5.0), (c.key, 15.0)]


class FakeClient:
    def __init__(self) -> None:
        self.answer: Any = []
        self.queries: list[str] = []

    def custom_query(self, query: str, params: Mapping[str, str] | None = None) -> Any:
        self.queries.append(query)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def pool() -> Datastore:
    ds = Datastore()
    for i, pod in enumerate(("a", "b", "c")):
        ds.upsert_endpoint(
            Endpoint(name=f"{pod}-rank-0", ip=f"10.0.0.{i + 1}", port=8000, pod=pod, namespace=NS)
        )
    return ds


def column(ds: Datastore, key: str) -> list[float] | None:
    col = ds.snapshot().signals.get(key)
    return None if col is None else [float(v) for v in col]


async def test_values_are_kept_three_intervals_then_neutral_and_leave_with_their_scorer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = pool()
    clock = Clock()
    scorer = PrometheusScorer("p95", {"query": "p95_by_pod", "refreshInterval": "10s"})
    source = PrometheusSignals(ds, url="http://127.0.0.1:1", namespace=NS, clock=clock)
    source.configure_from([scorer])
    (q,) = source.queries
    client = FakeClient()
    client.answer = [series("a", "0.2"), series("b", "0.9")]
    assert await source.poll_once(client, q)
    got = column(ds, scorer.key)
    assert got is not None
    assert got[:2] == [0.2, 0.9]
    assert math.isnan(got[2])

    # b's series disappears, then Prometheus fails: what was seen stays three intervals, no longer
    clock.t += 10
    client.answer = [series("a", "0.3")]
    assert await source.poll_once(client, q)
    assert column(ds, scorer.key)[:2] == [0.3, 0.9]  # type: ignore[index]
    client.answer = OSError("connection refused")
    clock.t = 125.0  # a seen at 110, b at 100: both within 30 s
    assert not await source.poll_once(client, q)
    assert column(ds, scorer.key)[:2] == [0.3, 0.9]  # type: ignore[index]
    clock.t = 135.0
    assert not await source.poll_once(client, q)
    got = column(ds, scorer.key)
    assert got is not None
    assert got[0] == 0.3
    assert math.isnan(got[1]), "b's value is 35 s old: neutral"
    clock.t = 145.0
    assert not await source.poll_once(client, q)
    assert all(math.isnan(v) for v in column(ds, scorer.key) or [0.0])
    failing = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failing) == 1, "one line when the query starts failing"

    source.configure_from([])
    assert column(ds, scorer.key) is None


def test_signal_columns_follow_membership() -> None:
    ds = pool()
    ds.set_signal("k", {"a": 1.0, "c": 3.0, "zz": 9.0})
    assert column(ds, "k")[0::2] == [1.0, 3.0]  # type: ignore[index]
    ds.remove_endpoint("a-rank-0")
    got = column(ds, "k")
    assert got is not None
    assert len(got) == 2
    assert got[1] == 3.0
    ds.set_signal("k", None)
    assert column(ds, "k") is None
