"""The scrape loop over the lean HTTP client: pages land in the datastore, prometheus_client-based engines
are asked for the wanted families only after a first full page, and an endpoint that moves is scraped at
its new address."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from picker.scrape.engines import engine_specs
from picker.scrape.http import LeanFetcher
from picker.scrape.scraper import Scraper
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint
from picker.testing.poll import eventually
from picker.testing.raw_http import RawHttpServer, fixed

pytestmark = pytest.mark.integration

PAGE = (Path(__file__).parents[2] / "data" / "metrics" / "vllm-v1-lmswitch-spec-decode.txt").read_bytes()


async def test_pages_land_and_later_scrapes_ask_for_the_wanted_families_only() -> None:
    routes = {"/metrics": fixed(PAGE)}
    async with RawHttpServer(routes) as first, RawHttpServer(routes) as moved:
        ds = Datastore()
        ds.replace_endpoints([Endpoint(name="pod-a-rank-0", ip="127.0.0.1", port=first.port, pod="pod-a")])
        scraper = Scraper(ds, LeanFetcher(), engines=engine_specs(), interval_s=0.02, timeout_s=1.0)
        task = asyncio.create_task(scraper.run())
        try:
            # a request line arrives before its response is applied: wait for both
            await eventually(
                lambda: (
                    len(first.request_lines) >= 3 and getattr(ds.status("pod-a-rank-0"), "scrapes_ok", 0) >= 3
                ),
                "three scrapes",
            )
            assert first.request_lines[0] == "GET /metrics HTTP/1.1"  # the first page is read whole
            assert all(line.startswith("GET /metrics?name[]=vllm%3A") for line in first.request_lines[1:])
            status = ds.status("pod-a-rank-0")
            assert status is not None
            assert status.scrapes_ok >= 3
            assert status.detected_engine == "vllm"
            assert not math.isnan(ds.snapshot().waiting[0])

            ds.upsert_endpoint(Endpoint(name="pod-a-rank-0", ip="127.0.0.1", port=moved.port, pod="pod-a"))
            await eventually(lambda: len(moved.request_lines) >= 2, "scrapes at the new address")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await scraper.close()


class _HeldFetcher:
    """A fetcher whose pages wait until released, counting the fetches in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0
        self.fetched = 0
        self.release = asyncio.Semaphore(0)

    async def fetch(self, url: str, *, timeout_s: float) -> bytes:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await self.release.acquire()
        finally:
            self.in_flight -= 1
        self.fetched += 1
        return PAGE

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(("endpoints", "bound"), [(5, 2), (5, 5), (3, 8)])
async def test_scrapes_in_flight_never_exceed_the_concurrency_bound(endpoints: int, bound: int) -> None:
    ds = Datastore()
    ds.replace_endpoints([Endpoint(name=f"pod-{i}", ip="127.0.0.1", port=9000 + i) for i in range(endpoints)])
    fetcher = _HeldFetcher()
    scraper = Scraper(
        ds, fetcher, engines=engine_specs(), interval_s=0.01, timeout_s=60.0, max_concurrency=bound
    )
    task = asyncio.create_task(scraper.run())
    try:
        expected = min(endpoints, bound)
        await eventually(lambda: fetcher.in_flight == expected, f"{expected} scrapes in flight")
        for done in range(1, 3 * endpoints + 1):  # one page at a time: a waiting endpoint takes its place
            fetcher.release.release()
            await eventually(lambda: fetcher.fetched == done, f"page {done}")  # noqa: B023 - awaited here
            await eventually(lambda: fetcher.in_flight == expected, f"{expected} in flight again")
        assert fetcher.most == expected
        assert all(getattr(ds.status(f"pod-{i}"), "scrapes_ok", 0) >= 1 for i in range(endpoints))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await scraper.close()
