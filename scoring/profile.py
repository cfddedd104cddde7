"""The scheduler: one profile (filters → weighted scorers → one picker) plus a saturation detector.

How a pick is computed (``scoring/README.md`` has the long version):

1. the view = the caller's candidate mask, then each filter in order (an empty result raises
   :class:`~scoring.errors.NoEndpointsAvailable` unless the filter is fail-open);
2. total = (Σ snapshot terms + Σ request terms) + Σ load terms, each term ``weight * score`` in profile
   order; snapshot terms are summed once per snapshot and cached, so a pick on an unchanged snapshot
   costs the load terms (a handful of whole-column operations) plus the picker;
3. the picker turns the totals into the primary and fallbacks.

The fixed grouping of the sum is part of the contract: :meth:`Scheduler.schedule_batch` computes the same
groups in the same order, so its totals, tie-breaks and random draws are identical to sequential picks.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import add
from types import MappingProxyType
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from scoring.errors import ConfigurationError, NoEndpointsAvailable
from scoring.matrix import F64, EndpointMatrix, LoadCharge
from scoring.plugin import Dependence, Filter, Picker, Plugin, SaturationDetector, Scorer, View
from scoring.scorers.load import LoadTrack, MinMaxLoadScorer, weighted_min_max, weighted_min_max_floats
from scoring.types import Decision, FilterRecord, PickRequest, PickResult, ScorerRecord


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    """A scorer and its weight in the profile (weights are not normalized, as in the reference)."""

    scorer: Scorer[Any]
    weight: float


@dataclass(frozen=True, slots=True)
class _Prepared:
    """Per-view state that does not depend on load: each scorer's prepared state, the sum of the
    snapshot-only terms (None when the profile has none), and the static part of the total (snapshot +
    request terms) per request key seen so far, so repeated requests for the same model cost nothing."""

    states: tuple[Any, ...]
    snapshot_sum: F64 | None
    statics: dict[Hashable, F64 | None] = field(default_factory=dict)
    #: the small-pool path's copies as Python floats: the static totals per request key, and under
    #: :data:`_LOAD_STATES` the load scorers' states
    floats: dict[Hashable, Any] = field(default_factory=dict)


def _columns(m: EndpointMatrix) -> tuple[object, ...]:
    """The immutable columns scorers read; a snapshot is "the same" when all of them are the same objects.

    ``with_load`` copies share them, so a batch working on a copy of ``dispatched`` still hits the cache.
    """
    return (
        m.names,
        m.waiting,
        m.running,
        m.kv_usage,
        m.gpu_util,
        m.lora_vocab,
        m.lora_active,
        m.lora_waiting,
        m.lora_count,
        m.max_lora,
    )


@dataclass(frozen=True, slots=True)
class _Memo:
    matrix: EndpointMatrix
    columns: tuple[object, ...]
    #: None for the whole pool, else the matrix rows the state was prepared for
    rows: NDArray[np.intp] | None
    prepared: _Prepared

    def matches(self, m: EndpointMatrix, rows: NDArray[np.intp] | None) -> bool:
        if rows is None:
            if self.rows is not None:
                return False
        elif self.rows is None or not np.array_equal(rows, self.rows):
            return False
        return self.matrix is m or all(a is b for a, b in zip(_columns(m), self.columns, strict=True))


class Scheduler:
    """Picks endpoints for requests with one scheduling profile. Build it with ``build_scheduler``.

    Thread-compatible: the only state it changes is a cache of the last snapshot's prepared scores (one
    entry for the whole pool, one for a subset), each replaced as a whole, so concurrent picks at worst
    prepare the same state twice.
    It never mutates the matrix; after routing, the caller charges the primary endpoint
    (``scoring.matrix.LoadCharge``: ``dispatched`` + 1, the token columns + the prompt estimate).
    """

    def __init__(
        self,
        *,
        profile_name: str,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer[Any], float]],
        picker: Picker,
        saturation_detector: SaturationDetector,
        profile_handler: str = "single-profile-handler",
    ) -> None:
        for scorer, weight in scorers:
            if not math.isfinite(weight) or weight < 0:
                raise ConfigurationError(
                    f"scheduling profile {profile_name!r}: weight of {scorer.name!r} must be a finite "
                    f"number >= 0, got {weight!r}"
                )
        self.profile_name = profile_name
        self.profile_handler = profile_handler
        self.filters: tuple[Filter, ...] = tuple(filters)
        self.scorers: tuple[WeightedScorer, ...] = tuple(WeightedScorer(s, float(w)) for s, w in scorers)
        self.picker = picker
        self.saturation_detector = saturation_detector
        # terms that can change a total, grouped by dependence (zero weights and zero scorers add nothing)
        live = [
            (i, ws.weight)
            for i, ws in enumerate(self.scorers)
            if ws.weight != 0.0 and not ws.scorer.constant_zero
        ]
        self._snapshot_terms = tuple(
            t for t in live if self.scorers[t[0]].scorer.dependence is Dependence.SNAPSHOT
        )
        self._request_terms = tuple(
            t for t in live if self.scorers[t[0]].scorer.dependence is Dependence.REQUEST
        )
        self._load_terms = tuple(t for t in live if self.scorers[t[0]].scorer.dependence is Dependence.LOAD)
        self._min_max_loads = all(
            isinstance(self.scorers[i].scorer, MinMaxLoadScorer) for i, _ in self._load_terms
        )
        self._batchable = self._min_max_loads and not any(f.request_dependent for f in self.filters)
        #: pools up to this size are scored with Python floats (:meth:`_totals_floats`): same operations,
        #: same order, same bits as the numpy path, several times cheaper below a few dozen endpoints.
        #: 0 turns it off (tests compare the two paths with it).
        self.small_pool = SMALL_POOL if self._min_max_loads else 0
        #: the load terms as (scorer, weight) for the float path; empty when it is off
        self._float_loads = tuple(
            (cast(MinMaxLoadScorer, self.scorers[i].scorer), w)
            for i, w in (self._load_terms if self._min_max_loads else ())
        )
        self._request_scorers = tuple(self.scorers[i].scorer for i, _ in self._request_terms)
        # last prepared state for the whole pool, and for a subset (a candidate mask or a filter that
        # removed endpoints); each replaced as a whole
        self._pool_memo: _Memo | None = None
        self._subset_memo: _Memo | None = None

    # ------------------------------------------------------------------------------------ introspection
    @property
    def max_endpoints(self) -> int:
        """Endpoints per pick: primary + fallbacks (the picker's ``maxNumOfEndpoints``)."""
        return self.picker.max_endpoints

    @property
    def weights(self) -> Mapping[str, float]:
        """Scorer name → weight, in profile order."""
        return MappingProxyType({ws.scorer.name: ws.weight for ws in self.scorers})

    @property
    def plugins(self) -> tuple[tuple[str, str, float | None], ...]:
        """``(name, type, weight)`` of the profile's plugins in run order (weight None: not a scorer)."""
        out: list[tuple[str, str, float | None]] = [(f.name, f.type_name, None) for f in self.filters]
        out += [(ws.scorer.name, ws.scorer.type_name, ws.weight) for ws in self.scorers]
        out.append((self.picker.name, self.picker.type_name, None))
        return tuple(out)

    def describe(self) -> dict[str, Any]:
        """The effective configuration as plain data (what ``/config`` shows): defaults filled in."""

        def plugin(p: Plugin, weight: float | None = None) -> dict[str, Any]:
            entry: dict[str, Any] = {"name": p.name, "type": p.type_name, "parameters": dict(p.parameters)}
            if weight is not None:
                entry["weight"] = weight
            return entry

        return {
            "profileHandler": self.profile_handler,
            "profiles": [
                {
                    "name": self.profile_name,
                    "filters": [plugin(f) for f in self.filters],
                    "scorers": [plugin(ws.scorer, ws.weight) for ws in self.scorers],
                    "picker": plugin(self.picker),
                }
            ],
            "saturationDetector": plugin(self.saturation_detector),
        }

    # ------------------------------------------------------------------------------------ picking
    def schedule(
        self,
        m: EndpointMatrix,
        req: PickRequest,
        *,
        now: float,
        rng: np.random.Generator,
        candidates: NDArray[np.bool_] | None = None,
        explain: bool = False,
    ) -> PickResult:
        """Pick the primary endpoint and fallbacks for one request.

        ``now`` is on the clock of ``m.scraped_at`` (monotonic seconds). ``candidates`` (a mask over the
        matrix rows, e.g. from the subset hint) restricts the pick before the profile's filters run.
        ``explain=True`` also returns a :class:`~scoring.types.Decision`; otherwise nothing beyond the
        pick itself is computed. Raises :class:`NoEndpointsAvailable` when no endpoint is left.
        """
        start = self._candidates(m, candidates)
        records: list[FilterRecord] | None = [] if explain else None
        v = self._run_filters(start, req, now, records)
        prepared = self._prepared(m, v)
        dispatched = v.take(m.dispatched)
        rows = v.rows
        if records is None and v.n <= self.small_pool:
            positions = self.picker.pick_floats(self._totals_floats(v, prepared, req, dispatched), rng)
            return PickResult(tuple(positions) if rows is None else tuple(int(rows[p]) for p in positions))
        totals = self._totals(v, prepared, req, dispatched)
        positions = self.picker.pick(totals, rng)
        indices = tuple(positions) if rows is None else tuple(int(rows[p]) for p in positions)
        if records is None:
            return PickResult(indices)
        decision = self._decision(
            start=start,
            v=v,
            prepared=prepared,
            req=req,
            dispatched=dispatched,
            totals=totals,
            indices=indices,
            records=records,
            now=now,
        )
        return PickResult(indices, decision)

    def schedule_batch(
        self,
        m: EndpointMatrix,
        reqs: Sequence[PickRequest],
        *,
        now: float,
        rng: np.random.Generator,
        candidates: NDArray[np.bool_] | None = None,
    ) -> list[PickResult]:
        """Pick for K requests as if one by one, each followed by the owner's accounting of the pick
        (``LoadCharge.for_request(req).add(m, primary)``: ``dispatched`` and ``inflight`` + 1,
        ``inflight_tokens`` + the request's prompt-token estimate, ``prefill_tokens`` + the same if it
        streams).

        Works on copies of the accounting columns (``m`` is not modified) and returns exactly what K
        sequential :meth:`schedule` calls with the same ``rng`` would. When the profile has no
        request-dependent filter and only min-max load scorers, filters and snapshot terms run once, request
        terms once per distinct request key, and after each pick only the chosen endpoint's load terms are
        updated (the whole column only when the pick moves a min or max); otherwise it falls back to
        sequential picks.
        """
        if not reqs:
            return []
        mm = m.with_load_copies()
        if not self._batchable:
            results = []
            for req in reqs:
                result = self.schedule(mm, req, now=now, rng=rng, candidates=candidates)
                LoadCharge.for_request(req).add(mm, result.indices[0])
                results.append(result)
            return results

        v = self._run_filters(self._candidates(mm, candidates), reqs[0], now, None)
        prepared = self._prepared(mm, v)
        view_dispatched = v.take(mm.dispatched)
        scorers = [self.scorers[i].scorer for i, _ in self._load_terms]
        min_max = [s for s in scorers if isinstance(s, MinMaxLoadScorer)]
        tracks = [
            LoadTrack(prepared.states[i], scorer.accounted(v, view_dispatched), w, scorer.floor)
            for (i, w), scorer in zip(self._load_terms, min_max, strict=True)
        ]
        # the full accounting column each track reads (mm's private copies, charged after every pick)
        columns: list[F64] = [getattr(mm, scorer.accounting) for scorer in min_max]
        totals = _KeyedTotals(v.n, self._sum_tracks(tracks))
        rows = v.rows
        results = []
        for req in reqs:
            key = self._request_key(self._request_scorers, req)
            static = self._static(v, prepared, req, view_dispatched)
            positions = self.picker.pick(totals.get(key, static), rng)
            indices = tuple(positions) if rows is None else tuple(int(rows[p]) for p in positions)
            results.append(PickResult(indices))
            primary = indices[0]
            LoadCharge.for_request(req).add(mm, primary)
            if tracks:
                self._bump(tracks, totals, positions[0], [float(c[primary]) for c in columns])
        return results

    @staticmethod
    def _request_key(scorers: Sequence[Scorer[Any]], req: PickRequest) -> Hashable:
        if not scorers:
            return None
        if len(scorers) == 1:
            return scorers[0].request_key(req)
        return tuple(s.request_key(req) for s in scorers)

    def _bump(
        self, tracks: Sequence[LoadTrack], totals: _KeyedTotals, position: int, values: Sequence[float]
    ) -> None:
        """After a pick at ``position`` (each track's accounting value there is now ``values[k]``): update
        the load terms."""
        recomputed = False
        for track, value in zip(tracks, values, strict=True):
            recomputed = track.bump(position, value) or recomputed
        if recomputed:
            totals.replace_dynamic(self._sum_tracks(tracks))
            return
        if len(tracks) > 1:
            value = float(tracks[0].contribution[position])
            for track in tracks[1:]:
                value += float(track.contribution[position])
            assert totals.dynamic is not None
            totals.dynamic[position] = value
        totals.changed(position)

    def saturation(
        self, m: EndpointMatrix, *, now: float, candidates: NDArray[np.bool_] | None = None
    ) -> float:
        """The configured detector's saturation over the candidates (None: all); ≥ 1 means saturated."""
        if candidates is None:
            return self.saturation_detector.saturation(View(m), now)
        return self.saturation_detector.saturation(View(m, np.flatnonzero(self._mask(m, candidates))), now)

    # ------------------------------------------------------------------------------------ internals
    @staticmethod
    def _mask(m: EndpointMatrix, candidates: NDArray[np.bool_]) -> NDArray[np.bool_]:
        mask = np.asarray(candidates, dtype=np.bool_)
        if mask.shape != (len(m),):
            raise ValueError(f"candidates mask has shape {mask.shape}, expected ({len(m)},)")
        return mask

    def _candidates(self, m: EndpointMatrix, candidates: NDArray[np.bool_] | None) -> View:
        if candidates is None:
            v = View(m)
        else:
            rows = np.flatnonzero(self._mask(m, candidates))
            v = View(m) if rows.size == len(m) else View(m, rows)
        if v.n == 0:
            raise NoEndpointsAvailable("no candidate endpoints")
        return v

    def _run_filters(self, v: View, req: PickRequest, now: float, records: list[FilterRecord] | None) -> View:
        for f in self.filters:
            keep = f.keep(v, req, now)
            if keep.all():
                if records is not None:
                    records.append(FilterRecord(f.name, f.type_name, (), f.reason()))
                continue
            if not keep.any():
                if f.fail_open:
                    if records is not None:
                        records.append(FilterRecord(f.name, f.type_name, (), f.reason(), failed_open=True))
                    continue
                raise NoEndpointsAvailable(
                    f"no endpoints available: filter {f.name!r} ({f.type_name}) of profile "
                    f"{self.profile_name!r} removed all {v.n} ({f.reason()})"
                )
            if records is not None:
                names = v.names()
                removed = tuple(names[i] for i in np.flatnonzero(~keep))
                records.append(FilterRecord(f.name, f.type_name, removed, f.reason()))
            v = v.subset(keep)
        return v

    def _prepare(self, v: View) -> _Prepared:
        states = tuple(ws.scorer.prepare(v) for ws in self.scorers)
        total: F64 | None = None
        if self._snapshot_terms:
            unused_load = np.zeros(v.n)
            for i, weight in self._snapshot_terms:
                term = self._term(
                    self.scorers[i].scorer.score(v, states[i], _NO_REQUEST, unused_load), weight
                )
                total = term if total is None else total + term
        if total is not None and total.flags.writeable:
            total.flags.writeable = False  # shared by every pick on this snapshot
        return _Prepared(states, total)

    def _prepared(self, m: EndpointMatrix, v: View) -> _Prepared:
        """Prepared state for the view, reused while the snapshot's scraped columns and the view's rows
        are unchanged (the steady state between two scrapes, also when a filter removes the same
        endpoints every time)."""
        memo = self._pool_memo if v.rows is None else self._subset_memo
        if memo is not None and memo.matches(m, v.rows):
            if memo.matrix is not m:
                memo = _Memo(m, memo.columns, memo.rows, memo.prepared)
                self._remember(memo)
            return memo.prepared
        prepared = self._prepare(v)
        self._remember(_Memo(m, _columns(m), v.rows, prepared))
        return prepared

    def _remember(self, memo: _Memo) -> None:
        if memo.rows is None:
            self._pool_memo = memo
        else:
            self._subset_memo = memo

    @staticmethod
    def _term(score: F64, weight: float) -> F64:
        return score if weight == 1.0 else score * weight

    def _static(self, v: View, prepared: _Prepared, req: PickRequest, dispatched: F64) -> F64 | None:
        """Σ snapshot terms + Σ request terms (read-only), cached per request key on the prepared state."""
        if not self._request_terms:
            return prepared.snapshot_sum
        key = self._request_key(self._request_scorers, req)
        cached = prepared.statics.get(key, _MISSING)
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]  # _MISSING is the only non-array value
        total = prepared.snapshot_sum
        for i, weight in self._request_terms:
            term = self._term(self.scorers[i].scorer.score(v, prepared.states[i], req, dispatched), weight)
            total = term if total is None else total + term
        if total is not None and total.flags.writeable:
            total.flags.writeable = False
        if len(prepared.statics) < _MAX_CACHED_STATICS:
            prepared.statics[key] = total
        return total

    def _dynamic(self, v: View, prepared: _Prepared, req: PickRequest, dispatched: F64) -> F64 | None:
        total: F64 | None = None
        for i, weight in self._load_terms:
            scorer = self.scorers[i].scorer
            if isinstance(scorer, MinMaxLoadScorer):
                term = weighted_min_max(
                    prepared.states[i] + scorer.accounted(v, dispatched), weight, scorer.floor
                )
            else:
                term = np.multiply(scorer.score(v, prepared.states[i], req, dispatched), weight)
            # every term is a new array owned here, so accumulating in place is safe
            total = term if total is None else np.add(total, term, out=total)
        return total

    @staticmethod
    def _sum_tracks(tracks: Sequence[LoadTrack]) -> F64 | None:
        if not tracks:
            return None
        total = tracks[0].contribution
        for track in tracks[1:]:
            total = total + track.contribution
        return total

    @staticmethod
    def _combine(v: View, static: F64 | None, dynamic: F64 | None) -> F64:
        if dynamic is None:
            return static if static is not None else np.zeros(v.n)
        if static is None:
            return dynamic
        return np.add(static, dynamic, out=dynamic)  # dynamic is a new array from _dynamic

    def _totals_floats(self, v: View, prepared: _Prepared, req: PickRequest, dispatched: F64) -> list[float]:
        """:meth:`_totals` as Python floats for a small pool (min-max load terms only): the static part and
        the load scorers' states are converted once per snapshot (and request key) and cached; per pick
        only the accounting columns are read. Same grouping as :meth:`_totals`: static + (Σ load terms in
        profile order)."""
        floats = prepared.floats
        key = self._request_key(self._request_scorers, req)
        static = floats.get(key, _MISSING)
        if static is _MISSING:
            array = self._static(v, prepared, req, dispatched)
            static = array.tolist() if array is not None else None
            if len(floats) < _MAX_CACHED_STATICS:
                floats[key] = static
        states = floats.get(_LOAD_STATES)
        if states is None:
            states = floats[_LOAD_STATES] = [prepared.states[i].tolist() for i, _ in self._load_terms]
        terms: list[list[float]] = []
        for (scorer, weight), base in zip(self._float_loads, states, strict=True):
            load = list(map(add, base, scorer.accounted(v, dispatched).tolist()))
            terms.append(weighted_min_max_floats(load, weight, scorer.floor))
        # the grouping of _totals, static + (t0 + t1 + ...), in as few passes as the common shapes allow
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

    def _totals(self, v: View, prepared: _Prepared, req: PickRequest, dispatched: F64) -> F64:
        return self._combine(
            v, self._static(v, prepared, req, dispatched), self._dynamic(v, prepared, req, dispatched)
        )

    def _decision(
        self,
        *,
        start: View,
        v: View,
        prepared: _Prepared,
        req: PickRequest,
        dispatched: F64,
        totals: F64,
        indices: tuple[int, ...],
        records: list[FilterRecord],
        now: float,
    ) -> Decision:
        names = v.names()
        scorer_records = tuple(
            ScorerRecord(
                ws.scorer.name,
                ws.scorer.type_name,
                ws.weight,
                MappingProxyType(
                    dict(zip(names, ws.scorer.score(v, state, req, dispatched).tolist(), strict=True))
                ),
            )
            for ws, state in zip(self.scorers, prepared.states, strict=True)
        )
        return Decision(
            profile=self.profile_name,
            candidates=start.names(),
            filters=tuple(records),
            scorers=scorer_records,
            totals=MappingProxyType(dict(zip(names, totals.tolist(), strict=True))),
            picker=self.picker.name,
            chosen=tuple(v.m.names[i] for i in indices),
            saturation=self.saturation_detector.saturation(start, now),
        )


