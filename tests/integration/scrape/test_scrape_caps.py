"""The page cap holds *while reading*, for every framing a hostile model server may choose.

Memory is measured with ``tracemalloc`` (deterministic: Python allocations, not RSS): the peak while a
fetch of a hostile page runs must stay near the cap, and everything must be released after the refusal.
The hostile server runs in its own process so that only the scraper's allocations are traced.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from picker.scrape.client import ScrapeError
from picker.scrape.http import LeanFetcher
from picker.testing.hostile import HostileMetricsServer, hostile_process, self_signed_context

pytestmark = pytest.mark.integration

CAP = 1 << 20
#: what a fetch may hold beyond the cap: a socket read, a compressed piece being inflated, bookkeeping
SLACK = 3 << 19
#: what may stay allocated once the refusals are over
RETAINED = 256 * 1024
#: https only: the TLS buffers of each refused connection, held until asyncio's TLS shutdown gives up on
#: the peer (up to 2 s, so the three refusals of a test overlap)
TLS_SLACK = 3 * (512 * 1024)


@pytest.fixture
async def fetcher() -> AsyncIterator[LeanFetcher]:
    f = LeanFetcher(max_page_bytes=CAP)
    yield f
    await f.close()


HOSTILE = [
    ("endless-chunk", 32 << 20, "larger than"),
    ("many-chunks", 32 << 20, "larger than"),
    ("gzip-bomb", 256 << 20, "larger than"),
    ("close-delimited", 32 << 20, "larger than"),
]


@pytest.mark.parametrize(
    ("mode", "total", "message"),
    [*HOSTILE, ("endless-size-line", 32 << 20, "framing line too long")],
)
async def test_hostile_pages_are_refused_within_the_cap(
    fetcher: LeanFetcher, mode: str, total: int, message: str
) -> None:
    await _refused_within_the_cap(fetcher, mode, total, message, tls=False)


@pytest.mark.parametrize(
    ("mode", "total", "message"),
    # aiohttp names an over-long chunk-size line in its own words
    [*HOSTILE, ("endless-size-line", 32 << 20, None)],
)
async def test_hostile_https_pages_are_refused_within_the_cap(
    fetcher: LeanFetcher, mode: str, total: int, message: str | None
) -> None:
    """``https://`` pages go through aiohttp; a gzip page there was inflated by aiohttp under its own
    limits (which depend on its version), now by the same capped decoder as plain http."""
    await _refused_within_the_cap(fetcher, mode, total, message, tls=True)


async def _refused_within_the_cap(
    fetcher: LeanFetcher, mode: str, total: int, message: str | None, *, tls: bool
) -> None:
    scheme = "https" if tls else "http"
    async with hostile_process(mode, total, 256 * 1024, tls=tls) as address:
        # the TLS session and aiohttp's connection pool are set up before tracing starts
        with contextlib.suppress(ScrapeError):
            await fetcher.fetch(f"{scheme}://{address}/metrics", timeout_s=10.0)
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for _ in range(3):  # a scraper retries: nothing may accumulate across refusals
                with pytest.raises(ScrapeError, match=message):
                    await fetcher.fetch(f"{scheme}://{address}/metrics", timeout_s=10.0)
            _, peak = tracemalloc.get_traced_memory()
            # A refused TLS connection's buffers are held until asyncio's TLS shutdown gives up on the
            # peer (aiohttp's enable_cleanup_closed aborts it after 2 s): wait for the release, bounded.
            for _ in range(200):
                gc.collect()
                after, _ = tracemalloc.get_traced_memory()
                if after - before < RETAINED:
                    break
                await asyncio.sleep(0.05)
        finally:
            tracemalloc.stop()
    bound = CAP + SLACK + (TLS_SLACK if tls else 0)
    assert peak - before < bound, f"{mode}: peak {peak - before} bytes held (bound {bound})"
    assert after - before < RETAINED, f"{mode}: {after - before} bytes still held after the refusals"


async def test_a_page_just_under_the_cap_in_many_chunks_still_loads(fetcher: LeanFetcher) -> None:
    async with HostileMetricsServer("many-chunks", total=CAP - 4096, chunk=4096) as server:
        page = await fetcher.fetch(f"http://{server.address}/metrics", timeout_s=10.0)
    assert page == b"x" * (CAP - 4096)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_gzip_page_under_the_cap_inflates(fetcher: LeanFetcher, tls: bool) -> None:
    context = self_signed_context() if tls else None
    async with HostileMetricsServer("gzip-bomb", total=CAP // 2, ssl=context) as server:
        page = await fetcher.fetch(server.url, timeout_s=10.0)
    assert page == b"0" * (CAP // 2)
