"""No spill to a paid external endpoint before the pool's first scrapes answer, and a spill from a pool whose
scrapes fail from the start, through the whole service: fake model servers as the pool (their ``/metrics``
held unanswered, or failing, on purpose until a test lets the scrapes land), one more as the external
endpoint, the default ``utilization-detector`` (which reads a never-scraped endpoint as saturated) and the
Envoy-like gateway.

* no scrape attempt ended yet (the metrics pages hang until released, the scrape timeout far away): a
  request that does not ask for external capacity goes to the pool, the external endpoint sees nothing;
  once scrapes land that show the pool saturated, the same request spills;
* a mixed pool (one endpoint scraped, one whose scrapes keep failing): the scraped one's reading decides;
* a pool of two whose every scrape and request fails from the start (crashed engines): once the first
  scrapes have failed, requests spill, with the default ``maxEjectionPercent`` (which never ejects both);
* with flow control, a request at a pool whose scrapes have not answered yet waits in the queue rather
  than spill.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from picker.testing.fake_load import LoadParams
from picker.testing.fake_server import FakeFleet, FakeServer, Fault
from picker.testing.gateway import MiniGateway
from picker.testing.poll import eventually
from tests.integration.service.conftest import ServiceHarness, StartService, sample, samples
from tests.integration.service.test_external_endpoints import EPP, body

pytestmark = pytest.mark.integration


def config(external: str, threshold: float = 1.0) -> str:
    """The default detector, its staleness long enough that only "never scraped" is ever in question."""
    return (
        f"{EPP}plugins:\n- {{type: queue-scorer}}\n"
        "- {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}\n"
        "- {type: utilization-detector, parameters: {metricsStalenessThreshold: 60s}}\n"
        "saturationDetector: {pluginRef: utilization-detector}\n"
        "---\napiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
        "externalEndpoints:\n"
        f"- {{name: managed, address: '{external}', price: {{inputPer1M: 3, outputPer1M: 15}}, "
        "limits: {requestsPerMinute: 100}}\n"
        f"spillover: {{saturationThreshold: {threshold}}}\n"
    )


def fleet() -> FakeFleet:
    """Two pool servers and the external one; one sequence at a time, so queued requests show as
    ``waiting`` on the metrics page."""
    return FakeFleet.uniform(3, "vllm", time_scale=0.01, load=LoadParams(max_num_seqs=1))


async def start(start_service: StartService, pool: Sequence[str], text: str) -> ServiceHarness:
    """The service over ``pool``; a scrape times out after two minutes, so a metrics page held by the
    test (:meth:`FakeServer.hold_metrics`) keeps its scrape attempt unfinished for the whole test."""
    return await start_service(
        endpoints=[f"{a}@vllm" for a in pool],
        config=text,
        refresh_metrics_interval=0.05,
        scrape_timeout=120.0,
    )


async def scrapes(svc: ServiceHarness, *, ok: Sequence[str] = (), failing: Sequence[str] = ()) -> None:
    """Wait until each of ``ok`` has been scraped and each of ``failing`` has had a scrape fail with no
    success yet."""

    async def seen() -> bool:
        rows = await svc.endpoint_rows()
        return all(rows[a]["scrapes_ok"] > 0 for a in ok) and all(
            rows[a]["scrapes_failed"] > 0 and rows[a]["scrapes_ok"] == 0 for a in failing
        )

    await eventually(seen, what=f"scrapes landed on {list(ok)} and failed on {list(failing)}")


async def attempts_pending(svc: ServiceHarness, servers: Sequence[FakeServer]) -> None:
    """Wait until each server holding its metrics page has a scrape request in hand; check that no scrape
    attempt of any of them has ended (none succeeded, none failed): "not answered yet", for sure."""

    async def asked() -> bool:
        return all(server.served["metrics"] > 0 for server in servers)

    await eventually(asked, what="a scrape request at every held metrics page")
    rows = await svc.endpoint_rows()
    for server in servers:
        row = rows[server.address]
        assert (row["scrapes_ok"], row["scrapes_failed"]) == (0, 0), row


def saturate(server: FakeServer) -> None:
    """Eight requests nobody waits for on a one-sequence engine slowed to a crawl: seven queued,
    7 / queueDepthThreshold 5 = 1.4 on the next metrics page."""
    server.set_slowdown(2000.0)
    for _ in range(8):
        server.admit_unattended(64, 1024)


async def explain(svc: ServiceHarness) -> dict[str, object]:
    status, doc = await svc.post_json(
        "/debug/explain", {"path": "/v1/completions", "body": orjson.loads(body())}
    )
    assert status == 200, doc
    spill: dict[str, object] = doc["spill"]
    return spill


async def spills(svc: ServiceHarness) -> None:
    async def would() -> bool:
        return (await explain(svc))["would_spill"] is True

    await eventually(would, what="the request would spill")


async def test_no_spill_before_the_first_scrape_then_a_spill_once_scrapes_show_the_pool_saturated(
    start_service: StartService,
) -> None:
    async with fleet() as servers:
        pool, external = servers.addresses[:2], servers.addresses[2]
        for server in servers.servers[:2]:
            server.hold_metrics()  # the first scrapes neither land nor fail until the test says so
        svc = await start(start_service, pool, config(external))
        gw = MiniGateway(svc.client, timeout_s=30.0)
        pool_name = svc.service.settings.effective_pool_name
        try:
            await attempts_pending(svc, servers.servers[:2])
            spill = await explain(svc)
            assert spill["would_spill"] is False
            assert spill["why"] == (
                "no candidate scraped yet (2 whose first scrape has not answered): their load is unknown, "
                "which is no reason to spill; the pool takes it"
            )
            first = await gw.send("/v1/completions", body())
            assert first.ok, first.error
            assert first.endpoint in pool
            assert servers.servers[2].served["completions"] == 0, "the external endpoint saw nothing"
            (stats,) = (await svc.get_json("/debug/external"))["external"]
            assert stats["dispatched"] == 0
            assert (
                sample(await svc.metrics(), "ai_failover_total", pool=pool_name, reason="saturated") is None
            )

            for server in servers.servers[:2]:
                saturate(server)
                server.release_metrics()  # the scrapes land, showing the queues
            await scrapes(svc, ok=pool)
            await spills(svc)
            spilled = await gw.send("/v1/completions", body())
        finally:
            await gw.close()
        assert spilled.ok, spilled.error
        assert spilled.endpoint == external
        assert servers.servers[2].served["completions"] == 1
        assert sample(await svc.metrics(), "ai_failover_total", pool=pool_name, reason="saturated") == 1.0


async def test_in_a_mixed_pool_the_scraped_endpoints_reading_decides(start_service: StartService) -> None:
    """One endpoint scraped and idle, the other's scrapes failing: counted as saturated (the detector's
    own reading) the never-scraped one would make the pool 0.5 saturated and spill at threshold 0.5; it is
    left out, so the request goes to the scraped endpoint. Once that one's scrapes show it saturated, the
    request spills: the never-scraped one is not primary while a scraped one remains, so the saturated
    one is where the request would go."""
    async with fleet() as servers:
        pool, external = servers.addresses[:2], servers.addresses[2]
        servers.servers[1].fault = Fault.METRICS_500
        svc = await start(start_service, pool, config(external, threshold=0.5))
        gw = MiniGateway(svc.client, timeout_s=30.0)
        try:
            await scrapes(svc, ok=pool[:1], failing=pool[1:])
            spill = await explain(svc)
            assert spill["would_spill"] is False
            assert str(spill["why"]).startswith(
                "the pool can take it: the saturation detector reads 0 over the candidates scraped (1 never "
                "scraped, left out)"
            )
            kept = await gw.send("/v1/completions", body())
            assert kept.ok, kept.error
            assert kept.endpoint == pool[0]
            assert servers.servers[2].served["completions"] == 0

            saturate(servers.servers[0])
            await spills(svc)
            spilled = await gw.send("/v1/completions", body())
        finally:
            await gw.close()
        assert spilled.ok, spilled.error
        assert spilled.endpoint == external
        assert servers.servers[2].served["completions"] == 1


async def test_a_pool_whose_scrapes_and_requests_fail_from_the_start_spills(
    start_service: StartService,
) -> None:
    """Two crashed engines behind live HTTP fronts: every scrape and every request answers 500 from the
    start, so neither endpoint is ever scraped. Passive health alone cannot spill this pool: at the default
    ``maxEjectionPercent`` (50) it ejects one of the two, the other keeps taking and failing requests.
    Once the first scrapes have failed, the endpoints' metrics are known to be unreachable (not merely not
    read yet): the pool reads as saturated and an objective-less request goes to the external endpoint,
    the pool its fallback."""
    async with fleet() as servers:
        pool, external = servers.addresses[:2], servers.addresses[2]
        for server in servers.servers[:2]:
            server.fault = Fault.ERROR_500
        svc = await start(start_service, pool, config(external))
        gw = MiniGateway(svc.client, timeout_s=30.0)
        pool_name = svc.service.settings.effective_pool_name
        try:
            await scrapes(svc, failing=pool)
            spill = await explain(svc)
            assert spill["would_spill"] is True
            assert spill["why"] == (
                "the pool is saturated: the saturation detector reads 1 over the candidates whose scrapes "
                "failed (2 never scraped, their metrics unreachable) >= spillover.saturationThreshold 1"
            )
            spilled = [await gw.send("/v1/completions", body()) for _ in range(3)]
        finally:
            await gw.close()
        assert [(r.ok, r.endpoint) for r in spilled] == [(True, external)] * 3, [r.error for r in spilled]
        assert servers.servers[2].served["completions"] == 3
        text = await svc.metrics()
        assert sample(text, "ai_failover_total", pool=pool_name, reason="saturated") == 3.0
        assert sample(text, "ai_failover_total", pool=pool_name, reason="ejected") is None


async def test_with_flow_control_a_pool_never_scraped_queues_the_request_rather_than_spill_it(
    start_service: StartService,
) -> None:
    """Flow control reads the same missing metrics as saturation and would queue the request; spill-first
    would send it external at once. Not before the first scrapes answer: it waits in the queue (the
    reference's flow control), and goes to the pool when the scrapes land and show it idle."""
    gate = "featureGates: [flowControl]\nflowControl: {defaultRequestTTL: 60s}\nplugins:\n"
    async with fleet() as servers:
        pool, external = servers.addresses[:2], servers.addresses[2]
        for server in servers.servers[:2]:
            server.hold_metrics()
        svc = await start(start_service, pool, config(external).replace("plugins:\n", gate, 1))
        gw = MiniGateway(svc.client, timeout_s=60.0)

        async def waiting() -> float:
            found = samples(await svc.metrics(), "inference_extension_flow_control_queue_size")
            return sum(v for _, v in found)

        async def queued_or_spilled() -> bool:
            return await waiting() > 0 or servers.servers[2].served["completions"] > 0

        try:
            await attempts_pending(svc, servers.servers[:2])
            task = asyncio.create_task(gw.send("/v1/completions", body()))
            await eventually(queued_or_spilled, what="the request queued (or spilled)")
            assert servers.servers[2].served["completions"] == 0, "not spilled"
            assert await waiting() == 1.0
            for server in servers.servers[:2]:
                server.release_metrics()
            late = await asyncio.wait_for(task, 60.0)
        finally:
            await gw.close()
        assert late.ok, late.error
        assert late.endpoint in pool
        assert servers.servers[2].served["completions"] == 0
        (stats,) = (await svc.get_json("/debug/external"))["external"]
        assert stats["dispatched"] == 0
