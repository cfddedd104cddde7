"""The scheduler: one profile (filters → weighted scorers → one picker) plus a saturation detector.

How a pick is computed (``scoring/README.md`` has the long version), in :meth:`Scheduler.schedule`:

1. the view = the caller's candidate mask, then each filter in order (an empty result raises
   :class:`~scoring.errors.NoEndpointsAvailable` unless the filter is fail-open);
2. the prepared state for the view's snapshot, reused while the snapshot is unchanged, and per scorer
   on a new snapshot while that scorer's inputs are (:mod:`scoring.cache`);
3. total = static (Σ snapshot + request terms, cached) + Σ load terms (:mod:`scoring.terms`), as numpy
   arrays or, for a pool of at most :attr:`Scheduler.small_pool` endpoints, as the same sum in Python
   floats - the one place that choice is made is :meth:`Scheduler.schedule`;
4. the picker turns the totals into the primary and fallbacks.

Per-plugin timings (``timings=``, asked for a traced request only, so an untraced pick pays one ``is
None`` test per step): each filter's ``keep`` and the picker are timed as they run; each scorer is timed
scoring this pick's candidates on its own after the pick (the pick itself adds terms that are cached per
snapshot and per request key, which would time as nothing), so the figures say what each plugin costs on
this request's candidates, and the decision is the one an untraced request gets.

:meth:`Scheduler.schedule_batch` (:mod:`scoring.batch`) makes K picks with their load charges at once and
returns exactly what K sequential picks would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from time import perf_counter_ns
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from scoring.batch import schedule_batch
from scoring.cache import Prepared, SnapshotCache
from scoring.errors import ConfigurationError, NoEndpointsAvailable
from scoring.matrix import F64, EndpointMatrix
from scoring.plugin import Filter, Picker, Plugin, SaturationDetector, Scorer, View
from scoring.terms import SMALL_POOL, ProfileTerms, WeightedScorer
from scoring.types import (
    Decision,
    FilterRecord,
    PickRequest,
    PickResult,
    PluginTiming,
    PrefixRecord,
    ScorerRecord,
)

__all__ = ["SMALL_POOL", "Scheduler", "WeightedScorer"]


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
        self.terms = ProfileTerms(self.scorers)
        #: K picks can share one filter pass and update only the chosen endpoint's load terms
        #: (:mod:`scoring.batch`); otherwise a batch is K sequential picks
        self.batchable = self.terms.min_max_loads and not any(f.request_dependent for f in self.filters)
        #: pools up to this size are scored as Python floats (:meth:`ProfileTerms.floats`: same operations,
        #: same order, same bits as the arrays, several times cheaper below a few dozen endpoints). Tests
        #: and benchmarks set 0 to compare the two.
        self.small_pool = SMALL_POOL
        self._cache = SnapshotCache([ws.scorer for ws in self.scorers], self.terms.prepare)

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
        timings: list[PluginTiming] | None = None,
    ) -> PickResult:
        """Pick the primary endpoint and fallbacks for one request.

        ``now`` is on the clock of ``m.scraped_at`` (monotonic seconds). ``candidates`` (a mask over the
        matrix rows, e.g. from the subset hint) restricts the pick before the profile's filters run.
        ``explain=True`` also returns a :class:`~scoring.types.Decision`; otherwise nothing beyond the
        pick itself is computed. ``timings``: each plugin's :class:`~scoring.types.PluginTiming` is
        appended to it (module docstring); the pick is the same. Raises :class:`NoEndpointsAvailable`
        when no endpoint is left.
        """
        start = View(m) if candidates is None else self.candidates_view(m, candidates)
        if start.n == 0:
            raise NoEndpointsAvailable("no candidate endpoints")
        records: list[FilterRecord] | None = [] if explain else None
        v = self.run_filters(start, req, now, records, timings) if self.filters else start
        prepared = self._cache.get(m, v)
        dispatched = v.take(m.dispatched)
        # the one choice between the two forms of the same totals (see scoring.terms): Python floats for a
        # small pool, unless the caller wants the explanation, which reads the arrays
        totals: F64 | None = None
        if records is None and v.n <= self.small_pool:
            floats = self.terms.floats(v, prepared, req, dispatched)
            picked = perf_counter_ns() if timings is not None else 0
            positions = self.picker.pick_floats(floats, rng)
        else:
            totals = self.terms.arrays(v, prepared, req, dispatched)
            picked = perf_counter_ns() if timings is not None else 0
            positions = self.picker.pick(totals, rng)
        if timings is not None:
            timings.append(PluginTiming("picker", self.picker.name, perf_counter_ns() - picked))
            self._time_scorers(v, prepared, req, dispatched, timings)
        rows = v.rows
        indices = tuple(positions) if rows is None else tuple(int(rows[p]) for p in positions)
        if records is None:
            return PickResult(indices)
        assert totals is not None  # an explained pick always takes the arrays
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
        return schedule_batch(self, m, reqs, now=now, rng=rng, candidates=candidates)

    def saturation(
        self, m: EndpointMatrix, *, now: float, candidates: NDArray[np.bool_] | None = None
    ) -> float:
        """The configured detector's saturation over the candidates (None: all); ≥ 1 means saturated."""
        if candidates is None:
            return self.saturation_detector.saturation(View(m), now)
        return self.saturation_detector.saturation(View(m, np.flatnonzero(self._mask(m, candidates))), now)

    # ------------------------------------------------------------- the steps of a pick (and of a batch)
    @staticmethod
    def _mask(m: EndpointMatrix, candidates: NDArray[np.bool_]) -> NDArray[np.bool_]:
        mask = np.asarray(candidates, dtype=np.bool_)
        if mask.shape != (len(m),):
            raise ValueError(f"candidates mask has shape {mask.shape}, expected ({len(m)},)")
        return mask

    def candidates_view(self, m: EndpointMatrix, candidates: NDArray[np.bool_] | None) -> View:
        """The rows of ``m`` allowed by the ``candidates`` mask (None: all). Raises NoEndpointsAvailable
        when the mask allows none."""
        if candidates is None:
            v = View(m)
        else:
            rows = np.flatnonzero(self._mask(m, candidates))
            v = View(m) if rows.size == len(m) else View(m, rows)
        if v.n == 0:
            raise NoEndpointsAvailable("no candidate endpoints")
        return v

    def run_filters(
        self,
        v: View,
        req: PickRequest,
        now: float,
        records: list[FilterRecord] | None,
        timings: list[PluginTiming] | None = None,
    ) -> View:
        """The profile's filters in order over ``v``; each one's outcome is appended to ``records`` (None:
        not recorded), its duration to ``timings`` (None: not timed). Raises NoEndpointsAvailable when a
        filter that is not fail-open removes every row."""
        for f in self.filters:
            if timings is None:
                keep = f.keep(v, req, now)
            else:
                began = perf_counter_ns()
                keep = f.keep(v, req, now)
                timings.append(PluginTiming("filter", f.name, perf_counter_ns() - began))
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

    def prepared(self, m: EndpointMatrix, v: View) -> Prepared:
        """The prepared state for the view (cached while the view's rows and the scorers' inputs are
        unchanged, per scorer on a new snapshot: :mod:`scoring.cache`)."""
        return self._cache.get(m, v)

    def _time_scorers(
        self, v: View, prepared: Prepared, req: PickRequest, dispatched: F64, timings: list[PluginTiming]
    ) -> None:
        """Each scorer's ``score`` over the pick's candidates, timed on its own (module docstring)."""
        for ws, state in zip(self.scorers, prepared.states, strict=True):
            began = perf_counter_ns()
            ws.scorer.score(v, state, req, dispatched)
            timings.append(PluginTiming("scorer", ws.scorer.name, perf_counter_ns() - began))

    # ------------------------------------------------------------------------------------ explaining
    def _decision(
        self,
        *,
        start: View,
        v: View,
        prepared: Prepared,
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
            prefix=_prefix_record(start, req),
        )


def _prefix_record(start: View, req: PickRequest) -> PrefixRecord | None:
    """Matched blocks per candidate (for the decision record), from the request's prefix match."""
    match = req.prefix
    if match is None:
        return None
    names = start.names()
    if match.matched is None:
        blocks = dict.fromkeys(names, 0)
    else:
        blocks = {name: int(b) for name, b in zip(names, start.take(match.matched).tolist(), strict=True)}
    return PrefixRecord(match.total, match.block_tokens, MappingProxyType(blocks))
