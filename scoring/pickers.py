"""Pickers: total scores → primary endpoint + up to ``maxNumOfEndpoints - 1`` distinct fallbacks.

All randomness comes from the ``numpy.random.Generator`` passed in (seeded in tests and the simulator),
and the max-score picker draws nothing when there is no tie, so a pick is reproducible and a batch that
replays the same totals consumes the same random numbers as sequential picks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from scoring._params import Params
from scoring.matrix import F64
from scoring.plugin import Picker


def _params(name: str, type_name: str, parameters: Mapping[str, Any] | None) -> tuple[Params, int]:
    params = Params(name, type_name, parameters, ("maxNumOfEndpoints",))
    # the reference turns a value <= 0 into 1 rather than rejecting it; so do we
    count = params.integer("maxNumOfEndpoints", 1)
    params.effective["maxNumOfEndpoints"] = max(1, count)
    return params, count


def draw_index(rng: np.random.Generator, count: int) -> int:
    """A uniform index in ``[0, count)`` from one 64-bit draw of ``rng``'s bit generator (multiply-shift).

    Why not ``rng.integers(count)``: inside a busy server, where every call runs with cold caches, that
    call cost about 12 µs and ``rng.random()`` about 7 against 4 for the raw draw, and an idle pool ties on
    almost every pick. Each index's probability is off by at most ``count / 2**64`` of itself.
    """
    return (rng.bit_generator.random_raw() * count) >> 64


def _order_by_score(totals: F64, chosen: NDArray[np.intp], rng: np.random.Generator) -> list[int]:
    """``chosen`` sorted by total, highest first; equal totals in random order (shuffle + stable sort)."""
    values = totals[chosen]
    if np.unique(values).size < values.size:
        perm = rng.permutation(values.size)
        chosen = chosen[perm]
        values = values[perm]
    return [int(i) for i in chosen[np.argsort(-values, kind="stable")]]


class MaxScorePicker(Picker):
    """``max-score-picker`` — the highest totals; ties broken uniformly at random.

    Same distribution as the reference (shuffle, stable sort by score, take the first N) without
    shuffling everything: for one endpoint an ``argmax`` plus an equality count decide whether a random
    draw is needed at all; for N endpoints a partition finds the N-th best total, the endpoints strictly
    above it are in, and random ones among those equal to it fill the remaining places.
    """

    type_name: ClassVar[str] = "max-score-picker"

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params, count = _params(name, self.type_name, parameters)
        super().__init__(name, params.effective, count)

    def pick(self, totals: F64, rng: np.random.Generator, /) -> list[int]:
        n = totals.size
        k = self.max_endpoints
        if k == 1:
            best = int(totals.argmax())
            if n > 1:
                ties = totals == totals[best]
                count = int(np.count_nonzero(ties))
                if count > 1:
                    best = int(np.flatnonzero(ties)[draw_index(rng, count)])
            return [best]
        if n <= k:
            return _order_by_score(totals, np.arange(n), rng)
        threshold = totals[np.argpartition(totals, n - k)[n - k :]].min()
        above = np.flatnonzero(totals > threshold)
        tied = np.flatnonzero(totals == threshold)
        need = k - above.size
        if tied.size > need:
            tied = rng.choice(tied, size=need, replace=False)
        return _order_by_score(totals, np.concatenate((above, tied)), rng)

    def pick_floats(self, totals: list[float], rng: np.random.Generator, /) -> list[int]:
        """:meth:`pick` for one endpoint without numpy: the first maximum, or a uniform draw among equal
        maxima with the same :func:`draw_index` draw. NaN totals (which no built-in scorer produces)
        and several endpoints go through :meth:`pick`, whose NaN order ``max()`` would not reproduce."""
        if self.max_endpoints != 1 or math.isnan(sum(totals)):
            return self.pick(np.array(totals, dtype=np.float64), rng)
        best = max(totals)
        count = totals.count(best)
        if count == 1:
            return [totals.index(best)]
        if count == len(totals):  # all equal (an idle pool): the draw is the position
            return [draw_index(rng, count)]
        # the draw-th of the equal maxima, found in C (no per-pick list of them)
        i = totals.index(best)
        for _ in range(draw_index(rng, count)):
            i = totals.index(best, i + 1)
        return [i]


class RandomPicker(Picker):
    """``random-picker`` — N distinct endpoints uniformly at random, ignoring scores."""

    type_name: ClassVar[str] = "random-picker"

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params, count = _params(name, self.type_name, parameters)
        super().__init__(name, params.effective, count)

    def pick(self, totals: F64, rng: np.random.Generator, /) -> list[int]:
        n = totals.size
        if self.max_endpoints == 1:
            return [draw_index(rng, n)]
        return [int(i) for i in rng.choice(n, size=min(n, self.max_endpoints), replace=False)]


class WeightedRandomPicker(Picker):
    """``weighted-random-picker`` — sample N endpoints without replacement, probability ∝ total score.

    A-Res (Efraimidis-Spirakis): key = U^(1/score) with U uniform in (0, 1], take the N largest keys;
    computed as ``log(U) / score`` (same order, no underflow). Endpoints with score ≤ 0 get the lowest key
    and only fill places left over. All scores ≤ 0 → behaves as ``random-picker``.
    """

    type_name: ClassVar[str] = "weighted-random-picker"

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params, count = _params(name, self.type_name, parameters)
        super().__init__(name, params.effective, count)
        self._fallback = RandomPicker(name, {"maxNumOfEndpoints": count})

    def pick(self, totals: F64, rng: np.random.Generator, /) -> list[int]:
        positive = totals > 0.0
        if not positive.any():
            return self._fallback.pick(totals, rng)
        uniform = 1.0 - rng.random(totals.size)
        keys = np.full(totals.size, -np.inf)
        keys[positive] = np.log(uniform[positive]) / totals[positive]
        if self.max_endpoints == 1:
            return [int(keys.argmax())]
        order = np.argsort(-keys, kind="stable")[: self.max_endpoints]
        return [int(i) for i in order]
