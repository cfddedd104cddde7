"""Two weeks of real demand (ServeGen, 10-minute windows), scaled to a fleet and cut into ticks.

The rate file sums 162 clients of one production model per 10-minute window (see
``benchmarks/data/SOURCES.md``). What the file cannot say, and what we assume instead:

* **Shape inside a window**: the rate is held constant over each window (a step at every boundary). This
  is the harsher reading for a scaler: a jump arrives all at once instead of as a ramp.
* **Calendar**: the series carries no date. Day 0 is taken to be a Monday, starting at 00:00 UTC
  (:data:`EPOCH`), so cron schedules and the weekly forecast have a calendar to refer to.
* **Arrivals inside a tick** are Poisson at the window's rate (the per-client burstiness ServeGen fitted is
  not in the summed file).
* **Tokens**: the file has request rates only. Each request is taken to carry the prompt + output tokens of
  a request drawn from the Azure conversation trace (:class:`TokenMix`), the length mix the per-replica
  capacity is calibrated on; so the token rate is the request rate times the mix's mean, with the sampling
  noise of the tick's draws. The mix never shifts: the replay shows what counting tokens costs when it
  cannot help, not what it catches when answers grow.

Scaling: every rate is multiplied by one factor chosen so that the highest window of the whole series needs
exactly ``peak_replicas`` replicas at the per-replica capacity at SLO (:mod:`.calibration`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from picker.scaler.forecast import DemandHistory

DATA = Path(__file__).resolve().parents[1] / "data" / "traces" / "servegen-m-large-14d-rate.csv"
#: 2025-01-06 00:00:00 UTC, a Monday (assumption, see the module docstring)
EPOCH = 1736121600.0
WINDOW_S = 600.0
WEEK_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True, eq=False)
class DemandSeries:
    """Window starts (epoch seconds) and rates (requests/s, already scaled)."""

    start: NDArray[np.float64]
    rps: NDArray[np.float64]
    window_s: float = WINDOW_S

    @classmethod
    def load(cls, path: Path = DATA) -> DemandSeries:
        starts: list[float] = []
        rates: list[float] = []
        with path.open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                starts.append(float(row["window_start_s"]))
                rates.append(float(row["rate_rps"]))
        if not starts:
            raise ValueError(f"{path}: no windows")
        t = np.asarray(starts) - starts[0] + EPOCH
        return cls(t, np.asarray(rates))

    def scaled(self, factor: float) -> DemandSeries:
        return DemandSeries(self.start, self.rps * factor, self.window_s)

    @property
    def end(self) -> float:
        return float(self.start[-1] + self.window_s)

    def rate_at(self, t: NDArray[np.float64]) -> NDArray[np.float64]:
        """The (piecewise-constant) rate at times ``t``; 0 outside the series."""
        i = np.searchsorted(self.start, t, side="right") - 1
        inside = (i >= 0) & (t < self.end)
        out = np.zeros(len(t))
        out[inside] = self.rps[i[inside]]
        return out

    def history(self, until: float | None = None, *, scale: float = 1.0) -> DemandHistory:
        """What Prometheus would hold at ``until``: each window's mean, stamped at the window's end and only
        once that end has passed (no peeking into the window in progress)."""
        stamps = self.start + self.window_s
        keep = stamps <= (np.inf if until is None else until)
        return DemandHistory(stamps[keep], self.rps[keep] * scale)


@dataclass(frozen=True, slots=True, eq=False)
class TokenMix:
    """Prompt + output tokens per request, drawn from a length trace (the module doc's assumption)."""

    tokens: NDArray[np.int64]

    @classmethod
    def of(cls, prompt: NDArray[np.int64], output: NDArray[np.int64]) -> TokenMix:
        return cls(np.asarray(prompt, dtype=np.int64) + np.asarray(output, dtype=np.int64))

    @property
    def mean(self) -> float:
        return float(self.tokens.mean())

    def draw(self, rng: np.random.Generator, requests: int) -> float:
        """The tokens of ``requests`` requests drawn from the mix."""
        return float(self.tokens[rng.integers(0, len(self.tokens), requests)].sum()) if requests > 0 else 0.0
