"""The scrape loop over the lean HTTP client: pages land in the datastore, prometheus_client-based engines
are asked for the wanted families only after a first full page, and an endpoint that moves is scraped at
its new address."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from picker.scrape.engines import engine_specs
from picker.scrape.http import LeanFetcher
from picker.scrape.scraper import Scraper
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint

pytestmark = pytest.mark.integration

PAGE = (Path(__file__).parents[2] / "data" / "metrics" / "vllm-v1-lmswitch-spec-decode.txt").read_bytes()


class PageServer:
    """Serves one metrics page over keep-alive HTTP/1.1 and records each request line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> PageServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.lines.append(head.split(b"\r\n", 1)[0].decode())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PAGE) + PAGE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def eventually(check: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_pages_land_and_later_scrapes_ask_for_the_wanted_families_only() -> None:
    async with PageServer() as first, PageServer() as moved:
        ds = Datastore()
        ds.replace_endpoints([Endpoint(name="pod-a-rank-0", ip="127.0.0.1", port=first.port, pod="pod-a")])
        scraper = Scraper(ds, LeanFetcher(), engines=engine_specs(), interval_s=0.02, timeout_s=1.0)
        task = asyncio.create_task(scraper.run())
        try:
            # a request line arrives before its response is applied: wait for both
            await eventually(
                lambda: len(first.lines) >= 3 and getattr(ds.status("pod-a-rank-0"), "scrapes_ok", 0) >= 3,
                "three scrapes",
            )
            assert first.lines[0] == "GET /metrics HTTP/1.1"  # the first page is read whole
            assert all(line.startswith("GET /metrics?name[]=vllm%3A") for line in first.lines[1:])
            status = ds.status("pod-a-rank-0")
            assert status is not None
            assert status.scrapes_ok >= 3
            assert status.detected_engine == "vllm"
            assert not math.isnan(ds.snapshot().waiting[0])

            ds.upsert_endpoint(Endpoint(name="pod-a-rank-0", ip="127.0.0.1", port=moved.port, pod="pod-a"))
            await eventually(lambda: len(moved.lines) >= 2, "scrapes at the new address")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await scraper.close()
