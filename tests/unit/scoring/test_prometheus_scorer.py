"""``prometheus-scorer``: min-max of the operator's signal in the configured direction; a missing value
is neutral and never best; its parameters are checked; its ``weight`` parameter is the profile weight."""

from __future__ import annotations

import math

import numpy as np
import pytest

from picker.config import load_config_text
from picker.errors import ConfigError
from scoring import EndpointMatrix, EndpointRow
from scoring.errors import ConfigurationError
from scoring.plugin import View
from scoring.scorers.signal import PrometheusScorer, signal_key, signal_scores

NAN = math.nan
Q = "histogram_quantile(0.95, sum by (pod, le) (rate(gateway_latency_bucket[1m])))"


@pytest.mark.parametrize(
    ("values", "higher", "want"),
    [
        ([1.0, 2.0, 3.0], False, [1.0, 0.5, 0.0]),
        ([1.0, 2.0, 3.0], True, [0.0, 0.5, 1.0]),
        ([2.0, 2.0], False, [1.0, 1.0]),
        ([1.0, NAN, 3.0], False, [1.0, 0.5, 0.0]),  # mean of the known scores 0.5
        ([1.0, NAN, 1.0], False, [1.0, 0.5, 1.0]),  # never best: at most 0.5
        ([1.0, 9.0, 9.0, NAN], False, [1.0, 0.0, 0.0, 1 / 3]),  # the mean, when below 0.5
        ([NAN, NAN], True, [0.5, 0.5]),
        ([math.inf, 1.0, 2.0], False, [0.5, 1.0, 0.0]),  # not finite = no value
    ],
)
def test_signal_scores(values: list[float], higher: bool, want: list[float]) -> None:
    got = signal_scores(np.array(values), higher_is_better=higher)
    np.testing.assert_allclose(got, want)
    assert ((got >= 0) & (got <= 1)).all()


def matrix(values: list[float], key: str) -> EndpointMatrix:
    rows = [
        EndpointRow(name=f"e{i}", address=f"10.0.0.{i + 1}:8000", signals={} if math.isnan(v) else {key: v})
        for i, v in enumerate(values)
    ]
    return EndpointMatrix.from_rows(rows)


def test_the_scorer_reads_its_own_column_over_the_candidates() -> None:
    s = PrometheusScorer("p95", {"query": Q, "direction": "lower"})
    m = matrix([0.2, NAN, 0.8], s.key)
    np.testing.assert_allclose(s.prepare(View(m)), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(s.prepare(View(m, np.array([1, 2]))), [0.5, 1.0])
    other = PrometheusScorer("errors", {"query": "sum by (pod) (rate(errors[1m]))"})
    (
        np.testing.assert_allclose(other.prepare(View(m)), [0.5, 0.5, 0.5]),
        "a column nobody published: all alike",
    )


def test_the_same_query_by_another_label_is_another_column() -> None:
    assert signal_key(Q, "pod") != signal_key(Q, "exported_pod")
    s = PrometheusScorer("p", {"query": Q, "podLabel": "exported_pod"})
    assert s.key == signal_key(Q, "exported_pod")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "'query' is required"),
        ({"query": "  "}, "'query' is required"),
        ({"query": "x" * 5000}, "over 4096"),
        ({"query": Q, "direction": "down"}, "must be one of lower, higher"),
        ({"query": Q, "refreshInterval": "100ms"}, "at least 1s"),
        ({"query": Q, "refreshInterval": "soon"}, "duration"),
        ({"query": Q, "podLabel": "pod-name"}, "label name"),
        ({"query": Q, "weight": -1}, ">= 0"),
        ({"query": Q, "threshold": 3}, "unknown parameter"),
    ],
)
def test_bad_parameters_are_rejected_with_a_reason(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PrometheusScorer("p", params)


def profile(weight_in_ref: str) -> list[tuple[str, float]]:
    ref = f", weight: {weight_in_ref}" if weight_in_ref else ""
    text = (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- {name: queue, type: queue-scorer}\n"
        f"- {{name: p95, type: prometheus-scorer, parameters: {{query: '{Q}', weight: 0.3}}}}\n"
        "- {name: err, type: prometheus-scorer, parameters: {query: errors, direction: lower}}\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n"
        "  - {pluginRef: queue, weight: 0.4}\n"
        f"  - {{pluginRef: p95{ref}}}\n"
        "  - {pluginRef: err, weight: 0.2}\n"
    )
    profiles = load_config_text(text).build_profiles()
    return [(ws.scorer.name, ws.weight) for ws in profiles.default.scorers]


def test_several_scorers_each_with_its_weight() -> None:
    assert profile("") == [("queue", 0.4), ("p95", 0.3), ("err", 0.2)]
    assert profile("0.3") == [("queue", 0.4), ("p95", 0.3), ("err", 0.2)]
    with pytest.raises(ConfigError, match="given twice"):
        profile("0.5")
