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
#: https only: what asyncio's TLS transport holds besides (its encrypted read buffer, the decrypted piece it
#: hands on, an inflating gzip piece's TLS record)
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
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_hostile_pages_are_refused_within_the_cap(
    fetcher: LeanFetcher, mode: str, total: int, message: str, tls: bool
) -> None:
    """``https://`` pages are read by the same parser over TLS: refused for the same reason, as quickly
    (through aiohttp, an endless chunk-size line waited for the scrape timeout)."""
    await _refused_within_the_cap(fetcher, mode, total, message, tls=tls)


async def _refused_within_the_cap(
    fetcher: LeanFetcher, mode: str, total: int, message: str, *, tls: bool
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
            # a refused connection is aborted; its transport's buffers go on a later loop turn
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


async def test_https_pages_load_scrape_after_scrape_and_verify_when_asked() -> None:
    """Over TLS as over plain http: successive scrapes load the page; with verification on
    (``insecureSkipVerify: false``) a self-signed certificate is a failed scrape, not an exception."""
    body = b"vllm:num_requests_waiting 1\n"
    async with HostileMetricsServer("page", body=body, ssl=self_signed_context()) as server:
        skipping = LeanFetcher(max_page_bytes=CAP)
        verifying = LeanFetcher(max_page_bytes=CAP, insecure_skip_verify=False)
        try:
            assert [await skipping.fetch(server.url, timeout_s=10.0) for _ in range(3)] == [body] * 3
            assert server.requests == 3
            with pytest.raises(ScrapeError, match="CERTIFICATE_VERIFY_FAILED"):
                await verifying.fetch(server.url, timeout_s=10.0)
        finally:
            await skipping.close()
            await verifying.close()
