"""External endpoints through the whole service: fake model servers as the pool (scraped live) and one
more fake server as the external endpoint (never scraped), the Envoy-like gateway sending each request
where the EPP says and retrying once on its fallback.

* a request whose objective asks goes external, is settled with the usage in its response, and once the
  endpoint's requests-per-minute are used the next one stays in the pool (``over_limits``);
* with the pool saturated (every pool server holding a request, ``concurrency-detector`` at 1), new
  requests spill to the external endpoint within its limit, counted as ``saturated`` failovers;
* an external endpoint answering 503 is retried past by the gateway (the client sees the pool's answer),
  settled as requests without tokens, and ejected by passive health;
* with flow control, a saturated pool's next request spills at once and only one no external endpoint
  takes waits in the queue.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest

from picker.testing.fake_server import DEFAULT_MODEL, FakeFleet, Fault
from picker.testing.gateway import GatewayResult, MiniGateway
from picker.testing.poll import eventually
from tests.integration.service.conftest import ServiceHarness, StartService, sample, samples

pytestmark = pytest.mark.integration

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
OBJECTIVE = "x-gateway-inference-objective"


def config(external: str, rpm: int) -> str:
    return (
        f"{EPP}plugins:\n- {{type: queue-scorer}}\n"
        "- {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}\n"
        "- {type: concurrency-detector, parameters: {maxConcurrency: 1}}\n"
        "saturationDetector: {pluginRef: concurrency-detector}\n"
        "---\napiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
        "objectives: [{name: offload, priority: 0}, {name: chat, priority: 1}]\n"
        "externalEndpoints:\n"
        f"- {{name: managed, address: '{external}', price: {{inputPer1M: 3, outputPer1M: 15}}, "
        f"limits: {{requestsPerMinute: {rpm}, tokensPerMinute: 100000}}}}\n"
        "spillover: {objectives: [offload]}\n"
    )


def body(max_tokens: int = 4) -> bytes:
    return orjson.dumps({"model": DEFAULT_MODEL, "prompt": "hello there", "max_tokens": max_tokens})


async def start(start_service: StartService, fleet: FakeFleet, pool: list[str], text: str) -> ServiceHarness:
    svc = await start_service(
        endpoints=[f"{a}@vllm" for a in pool], config=text, refresh_metrics_interval=0.05
    )

    async def scraped() -> bool:
        return all(r["scrapes_ok"] > 0 for r in (await svc.endpoint_rows()).values())

    await eventually(scraped, what="every pool server scraped")
    return svc


async def test_an_objective_asks_for_the_external_endpoint_within_its_limit(
    start_service: StartService,
) -> None:
    async with FakeFleet.uniform(3, "vllm", time_scale=0.01) as fleet:
        pool, external = fleet.addresses[:2], fleet.addresses[2]
        svc = await start(start_service, fleet, pool, config(external, rpm=2))
        gw = MiniGateway(svc.client, timeout_s=10.0)
        try:
            sent = [
                await gw.send("/v1/completions", body(), headers=[(OBJECTIVE, "offload")]) for _ in range(3)
            ]
            chat = await gw.send("/v1/completions", body(), headers=[(OBJECTIVE, "chat")])
        finally:
            await gw.close()
        assert all(r.ok for r in [*sent, chat]), [r.error for r in [*sent, chat] if not r.ok]
        assert [r.endpoint for r in sent[:2]] == [external, external]
        assert sent[2].endpoint in pool, "the minute's two requests are used: the third stays in the pool"
        assert chat.endpoint in pool
        (stats,) = (await svc.get_json("/debug/external"))["external"]
        assert stats["dispatched"] == 2
        assert stats["used"]["requestsPerMinute"] == 2
        assert stats["reserved"] == dict.fromkeys(stats["reserved"], 0), "every reservation settled"
        # settled with the usage the fake server reported (prompt + 4 completion tokens each)
        assert 2 * 4 < stats["used"]["tokensPerMinute"] < 2 * (4 + 4 * 16)
        text = await svc.metrics()
        pool_name = svc.service.settings.effective_pool_name
        assert sample(text, "ai_failover_total", pool=pool_name, reason="over_limits") == 1.0
        ext = {"pool": pool_name, "endpoint": "managed"}
        assert sample(text, "picker_external_requests_total", **ext) == 2.0
        assert sample(text, "picker_external_limit", **ext, meter="requestsPerMinute") == 2.0
        assert sample(text, "picker_external_window_usage", **ext, meter="requestsPerMinute") == 2.0


async def test_a_saturated_pool_spills_and_the_limit_holds(start_service: StartService) -> None:
    async with FakeFleet.uniform(3, "vllm", time_scale=0.01) as fleet:
        pool, external = fleet.addresses[:2], fleet.addresses[2]
        svc = await start(start_service, fleet, pool, config(external, rpm=3))
        for server in fleet.servers[:2]:
            server.set_slowdown(2000.0)  # the pool's requests stay in flight until the test ends
        gw = MiniGateway(svc.client, timeout_s=60.0, upstream_timeout_s=60.0)
        held: list[asyncio.Task[GatewayResult]] = [
            asyncio.create_task(gw.send("/v1/completions", body(64))) for _ in range(2)
        ]
        try:

            async def pool_full() -> bool:
                return sum((await svc.inflight()).values()) >= 2

            await eventually(pool_full, what="a request in flight on each pool server")
            spilled = [await gw.send("/v1/completions", body()) for _ in range(4)]
        finally:
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            await gw.close()
        where = Counter(r.endpoint for r in spilled)
        assert where[external] == 3, where
        assert all(r.ok for r in spilled[:3])
        (stats,) = (await svc.get_json("/debug/external"))["external"]
        assert stats["used"]["requestsPerMinute"] == 3
        text = await svc.metrics()
        pool_name = svc.service.settings.effective_pool_name
        assert sample(text, "ai_failover_total", pool=pool_name, reason="saturated") == 3.0


async def test_a_failing_external_endpoint_is_ejected_and_settled_from_the_pool_that_served(
    start_service: StartService,
) -> None:
    """The external endpoint answers 503: the gateway's retry lands on the pool's fallback, the client
    sees no error, the external reservation is settled as requests without tokens, and after five failures
    passive health ejects it (``/debug/external``, ``picker_external_ejected``, the ejection counter): the
    next requests that ask for it go to the pool without trying it."""
    async with FakeFleet.uniform(3, "vllm", time_scale=0.01) as fleet:
        pool, external = fleet.addresses[:2], fleet.addresses[2]
        svc = await start(start_service, fleet, pool, config(external, rpm=100))
        fleet.servers[2].fault = Fault.ERROR_503
        gw = MiniGateway(svc.client, timeout_s=10.0)

        async def ejected() -> bool:
            (stats,) = (await svc.get_json("/debug/external"))["external"]
            return bool(stats["health"]["state"] == "ejected")

        try:
            sent = [
                await gw.send("/v1/completions", body(), headers=[(OBJECTIVE, "offload")]) for _ in range(5)
            ]
            await eventually(ejected, what="the external endpoint ejected after its fifth failure")
            sent += [
                await gw.send("/v1/completions", body(), headers=[(OBJECTIVE, "offload")]) for _ in range(3)
            ]
        finally:
            await gw.close()
        assert all(r.ok for r in sent), [r.error for r in sent if not r.ok]
        assert all(r.endpoint in pool for r in sent), "every request served by the pool's fallback"
        (stats,) = (await svc.get_json("/debug/external"))["external"]
        assert stats["health"]["reason"] == "consecutive_5xx"
        assert stats["health"]["last_failure"] == "retried"
        assert stats["dispatched"] == 5, "ejected after its fifth failure: the rest never tried it"
        assert stats["used"]["requestsPerMinute"] == 5
        assert stats["used"]["tokensPerMinute"] == 0, "the pool's usage is not charged to it"
        assert stats["reserved"] == dict.fromkeys(stats["reserved"], 0)
        text = await svc.metrics()
        pool_name = svc.service.settings.effective_pool_name
        assert sample(text, "picker_external_ejected", pool=pool_name, endpoint="managed") == 1.0
        assert sample(text, "picker_endpoint_ejections_total", reason="consecutive_5xx") == 1.0
        assert sample(text, "ai_failover_total", pool=pool_name, reason="ejected") == 3.0
        explained = await svc.post_json(
            "/debug/explain",
            {"path": "/v1/completions", "body": orjson.loads(body()), "headers": {OBJECTIVE: "offload"}},
        )
        assert explained[0] == 200
        spill = explained[1]["spill"]
        assert spill["would_spill"] is False
        assert spill["endpoints"][0]["verdict"].startswith("ejected by passive health (consecutive_5xx")


FLOW = (
    f"{EPP}featureGates: [flowControl]\nplugins:\n- {{type: queue-scorer}}\n"
    "- {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}\n"
    "- {type: concurrency-detector, parameters: {maxConcurrency: 1}}\n"
    "saturationDetector: {pluginRef: concurrency-detector}\n"
    "flowControl: {defaultRequestTTL: 60s}\n"
    "---\napiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
    "externalEndpoints:\n"
    "- {name: managed, address: '%s', price: {inputPer1M: 3, outputPer1M: 15}, limits: {concurrent: 1}}\n"
)


async def test_flow_control_spills_first_and_queues_what_no_external_endpoint_takes(
    start_service: StartService,
) -> None:
    """Flow control on, the pool saturated: the next request goes to the external endpoint at once (not
    into the queue); with the external endpoint's one concurrent slot taken, the one after it waits in the
    queue; it is dispatched to the pool when a pool request ends."""
    async with FakeFleet.uniform(3, "vllm", time_scale=0.01) as fleet:
        pool, external = fleet.addresses[:2], fleet.addresses[2]
        svc = await start(start_service, fleet, pool, FLOW % external)
        for server in fleet.servers:
            server.set_slowdown(2000.0)  # every request stays in flight until the test lets it go
        gw = MiniGateway(svc.client, timeout_s=60.0, upstream_timeout_s=60.0)
        tasks: list[asyncio.Task[GatewayResult]] = []
        pool_name = svc.service.settings.effective_pool_name

        async def external_reserved() -> bool:
            (stats,) = (await svc.get_json("/debug/external"))["external"]
            return bool(stats["reserved"]["concurrent"] == 1)

        async def queued() -> bool:
            text = await svc.metrics()
            return sum(v for _, v in samples(text, "inference_extension_flow_control_queue_size")) == 1.0

        try:
            tasks += [asyncio.create_task(gw.send("/v1/completions", body(64))) for _ in range(2)]

            async def pool_full() -> bool:
                return sum((await svc.inflight()).values()) >= 2

            await eventually(pool_full, what="a request in flight on each pool server")
            tasks.append(asyncio.create_task(gw.send("/v1/completions", body())))
            await eventually(external_reserved, what="the next request sent to the external endpoint")
            text = await svc.metrics()
            assert sample(text, "ai_failover_total", pool=pool_name, reason="saturated") == 1.0
            tasks.append(asyncio.create_task(gw.send("/v1/completions", body())))
            await eventually(queued, what="the request after it waiting in the queue")
            (stats,) = (await svc.get_json("/debug/external"))["external"]
            assert stats["dispatched"] == 1, "the queued request did not go external: no room there"
            for server in fleet.servers[:2]:
                server.set_slowdown(1.0)  # new requests are quick again
            tasks[0].cancel()  # a pool request ends: the queue dispatches the waiting one to the pool
            late = await asyncio.wait_for(tasks[-1], 60.0)
            assert late.ok, late.error
            assert late.endpoint in pool
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await gw.close()
