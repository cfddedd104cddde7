"""Passive health and observed latency through the whole service: fake model servers scraped live, the
Envoy-like gateway retrying once on the EPP's fallback, the outcome of every request fed back.

* a server answering 503 (or refusing connections) is ejected after five failures, costs the client
  nothing (the gateway's retry lands on the fallback), is named in ``/debug/explain`` and counted in the
  metrics; once healthy again, one probe reinstates it;
* switching the detector off in a reload reinstates it at once;
* a server three times slower than its gauges say loses share to the latency-scorer.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from picker.config import load_config_text
from picker.testing.fake_load import LoadParams
from picker.testing.fake_server import DEFAULT_MODEL, FakeFleet, Fault
from picker.testing.gateway import MiniGateway
from picker.testing.poll import eventually
from tests.integration.service.conftest import ServiceHarness, StartService, sample

pytestmark = pytest.mark.integration

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def config(detector: str = "{}", scorers: str = "- {type: queue-scorer}\n") -> str:
    return (
        f"{EPP}plugins:\n{scorers}"
        "- {name: picker, type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}\n"
        f"- {{type: outlier-detector, parameters: {detector}}}\n"
    )


def body(*, stream: bool = False, prompt: str = "hello") -> bytes:
    return orjson.dumps({"model": DEFAULT_MODEL, "prompt": prompt, "max_tokens": 4, "stream": stream})


async def start(start_service: StartService, fleet: FakeFleet, text: str) -> ServiceHarness:
    svc = await start_service(
        endpoints=[f"{a}@vllm" for a in fleet.addresses],
        config=text,
        refresh_metrics_interval=0.05,
        scrape_timeout=0.5,
    )

    async def scraped() -> bool:
        return all(r["scrapes_ok"] > 0 for r in (await svc.endpoint_rows()).values())

    await eventually(scraped, what="every server scraped")
    return svc


async def health_of(svc: ServiceHarness, address: str) -> str:
    return str((await svc.endpoint_rows())[address]["health"]["state"])


@pytest.mark.parametrize("failure", ["error-503", "killed"])
async def test_a_failing_server_is_ejected_and_clients_never_notice(
    start_service: StartService, failure: str
) -> None:
    async with FakeFleet.uniform(3, "vllm", time_scale=0.01) as fleet:
        svc = await start(start_service, fleet, config("{baseEjectionTime: 60s}"))
        bad = fleet[0]
        address = bad.address
        if failure == "killed":
            await bad.stop()
        else:
            bad.fault = Fault.ERROR_503
        gw = MiniGateway(svc.client, timeout_s=10.0, upstream_timeout_s=2.0)
        try:
            results = [await gw.send("/v1/completions", body()) for _ in range(40)]
        finally:
            await gw.close()
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        first_tries = Counter(r.attempts[0] for r in results)
        assert first_tries[address] <= 5, "after five failures it is no longer anyone's primary"
        if failure == "killed":
            # a dead server's scrapes fail, so the requests sent to it are never accounted by a scrape:
            # its load estimate grows with every pick and it stops being chosen, often before five
            return
        assert await health_of(svc, address) == "ejected"
        row = (await svc.endpoint_rows())[address]["health"]
        assert (row["reason"], row["last_failure"]) == ("consecutive_5xx", "retried")

        text = await svc.metrics()
        name = svc.service.datastore.snapshot().names[
            svc.service.datastore.snapshot().addresses.index(address)
        ]
        assert sample(text, "picker_endpoint_ejected", endpoint=name, address=address) == 1.0
        assert sample(text, "picker_endpoint_ejections_total", reason="consecutive_5xx") == 1.0
        failovers = sample(
            text, "ai_failover_total", pool=svc.service.settings.effective_pool_name, reason="ejected"
        )
        assert failovers is not None
        assert failovers > 0

        status, explained = await svc.post_json(
            "/debug/explain", {"body": {"model": DEFAULT_MODEL, "prompt": "why"}}
        )
        assert status == 200
        assert explained["avoided"] == {name: "ejected"}
        assert address not in explained["endpoints"][:1]


async def test_a_recovered_server_is_reinstated_by_one_probe(start_service: StartService) -> None:
    async with FakeFleet.uniform(2, "vllm", time_scale=0.01) as fleet:
        svc = await start(start_service, fleet, config("{baseEjectionTime: 300ms, interval: 1h}"))
        bad = fleet[0]
        bad.fault = Fault.ERROR_503
        gw = MiniGateway(svc.client, timeout_s=10.0)
        try:

            async def ejected() -> bool:
                await gw.send("/v1/completions", body())
                return await health_of(svc, bad.address) == "ejected"

            await eventually(ejected, what="the 503-ing server to be ejected")
            bad.fault = Fault.NONE

            async def probing() -> bool:
                return await health_of(svc, bad.address) == "probing"

            await eventually(probing, what="the ejection time to run out")
            served = Counter()
            for _ in range(20):
                result = await gw.send("/v1/completions", body())
                assert result.ok
                served[result.endpoint] += 1
        finally:
            await gw.close()
        assert await health_of(svc, bad.address) == "healthy"
        assert served[bad.address] >= 1, "the probe went to it and it takes traffic again"
        row = (await svc.endpoint_rows())[bad.address]["health"]
        assert row["ejections"] == 1


async def test_switching_the_detector_off_reinstates_at_once(start_service: StartService) -> None:
    async with FakeFleet.uniform(2, "vllm", time_scale=0.01) as fleet:
        svc = await start(start_service, fleet, config())
        fleet[0].fault = Fault.ERROR_503
        gw = MiniGateway(svc.client, timeout_s=10.0)
        try:

            async def ejected() -> bool:
                await gw.send("/v1/completions", body())
                return await health_of(svc, fleet[0].address) == "ejected"

            await eventually(ejected, what="the 503-ing server to be ejected")
        finally:
            await gw.close()
        result = svc.service.config_store.apply_text(config("{enabled: false}"), source="test")
        assert result.ok, result.message
        assert await health_of(svc, fleet[0].address) == "healthy"
        assert svc.service.datastore.snapshot().health.tolist() == [0.0, 0.0]


async def test_a_server_slower_than_its_gauges_loses_share(start_service: StartService) -> None:
    """Requests one at a time, so every server's gauges read idle whatever its speed: only the latency
    it shows on the response path tells the slow one apart.

    Sized to survive a busy machine: 1,000-token prompts at half speed make a prefill of ~55 ms wall
    against ~550 ms for the server slowed ten times, far above the in-process gateway's own overhead and
    its jitter; short-lived averages (halfLife 1s, maxAge 5s) let an endpoint whose first sample was
    inflated by start-up be measured again.
    """
    scorers = "- {type: queue-scorer}\n- {type: latency-scorer, parameters: {halfLife: 1s, maxAge: 5s}}\n"
    async with FakeFleet.uniform(3, "vllm", time_scale=0.5, load=LoadParams(jitter=0.0)) as fleet:
        fleet[0].set_slowdown(10.0)
        svc = await start(start_service, fleet, config(scorers=scorers))
        gw = MiniGateway(svc.client, timeout_s=30.0)
        shares: Counter[str] = Counter()
        try:
            for i in range(36):
                prompt = f"question {i} " + "word " * 800
                result = await gw.send("/v1/completions", body(stream=True, prompt=prompt))
                assert result.ok, result.error
                if i >= 12:  # every server was measured by then (ties are broken at random)
                    shares[result.endpoint] += 1
        finally:
            await gw.close()
        rows = await svc.endpoint_rows()
        slow = rows[fleet[0].address]["latency"]["ttft_per_1k_s"]
        fast = [rows[s.address]["latency"]["ttft_per_1k_s"] for s in fleet.servers[1:]]
        known = [v for v in fast if v is not None]
        assert known
        assert slow is None or slow > max(known)
        # without the latency signal every server would get about a third
        assert shares[fleet[0].address] < sum(shares.values()) / 6


def test_the_documents_used_here_are_valid() -> None:
    for text in (config(), config("{enabled: false}"), config(scorers="- {type: latency-scorer}\n")):
        load_config_text(text)
