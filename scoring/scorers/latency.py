"""Latency scorer: prefer endpoints that have been answering faster, as observed on the response path.

Family README: ``scoring/scorers/README.md`` ("Observed latency").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from scoring._params import Params
from scoring.errors import ConfigurationError
from scoring.matrix import F64, EndpointMatrix
from scoring.plugin import Category, Dependence, Scorer, View
from scoring.types import PickRequest

#: latencies below this (seconds) are read as this: a ratio needs a positive denominator
_FLOOR_S = 1e-6
#: the matrix columns this scorer reads, and the parameter weighing each
_SIGNALS = (("ttft_per_1k", "ttftWeight"), ("tpot", "tpotWeight"), ("ntpot", "ntpotWeight"))


class LatencyScorer(Scorer[F64]):
    """``latency-scorer`` (ours) — an endpoint that has been slower than the others for the same work scores
    lower, whatever its gauges say (thermal throttling, a noisy neighbour, a bad GPU).

    Inputs: the owner's averages of observed latency (``picker/state/latency.py``; NaN = unknown):
    ``ttft_per_1k`` (time to the first byte of streamed responses per 1,000 prompt tokens), ``tpot`` (time
    between the chunks of streamed responses), ``ntpot`` (time per output token of non-streamed responses).

    Formula, over the candidates: for each signal ``s`` that at least one candidate has, unknown values
    take the mean of the known ones (neither rewarded nor punished), values are floored at 1 µs, and
    ``r_s = min(x_s) / x_s`` (the fastest scores 1, one three times as slow 1/3). The score is
    ``Σ w_s r_s / Σ w_s`` over those signals (weights ``ttftWeight``, ``tpotWeight``, ``ntpotWeight``,
    default 1 each); with no signal known, 1 for every candidate (no information: no effect on a pick).
    A ratio to the fastest rather than min-max: a 5 % difference (noise) costs 5 % of the weight, not all
    of it, while a 3x slower endpoint loses two thirds.

    Category: distribution. Depends on the snapshot only (the averages are published with it).

    Parameters that tune the averages the service keeps (the scorer only records them; the service reads
    them from the first ``latency-scorer`` of the configuration, defaults otherwise): ``halfLife``
    (duration, default 10s: how fast an average follows a change), ``maxAge`` (duration, default 60s: an
    average without a newer sample is unknown again, so an endpoint avoided for being slow is measured
    afresh).
    """

    type_name: ClassVar[str] = "latency-scorer"
    category: ClassVar[Category] = Category.DISTRIBUTION
    dependence: ClassVar[Dependence] = Dependence.SNAPSHOT

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(
            name,
            self.type_name,
            parameters,
            (*(key for _, key in _SIGNALS), "halfLife", "maxAge"),
        )
        self.signal_weights = tuple(
            (column, params.number(key, 1.0, minimum=0.0, maximum=1e6)) for column, key in _SIGNALS
        )
        self.half_life = params.duration("halfLife", "10s")
        self.max_age = params.duration("maxAge", "60s")
        for key, seconds in (("halfLife", self.half_life), ("maxAge", self.max_age)):
            if seconds <= 0:
                raise ConfigurationError(
                    f"plugin {name!r} (type {self.type_name!r}): parameter {key!r} must be > 0"
                )
        super().__init__(name, params.effective)

    def prepare(self, v: View, /) -> F64:
        total = np.zeros(v.n)
        weights = 0.0
        for column, weight in self.signal_weights:
            if weight == 0.0:
                continue
            x = v.take(getattr(v.m, column))
            known = np.isfinite(x)
            if not known.any():
                continue
            values = np.maximum(x[known], _FLOOR_S)
            x = np.where(known, np.maximum(x, _FLOOR_S), float(values.mean()))
            total += weight * (float(values.min()) / x)
            weights += weight
        scores = total / weights if weights else np.ones(v.n)
        np.clip(scores, 0.0, 1.0, out=scores)
        scores.flags.writeable = False
        return scores

    def score(self, _v: View, state: F64, _req: PickRequest, _dispatched: F64, /) -> F64:
        return state

    def inputs(self, m: EndpointMatrix, /) -> tuple[object, ...]:
        return tuple(getattr(m, column) for column, _ in self.signal_weights)
