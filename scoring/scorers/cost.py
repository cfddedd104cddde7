"""Cost scorer: prefer the endpoints where this request is cheapest to serve.

Family README: ``scoring/scorers/README.md`` ("Cost and operator signals").
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import numpy as np

from scoring._params import Params
from scoring.matrix import F64, EndpointMatrix
from scoring.plugin import Category, Dependence, Scorer, View
from scoring.scorers._impute import impute
from scoring.types import PickRequest

#: Upper clamp of a price per million tokens: far above any real price, low enough that a weighted sum of
#: two of them stays finite.
MAX_PRICE = 1e9
#: The request's output share is quantized to this many steps (see :class:`CostScorer`).
MIX_STEPS = 32


def output_share(req: PickRequest, default_output_tokens: int) -> int:
    """The request's share of output tokens, ``round(MIX_STEPS * out / (in + out))`` (0..MIX_STEPS).

    ``in`` is the prompt estimate, ``out`` the request's ``max_tokens`` (or ``default_output_tokens`` when
    it sets none); no tokens at all → half and half.
    """
    tokens_in = max(0, int(req.prompt_tokens_estimate))
    tokens_out = max(0, int(req.output_tokens_estimate)) or default_output_tokens
    total = tokens_in + tokens_out
    if total <= 0:
        return MIX_STEPS // 2
    return round(MIX_STEPS * tokens_out / total)


class CostScorer(Scorer[tuple[F64, F64]]):
    """``cost-scorer`` (ours) — cheaper is better.

    Formula: with ``s`` the request's output share (:func:`output_share`, quantized to 1/32), each
    candidate's price of the request's token mix is ``c = (1 - s) x price_in + s x price_out`` (per
    million tokens; proportional to the request's cost there), and the score is the min-max
    ``(max c - c) / (max c - min c)`` over the candidates: the cheapest scores 1, the dearest 0; all equal
    → 1. Inputs: ``price_in`` / ``price_out`` (currency units per million input / output tokens, from a pod
    label or annotation, the config by engine or pool, or an external endpoint's price), the request's
    ``prompt_tokens_estimate`` and ``output_tokens_estimate``. Category: affinity (it prefers particular
    endpoints whatever their load; weigh it against the load scorers).

    Missing price → the mean of the known prices of the candidates (neither cheap nor dear); none known
    → every candidate scores 1 (a constant cannot change a pick). Prices are clipped to [0, 1e9].

    Why the share is quantized: the score depends on the request only through ``s``, so requests with
    the same share reuse one cached array per snapshot (:meth:`request_key`), and 33 shares are enough to
    rank endpoints whose input and output prices differ.
    """

    type_name: ClassVar[str] = "cost-scorer"
    category: ClassVar[Category] = Category.AFFINITY
    dependence: ClassVar[Dependence] = Dependence.REQUEST

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(name, self.type_name, parameters, ("defaultOutputTokens",))
        #: output tokens assumed for a request that sets no ``max_tokens``
        self.default_output_tokens = params.integer("defaultOutputTokens", 256, minimum=1)
        super().__init__(name, params.effective)

    def prepare(self, v: View, /) -> tuple[F64, F64]:
        return (
            impute(v.take(v.m.price_in), lo=0.0, hi=MAX_PRICE, fallback=0.0),
            impute(v.take(v.m.price_out), lo=0.0, hi=MAX_PRICE, fallback=0.0),
        )

    def request_key(self, req: PickRequest, /) -> Hashable:
        return output_share(req, self.default_output_tokens)

    def inputs(self, m: EndpointMatrix, /) -> tuple[object, ...]:
        return (m.price_in, m.price_out)

    def score(self, _v: View, state: tuple[F64, F64], req: PickRequest, _dispatched: F64, /) -> F64:
        price_in, price_out = state
        share = output_share(req, self.default_output_tokens) / MIX_STEPS
        cost = price_in * (1.0 - share) + price_out * share
        lo = float(cost.min())
        hi = float(cost.max())
        if hi <= lo:
            return np.ones(cost.size)
        out = (hi - cost) / (hi - lo)
        np.clip(out, 0.0, 1.0, out=out)
        return out
