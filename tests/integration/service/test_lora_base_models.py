"""LoRA affinity is neutral for a pod's base model, on a mixed-engine pool scraped live.

vLLM pods report free adapter slots (``max_lora``), SGLang and TGI pods report none. Before the fix an idle
mixed pool sent every base-model request to the vLLM pods (their "room to load an adapter" scored 0.8
against 0). The served model names come from the pages' ``model_name`` labels.
"""

from __future__ import annotations

from collections import Counter

import pytest

from picker.testing.envoy import HttpRequest
from picker.testing.fake_load import LoadParams
from picker.testing.fake_server import FakeFleet, FakeServer
from picker.testing.poll import eventually
from tests.integration.service.conftest import StartService, completion

pytestmark = pytest.mark.integration

BASE = "meta-llama/Llama-3.1-8B-Instruct"


def fleet() -> FakeFleet:
    lora = LoadParams(max_lora=2)
    return FakeFleet(
        [
            FakeServer("vllm", models=(BASE,), lora_adapters=("sql-lora",), load=lora),
            FakeServer("vllm", models=(BASE,), lora_adapters=("sql-lora",), load=lora),
            FakeServer("sglang", models=(BASE,)),
            FakeServer("tgi", models=(BASE,)),
        ]
    )


async def test_base_model_requests_spread_over_every_engine(start_service: StartService) -> None:
    async with fleet() as servers:
        engines = ("vllm", "vllm", "sglang", "tgi")
        endpoints = [f"{a}@{e}" for a, e in zip(servers.addresses, engines, strict=True)]
        # our default profile (LoRA affinity at weight 2), scraped live
        svc = await start_service(endpoints=endpoints, config=None, refresh_metrics_interval=0.05)

        async def scraped() -> bool:
            rows = await svc.endpoint_rows()
            return all(row["scrapes_ok"] > 0 for row in rows.values())

        await eventually(scraped, what="every endpoint scraped")
        m = svc.service.datastore.snapshot()
        assert set(m.model_vocab) == {BASE}  # vLLM and SGLang name their model; TGI does not
        by_engine = dict(zip(servers.addresses, engines, strict=True))

        base = Counter()
        for _ in range(100):
            result = await svc.exchange(HttpRequest(body=completion(model=BASE)))
            assert result.destination is not None
            base[by_engine[result.destination]] += 1
        assert base["sglang"] >= 10
        assert base["tgi"] >= 10
        assert base["vllm"] <= 80

        adapter = Counter()
        for _ in range(20):
            result = await svc.exchange(HttpRequest(body=completion(model="sql-lora")))
            assert result.destination is not None
            adapter[by_engine[result.destination]] += 1
        # an adapter request still prefers the pods that can load it
        assert adapter["vllm"] == 20
