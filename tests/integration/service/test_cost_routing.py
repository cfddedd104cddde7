"""Cost-aware routing through the real service: endpoint prices from the config by engine and by default,
the cost-scorer in a profile chosen for batch traffic, prices in /debug/endpoints, a reload re-prices."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.service.conftest import (
    PICKER_DOCUMENT,
    Pod,
    StartService,
    pod,
    req_llm,
)

pytestmark = pytest.mark.integration

ENDPOINTS = [f"{pod(0)}@vllm", f"{pod(1)}@sglang", f"{pod(2)}@vllm"]
#: "fast" scores the queue only, "cheap" mostly the price; batch-sheddable requests go to "cheap"
CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: cost-scorer
- type: max-score-picker
- type: objective-profile-handler
  parameters:
    rules: [{objective: sql-lora-sheddable, profile: cheap}]
schedulingProfiles:
- name: fast
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
- name: cheap
  plugins: [{pluginRef: cost-scorer, weight: 4}, {pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
---
"""
PRICES = """\
endpointPrices:
  default: {inputPer1M: 0.30, outputPer1M: 1.20}
  engines: [{engine: sglang, inputPer1M: 0.05, outputPer1M: 0.20}]
"""


async def test_batch_traffic_goes_to_the_cheapest_endpoint_and_the_rest_to_the_shortest_queue(
    start_service: StartService,
) -> None:
    svc = await start_service(endpoints=ENDPOINTS, config=CONFIG + PICKER_DOCUMENT + PRICES)
    await svc.set_metrics(Pod(queue=0, kv=0.1), Pod(queue=40, kv=0.1), Pod(queue=20, kv=0.1))
    for _ in range(3):
        cheap = await svc.exchange(req_llm("summarize this", "sql-lora-sheddable", "m"))
        assert cheap.destination == pod(1)  # the sglang pod's price, despite its queue
        fast = await svc.exchange(req_llm("hello", "sql-lora", "m"))
        assert fast.destination == pod(0)
    rows = await svc.endpoint_rows()
    assert rows[pod(1)]["price"] == {
        "input_per_1m": 0.05,
        "output_per_1m": 0.2,
        "sources": ["engine", "engine"],
    }
    assert rows[pod(0)]["price"]["sources"] == ["default", "default"]

    # a reload that makes the vLLM pods cheaper moves the batch traffic
    cheaper_vllm = PRICES.replace("]", ", {engine: vllm, inputPer1M: 0.01, outputPer1M: 0.02}]")
    result = svc.service.config_store.apply_text(CONFIG + PICKER_DOCUMENT + cheaper_vllm, source="test")
    assert result.ok, result.message
    # the new prices reach the pick with the datastore's next snapshot (published within its interval)
    for _ in range(400):  # bounded: 400 turns of 5 ms at most
        rows = await svc.endpoint_rows()
        if rows[pod(0)]["price"]["input_per_1m"] == 0.01:
            break
        await asyncio.sleep(0.005)
    assert rows[pod(0)]["price"]["input_per_1m"] == 0.01
    cheap = await svc.exchange(req_llm("summarize this", "sql-lora-sheddable", "m"))
    assert cheap.destination in {pod(0), pod(2)}
