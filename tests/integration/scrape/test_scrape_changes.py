"""Model servers that change under the scraper: a pod reused with another engine is re-detected, and an
endpoint that flaps between failing and working does not flood the log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
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

DATA = Path(__file__).parents[2] / "data" / "metrics"
VLLM = (DATA / "vllm-v1-lmswitch-spec-decode.txt").read_bytes()
SGLANG = (DATA / "sglang-docs-production-metrics.txt").read_bytes()


def switching(answer: Callable[[int], tuple[int, bytes]]) -> RawHttpServer:
    """A server answering request number n (from 0) of ``/metrics`` with ``answer(n)``: ``(status, page)``."""
    server = RawHttpServer()

    async def respond(writer: asyncio.StreamWriter) -> bool:
        status, page = answer(len(server.requests) - 1)
        return await fixed(page, status=b"%d X" % status)(writer)

    server.routes["/metrics"] = respond
    return server


async def run_until(scraper: Scraper, check: Callable[[], bool], what: str) -> None:
    task = asyncio.create_task(scraper.run())
    try:
        await eventually(check, what)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await scraper.close()


async def test_a_pod_reused_with_another_engine_is_detected_again() -> None:
    page = {"now": VLLM}
    async with switching(lambda _n: (200, page["now"])) as server:
        ds = Datastore()
        ds.replace_endpoints([Endpoint(name="pod-a-rank-0", ip="127.0.0.1", port=server.port, pod="pod-a")])
        scraper = Scraper(ds, LeanFetcher(), engines=engine_specs(), interval_s=0.01, timeout_s=1.0)

        def engine() -> str | None:
            status = ds.status("pod-a-rank-0")
            return status.detected_engine if status is not None else None

        def switched() -> bool:
            if engine() == "vllm" and page["now"] is VLLM:
                page["now"] = SGLANG  # the pod now runs SGLang
            return engine() == "sglang"

        await run_until(scraper, switched, "the SGLang page to be detected")
        status = ds.status("pod-a-rank-0")
        assert status is not None
        assert status.last_error is None or status.scrapes_ok > 0


async def test_a_flapping_endpoint_logs_a_bounded_number_of_lines(caplog: pytest.LogCaptureFixture) -> None:
    async with switching(lambda n: (200, VLLM) if n % 2 == 0 else (500, b"down")) as server:
        ds = Datastore()
        ds.replace_endpoints([Endpoint(name="pod-a-rank-0", ip="127.0.0.1", port=server.port, pod="pod-a")])
        scraper = Scraper(ds, LeanFetcher(), engines=engine_specs(), interval_s=0.005, timeout_s=1.0)
        with caplog.at_level(logging.INFO, logger="picker.scrape.scraper"):
            await run_until(scraper, lambda: len(server.requests) >= 60, "60 scrapes")
    lines = [r for r in caplog.records if r.name == "picker.scrape.scraper"]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]  # ~30 transitions happened
