"""A profile's weighted scorers and how they add up to one total per endpoint.

total = static + dynamic, where

* static = Σ snapshot terms + Σ request terms (read-only arrays, cached: snapshot terms once per
  snapshot, the rest once per request key, see :mod:`scoring.cache`);
* dynamic = Σ load terms, recomputed for every pick from the live accounting columns;

each term is ``weight * score`` and terms are added in profile order. The grouping is part of the
contract: :meth:`ProfileTerms.arrays` (numpy), :meth:`ProfileTerms.floats` (Python floats, for small
pools) and the batch (:mod:`scoring.batch`) compute the same groups in the same order, so their totals
are bit-identical and tie-breaks and random draws agree.

Why two representations of one sum: below a few dozen endpoints a numpy call costs more than the
arithmetic it does, so pools up to :data:`SMALL_POOL` are scored with Python floats (several times
cheaper there); above, numpy's whole-column operations win. Both are checked against each other bit for
bit by ``tests/property/scoring/test_token_load_properties.py``. A min-max load scorer has a float form
(:func:`~scoring.scorers.load.weighted_min_max_floats`); another load scorer (the prefix credit with its
load guard, the token-load scorer) is scored by numpy and its weighted scores converted, the same IEEE
products in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from operator import add
from typing import Any

import numpy as np

from scoring.cache import MAX_CACHED_STATICS, Prepared
from scoring.matrix import F64
from scoring.plugin import Dependence, Scorer, View
from scoring.scorers.load import MinMaxLoadScorer, weighted_min_max, weighted_min_max_floats
from scoring.types import PickRequest

#: Pools up to this size are scored as Python floats (:meth:`ProfileTerms.floats`). The float path's cost
#: grows with the pool, numpy's hardly: for the load terms alone, in a warm loop, they cross between 24 and
#: 32 endpoints; ``benchmarks/bench_pick`` reports whole picks at 16 endpoints both ways.
SMALL_POOL = 24
#: key of the load scorers' float states in ``Prepared.floats`` (request keys are never this object)
LOAD_STATES = object()
_MISSING = object()
_NO_REQUEST = PickRequest()


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    """A scorer and its weight in the profile (weights are not normalized, as in the reference)."""

    scorer: Scorer[Any]
    weight: float


Term = tuple[int, float]
"""A live term: the scorer's position in the profile and its weight."""


