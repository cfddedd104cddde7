"""The operator's Prometheus signals: the queries of the configured ``prometheus-scorer`` plugins,
evaluated every ``refreshInterval`` and handed to the datastore (``Datastore.set_signal``).

Each query is an instant query through ``prometheus_api_client.PrometheusConnect`` (a blocking
``requests`` call, so it runs in a worker thread, bounded by the timeout, never on the loop). The result
must hold one series per pod, named by the ``podLabel`` label; several series for one pod are averaged,
NaN and unparsable values skipped, and a series whose ``namespace`` label names another namespace than the
pool's is dropped (pod names are unique only within one).

Freshness: a pod's value is kept for ``3 x refreshInterval`` after the last query that returned it, then
dropped (the scorer makes it neutral). So a series that disappears, or a Prometheus that cannot be reached,
turns the signal neutral within three intervals — never into "best" — and a single failed query changes
nothing. One log line when a query starts failing, one when it works again.

The set of queries follows the active config (:meth:`PrometheusSignals.configure`, on every reload); a
query no scorer uses any more is removed from the datastore at once. Several scorers with the same query
and ``podLabel`` share one column and one query (the shortest interval wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from prometheus_api_client import PrometheusConnect

from picker.scrape.promql import QueryFailedError, instant_query, prometheus_client
from scoring.scorers.signal import PrometheusScorer

__all__ = ["PrometheusSignals", "SignalQuery", "queries_of", "values_by_pod"]

log = logging.getLogger(__name__)

#: a value is kept this many refresh intervals after the last query that returned it
FRESH_INTERVALS: Final = 3.0
#: at most this many pods per query (a query without the right aggregation could return thousands)
MAX_SERIES: Final = 10_000


class SignalSink(Protocol):
    """Where values go (``Datastore.set_signal``)."""

    def set_signal(self, key: str, by_pod: Mapping[str, float] | None) -> None: ...


@dataclass(frozen=True, slots=True)
class SignalQuery:
    key: str
    query: str
    pod_label: str
    refresh_s: float


def queries_of(scorers: Iterable[object]) -> list[SignalQuery]:
    """The distinct queries of the ``prometheus-scorer`` plugins among ``scorers`` (shortest interval)."""
    by_key: dict[str, SignalQuery] = {}
    for s in scorers:
        if isinstance(s, PrometheusScorer):
            known = by_key.get(s.key)
            if known is None or s.refresh_s < known.refresh_s:
                by_key[s.key] = SignalQuery(s.key, s.query, s.pod_label, s.refresh_s)
    return list(by_key.values())


def values_by_pod(
    samples: Sequence[Mapping[str, Any]], *, pod_label: str, namespace: str
) -> dict[str, float]:
    """Instant-vector samples → {pod: mean value} (see the module docstring)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for sample in samples[:MAX_SERIES]:
        labels = sample.get("metric") or {}
        pod = labels.get(pod_label)
        if not isinstance(pod, str) or not pod:
            continue
        ns = labels.get("namespace")
        if namespace and ns is not None and ns != namespace:
            continue
        try:
            value = float(sample["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if not math.isfinite(value):
            continue
        sums[pod] = sums.get(pod, 0.0) + value
        counts[pod] = counts.get(pod, 0) + 1
    return {pod: sums[pod] / counts[pod] for pod in sums}


class _State:
    __slots__ = ("due", "failing", "seen")

    def __init__(self) -> None:
        #: pod → (value, monotonic time of the query that returned it)
        self.seen: dict[str, tuple[float, float]] = {}
        self.due = 0.0
        self.failing = False


class PrometheusSignals:
    """Evaluates the configured queries. ``run()`` until :meth:`close`; constructing it does nothing."""

    def __init__(
        self,
        sink: SignalSink,
        *,
        url: str,
        namespace: str,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url:
            raise ValueError("the Prometheus URL is empty")
        if timeout_s <= 0:
            raise ValueError("the Prometheus timeout must be positive")
        self._sink = sink
        self._url = url.rstrip("/")
        self._namespace = namespace
        self._timeout = timeout_s
        self._clock = clock
        self._queries: dict[str, SignalQuery] = {}
        self._state: dict[str, _State] = {}
        #: set by configure() and close(): the loop looks again
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self.polls = 0

    @property
    def queries(self) -> list[SignalQuery]:
        return list(self._queries.values())

    def configure(self, queries: Iterable[SignalQuery]) -> None:
        """The queries of the active config; a query no longer configured leaves the datastore now."""
        new = {q.key: q for q in queries}
        for key in set(self._queries) - set(new):
            self._state.pop(key, None)
            self._sink.set_signal(key, None)
        for key in new:
            self._state.setdefault(key, _State())
        self._queries = new
        self._wake.set()

    def configure_from(self, scorers: Iterable[object]) -> None:
        """:meth:`configure` with the queries of these scorers (the active config's)."""
        self.configure(queries_of(scorers))

    def make_client(self) -> PrometheusConnect:
        """The client ``run()`` uses (the caller closes it): see :func:`prometheus_client`."""
        return prometheus_client(self._url, timeout_s=self._timeout)

    async def run(self) -> None:
        client = self.make_client()
        try:
            while not self._closed.is_set():
                for q in list(self._queries.values()):
                    if self._state[q.key].due <= self._clock():
                        await self.poll_once(client, q)
                wake = min((self._state[k].due for k in self._queries), default=math.inf)
                self._wake.clear()
                delay = max(0.05, wake - self._clock()) if math.isfinite(wake) else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
        finally:
            client.close()

    async def close(self) -> None:
        self._closed.set()
        self._wake.set()

    async def poll_once(self, client: PrometheusConnect, q: SignalQuery) -> bool:
        """Evaluate ``q`` once and publish its fresh values; True if the query answered."""
        state = self._state.setdefault(q.key, _State())
        started = self._clock()
        state.due = started + q.refresh_s
        self.polls += 1
        ok = False
        try:
            samples = await instant_query(client, q.query, timeout_s=self._timeout)
        except QueryFailedError as exc:
            self._failing(q, state, str(exc))
        else:
            now = self._clock()
            for pod, value in values_by_pod(
                samples, pod_label=q.pod_label, namespace=self._namespace
            ).items():
                state.seen[pod] = (value, now)
            if state.failing:
                log.info("prometheus-scorer query %r answers again", q.query)
            state.failing = False
            ok = True
        if q.key not in self._queries:
            return ok  # removed by a reload while the query ran
        horizon = self._clock() - FRESH_INTERVALS * q.refresh_s
        state.seen = {pod: vt for pod, vt in state.seen.items() if vt[1] >= horizon}
        self._sink.set_signal(q.key, {pod: v for pod, (v, _t) in state.seen.items()})
        return ok

    def _failing(self, q: SignalQuery, state: _State, reason: str) -> None:
        if not state.failing:
            log.warning(
                "prometheus-scorer query %r failed (values kept for %g s, then neutral): %s",
                q.query,
                FRESH_INTERVALS * q.refresh_s,
                reason,
            )
        state.failing = True