#: Up to this many single-element changes are replayed onto a cached total; beyond, one whole-column
#: addition is cheaper than the Python-level element updates.
_MAX_REPLAYED_CHANGES = 4


class _KeyedTotals:
    """Totals per distinct request key during a batch, brought up to date only when a key is used.

    ``dynamic`` (Σ load terms) changes after every pick: either one element (logged by :meth:`changed`) or
    the whole column (:meth:`replace_dynamic`). A key's cached total replays the few elements changed
    since it was last used, computing ``static[p] + dynamic[p]`` exactly as the vector addition of
    :meth:`Scheduler.schedule` does, or is recomputed whole. With one request key (all requests for the
    same model) a step costs one scalar update; with many keys, at most one addition per step.
    """

    __slots__ = ("_changes", "_entries", "_epoch", "_n", "dynamic")

    def __init__(self, n: int, dynamic: F64 | None) -> None:
        self._n = n
        self.dynamic = dynamic
        self._epoch = 0
        self._changes: list[int] = []
        self._entries: dict[Hashable, tuple[F64, int, int]] = {}

    def replace_dynamic(self, dynamic: F64 | None) -> None:
        self.dynamic = dynamic
        self._epoch += 1
        self._changes.clear()

    def changed(self, position: int) -> None:
        self._changes.append(position)

    def get(self, key: Hashable, static: F64 | None) -> F64:
        dynamic = self.dynamic
        if dynamic is None:
            return static if static is not None else np.zeros(self._n)
        changes = self._changes
        entry = self._entries.get(key)
        if entry is not None and entry[1] == self._epoch and len(changes) - entry[2] <= _MAX_REPLAYED_CHANGES:
            total = entry[0]
            for p in changes[entry[2] :]:
                total[p] = float(dynamic[p]) if static is None else float(static[p]) + float(dynamic[p])
        else:
            total = dynamic.copy() if static is None else static + dynamic
        self._entries[key] = (total, self._epoch, len(changes))
        return total


_NO_REQUEST = PickRequest()
#: Distinct request keys (e.g. target models) whose static totals are kept per snapshot; bounds memory
#: at this many arrays of N floats when requests name ever new models.
_MAX_CACHED_STATICS = 256
_MISSING = object()
#: key of the load scorers' states in ``_Prepared.floats`` (request keys are never this object)
_LOAD_STATES = object()
#: default :attr:`Scheduler.small_pool`: below it the float path is cheaper than numpy. The float path's cost
#: grows with the pool, numpy's hardly: for the load terms alone, in a warm loop, they cross between 24 and 32
#: endpoints; ``benchmarks/bench_pick`` reports whole picks at 16 endpoints both ways.
SMALL_POOL = 24