class ProfileTerms:
    """The profile's scorers grouped by what their score depends on, and the sum of their terms.

    Terms that cannot change a total (zero weight) are left out.
    """

    __slots__ = (
        "float_loads",
        "load_terms",
        "min_max_loads",
        "request_key",
        "request_loads",
        "request_scorers",
        "request_terms",
        "scorers",
        "snapshot_positions",
        "snapshot_terms",
        "static_positions",
    )

    def __init__(self, scorers: Sequence[WeightedScorer]) -> None:
        self.scorers = tuple(scorers)
        live = [(i, ws.weight) for i, ws in enumerate(self.scorers) if ws.weight != 0.0]

        def of(dependence: Dependence) -> tuple[Term, ...]:
            return tuple(t for t in live if self.scorers[t[0]].scorer.dependence is dependence)

        self.snapshot_terms = of(Dependence.SNAPSHOT)
        self.request_terms = of(Dependence.REQUEST)
        self.load_terms = of(Dependence.LOAD)
        #: every load term is a min-max scorer: the batch's O(1) updates apply
        self.min_max_loads = all(
            isinstance(self.scorers[i].scorer, MinMaxLoadScorer) for i, _ in self.load_terms
        )
        #: some min-max load term counts the request's own part per candidate (``MinMaxLoadScorer.own``:
        #: ``prefill-queue-scorer`` with a prefix match), which the batch's O(1) updates do not replay
        self.request_loads = any(
            type(s).own is not MinMaxLoadScorer.own
            for i, _ in self.load_terms
            if isinstance(s := self.scorers[i].scorer, MinMaxLoadScorer)
        )
        #: the load terms for the float path: (position, weight, the scorer if it is min-max else None)
        self.float_loads = tuple(
            (i, w, s if isinstance(s := self.scorers[i].scorer, MinMaxLoadScorer) else None)
            for i, w in self.load_terms
        )
        self.request_scorers = tuple(self.scorers[i].scorer for i, _ in self.request_terms)
        #: the scorers the static part of a total is made of (:meth:`prepare` keeps it while they are kept)
        self.static_positions = tuple(i for i, _ in (*self.snapshot_terms, *self.request_terms))
        self.snapshot_positions = tuple(i for i, _ in self.snapshot_terms)
        #: what the request terms depend on: requests with equal keys have equal static totals. The one
        #: request scorer's own method when there is one (the usual case: no wrapper call per pick)
        self.request_key: Callable[[PickRequest], Hashable] = (
            _no_key
            if not self.request_scorers
            else self.request_scorers[0].request_key
            if len(self.request_scorers) == 1
            else self._request_keys
        )

    # ------------------------------------------------------------------------------- per snapshot
    def prepare(self, v: View, previous: Prepared | None = None, kept: Sequence[bool] = ()) -> Prepared:
        """Every scorer's prepared state for the view, and the sum of the snapshot terms.

        ``previous``: the state prepared for the same rows of an earlier snapshot, and ``kept`` per scorer
        whether its inputs are unchanged since (:class:`~scoring.cache.SnapshotCache` decides): a kept
        scorer's state is reused, the sum too when every snapshot term's scorer is kept, and the static
        totals cached per request key too when every snapshot and request term's is (only load gauges
        moved). The same arrays as preparing anew, so the totals keep their bits.
        """
        if previous is None:
            states = tuple(ws.scorer.prepare(v) for ws in self.scorers)
        else:
            states = tuple(
                old if keep else ws.scorer.prepare(v)
                for ws, old, keep in zip(self.scorers, previous.states, kept, strict=True)
            )
            if all(map(kept.__getitem__, self.static_positions)):
                floats = {key: x for key, x in previous.floats.items() if key is not LOAD_STATES}
                return Prepared(states, previous.snapshot_sum, previous.statics, floats)
            if all(map(kept.__getitem__, self.snapshot_positions)):
                return Prepared(states, previous.snapshot_sum)
        total: F64 | None = None
        if self.snapshot_terms:
            unused_load = np.zeros(v.n)
            for i, weight in self.snapshot_terms:
                term = _term(self.scorers[i].scorer.score(v, states[i], _NO_REQUEST, unused_load), weight)
                total = term if total is None else total + term
        if total is not None and total.flags.writeable:
            total.flags.writeable = False  # shared by every pick on this snapshot
        return Prepared(states, total)

    # -------------------------------------------------------------------------------- per request
    def _request_keys(self, req: PickRequest) -> Hashable:
        """:attr:`request_key` with several request scorers."""
        return tuple(s.request_key(req) for s in self.request_scorers)

    def static(self, v: View, prepared: Prepared, req: PickRequest, dispatched: F64) -> F64 | None:
        """Σ snapshot terms + Σ request terms (read-only), cached per request key on the prepared state."""
        if not self.request_terms:
            return prepared.snapshot_sum
        key = self.request_key(req)
        cached = prepared.statics.get(key, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]  # _MISSING is the only non-array value
        total = prepared.snapshot_sum
        for i, weight in self.request_terms:
            term = _term(self.scorers[i].scorer.score(v, prepared.states[i], req, dispatched), weight)
            total = term if total is None else total + term
        if total is not None and total.flags.writeable:
            total.flags.writeable = False
        if len(prepared.statics) < MAX_CACHED_STATICS:
            prepared.statics[key] = total
        return total

    # ------------------------------------------------------------------------- the total, per pick
    def arrays(self, v: View, prepared: Prepared, req: PickRequest, dispatched: F64) -> F64:
        """The totals as a numpy array: static + (Σ load terms in profile order)."""
        static = self.static(v, prepared, req, dispatched)
        dynamic: F64 | None = None
        for i, weight in self.load_terms:
            scorer = self.scorers[i].scorer
            if scorer.skips(req):
                continue
            if isinstance(scorer, MinMaxLoadScorer):
                term = weighted_min_max(
                    scorer.loads(v, prepared.states[i], req, dispatched), weight, scorer.floor
                )
            else:
                term = np.multiply(scorer.score(v, prepared.states[i], req, dispatched), weight)
            # every term is a new array owned here, so accumulating in place is safe
            dynamic = term if dynamic is None else np.add(dynamic, term, out=dynamic)
        if dynamic is None:
            return static if static is not None else np.zeros(v.n)
        if static is None:
            return dynamic
        return np.add(static, dynamic, out=dynamic)

    def floats(self, v: View, prepared: Prepared, req: PickRequest, dispatched: F64) -> list[float]:
        """:meth:`arrays` as Python floats, bit for bit: the static part and the min-max load scorers'
        states are converted once per snapshot (and request key) and cached; per pick only the accounting
        columns are read (a load scorer without a float form is scored by numpy and converted)."""
        cached = prepared.floats
        key = self.request_key(req)
        static = cached.get(key, _MISSING)
        if static is _MISSING:
            array = self.static(v, prepared, req, dispatched)
            static = array.tolist() if array is not None else None
            if len(cached) < MAX_CACHED_STATICS:
                cached[key] = static
        states = cached.get(LOAD_STATES)
        if states is None:
            states = cached[LOAD_STATES] = [
                prepared.states[i].tolist() if minmax is not None else None
                for i, _, minmax in self.float_loads
            ]
        terms: list[list[float]] = []
        for (i, weight, minmax), base in zip(self.float_loads, states, strict=True):
            if minmax is None:
                scorer = self.scorers[i].scorer
                if scorer.skips(req):
                    continue
                # no float form: the numpy scores, weighted as arrays() does (the same IEEE products)
                scores = scorer.score(v, prepared.states[i], req, dispatched).tolist()
                terms.append([x * weight for x in scores])
                continue
            accounted = minmax.accounted(v, dispatched)
            own = minmax.own(v, req)
            if own is not None:  # the same operations as MinMaxLoadScorer.loads, in the same order
                own += accounted
                accounted = own
            load = list(map(add, base, accounted.tolist()))
            terms.append(weighted_min_max_floats(load, weight, minmax.floor))
        # the grouping of arrays(), static + (t0 + t1 + ...), in as few passes as the common shapes allow
        if len(terms) == 2:
            t0, t1 = terms
            if static is None:
                return list(map(add, t0, t1))
            return [s + (a + b) for s, a, b in zip(static, t0, t1, strict=True)]
        dynamic: list[float] | None = None
        for term in terms:
            dynamic = term if dynamic is None else list(map(add, dynamic, term))
        if dynamic is None:
            return static if static is not None else [0.0] * v.n
        if static is None:
            return dynamic
        return list(map(add, static, dynamic))


def _no_key(_req: PickRequest) -> Hashable:
    """:attr:`ProfileTerms.request_key` without request scorers."""
    return None


def _term(score: F64, weight: float) -> F64:
    return score if weight == 1.0 else score * weight
