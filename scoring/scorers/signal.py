"""The operator's own Prometheus signals as a score: ``prometheus-scorer``.

Family README: ``scoring/scorers/README.md`` ("Cost and operator signals"). The query is evaluated by the
owner (``picker/scrape/signals.py``) every ``refreshInterval``; its values reach the scorer as a column of
``EndpointMatrix.signals`` under :func:`signal_key`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import numpy as np

from scoring._params import Params
from scoring.errors import ConfigurationError
from scoring.matrix import F64, EndpointMatrix
from scoring.plugin import Category, Dependence, Scorer, View
from scoring.types import PickRequest

#: longest query accepted (a PromQL expression, not a document)
MAX_QUERY_CHARS: Final = 4096
_LABEL: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: the score of an endpoint without a value is at most this (and below the best known one)
NEUTRAL: Final = 0.5


def signal_key(query: str, pod_label: str) -> str:
    """The column a query's values are published under: the same query read by the same label is one
    column, however many scorers use it."""
    return f"{pod_label}\x1f{query}"


def signal_scores(values: F64, *, higher_is_better: bool) -> F64:
    """Min-max over the finite values, best 1, worst 0 (all equal → 1); an endpoint without a value gets
    ``min(0.5, mean of the known scores)``: neutral, never best; no value at all → every one 0.5."""
    known = np.isfinite(values)
    out = np.full(values.size, NEUTRAL)
    if not known.any():
        return out
    v = values[known]
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        scores = np.ones(v.size)
    else:
        scores = (v - lo) / (hi - lo) if higher_is_better else (hi - v) / (hi - lo)
    out[known] = np.clip(scores, 0.0, 1.0)
    if not known.all():
        out[~known] = min(NEUTRAL, float(scores.mean()))
    return out


class PrometheusScorer(Scorer[F64]):
    """``prometheus-scorer`` (ours) — an operator's PromQL signal per pod: lower (or higher) is better.

    Formula: with ``x`` the query's value for the candidate's pod (label ``podLabel``),
    ``(max x - x) / (max x - min x)`` over the candidates for ``direction: lower``
    (``(x - min x) / (max x - min x)`` for ``higher``); all equal → 1. A candidate without a value (the
    series is absent, stale, or Prometheus cannot be reached) scores ``min(0.5, mean of the known
    scores)``: neutral, and never as good as the best known one; no candidate with a value → 0.5 for all
    (a constant cannot change a pick). Inputs: ``signals[signal_key(query, podLabel)]``, refreshed by the
    owner every ``refreshInterval``. Category: balance (what it measures is the operator's choice: queue
    depth, p95 latency, error rate). Parameters: ``query`` (required), ``podLabel`` (``pod``),
    ``direction`` (``lower``), ``refreshInterval`` (``15s``, at least 1 s), ``weight`` (1: the weight
    when the profile's reference sets none; setting both to different values is an error). Several
    prometheus-scorers may be configured, each with its query and weight.
    """

    type_name: ClassVar[str] = "prometheus-scorer"
    category: ClassVar[Category] = Category.BALANCE
    dependence: ClassVar[Dependence] = Dependence.SNAPSHOT

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(
            name, self.type_name, parameters, ("query", "podLabel", "direction", "refreshInterval", "weight")
        )
        where = f"plugin {name!r} (type {self.type_name!r})"
        self.query = params.string("query", "").strip()
        if not self.query:
            raise ConfigurationError(f"{where}: parameter 'query' is required (PromQL, one series per pod)")
        if len(self.query) > MAX_QUERY_CHARS:
            raise ConfigurationError(f"{where}: parameter 'query' is over {MAX_QUERY_CHARS} characters")
        self.pod_label = params.string("podLabel", "pod")
        if (
            not self.pod_label
            or not self.pod_label.replace("_", "a").isalnum()
            or self.pod_label[0].isdigit()
        ):
            raise ConfigurationError(f"{where}: parameter 'podLabel' must be a Prometheus label name")
        self.higher_is_better = params.string("direction", "lower", choices=("lower", "higher")) == "higher"
        self.refresh_s = params.duration("refreshInterval", "15s")
        if not self.refresh_s >= 1.0 or not math.isfinite(self.refresh_s):
            raise ConfigurationError(f"{where}: parameter 'refreshInterval' must be at least 1s")
        if parameters is not None and "weight" in parameters:
            self.default_weight = params.number("weight", 1.0, minimum=0.0)
        self.key = signal_key(self.query, self.pod_label)
        super().__init__(name, params.effective)

    def prepare(self, v: View, /) -> F64:
        column = v.m.signals.get(self.key)
        values = np.full(v.n, math.nan) if column is None else v.take(column)
        scores = signal_scores(values, higher_is_better=self.higher_is_better)
        scores.flags.writeable = False
        return scores

    def score(self, _v: View, state: F64, _req: PickRequest, _dispatched: F64, /) -> F64:
        return state

    def inputs(self, m: EndpointMatrix, /) -> tuple[object, ...]:
        return (m.signals.get(self.key),)
