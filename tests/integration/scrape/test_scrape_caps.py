"""The page cap holds *while reading*, for every framing a hostile model server may choose.

Memory is measured with ``tracemalloc`` (deterministic: Python allocations, not RSS): the peak while a
fetch of a hostile page runs must stay near the cap, and everything must be released after the refusal.
The hostile server runs in its own process so that only the scraper's allocations are traced.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from picker.scrape.client import ScrapeError
from picker.scrape.http import LeanFetcher
from picker.testing.hostile import HostileMetricsServer

pytestmark = pytest.mark.integration

CAP = 1 << 20
#: what a fetch may hold beyond the cap: a socket read, a compressed piece being inflated, bookkeeping
SLACK = 3 << 19


@pytest.fixture
async def fetcher() -> AsyncIterator[LeanFetcher]:
    f = LeanFetcher(max_page_bytes=CAP)
    yield f
    await f.close()


@contextlib.asynccontextmanager
async def hostile_process(mode: str, total: int, chunk: int = 256 * 1024) -> AsyncIterator[str]:
    """``picker.testing.hostile`` in a child process; yields its ``host:port``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "picker.testing.hostile",
        mode,
        str(total),
        str(chunk),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        yield f"127.0.0.1:{int(line)}"
    finally:
        proc.kill()
        await proc.wait()


@pytest.mark.parametrize(
    ("mode", "total", "message"),
    [
        ("endless-chunk", 32 << 20, "larger than"),
        ("many-chunks", 32 << 20, "larger than"),
        ("gzip-bomb", 256 << 20, "larger than"),
        ("close-delimited", 32 << 20, "larger than"),
        ("endless-size-line", 32 << 20, "framing line too long"),
    ],
)
async def test_hostile_pages_are_refused_within_the_cap(
    fetcher: LeanFetcher, mode: str, total: int, message: str
) -> None:
    async with hostile_process(mode, total) as address:
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for _ in range(3):  # a scraper retries: nothing may accumulate across refusals
                with pytest.raises(ScrapeError, match=message):
                    await fetcher.fetch(f"http://{address}/metrics", timeout_s=10.0)
            gc.collect()
            after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak - before < CAP + SLACK, f"{mode}: peak {peak - before} bytes held"
    assert after - before < 256 * 1024, f"{mode}: {after - before} bytes still held after the refusals"


async def test_a_page_just_under_the_cap_in_many_chunks_still_loads(fetcher: LeanFetcher) -> None:
    async with HostileMetricsServer("many-chunks", total=CAP - 4096, chunk=4096) as server:
        page = await fetcher.fetch(f"http://{server.address}/metrics", timeout_s=10.0)
    assert page == b"x" * (CAP - 4096)


async def test_a_gzip_page_under_the_cap_inflates(fetcher: LeanFetcher) -> None:
    async with HostileMetricsServer("gzip-bomb", total=CAP // 2) as server:
        page = await fetcher.fetch(f"http://{server.address}/metrics", timeout_s=10.0)
    assert page == b"0" * (CAP // 2)
