"""cost-scorer: formula, missing prices, parameters, and its place in a profile."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from scoring import (
    ConfigurationError,
    EndpointMatrix,
    EndpointRow,
    PickRequest,
    PluginSpec,
    ProfileSpec,
    View,
    build_scheduler,
)
from scoring.plugin import Category, Dependence, Scorer
from scoring.scorers import CostScorer
from scoring.scorers.cost import MIX_STEPS, output_share

NAN = math.nan


def run(scorer: Scorer[Any], m: EndpointMatrix, req: PickRequest | None = None) -> list[float]:
    v = View(m)
    return [float(x) for x in scorer.score(v, scorer.prepare(v), req or PickRequest(), m.dispatched)]


def priced(prices: list[tuple[float, float]]) -> EndpointMatrix:
    return EndpointMatrix.from_rows(
        EndpointRow(f"e{i}", f"10.0.0.{i}:8000", price_in=p_in, price_out=p_out)
        for i, (p_in, p_out) in enumerate(prices)
    )


# ------------------------------------------------------------------------------------ cost-scorer
@pytest.mark.parametrize(
    ("prices", "prompt", "output", "expected"),
    [
        # equal mix: c = 0.5 in + 0.5 out → 1.0, 3.0, 2.0
        ([(1.0, 1.0), (2.0, 4.0), (1.0, 3.0)], 100, 100, [1.0, 0.0, 0.5]),
        # all output: only the output price counts
        ([(0.0, 2.0), (9.0, 1.0)], 0, 100, [0.0, 1.0]),
        # all input (no max_tokens and default 256 against a huge prompt: share rounds to 0)
        ([(0.0, 2.0), (9.0, 1.0)], 1_000_000, 0, [1.0, 0.0]),
        # all equal → 1 (the reference's min-max convention)
        ([(1.0, 2.0), (1.0, 2.0)], 10, 10, [1.0, 1.0]),
        # unknown price → the mean of the known ones: in the middle, neither cheapest nor dearest
        ([(NAN, NAN), (1.0, 1.0), (3.0, 3.0)], 10, 10, [0.5, 1.0, 0.0]),
        # nothing known → a constant
        ([(NAN, NAN), (NAN, NAN)], 10, 10, [1.0, 1.0]),
        # junk: negative clipped to 0, inf treated as unknown
        ([(-5.0, -5.0), (2.0, 2.0), (math.inf, math.inf)], 10, 10, [1.0, 0.0, 0.5]),
    ],
)
def test_cost_scorer(
    prices: list[tuple[float, float]], prompt: int, output: int, expected: list[float]
) -> None:
    req = PickRequest(prompt_tokens_estimate=prompt, output_tokens_estimate=output)
    assert run(CostScorer("c"), priced(prices), req) == pytest.approx(expected)


def test_cost_scorer_weighs_input_against_output_by_the_request() -> None:
    # a cheap-input / dear-output endpoint against the opposite: the request's mix decides
    m = priced([(0.1, 10.0), (5.0, 0.5)])
    long_prompt = PickRequest(prompt_tokens_estimate=20_000, output_tokens_estimate=100)
    long_answer = PickRequest(prompt_tokens_estimate=50, output_tokens_estimate=4_000)
    assert run(CostScorer("c"), m, long_prompt) == [1.0, 0.0]
    assert run(CostScorer("c"), m, long_answer) == [0.0, 1.0]


def test_output_share_and_request_key() -> None:
    scorer = CostScorer("c", {"defaultOutputTokens": 100})
    assert output_share(PickRequest(prompt_tokens_estimate=100), 100) == MIX_STEPS // 2
    assert output_share(PickRequest(), 100) == MIX_STEPS  # no prompt estimate: all output
    assert output_share(PickRequest(prompt_tokens_estimate=0, output_tokens_estimate=0), 0) == MIX_STEPS // 2
    # requests with the same share share one cached array
    a = PickRequest(prompt_tokens_estimate=1000, output_tokens_estimate=1000)
    b = PickRequest(prompt_tokens_estimate=1001, output_tokens_estimate=999)
    assert scorer.request_key(a) == scorer.request_key(b)
    assert scorer.category is Category.AFFINITY
    assert scorer.dependence is Dependence.REQUEST


def test_cost_scorer_parameters() -> None:
    assert CostScorer("c").parameters == {"defaultOutputTokens": 256}
    with pytest.raises(ConfigurationError, match="defaultOutputTokens"):
        CostScorer("c", {"defaultOutputTokens": 0})
    with pytest.raises(ConfigurationError, match="unknown parameter"):
        CostScorer("c", {"price": 1})


def test_cost_profile_prefers_the_cheaper_of_equally_loaded_endpoints() -> None:
    s = build_scheduler(
        [PluginSpec("queue-scorer", "queue-scorer"), PluginSpec("cost-scorer", "cost-scorer")],
        [ProfileSpec("cost", [("queue-scorer", 1.0), ("cost-scorer", 3.0)])],
    )
    m = EndpointMatrix.from_rows(
        [
            EndpointRow("dear", "10.0.0.1:8000", waiting=0.0, price_in=0.5, price_out=1.5),
            EndpointRow("cheap", "10.0.0.2:8000", waiting=2.0, price_in=0.1, price_out=0.3),
        ]
    )
    r = s.schedule(m, PickRequest(prompt_tokens_estimate=500), now=0.0, rng=np.random.default_rng(0))
    assert m.names[r.primary] == "cheap"
