"""Batch scheduling: K picks as if made one by one, each followed by its load charge, at a fraction of
K sequential picks' cost (see :meth:`scoring.scheduler.Scheduler.schedule_batch`).

When the profile has no request-dependent filter and only min-max load scorers, filters and snapshot terms
run once, request terms once per distinct request key, and after each pick only the chosen endpoint's load
terms are updated (:class:`~scoring.scorers.load.LoadTrack`; the whole column only when the pick moves a
min or max). The totals keep the grouping of :mod:`scoring.terms` (static + Σ load terms), so results,
tie-breaks and random draws are exactly those of sequential picks.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from scoring.matrix import F64, EndpointMatrix, LoadCharge
from scoring.scorers.load import LoadTrack
from scoring.types import PickRequest, PickResult

if TYPE_CHECKING:
    from scoring.scheduler import Scheduler

#: Up to this many single-element changes are replayed onto a cached total; beyond, one whole-column
#: addition is cheaper than the Python-level element updates.
_MAX_REPLAYED_CHANGES = 4


def schedule_batch(
    scheduler: Scheduler,
    m: EndpointMatrix,
    reqs: Sequence[PickRequest],
    *,
    now: float,
    rng: np.random.Generator,
    candidates: NDArray[np.bool_] | None,
) -> list[PickResult]:
    """:meth:`Scheduler.schedule_batch` (same contract)."""
    if not reqs:
        return []
    mm = m.with_load_copies()
    if not scheduler.batchable or (scheduler.terms.request_loads and any(_matched(r) for r in reqs)):
        results = []
        for req in reqs:
            result = scheduler.schedule(mm, req, now=now, rng=rng, candidates=candidates)
            LoadCharge.for_request(req, result.indices[0]).add(mm, result.indices[0])
            results.append(result)
        return results

    terms = scheduler.terms
    v = scheduler.run_filters(scheduler.candidates_view(mm, candidates), reqs[0], now, None)
    prepared = scheduler.prepared(mm, v)
    view_dispatched = v.take(mm.dispatched)
    # every load term is a min-max scorer here (batchable implies it): (scorer, weight) in profile order
    loads = [(scorer, weight) for _, weight, scorer in terms.float_loads if scorer is not None]
    tracks = [
        LoadTrack(prepared.states[i], scorer.accounted(v, view_dispatched), weight, scorer.floor)
        for (i, _), (scorer, weight) in zip(terms.load_terms, loads, strict=True)
    ]
    # the full accounting column each track reads (mm's private copies, charged after every pick)
    columns: list[F64] = [getattr(mm, scorer.accounting) for scorer, _ in loads]
    totals = _KeyedTotals(v.n, _sum_tracks(tracks))
    rows = v.rows
    picker = scheduler.picker
    results = []
    for req in reqs:
        static = terms.static(v, prepared, req, view_dispatched)
        positions = picker.pick(totals.get(terms.request_key(req), static), rng)
        indices = tuple(positions) if rows is None else tuple(int(rows[p]) for p in positions)
        results.append(PickResult(indices))
        primary = indices[0]
        LoadCharge.for_request(req, primary).add(mm, primary)
        if tracks:
            _bump(tracks, totals, positions[0], [float(c[primary]) for c in columns])
    return results


def _matched(req: PickRequest) -> bool:
    """The request has a prefix match (a load term's own part then differs per candidate)."""
    return req.prefix is not None and req.prefix.matched is not None


def _bump(tracks: Sequence[LoadTrack], totals: _KeyedTotals, position: int, values: Sequence[float]) -> None:
    """After a pick at ``position`` (each track's accounting value there is now ``values[k]``): update
    the load terms."""
    recomputed = False
    for track, value in zip(tracks, values, strict=True):
        recomputed = track.bump(position, value) or recomputed
    if recomputed:
        totals.replace_dynamic(_sum_tracks(tracks))
        return
    if len(tracks) > 1:
        value = float(tracks[0].contribution[position])
        for track in tracks[1:]:
            value += float(track.contribution[position])
        assert totals.dynamic is not None
        totals.dynamic[position] = value
    totals.changed(position)


def _sum_tracks(tracks: Sequence[LoadTrack]) -> F64 | None:
    if not tracks:
        return None
    total = tracks[0].contribution
    for track in tracks[1:]:
        total = total + track.contribution
    return total


class _KeyedTotals:
    """Totals per distinct request key during a batch, brought up to date only when a key is used.

    ``dynamic`` (Σ load terms) changes after every pick: either one element (logged by :meth:`changed`) or
    the whole column (:meth:`replace_dynamic`). A key's cached total replays the few elements changed
    since it was last used, computing ``static[p] + dynamic[p]`` exactly as the vector addition of
    :meth:`scoring.terms.ProfileTerms.arrays` does, or is recomputed whole. With one request key (all
    requests for the same model) a step costs one scalar update; with many keys, at most one addition per
    step.
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
