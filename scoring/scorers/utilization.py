"""Utilization scorers: prefer endpoints with free KV cache or an idle GPU.

Family README: ``scoring/scorers/README.md`` ("Utilization").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from scoring._params import Params
from scoring.matrix import F64, EndpointMatrix
from scoring.plugin import Category, Dependence, Scorer, View
from scoring.scorers._impute import impute
from scoring.types import PickRequest


class _OneMinusScorer(Scorer[F64]):
    """``1 - clip(x, 0, 1)`` of one 0..1 gauge, computed once per snapshot (it does not depend on load)."""

    category: ClassVar[Category] = Category.DISTRIBUTION
    dependence: ClassVar[Dependence] = Dependence.SNAPSHOT
    column: ClassVar[str] = ""
    #: imputed usage when no candidate reports the gauge
    all_unknown_usage: ClassVar[float] = 0.0

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(name, self.type_name, parameters, ())
        super().__init__(name, params.effective)

    def prepare(self, v: View, /) -> F64:
        usage = impute(v.take(getattr(v.m, self.column)), lo=0.0, hi=1.0, fallback=self.all_unknown_usage)
        scores = 1.0 - usage
        scores.flags.writeable = False
        return scores

    def score(self, _v: View, state: F64, _req: PickRequest, _dispatched: F64, /) -> F64:
        return state

    def inputs(self, m: EndpointMatrix, /) -> tuple[object, ...]:
        return (getattr(m, self.column),)


class KvCacheUtilizationScorer(_OneMinusScorer):
    """``kv-cache-utilization-scorer`` — more free KV cache is better.

    Formula: ``1 - kv_usage`` (usage clipped to [0, 1]). Inputs: ``kv_usage`` (scraped, 0..1; for TGI an
    approximation from tokens in use, see the scrape README). Category: distribution.
    Missing usage → the mean usage of the candidates that report it; none reports it → usage 0 (score 1),
    which is what the reference's zero value gives. It ignores ``dispatched``: KV usage of a request we just
    sent is unknown until it is prefilled, and the load scorers already count it.
    """

    type_name: ClassVar[str] = "kv-cache-utilization-scorer"
    column: ClassVar[str] = "kv_usage"


class GpuUtilizationScorer(_OneMinusScorer):
    """``gpu-utilization-scorer`` (ours) — a less busy GPU is better.

    Formula: ``1 - gpu_util`` (clipped to [0, 1]). Inputs: ``gpu_util`` (0..1 from a GPU exporter such as
    DCGM; NaN when none reports it). Category: distribution.
    Missing utilization → the mean of the candidates that report it, so a node without the exporter is
    neither rewarded nor punished; none reports it → 0.5 for every candidate (a constant shifts all totals
    equally, so it cannot change a max-score pick).
    """

    type_name: ClassVar[str] = "gpu-utilization-scorer"
    column: ClassVar[str] = "gpu_util"
    all_unknown_usage: ClassVar[float] = 0.5
