"""Endpoints whose metrics went stale (killed, hung) or that were never scraped are not primary while a
fresh endpoint exists, but stay last-resort fallbacks (``staleEndpoints: Avoid``, the default,
``picker.routing.avoid``); when all are stale, requests still route.

Real fake model servers scraped every 50 ms; the staleness threshold is 0.5 s so the tests stay short.
Picks ask for two endpoints (``maxNumOfEndpoints: 2``) so the fallback place is visible.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from picker.testing.envoy import HttpRequest
from picker.testing.fake_server import FakeServer, Fault
from picker.testing.net import free_port
from picker.testing.poll import eventually
from tests.integration.service.conftest import (
    PICKER_DOCUMENT,
    ServiceHarness,
    StartService,
    completion,
    epp_document,
)

pytestmark = pytest.mark.integration

STALE_S = 0.5
PICKS = 20
TWO_ENDPOINTS = f"{epp_document(max_endpoints=2)}---\n{PICKER_DOCUMENT}"


async def picks(svc: ServiceHarness, n: int = PICKS, fallbacks: set[str] | None = None) -> Counter[str]:
    """Primary picks by endpoint; ``fallbacks``, when given, collects the second endpoint of each pick."""
    out: Counter[str] = Counter()
    for i in range(n):
        result = await svc.exchange(HttpRequest(body=completion(model="m"), request_id=f"r{i}"))
        assert result.immediate is None, result.immediate
        out[result.endpoints[0]] += 1
        if fallbacks is not None:
            fallbacks.update(result.endpoints[1:])
    return out


async def start(
    start_service: StartService, addresses: list[str], config: str = TWO_ENDPOINTS
) -> ServiceHarness:
    return await start_service(
        endpoints=addresses,
        config=config,
        refresh_metrics_interval=0.05,
        scrape_timeout=0.2,
        metrics_staleness_threshold=STALE_S,
    )


async def wait_stale(svc: ServiceHarness, address: str) -> None:
    async def stale() -> bool:
        return bool((await svc.endpoint_rows())[address]["stale"])

    await eventually(stale, what=f"{address} to be stale")


@pytest.mark.parametrize("failure", ["killed", "hung"])
async def test_a_dead_endpoint_gets_no_primary_pick_once_stale(
    start_service: StartService, failure: str
) -> None:
    live, dying = FakeServer("vllm"), FakeServer("vllm")
    await live.start()
    await dying.start()
    try:
        svc = await start(start_service, [live.address, dying.address])

        async def both_scraped() -> bool:
            return all(r["scrapes_ok"] > 0 for r in (await svc.endpoint_rows()).values())

        await eventually(both_scraped, what="both servers scraped")
        if failure == "killed":
            await dying.stop()
        else:
            dying.fault = Fault.HANG
        await wait_stale(svc, dying.address)
        fallbacks: set[str] = set()
        assert await picks(svc, fallbacks=fallbacks) == {live.address: PICKS}
        assert fallbacks == {dying.address}, "a stale endpoint stays a last-resort fallback"
    finally:
        await live.stop()
        await dying.stop()


async def test_a_never_scraped_endpoint_gets_no_primary_pick(start_service: StartService) -> None:
    live = FakeServer("vllm")
    await live.start()
    nothing = f"127.0.0.1:{free_port()}"  # nothing listens: every scrape is refused
    try:
        svc = await start(start_service, [live.address, nothing])
        await wait_stale(svc, nothing)

        async def live_fresh() -> bool:
            return not (await svc.endpoint_rows())[live.address]["stale"]

        await eventually(live_fresh, what="the live server to be fresh")
        fallbacks: set[str] = set()
        assert await picks(svc, fallbacks=fallbacks) == {live.address: PICKS}
        assert fallbacks == {nothing}
    finally:
        await live.stop()


async def test_when_every_endpoint_is_stale_requests_still_route(start_service: StartService) -> None:
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    svc = await start(start_service, [a, b])
    await wait_stale(svc, a)
    await wait_stale(svc, b)
    got = await picks(svc)
    assert sum(got.values()) == PICKS
    assert set(got) <= {a, b}


async def test_allow_keeps_the_reference_behaviour(start_service: StartService) -> None:
    live = FakeServer("vllm")
    await live.start()
    nothing = f"127.0.0.1:{free_port()}"
    try:
        config = TWO_ENDPOINTS + "staleEndpoints: Allow\n"
        svc = await start(start_service, [live.address, nothing], config)
        await wait_stale(svc, nothing)
        await asyncio.sleep(0)
        got = await picks(svc, 40)
        assert got[nothing] > 0  # stale values are scored as they are (unknown gauges look average)
    finally:
        await live.stop()
