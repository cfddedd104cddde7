"""Endpoints that must not be primary: one rule for "not picked while a better candidate exists, a
last-resort fallback otherwise".

An endpoint is *avoided* when the snapshot says it should not take traffic first. Each reason has a level;
a higher level is avoided more:

1. ``stale`` — its metrics are older than the staleness threshold, or it was never scraped successfully
   (``scraped_at`` is ``-inf``). A killed or hung model server keeps its last good gauges, which look idle,
   so without this it kept winning picks. Only while ``staleEndpoints: Avoid`` (the default); ``Allow``
   scores stale values as the reference EPP does.
2. ``probing`` — its ejection time is over and one probe request is already in flight on it (``health``
   column 2 and ``inflight`` > 0): a second request waits for the probe's outcome. A probing endpoint with
   nothing in flight is not avoided for its health: the next pick may send it the probe.
3. ``ejected`` — passive health ejected it (``health`` column 1, ``picker/state/health.py``). An ejected
   endpoint whose metrics are also stale is ``ejected``: the highest reason wins.
4. ``draining`` — the scaler is about to remove its pod (``health`` column 3, ``picker/scaler``): no new
   request while another candidate remains, so its streams can end before Kubernetes deletes it; the
   last of the fallbacks (it is about to go).

How the director applies it (:meth:`Avoidance.split`): the pick runs over the candidates of the lowest level
present, the others fill the fallback places the pick left empty, lowest level first (a gateway that
retries on the EPP's list still has somewhere to go); when every candidate has the same level the pick runs
over all of them (refusing every request helps nobody: when everything is stale the scraper, not the
fleet, is the likelier fault). Levels rather than one avoided/not flag keep passive health working when
scraping is down: with every endpoint stale, an ejected one is still not primary.

The per-pick cost when nothing is avoided is one identity comparison with the last snapshot and one with
its oldest scrape time. The same holds when every row is equally avoided for staleness alone (a pool
whose scrapes stopped, or were never made): a comparison with its newest scrape time, and no levels, since
a level that every row shares leaves the pick as it is (:meth:`Avoidance.levels`).

Other "not primary" marks (an external endpoint over its limits) belong here as further
reasons, so there is one rule and one place that explains it.
"""

from __future__ import annotations

import enum
import math

import numpy as np
from numpy.typing import NDArray

from scoring import EndpointMatrix

BoolArray = NDArray[np.bool_]
Levels = NDArray[np.uint8]

#: ``health`` column values (``picker.state.health.Health``; ``picker.routing`` reads the snapshot only)
_EJECTED = 1.0
_PROBING = 2.0
_DRAINING = 3.0


class Level(enum.IntEnum):
    """How strongly a row is avoided (see the module docstring); 0 = not avoided."""

    NONE = 0
    STALE = 1
    PROBING = 2
    EJECTED = 3
    DRAINING = 4


_NAMES = {
    Level.STALE: "stale",
    Level.PROBING: "probing",
    Level.EJECTED: "ejected",
    Level.DRAINING: "draining",
}


class FailoverReason(enum.StrEnum):
    """Why a request went elsewhere than the scorer's choice: the ``reason`` label of
    ``ai_failover_total``. A bounded set; add a member for a new reason (saturated, over limits, out of
    budget), never a free-form string."""

    #: the scorer's choice was ejected by passive health (or is waiting for its probe's outcome); also a
    #: request sent to an external endpoint because every pool candidate was
    EJECTED = "ejected"
    #: the scorer's choice is being drained by the scaler
    DRAINING = "draining"
    #: the scorer's choice had stale metrics, or none (``staleEndpoints: Avoid``)
    STALE = "stale"
    #: sent to an external endpoint because the pool was saturated (``picker.routing.external``)
    SATURATED = "saturated"
    #: sent to an external endpoint because the pool had no candidate for it
    UNAVAILABLE = "unavailable"
    #: the request asked for an external endpoint (its objective) and every one was over its limits
    OVER_LIMITS = "over_limits"


