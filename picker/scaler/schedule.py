"""Replica bounds over time: cron windows in their time zones (``croniter``), like KEDA's cron scaler.

A window is active from a firing of its ``start`` expression until the next firing of its ``end``
expression (or for its ``duration``). Outside every window the section's own ``minReplicas`` /
``maxReplicas`` apply; when windows overlap the first one listed wins.

Looking ahead: :meth:`Schedule.bounds` returns the bounds *now* and the minimum ``warmup`` seconds from
now, and the effective minimum is the larger of the two. A window that raises the floor at 07:00 therefore
starts adding replicas at 06:57 with a 180 s warm-up, so they serve when the window opens. The maximum is
never read ahead (a lower future maximum must not remove capacity that is still needed now).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from croniter import croniter

from picker.config.scaling import ScalingConfig, ScheduleWindow


@dataclass(frozen=True, slots=True)
class Bounds:
    """Replica bounds in force: ``lo`` ≤ replicas ≤ ``hi``; ``window`` names the window ("" = none)."""

    lo: int
    hi: int
    window: str
    #: the window whose minimum, read ``warmup`` ahead, raised ``lo`` ("" when none did)
    ahead: str = ""


def _last_fire(expr: str, at: dt.datetime) -> dt.datetime:
    """The latest firing of ``expr`` at or before ``at`` (same zone as ``at``)."""
    # croniter's get_prev is strictly before its start: nudge one second so a firing at ``at`` counts
    it = croniter(expr, at + dt.timedelta(seconds=1))
    prev: dt.datetime = it.get_prev(dt.datetime)
    return prev


class Schedule:
    """Evaluates the configured windows at wall-clock instants (epoch seconds)."""

    def __init__(self, cfg: ScalingConfig) -> None:
        self._windows = tuple((w, zoneinfo.ZoneInfo(w.time_zone)) for w in cfg.schedules)
        self._default = (cfg.min_replicas, cfg.max_replicas)
        self._warmup = cfg.warmup

    def active(self, now: float) -> ScheduleWindow | None:
        """The window in force at ``now`` (epoch seconds), or None."""
        for window, zone in self._windows:
            if _is_active(window, zone, now):
                return window
        return None

    def raw(self, now: float) -> tuple[int, int, str]:
        """(min, max, window name) in force at ``now``, without looking ahead."""
        window = self.active(now)
        if window is None:
            return self._default[0], self._default[1], ""
        return window.min_replicas, window.max_replicas, window.name

    def bounds(self, now: float) -> Bounds:
        """The bounds to size against at ``now``: the minimum read ``warmup`` ahead too (module doc)."""
        lo, hi, name = self.raw(now)
        ahead = ""
        if self._warmup > 0:
            lo_next, _, name_next = self.raw(now + self._warmup)
            if lo_next > lo:
                lo, ahead = lo_next, name_next or "default"
        return Bounds(lo=lo, hi=max(hi, lo), window=name, ahead=ahead)


def _is_active(window: ScheduleWindow, zone: zoneinfo.ZoneInfo, now: float) -> bool:
    at = dt.datetime.fromtimestamp(now, tz=zone)
    started = _last_fire(window.start, at)
    if window.duration is not None:
        return (at - started).total_seconds() < window.duration
    ended = _last_fire(window.end, at)
    return started > ended
