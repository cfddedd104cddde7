"""``prometheus-scorer`` end to end with the real Prometheus server (Debian's ``/usr/bin/prometheus``):
Prometheus scrapes three fake vLLM servers every second (each target labelled with its ``pod``, which for
static endpoints is the address); the EPP evaluates the operator's query with ``prometheus-api-client``
off the event loop and routes on it through the Envoy-like client. Then one server goes away: its series
goes stale in Prometheus and the scorer treats it as neutral, never best.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import aiohttp
import orjson
import pytest

from picker.testing.fake_server import DEFAULT_MODEL, FakeFleet
from picker.testing.poll import eventually
from picker.testing.prometheus_server import PrometheusServer
from picker.testing.tools import tool
from tests.integration.service.conftest import ServiceHarness, StartService, req_llm

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
#: the operator's signal: prompt tokens each server has processed (fewer is better)
QUERY = 'max by (pod) ({__name__="vllm:prompt_tokens_total"})'


def config() -> str:
    return (
        f"{EPP}plugins:\n"
        f"- {{name: tokens, type: prometheus-scorer, parameters: {{query: '{QUERY}', refreshInterval: 1s, "
        "weight: 1}}\n"
        "- {type: max-score-picker}\n"
    )


def scrape_configs(addresses: list[str]) -> str:
    targets = ", ".join(f"{{targets: ['{a}'], labels: {{pod: '{a}'}}}}" for a in addresses)
    return f"- job_name: fake-vllm\n  static_configs: [{targets}]\n"


def signal(svc: ServiceHarness) -> dict[str, float]:
    m = svc.service.datastore.snapshot()
    (column,) = m.signals.values() or [None]
    if column is None:
        return {}
    return {a: float(v) for a, v in zip(m.addresses, column, strict=True)}


async def test_the_operators_signal_steers_routing_and_a_stale_series_is_neutral(
    start_service: StartService, tmp_path: Path
) -> None:
    tool("prometheus", apt="prometheus")  # skips, or fails under PICKER_REQUIRE_TOOLS (CI)
    async with FakeFleet.uniform(3, "vllm", time_scale=0.01) as fleet:
        busy, gone, idle = fleet.addresses
        prometheus = PrometheusServer(tmp_path, scrape_configs(fleet.addresses)).start()
        try:

            async def ready() -> bool:
                return await asyncio.to_thread(prometheus.ready)

            await eventually(ready, what="Prometheus ready", within=60.0)
            # the busy server has processed prompts, the other two none
            async with aiohttp.ClientSession() as http:
                payload = {"model": DEFAULT_MODEL, "prompt": "tokens " * 50, "max_tokens": 2}
                for _ in range(3):
                    async with http.post(f"http://{busy}/v1/completions", data=orjson.dumps(payload)) as r:
                        assert r.status == 200
            svc = await start_service(
                endpoints=[f"{a}@vllm" for a in fleet.addresses],
                config=config(),
                prometheus_url=prometheus.url,
                refresh_metrics_interval=0.2,
            )

            async def steered() -> bool:
                v = signal(svc)
                return len(v) == 3 and all(math.isfinite(x) for x in v.values()) and v[busy] > v[idle]

            await eventually(steered, what="the query's values per pod in the snapshot", within=60.0)
            assert signal(svc)[idle] == signal(svc)[gone] == 0.0
            for _ in range(6):
                picked = await svc.exchange(req_llm("hello", "", DEFAULT_MODEL))
                assert picked.destination in {gone, idle}, "the busy server scores 0"

            # one server goes away: Prometheus marks its series stale, the EPP drops it within three
            # refresh intervals, and it becomes neutral (below the best, above the worst)
            await fleet.servers[1].stop()

            async def dropped() -> bool:
                return math.isnan(signal(svc).get(gone, 0.0))

            await eventually(dropped, what="the stale series dropped", within=60.0)
            status, explained = await svc.post_json(
                "/debug/explain", {"body": {"model": DEFAULT_MODEL, "prompt": "why"}}
            )
            assert status == 200, explained
            (scored,) = explained["decision"]["scorers"]
            assert (scored["scorer_type"], scored["weight"]) == ("prometheus-scorer", 1.0)
            assert scored["scores"] == {busy: 0.0, gone: 0.5, idle: 1.0}
            assert explained["destination"] == idle
        finally:
            prometheus.stop()
