"""Demand history from Prometheus for the forecast (``prometheus-api-client``, off the event loop).

What is read, per :meth:`PrometheusHistory.fetch`: the configured PromQL (``forecast.query``, requests per
second of the pool; and ``forecast.tokenQuery``, its tokens per second, when the sizing counts tokens) as a
range query at ``forecast.step`` resolution over, for each of the last ``weeks``
weeks, the stretch the forecast needs around the same time of week (an hour before it, for the trend
factor, up to the forecast horizon plus the samples' averaging window, ``forecast.sampleWindow``, and one
refresh period after it), plus the last hour of this week.
A handful of short queries instead of one over weeks: Prometheus caps a range query at 11,000 points,
which ``weeks`` of 1-minute steps would exceed.

Every window starts on a multiple of the step, so the points are the same instants whichever moment the
read happens; several series in a result are summed per instant.

The client is synchronous (``requests``); the whole fetch runs in one worker thread
(``asyncio.to_thread``), bounded by ``timeout`` per query. Any failure raises
:class:`HistoryUnavailableError` (the controller keeps the last history it read and says so).
This module is, with :mod:`picker.scrape`, the only importer of ``prometheus_api_client``
(an import-linter contract).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util import Retry

from picker.config.scaling import ForecastConfig
from picker.errors import PickerError
from picker.scaler.forecast import TREND_WINDOW_S, WEEK_S, DemandHistory, PoolHistory


class HistoryUnavailableError(PickerError):
    """Prometheus did not answer the history query usably."""

    code = "ForecastUnavailable"
    transient = True


def windows(now: float, *, weeks: int, step: float, horizon_s: float) -> list[tuple[float, float]]:
    """The (start, end) stretches :meth:`PrometheusHistory.fetch` reads, starts aligned to ``step``."""
    out = []
    for k in range(weeks, -1, -1):
        then = now - k * WEEK_S
        start = math.floor((then - TREND_WINDOW_S - step) / step) * step
        end = then if k == 0 else then + horizon_s + step
        out.append((start, end))
    return out


def samples_from_matrix(result: Iterable[Mapping[str, Any]]) -> tuple[list[float], list[float]]:
    """A range-query result (``[{metric, values: [[t, "v"], ...]}, ...]``) → summed (times, values)."""
    sums: dict[float, float] = {}
    for series in result:
        for point in series.get("values") or ():
            try:
                t, v = float(point[0]), float(point[1])
            except (TypeError, ValueError, IndexError):
                continue
            if math.isfinite(v):
                sums[t] = sums.get(t, 0.0) + v
    times = sorted(sums)
    return times, [sums[t] for t in times]


class PrometheusHistory:
    """Reads demand history for the forecast. Constructing it does no I/O."""

    def __init__(self, cfg: ForecastConfig, *, tokens: bool = False, verify_tls: bool = True) -> None:
        """``tokens``: read the token rate too (the sizing counts tokens)."""
        self.cfg = cfg
        self._queries = (cfg.query, cfg.token_query) if tokens else (cfg.query,)
        self._verify_tls = verify_tls

    def make_client(self) -> PrometheusConnect:
        """No retries inside the client: the next refresh is the retry."""
        return PrometheusConnect(
            url=self.cfg.prometheus_url,
            disable_ssl=not self._verify_tls,
            retry=Retry(total=0),
            timeout=self.cfg.timeout,
        )

    async def fetch(self, now: float, *, horizon_s: float) -> PoolHistory:
        """The history the forecast at ``now`` (and until the next refresh) needs."""
        ahead = horizon_s + self.cfg.sample_window + self.cfg.refresh
        spans = windows(now, weeks=self.cfg.weeks, step=self.cfg.step, horizon_s=ahead)
        queries = len(spans) * len(self._queries)
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._read, spans), timeout=self.cfg.timeout * (queries + 1)
            )
        except TimeoutError as exc:
            raise HistoryUnavailableError(f"Prometheus history query timed out: {exc}") from exc

    def _read(self, spans: Sequence[tuple[float, float]]) -> PoolHistory:
        client = self.make_client()
        try:
            series = [self._series(client, query, spans) for query in self._queries]
        finally:
            client.close()
        return PoolHistory(series[0], series[1] if len(series) > 1 else None)

    def _series(
        self, client: PrometheusConnect, query: str, spans: Sequence[tuple[float, float]]
    ) -> DemandHistory:
        times: list[float] = []
        values: list[float] = []
        # whole seconds: Prometheus durations take no fractions
        step = f"{max(1, round(self.cfg.step))}s"
        try:
            for start, end in spans:
                result = client.custom_query_range(
                    query,
                    start_time=dt.datetime.fromtimestamp(start, tz=dt.UTC),
                    end_time=dt.datetime.fromtimestamp(end, tz=dt.UTC),
                    step=step,
                )
                if not isinstance(result, list):
                    raise HistoryUnavailableError(f"unexpected result type {type(result).__name__}")
                t, v = samples_from_matrix(r for r in result if isinstance(r, Mapping))
                times += t
                values += v
        except (OSError, PrometheusApiClientException, ValueError, KeyError, TypeError) as exc:
            message = f"Prometheus history query failed: {type(exc).__name__}: {exc}"
            raise HistoryUnavailableError(message) from exc
        return DemandHistory.from_samples(times, values)
