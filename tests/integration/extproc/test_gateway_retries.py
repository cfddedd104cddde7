"""The Envoy-like gateway's retries (``picker.testing.gateway.MiniGateway``): a failed attempt is retried
once on the next endpoint of the EPP's list, the EPP sees the final response with the endpoint that served
it, and the gateway answers 503/504 itself when no attempt produced a response."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from picker.testing.fake_server import FakeServer, Fault
from picker.testing.gateway import MiniGateway
from tests.integration.extproc.conftest import FakeRouter, Harness, StartHarness

pytestmark = pytest.mark.integration

BODY = orjson.dumps({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "hi", "max_tokens": 2})


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeServer, FakeServer]]:
    bad, good = FakeServer("vllm", time_scale=0.01), FakeServer("vllm", time_scale=0.01, seed=1)
    await bad.start()
    await good.start()
    yield bad, good
    await bad.stop()
    await good.stop()


async def gateway(
    start: StartHarness, endpoints: tuple[str, ...], **options: object
) -> tuple[Harness, MiniGateway]:
    harness = await start(FakeRouter(endpoints, max_endpoints=len(endpoints)))
    return harness, MiniGateway(harness.client, timeout_s=10.0, **options)  # type: ignore[arg-type]


def completes(harness: Harness) -> list[tuple[object, ...]]:
    return [e for e in harness.observer.events if e[0] == "complete"]


@pytest.mark.parametrize("failure", ["503", "refused", "reset"])
async def test_a_failed_primary_is_retried_on_the_fallback(
    start: StartHarness, servers: tuple[FakeServer, FakeServer], failure: str
) -> None:
    bad, good = servers
    address = bad.address
    if failure == "503":
        bad.fault = Fault.ERROR_503
    elif failure == "reset":
        bad.fault = Fault.RESET
    else:
        await bad.stop()
    harness, gw = await gateway(start, (address, good.address))
    try:
        result = await gw.send("/v1/completions", BODY)
    finally:
        await gw.close()
    assert result.ok, result
    assert result.attempts == [address, good.address]
    assert result.endpoint == good.address
    await harness.observer.wait_closed(1)
    ((_, destination, _, _, status_ok),) = completes(harness)
    assert status_ok
    assert destination == f"{address},{good.address}"


async def test_a_healthy_primary_is_tried_once(
    start: StartHarness, servers: tuple[FakeServer, FakeServer]
) -> None:
    _, good = servers
    _, gw = await gateway(start, (good.address, "127.0.0.1:1"))
    try:
        result = await gw.send("/v1/completions", BODY)
    finally:
        await gw.close()
    assert result.ok
    assert result.attempts == [good.address]


async def test_the_last_attempts_5xx_reaches_the_client(
    start: StartHarness, servers: tuple[FakeServer, FakeServer]
) -> None:
    bad, good = servers
    bad.fault = good.fault = Fault.ERROR_503
    harness, gw = await gateway(start, (bad.address, good.address))
    try:
        result = await gw.send("/v1/completions", BODY)
    finally:
        await gw.close()
    assert (result.status, result.local_reply, result.attempts) == (503, False, [bad.address, good.address])
    await harness.observer.wait_closed(1)
    assert [e[4] for e in completes(harness)] == [False]


@pytest.mark.parametrize("to_epp", [True, False])
async def test_no_response_at_all_is_the_gateways_own_503(start: StartHarness, to_epp: bool) -> None:
    harness, gw = await gateway(start, ("127.0.0.1:1", "127.0.0.1:2"), local_reply_to_epp=to_epp)
    try:
        result = await gw.send("/v1/completions", BODY)
    finally:
        await gw.close()
    assert (result.status, result.local_reply) == (503, True)
    assert not result.ok
    await harness.observer.wait_closed(1)
    # Envoy versions differ: the local reply goes through the EPP's response phase, or the stream just ends
    assert [e[4] for e in completes(harness)] == ([False] if to_epp else [])


async def test_a_hung_primary_times_out_and_is_retried(
    start: StartHarness, servers: tuple[FakeServer, FakeServer]
) -> None:
    bad, good = servers
    bad.fault = Fault.HANG
    _, gw = await gateway(start, (bad.address, good.address), upstream_timeout_s=0.2)
    try:
        result = await gw.send("/v1/completions", BODY)
    finally:
        await gw.close()
    assert result.ok
    assert result.attempts == [bad.address, good.address]


async def test_without_retries_the_first_failure_is_final(
    start: StartHarness, servers: tuple[FakeServer, FakeServer]
) -> None:
    bad, good = servers
    bad.fault = Fault.HANG
    _, gw = await gateway(start, (bad.address, good.address), retries=0, upstream_timeout_s=0.2)
    try:
        result = await gw.send("/v1/completions", BODY)
    finally:
        await gw.close()
    assert (result.status, result.local_reply, result.attempts) == (504, True, [bad.address])


async def test_round_robin_baseline_reports_a_dead_server_as_503(
    servers: tuple[FakeServer, FakeServer],
) -> None:
    bad, _ = servers
    address = bad.address
    await bad.stop()
    gw = MiniGateway(None, route=lambda: address, timeout_s=5.0)
    try:
        result = await gw.send("/v1/completions", BODY)
    finally:
        await gw.close()
    assert (result.status, result.local_reply, result.attempts) == (503, True, [address])
