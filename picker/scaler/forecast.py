"""Demand forecast from history: the same time of week over the last weeks (pure; no I/O).

Input: a :class:`DemandHistory` — demand samples (epoch seconds, requests or tokens per second), from
Prometheus (:mod:`picker.scaler.history`) or from memory (tests, the benchmark); a :class:`PoolHistory`
holds the request series and, when the sizing counts tokens, the token series, each forecast alike.
Output: the largest demand expected within the coming ``horizon`` seconds, so the sizing rule can have
capacity Ready before a ramp.

Formula, for ``now`` = t, horizon H, period P = one week, weeks k = 1..K with data::

    peak_k   = max  of the samples stamped in (t - kP, t - kP + H + L]
    base     = mean over k of peak_k
    level_k  = mean of the samples in [t - kP - W, t - kP]      (W = one hour: "today so far" vs then)
    recent   = mean of the samples in [t - W, t]
    trend    = clamp(recent / mean_k level_k, 0.5, 2)            (1 when disabled or not computable)
    forecast = base x trend

L is the samples' averaging window (``lookback_s``; ``forecast.sampleWindow``): a sample stamped T is
the mean demand over [T - L, T] (what ``rate(x[5m])`` at T is, with L = 5 minutes), so the demand of
[t - kP, t - kP + H] is in the samples stamped up to L after it. Reading only up to t - kP + H would see
each rise L late: with 10-minute samples and a 3-minute horizon, a jump of last week was seen 7 minutes
*after* its time of week, and the forecast never put capacity back before a ramp (the replay's
misses sat in the minutes after each jump). With L = 0 (an instantaneous gauge) the window is
[t - kP, t - kP + H].

Why a seasonal-naive forecast: LLM demand is dominated by the daily and weekly cycle; a model with more
parameters needs more history than most pools keep and fails in ways an operator cannot predict. The max
over the horizon (not the value at t + H) is what sizing needs: the peak of the next minutes must be
served, not their average. The trend factor corrects for growth (or a holiday) since the weeks read,
clamped so one odd hour (a collection gap reads as a dip) cannot halve or double the forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

WEEK_S = 7 * 24 * 3600.0
TREND_WINDOW_S = 3600.0
TREND_BOUNDS = (0.5, 2.0)


@dataclass(frozen=True, slots=True, eq=False)
class DemandHistory:
    """Demand samples sorted by time: ``t`` epoch seconds, ``rps`` requests per second (finite, ≥ 0)."""

    t: NDArray[np.float64]
    rps: NDArray[np.float64]

    @classmethod
    def from_samples(cls, t: object, rps: object) -> DemandHistory:
        """Sort, drop non-finite or negative samples, and keep one sample per timestamp (the last)."""
        ta = np.asarray(t, dtype=np.float64).ravel()
        va = np.asarray(rps, dtype=np.float64).ravel()
        if ta.shape != va.shape:
            raise ValueError("timestamps and values differ in length")
        keep = np.isfinite(ta) & np.isfinite(va) & (va >= 0)
        ta, va = ta[keep], va[keep]
        order = np.argsort(ta, kind="stable")
        ta, va = ta[order], va[order]
        if len(ta) > 1:
            last = np.append(ta[1:] != ta[:-1], True)
            ta, va = ta[last], va[last]
        return cls(ta, va)

    @classmethod
    def empty(cls) -> DemandHistory:
        return cls(np.zeros(0), np.zeros(0))

    def __len__(self) -> int:
        return len(self.t)

    def between(self, start: float, end: float) -> NDArray[np.float64]:
        """Values with ``start <= t <= end``."""
        lo = int(np.searchsorted(self.t, start, side="left"))
        hi = int(np.searchsorted(self.t, end, side="right"))
        return self.rps[lo:hi]

    def merged(self, other: DemandHistory) -> DemandHistory:
        """Both sample sets; ``other`` wins where timestamps coincide."""
        return DemandHistory.from_samples(np.append(self.t, other.t), np.append(self.rps, other.rps))


@dataclass(frozen=True, slots=True, eq=False)
class PoolHistory:
    """What the forecast reads: the request rate, and the token rate when the sizing counts tokens (each
    series is forecast on its own, by the same rule)."""

    requests: DemandHistory
    tokens: DemandHistory | None = None


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast and how it was made (shown in ``/debug/scaler``)."""

    rps: float
    base_rps: float
    trend: float
    #: the per-week peaks, most recent week first (NaN where a week had no data)
    peaks: tuple[float, ...]
    horizon_s: float


def forecast(
    history: DemandHistory,
    now: float,
    horizon_s: float,
    *,
    weeks: int,
    trend: bool = True,
    period_s: float = WEEK_S,
    lookback_s: float = 0.0,
) -> Forecast | None:
    """The peak demand expected in ``[now, now + horizon_s]`` (module doc), or None without usable history.
    ``lookback_s``: each sample's averaging window (module doc, L)."""
    if horizon_s < 0 or weeks < 1 or lookback_s < 0:
        raise ValueError("horizon and lookback must be >= 0 and weeks >= 1")
    peaks: list[float] = []
    levels: list[float] = []
    for k in range(1, weeks + 1):
        then = now - k * period_s
        # a sample stamped at `then` averages [then - L, then]: before the horizon when L > 0
        first = then if lookback_s == 0 else float(np.nextafter(then, math.inf))
        window = history.between(first, then + horizon_s + lookback_s)
        if len(window) == 0:
            # no sample inside a short window: the last one before it still describes the start
            i = int(np.searchsorted(history.t, then, side="right")) - 1
            window = (
                history.rps[i : i + 1] if i >= 0 and then - history.t[i] <= max(horizon_s, 900.0) else window
            )
        peaks.append(float(window.max()) if len(window) else float("nan"))
        before = history.between(then - TREND_WINDOW_S, then)
        if len(before):
            levels.append(float(before.mean()))
    found = [p for p in peaks if not math.isnan(p)]
    if not found:
        return None
    base = float(np.mean(found))
    factor = 1.0
    if trend and levels:
        recent = history.between(now - TREND_WINDOW_S, now)
        then_level = float(np.mean(levels))
        if len(recent) and then_level > 0:
            factor = min(max(float(recent.mean()) / then_level, TREND_BOUNDS[0]), TREND_BOUNDS[1])
    return Forecast(rps=base * factor, base_rps=base, trend=factor, peaks=tuple(peaks), horizon_s=horizon_s)
