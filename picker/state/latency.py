"""Observed latency per endpoint: exponentially weighted moving averages of what the response path measures.

Pure logic over a caller's clock. The owner (the datastore) feeds it samples from finished requests and
publishes :meth:`LatencyTracker.columns` in every snapshot, where ``latency-scorer`` reads them.

Signals (seconds; ``LatencySignal``):

* ``ttft_per_1k`` — prefill speed: time from the request (its headers reaching the EPP) to the first
  response body byte of a *streamed* response, x 1000 / max(prompt tokens, 256) (``picker.state.
  outcomes``). A streaming engine sends its first chunk when the first token is sampled, so this is
  queueing + prefill per thousand prompt tokens; the floor keeps a ten-token prompt from weighing like a
  thousand-token one.
* ``tpot`` — decode speed: mean time between the non-empty response body chunks of a streamed response,
  (last - first) / (chunks - 1), for responses of at least two chunks. Engines send one chunk per token or
  a few; a proxy may coalesce chunks, which the comparison between endpoints shares.
* ``ntpot`` — for a non-streamed response (its first byte is the whole answer, so neither of the above is
  observable): time from the request to the end of the response / completion tokens (the reference's NTPOT),
  when the response reported its usage.

Requests the gateway retried elsewhere are not sampled (their timing includes the failed attempt), nor are
responses with an error status.

Averaging: a time-based EWMA, ``v <- v + (x - v) x (1 - 2^(-dt / half_life))`` with ``dt`` the time since the
endpoint's previous sample of that signal and ``x`` the mean of the samples that arrived together (one
request in one process; one publish interval's worth under ``--workers``). So the average follows the
endpoint at the same pace whatever its traffic: an endpoint that gets few requests (because it is slow)
moves with each of them. The first sample sets the value. An average whose last sample is older than
``max_age`` is unknown (NaN) again: an endpoint we stopped sending to because it was slow is not judged on
old news forever, and its next sample starts afresh.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

NAN = math.nan


class LatencySignal(enum.IntEnum):
    """The averaged signals, in the order of the snapshot's latency columns."""

    TTFT_PER_1K = 0
    TPOT = 1
    NTPOT = 2


#: snapshot column names, in :class:`LatencySignal` order
LATENCY_COLUMNS = ("ttft_per_1k", "tpot", "ntpot")


@dataclass(frozen=True, slots=True)
class LatencySettings:
    """How the averages are kept (the ``latency-scorer`` plugin's ``halfLife`` and ``maxAge``; defaults when
    no such plugin is configured)."""

    half_life_s: float = 10.0
    max_age_s: float = 60.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.half_life_s) and self.half_life_s > 0):
            raise ValueError("half_life_s must be a finite number > 0")
        if not (self.max_age_s > 0):
            raise ValueError("max_age_s must be > 0")


@dataclass(slots=True)
class _Average:
    value: float = NAN
    at: float = -math.inf


@dataclass(slots=True)
class LatencyTracker:
    """Per endpoint and signal, the EWMA described in the module docstring."""

    settings: LatencySettings = field(default_factory=LatencySettings)
    _averages: dict[str, list[_Average]] = field(default_factory=dict)

    def retain(self, names: Iterable[str]) -> None:
        """The pool is exactly ``names``; averages of removed endpoints are forgotten."""
        keep = set(names)
        averages = self._averages
        for name in [n for n in averages if n not in keep]:
            del averages[name]

    def observe(self, name: str, signal: LatencySignal, total: float, count: int, now: float) -> None:
        """``count`` samples of ``signal`` for ``name`` summing to ``total`` seconds, seen at ``now``.
        Non-finite or negative input is ignored."""
        if count <= 0 or not math.isfinite(total) or total < 0.0:
            return
        slots = self._averages.get(name)
        if slots is None:
            slots = self._averages[name] = [_Average() for _ in LatencySignal]
        avg = slots[signal]
        x = total / count
        age = now - avg.at
        if math.isnan(avg.value) or age > self.settings.max_age_s:
            avg.value = x
        elif age > 0.0:
            avg.value += (x - avg.value) * -math.expm1(-age * math.log(2.0) / self.settings.half_life_s)
        avg.at = max(avg.at, now)

    def value(self, name: str, signal: LatencySignal, now: float) -> float:
        """The current average, NaN when unknown or older than ``max_age``."""
        slots = self._averages.get(name)
        if slots is None:
            return NAN
        avg = slots[signal]
        return avg.value if now - avg.at <= self.settings.max_age_s else NAN

    def columns(self, names: Sequence[str], now: float) -> list[list[float]]:
        """The three latency columns (:data:`LATENCY_COLUMNS` order) for endpoints in this order."""
        out = [[NAN] * len(names) for _ in LatencySignal]
        max_age = self.settings.max_age_s
        averages = self._averages
        for i, name in enumerate(names):
            slots = averages.get(name)
            if slots is None:
                continue
            for k, avg in enumerate(slots):
                if now - avg.at <= max_age:
                    out[k][i] = avg.value
        return out
