"""Load scorers: prefer endpoints with less work queued or running, counting what we sent since the scrape.

Family README: ``scoring/scorers/README.md`` ("Load").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from scoring._params import Params
from scoring.matrix import F64, EndpointMatrix
from scoring.plugin import Category, Dependence, Scorer, View
from scoring.scorers._impute import impute
from scoring.types import PickRequest

#: Upper clamp of a queue/running gauge. Far above any real server, low enough that adding the dispatched
#: count can never overflow to inf (which would turn max - q into NaN).
MAX_LOAD = 1e12


def weighted_min_max(load: F64, weight: float, floor: float = 0.0) -> F64:
    """``weight * (top - load) / (top - min)`` with ``top = max(max, min + floor)``; ``weight`` everywhere
    when ``top == min`` (all equal, no floor).

    With ``floor = 0`` (the reference's queue and running scorers) ``top`` is the maximum: plain min-max, the
    best endpoint scores 1 and the worst 0 however small their difference. A positive ``floor`` says "a
    spread smaller than this is not worth the whole score range": loads within ``floor`` of the minimum
    score ``1 - (load - min) / floor``, and the scale becomes min-max once the spread exceeds ``floor``.

    Overwrites ``load`` and returns it. This one function defines the arithmetic of the load scorers for
    the single pick and the batch, so both produce bit-identical totals; the batch's incremental update
    (:meth:`LoadTrack.bump`) repeats exactly these operations for one element.
    With weight 1 (the raw score) the result lies in [0, 1] by construction, no clamp needed: ``load`` ≥
    min so ``top - load`` ≤ ``top - min`` after rounding too, because float subtraction is monotonic.
    Other weights multiply by ``weight / (top - min)`` (one operation fewer on the hot path; the term
    may exceed ``weight`` by one rounding step, which no total can notice) unless that factor overflows
    (a subnormal range), in which case it divides first.
    """
    lo = float(load.min())
    hi = _top(float(load.max()), lo, floor)
    if hi > lo:
        np.subtract(hi, load, out=load)
        scale = _scale(weight, hi, lo)
        if scale is None:
            load /= hi - lo
            if weight != 1.0:
                load *= weight
        else:
            load *= scale
    else:
        load.fill(weight)
    return load


def weighted_min_max_floats(load: list[float], weight: float, floor: float = 0.0) -> list[float]:
    """:func:`weighted_min_max` on a list of Python floats, for small pools.

    Why a twin: below a few dozen endpoints the fixed cost of a numpy call (about a microsecond in a warm
    loop, several inside a busy server whose caches the gRPC stack keeps cold) outweighs the arithmetic,
    and a pick makes about fifteen of them. The operations and their order are those of
    :func:`weighted_min_max`, and Python floats are the same IEEE 754 doubles, so the results are the same
    bits (``tests/property/scoring/test_token_load_properties.py`` checks it against the numpy path).
    """
    lo = min(load)
    hi = _top(max(load), lo, floor)
    if hi <= lo:
        return [weight] * len(load)
    scale = _scale(weight, hi, lo)
    if scale is None:
        span = hi - lo
        if weight != 1.0:
            return [(hi - x) / span * weight for x in load]
        return [(hi - x) / span for x in load]
    return [(hi - x) * scale for x in load]


def _top(hi: float, lo: float, floor: float) -> float:
    """The value that scores 0: the maximum, or ``min + floor`` when that is higher (floor 0: the maximum)."""
    return max(hi, lo + floor) if floor > 0.0 else hi


def _scale(weight: float, hi: float, lo: float) -> float | None:
    """The factor applied to ``top - load`` in one multiplication, or None to divide by the range."""
    if weight == 1.0:
        return None
    scale = weight / (hi - lo)
    return scale if math.isfinite(scale) else None


def _one(weight: float, hi: float, lo: float, load: float) -> float:
    """:func:`weighted_min_max` for one element (``hi`` = top > lo), with the same operations in the same
    order."""
    scale = _scale(weight, hi, lo)
    if scale is None:
        value = (hi - load) / (hi - lo)
        return value * weight if weight != 1.0 else value
    return (hi - load) * scale


class MinMaxLoadScorer(Scorer[F64]):
    """Base of the load scorers: ``score = (max(L) - L) / (max(L) - min(L))``, 1.0 when all L are equal.

    ``L = gauge + dispatched`` where ``gauge`` is the scraped value of :attr:`column` and ``dispatched`` is
    the number of requests we sent to the endpoint since the scrape that produced the gauge (the matrix
    column of that name; the service resets it when a new scrape lands). The scraped gauge is up to one
    scrape interval old; without the correction every request of a burst between two scrapes sees the
    same "least loaded" endpoint and piles onto it. With it, each pick raises the chosen endpoint's L by
    one and the next pick goes elsewhere.

    min and max are taken over the candidates, as in the reference. Missing gauges (NaN) are replaced by
    the mean of the known ones among the candidates (0 when none is known, the reference's zero value),
    then clipped to [0, ``MAX_LOAD``]; the dispatched count is added afterwards so an endpoint with an
    unknown gauge still accumulates the load we send it.
    """

    category: ClassVar[Category] = Category.DISTRIBUTION
    dependence: ClassVar[Dependence] = Dependence.LOAD
    #: matrix column holding the scraped gauge; "" = none (the load is the accounting column alone)
    column: ClassVar[str] = ""
    #: owner-maintained matrix column added to the gauge (``scoring.matrix.LoadCharge`` says when it
    #: moves); the scheduler's batch replays :meth:`charge` onto a copy of it after every pick
    accounting: ClassVar[str] = "dispatched"
    #: spread of L below which the scores do not use the whole [0, 1] range (see ``weighted_min_max``);
    #: 0 for the reference's scorers
    floor: float = 0.0

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        params = Params(name, self.type_name, parameters, ())
        super().__init__(name, params.effective)

    def prepare(self, v: View, /) -> F64:
        if not self.column:
            out = np.zeros(v.n)
            out.flags.writeable = False
            return out
        return impute(v.take(getattr(v.m, self.column)), lo=0.0, hi=MAX_LOAD, fallback=0.0)

    def inputs(self, m: EndpointMatrix, /) -> tuple[object, ...]:
        return (getattr(m, self.column),) if self.column else ()

    def accounted(self, v: View, dispatched: F64, /) -> F64:
        """The view's slice of :attr:`accounting` (``dispatched`` is already that slice for its column).

        Not clipped: like ``dispatched``, the accounting columns are finite and ≥ 0 by construction (the
        owner adds and subtracts the same integers), and min-max keeps any finite load in [0, 1].
        """
        if self.accounting == "dispatched":
            return dispatched
        column: F64 = getattr(v.m, self.accounting)
        return v.take(column)

    def own(self, _v: View, _req: PickRequest, /) -> F64 | None:
        """The request's own part of ``L`` per candidate (a new array), or None where it would be the same
        for every candidate (min-max ignores a constant). None here: a request counts as one request
        everywhere."""
        return None

    def loads(self, v: View, state: F64, req: PickRequest, dispatched: F64, /) -> F64:
        """``L`` per candidate: the prepared gauge + the accounting column (+ :meth:`own`), a new array.
        The one place the terms (:mod:`scoring.terms`, array and float paths) and :meth:`score` add them."""
        accounted = self.accounted(v, dispatched)
        own = self.own(v, req)
        if own is not None:
            own += accounted
            accounted = own
        return state + accounted

    def charge(self, _req: PickRequest, /) -> float:
        """What routing ``req`` adds to :attr:`accounting` on its primary endpoint (one request)."""
        return 1.0

    def score(self, v: View, state: F64, req: PickRequest, dispatched: F64, /) -> F64:
        return weighted_min_max(self.loads(v, state, req, dispatched), 1.0, self.floor)


class QueueScorer(MinMaxLoadScorer):
    """``queue-scorer`` — fewer waiting requests is better.

    Formula: ``(max(L) - L) / (max(L) - min(L))`` over the candidates, 1.0 when all equal, with
    ``L = waiting + dispatched``. Inputs: ``waiting`` (scraped queue length), ``dispatched``.
    Category: distribution. Reference: same formula on the scraped queue alone.
    """

    type_name: ClassVar[str] = "queue-scorer"
    column: ClassVar[str] = "waiting"


class RunningRequestsScorer(MinMaxLoadScorer):
    """``running-requests-size-scorer`` — fewer running requests is better.

    Formula: ``(max(L) - L) / (max(L) - min(L))`` over the candidates, 1.0 when all equal, with
    ``L = running + dispatched``. Inputs: ``running`` (scraped batch size), ``dispatched``.
    Category: distribution. Reference: same formula on the scraped running count alone.
    """

    type_name: ClassVar[str] = "running-requests-size-scorer"
    column: ClassVar[str] = "running"


class LoadTrack:
    """One load scorer's contribution during a batch, updated in O(1) when a pick leaves min/max alone.

    After a pick only the chosen endpoint's accounting value grows (``dispatched`` by one,
    ``prefill_tokens`` by the request's prompt estimate; see :attr:`MinMaxLoadScorer.accounting`), so only
    its load changes. Unless that raises the maximum (the endpoint becomes the most loaded) or lifts the
    minimum (it was the last endpoint at the minimum), every other endpoint's score is unchanged and one
    element is recomputed with the same operations, in the same order, as :func:`weighted_min_max`.
    Otherwise the whole column is recomputed by that function. Loads only grow during a batch, so counting
    the endpoints at the minimum is enough to know when it moves.
    """

    __slots__ = ("at_min", "base", "contribution", "floor", "hi", "lo", "load", "top", "weight")

    def __init__(self, base: F64, dispatched: F64, weight: float, floor: float = 0.0) -> None:
        self.base = base
        self.weight = weight
        self.floor = floor
        self.load = base + dispatched
        self.lo = 0.0
        self.hi = 0.0
        self.top = 0.0
        self.at_min = 0
        self.contribution = self._recompute()

    def _recompute(self) -> F64:
        self.lo = float(self.load.min())
        self.hi = float(self.load.max())
        self.top = _top(self.hi, self.lo, self.floor)
        self.at_min = int(np.count_nonzero(self.load == self.lo))
        return weighted_min_max(self.load.copy(), self.weight, self.floor)

    def bump(self, position: int, dispatched: float) -> bool:
        """Set the load of ``position`` from its new accounting value (``dispatched`` count, or token
        total); True if the column was recomputed."""
        old = float(self.load[position])
        new = float(self.base[position]) + dispatched
        if new == old:
            return False
        self.load[position] = new
        if new > self.hi:
            self.contribution = self._recompute()
            return True
        if old == self.lo:
            self.at_min -= 1
            if self.at_min == 0:
                self.contribution = self._recompute()
                return True
        self.contribution[position] = _one(self.weight, self.top, self.lo, new)
        return False
