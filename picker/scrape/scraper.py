"""The scrape loop: every endpoint's ``/metrics`` on its own cadence, concurrently, with a bound.

Why one task per endpoint rather than one sweep per interval: a sweep is only as fast as its slowest
pod, so one dead pod (1 s timeout) would stall everybody's freshness 20-fold at a 50 ms interval. Here
each endpoint has its own ticker and timeout; a semaphore bounds how many requests are in the air.

Failures keep the last good values and their age in the datastore (staleness decides what to do with
them, not the scraper), and are logged once per transition (failing → recovered), never per attempt,
and at most once per :data:`LOG_EVERY_S` per endpoint (a flapping endpoint would log on every scrape).

An endpoint without an engine label has its engine detected from its page; when the page stops matching
that engine (:data:`REDETECT_AFTER` unfiltered pages in a row without a known family, e.g. a pod reused
with another server), the engine is detected again instead of failing every scrape forever.

Where the server supports ``name[]=`` filtering (prometheus_client-based servers: vLLM, SGLang), the
scraper asks only for the families the extractor needs — a 75 KB vLLM page shrinks to ~2 KB. If a
filtered page comes back without any field the unfiltered one had, filtering is turned off for that
endpoint (some proxies or older servers ignore or reject the parameter).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote

from picker.scrape.client import MetricsFetcher, ScrapeError
from picker.scrape.detect import detect_engine
from picker.scrape.engines import EngineSpec
from picker.scrape.extract import Extractor
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint

log = logging.getLogger(__name__)

#: engines whose servers implement prometheus_client's ``name[]`` filter
FILTERING_ENGINES = frozenset({"vllm", "sglang"})
#: consecutive unfiltered pages without a known family before an auto-detected endpoint's engine is
#: detected again (a pod reused with another server; a page still starting up is not enough)
REDETECT_AFTER = 3
#: at most one failing/recovered log line per endpoint per this many seconds
LOG_EVERY_S = 30.0


class ScrapeObserver(Protocol):
    def scrape_observed(self, duration_s: float, ok: bool) -> None: ...


@dataclass(slots=True)
class _Target:
    endpoint: Endpoint
    failing: bool = False
    ever_ok: bool = False
    use_filter: bool = True
    unfiltered_fields: int = 0
    #: consecutive unfiltered pages on which the endpoint's engine found no known family
    unknown_pages: int = 0
    #: when a state change of this endpoint was last logged, and how many were not since
    logged_at: float = float("-inf")
    unlogged: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: ``scheme://address/path`` for this endpoint, rebuilt when the endpoint changes
    base_url: str = ""


class Scraper:
    """Keeps every endpoint's metrics fresh in the datastore. ``run()`` until cancelled."""

    def __init__(
        self,
        datastore: Datastore,
        fetcher: MetricsFetcher,
        *,
        engines: Mapping[str, EngineSpec],
        default_engine: str = "vllm",
        interval_s: float = 0.05,
        timeout_s: float = 1.0,
        max_concurrency: int = 256,
        scheme: str = "http",
        path: str = "/metrics",
        observer: ScrapeObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("scrape interval and timeout must be positive")
        self._ds = datastore
        self._fetcher = fetcher
        self._interval = interval_s
        self._timeout = timeout_s
        self._sem = asyncio.Semaphore(max_concurrency)
        self._max_concurrency = max_concurrency
        self._scheme = scheme
        self._path = path
        self._observer = observer
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - start-time jitter, not security
        self._targets: dict[str, _Target] = {}
        self._changed = asyncio.Event()
        self._extractors: dict[str, Extractor] = {}
        self._default_engine = default_engine
        self.set_engines(engines, default_engine)

    def set_engines(self, engines: Mapping[str, EngineSpec], default_engine: str) -> None:
        """Swap engine metric specs (config reload). Takes effect on each endpoint's next scrape."""
        if default_engine not in engines:
            raise ValueError(f"default engine {default_engine!r} has no metric spec")
        self._extractors = {name: Extractor(spec) for name, spec in engines.items()}
        self._default_engine = default_engine
        # The ``name[]`` filter per engine, built once: the URL of a scrape is then two concatenations.
        self._filters = {
            name: "?" + "&".join("name[]=" + quote(n, safe="") for n in x.wanted_families())
            for name, x in self._extractors.items()
            if name in FILTERING_ENGINES
        }

    # ------------------------------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        self._ds.add_listener(self._changed.set)
        try:
            while True:
                self._reconcile()
                await self._changed.wait()
                self._changed.clear()
        finally:
            tasks = [t.task for t in self._targets.values() if t.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._targets.clear()

    async def close(self) -> None:
        """Release the HTTP transport (after ``run()`` was cancelled)."""
        await self._fetcher.close()

    def _reconcile(self) -> None:
        wanted = {ep.name: ep for ep in self._ds.endpoints()}
        for name in list(self._targets):
            target = self._targets[name]
            ep = wanted.get(name)
            if ep is None or ep.metrics_address != target.endpoint.metrics_address:
                if target.task is not None:
                    target.task.cancel()
                del self._targets[name]
            elif ep != target.endpoint:
                target.endpoint = ep
                target.base_url = self._base_url(ep)
        for name, ep in wanted.items():
            if name not in self._targets:
                target = _Target(ep, base_url=self._base_url(ep))
                target.task = asyncio.create_task(self._loop(target), name=f"scrape:{name}")
                self._targets[name] = target

    async def _loop(self, target: _Target) -> None:
        # Spread first scrapes over one interval so a big pool does not scrape in lockstep.
        next_t = self._clock() + self._rng.random() * self._interval
        while True:
            delay = next_t - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # No catch-up bursts after a slow scrape: the next tick is at least one interval away.
            next_t = max(next_t + self._interval, self._clock())
            if len(self._targets) <= self._max_concurrency:
                # An endpoint has one scrape in flight at a time, so with no more endpoints than the
                # bound the semaphore never makes one wait: skipped (its acquire and release are six of
                # the ~170 Python calls of a page, which run beside the requests for every page).
                await self.scrape_once(target)
            else:
                async with self._sem:
                    await self.scrape_once(target)

    # ------------------------------------------------------------------------------------ one scrape
    def _engine_for(self, target: _Target) -> str | None:
        st = self._ds.status(target.endpoint.name)
        engine = target.endpoint.engine or (st.detected_engine if st is not None else None)
        return engine if engine in self._extractors else None

    def _base_url(self, endpoint: Endpoint) -> str:
        return f"{self._scheme}://{endpoint.metrics_address}{self._path}"

    def _url(self, target: _Target, engine: str | None) -> str:
        if engine is not None and target.use_filter and target.ever_ok:
            query = self._filters.get(engine)
            if query is not None:
                return (target.base_url or self._base_url(target.endpoint)) + query
        return target.base_url or self._base_url(target.endpoint)

    async def scrape_once(self, target: _Target) -> None:
        name = target.endpoint.name
        engine = self._engine_for(target)
        url = self._url(target, engine)
        filtered = "?" in url
        self._ds.begin_scrape(name)
        started = self._clock()
        try:
            page = await self._fetcher.fetch(url, timeout_s=self._timeout)
        except ScrapeError as exc:
            self._failed(target, str(exc), started)
            return
        detected: str | None = None
        if engine is None:
            detected = detect_engine(page)
            engine = detected if detected in self._extractors else self._default_engine
        metrics = self._extractors[engine].extract(page)
        reported = metrics.reported_fields()
        if reported == 0 and not filtered:
            target.unknown_pages += 1
            if target.unknown_pages >= REDETECT_AFTER and target.endpoint.engine is None:
                redetected = detect_engine(page)
                if redetected is not None and redetected != engine and redetected in self._extractors:
                    metrics = self._extractors[redetected].extract(page)
                    reported = metrics.reported_fields()
                    if reported:
                        log.info(
                            "scrape of %s: the page is now %s, not %s; engine re-detected",
                            target.endpoint.name,
                            redetected,
                            engine,
                        )
                        detected = engine = redetected
                        target.unfiltered_fields = 0
        if reported == 0:
            if filtered:
                target.use_filter = False
            self._failed(target, "no known metric families on the page", started)
            return
        target.unknown_pages = 0
        if filtered and reported < target.unfiltered_fields:
            target.use_filter = False
        elif not filtered:
            target.unfiltered_fields = max(target.unfiltered_fields, reported)
        self._ds.record_scrape(name, metrics, engine=detected)
        if self._observer is not None:
            self._observer.scrape_observed(self._clock() - started, True)
        if target.failing:
            self._transition(target, logging.INFO, "recovered")
        target.failing = False
        target.ever_ok = True

    def _failed(self, target: _Target, error: str, started: float) -> None:
        self._ds.record_scrape_failure(target.endpoint.name, error)
        if self._observer is not None:
            self._observer.scrape_observed(self._clock() - started, False)
        if not target.failing:
            self._transition(target, logging.WARNING, "failing: %s; keeping last good values", error)
        target.failing = True

    def _transition(self, target: _Target, level: int, what: str, *args: object) -> None:
        """Log a failing/recovered transition, at most once per :data:`LOG_EVERY_S` per endpoint: a
        flapping endpoint changes state on every scrape (20 lines a second at 50 ms); the next line logged
        says how many transitions were not."""
        now = self._clock()
        if now - target.logged_at < LOG_EVERY_S:
            target.unlogged += 1
            return
        suffix = f" ({target.unlogged} earlier state changes not logged)" if target.unlogged else ""
        target.logged_at = now
        target.unlogged = 0
        message = what % args if args else what
        log.log(
            level,
            "scrape of %s (%s) %s%s",
            target.endpoint.name,
            target.endpoint.metrics_address,
            message,
            suffix,
        )