class Avoidance:
    """Which rows of a snapshot are avoided right now, and why (see the module docstring)."""

    __slots__ = ("_last", "_newest", "_oldest", "_watch")

    def __init__(self) -> None:
        self._last: EndpointMatrix | None = None
        #: rows of the last snapshot whose health is not "healthy"; None when there are none
        self._watch: NDArray[np.intp] | None = None
        #: the oldest and the newest successful scrape of the last snapshot (``inf`` when it is empty;
        #: the newest ignores NaN, and is NaN when every row's is)
        self._oldest = math.inf
        self._newest = math.inf

    def levels(self, m: EndpointMatrix, now: float, stale_after: float | None) -> Levels | None:
        """The avoidance level of every row of ``m`` at ``now``, or None when no row is avoided more than
        another: none is avoided (the common case), or every row is stale and none has a health reason (a
        level every candidate shares changes no pick: :meth:`split` and :meth:`preferred_rows` keep them
        all, and staleness alone sends nothing external). ``stale_after``: the staleness threshold in
        seconds; None = staleness is no reason."""
        if m is not self._last:
            # once per snapshot (after every scrape under load): the ufuncs' own reductions, not the
            # ndarray methods' Python wrappers, and no index array while every row is healthy
            self._last = m
            health = m.health
            self._watch = np.flatnonzero(health) if np.count_nonzero(health) else None
            scraped = m.scraped_at
            self._oldest = float(np.minimum.reduce(scraped)) if len(m) else math.inf
            self._newest = float(np.fmax.reduce(scraped)) if len(m) else math.inf
        watch = self._watch
        horizon = -math.inf if stale_after is None else now - stale_after
        # NaN-safe: "not fresh" rather than "older"
        any_stale = not self._oldest >= horizon
        if watch is None and (not any_stale or not self._newest >= horizon):
            return None
        out = np.zeros(len(m), dtype=np.uint8)
        if any_stale:
            out[~(m.scraped_at >= horizon)] = Level.STALE
        if watch is not None:
            health = m.health[watch]
            # read the live in-flight column each time: a probe may have started or ended since the snapshot
            probing = watch[(health == _PROBING) & (m.inflight[watch] > 0.0)]
            out[probing] = Level.PROBING
            out[watch[health == _EJECTED]] = Level.EJECTED
            out[watch[health == _DRAINING]] = Level.DRAINING
        return out if out.any() else None

    @staticmethod
    def reason(levels: Levels, row: int) -> str:
        """How ``/debug/explain`` describes an avoided row."""
        return _NAMES[Level(int(levels[row]))]

    @staticmethod
    def failover_reason(levels: Levels, row: int) -> FailoverReason:
        """The ``ai_failover_total`` reason when the scorer's choice ``row`` was avoided."""
        level = levels[row]
        if level == Level.STALE:
            return FailoverReason.STALE
        return FailoverReason.DRAINING if level == Level.DRAINING else FailoverReason.EJECTED

    @staticmethod
    def split(candidates: BoolArray | None, levels: Levels) -> tuple[BoolArray, BoolArray] | None:
        """``(preferred, avoided candidates)``: the candidates of the lowest level present and the rest;
        None when every candidate has the same level (then pick over all of them)."""
        if candidates is None:
            lowest = levels.min()
            preferred = levels == lowest
        else:
            if not candidates.any():
                return None
            lowest = levels[candidates].min()
            preferred = candidates & (levels == lowest)
        out = levels > lowest if candidates is None else candidates & (levels > lowest)
        if not out.any():
            return None
        return preferred, out

    @staticmethod
    def last_resort(levels: Levels, out: BoolArray, chosen: tuple[int, ...], places: int) -> tuple[int, ...]:
        """``chosen`` followed by avoided candidates up to ``places`` endpoints: the least avoided first
        (stale, then probing — their wait is nearly over — then ejected, then draining — about to go), each
        level in row order."""
        if len(chosen) >= places:
            return chosen
        rows = np.flatnonzero(out)
        order = rows[np.argsort(levels[rows], kind="stable")]
        return chosen + tuple(order[: places - len(chosen)].tolist())

    @staticmethod
    def preferred_rows(levels: Levels | None) -> NDArray[np.intp] | None:
        """The rows of the lowest level, for a pick without scoring (header-only requests); None = all."""
        if levels is None:
            return None
        rows = np.flatnonzero(levels == levels.min())
        return None if rows.size == len(levels) else rows
