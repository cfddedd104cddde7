"""``/metrics`` over real HTTP for every engine: the real page format, live values, ``name[]`` and gzip."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker.testing.fake_load import LoadParams
from picker.testing.fake_server import FakeServer

pytestmark = pytest.mark.integration

#: engine -> (running family, waiting family, KV family), as the reference EPP reads them
KEYS = {
    "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"),
    "vllm-v0": ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc"),
    "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage"),
    "tgi": ("tgi_batch_current_size", "tgi_queue_size", None),
    "trtllm": (
        "nv_trt_llm_request_metrics",
        "nv_trt_llm_request_metrics",
        "nv_trt_llm_kv_cache_block_metrics",
    ),
}
SELECT = {
    "vllm": {},
    "vllm-v0": {},
    "sglang": {},
    "tgi": {},
    "trtllm": {"running": ("request_type", "scheduled"), "waiting": ("request_type", "waiting")},
}


def values(text: str, name: str, label: tuple[str, str] | None = None) -> list[float]:
    return [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and (label is None or s.labels.get(label[0]) == label[1])
    ]


async def scrape(http: aiohttp.ClientSession, server: FakeServer, query: str = "") -> str:
    async with http.get(f"{server.url}/metrics{query}", headers={"accept-encoding": "identity"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return await resp.text()


@pytest.mark.parametrize("engine", sorted(KEYS))
async def test_every_engine_serves_its_real_page_with_live_values(
    engine: str, http: aiohttp.ClientSession
) -> None:
    """Three long streams on a one-sequence engine: one runs, two wait; once the clients leave, both are 0."""
    params = LoadParams(max_num_seqs=1, max_batched_tokens=64)
    async with FakeServer(engine, load=params, time_scale=1.0) as server:
        running_name, waiting_name, kv_name = KEYS[engine]
        run_label = SELECT[engine].get("running")
        wait_label = SELECT[engine].get("waiting")
        idle = await scrape(http, server)
        assert values(idle, running_name, run_label) == [0]
        assert values(idle, waiting_name, wait_label) == [0]

        payload = {"model": server.models[0], "prompt": "p" * 400, "max_tokens": 8000, "stream": True}
        streams = [await http.post(f"{server.url}/v1/completions", json=payload) for _ in range(3)]
        try:
            assert [s.status for s in streams] == [200] * 3
            await streams[0].content.readuntil(b"\n\n")  # the first request produces tokens: it runs
            busy = await scrape(http, server)
            assert values(busy, running_name, run_label) == [1]
            assert values(busy, waiting_name, wait_label) == [2]
            if kv_name is not None:
                kv_label = ("kv_cache_block_type", "fraction") if engine == "trtllm" else None
                (kv,) = values(busy, kv_name, kv_label)
                assert kv == server.snapshot().kv_usage
                assert kv > 0
        finally:
            for stream in streams:
                stream.close()
        for _ in range(200):  # the server notices the closed connections and aborts the requests
            snap = server.snapshot()
            if snap.running == snap.waiting == 0:
                break
            await asyncio.sleep(0.01)
        after = await scrape(http, server)
        assert values(after, running_name, run_label) == [0]
        assert values(after, waiting_name, wait_label) == [0]
        assert server.snapshot().finished_abort == 3


async def test_lora_requests_show_in_the_lora_family(http: aiohttp.ClientSession) -> None:
    async with FakeServer("vllm", lora_adapters=("sql-lora",), load=LoadParams(max_lora=2)) as server:
        payload = {"model": "sql-lora", "prompt": "select", "max_tokens": 8000, "stream": True}
        async with http.post(f"{server.url}/v1/completions", json=payload) as stream:
            assert stream.status == 200
            await stream.content.readuntil(b"\n\n")
            text = await scrape(http, server, "?name[]=vllm:lora_requests_info")
        families = list(text_string_to_metric_families(text))
        assert [f.name for f in families] == ["vllm:lora_requests_info"]
        newest = max(families[0].samples, key=lambda s: s.value)
        assert newest.labels == {
            "max_lora": "2",
            "running_lora_adapters": "sql-lora",
            "waiting_lora_adapters": "",
        }


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
async def test_prometheus_client_engines_honour_name_filters(
    engine: str, http: aiohttp.ClientSession
) -> None:
    running, waiting, kv = KEYS[engine]
    async with FakeServer(engine) as server:
        query = f"?name[]={running}&name%5B%5D={waiting}&name[]={kv}"
        text = await scrape(http, server, query)
        full = await scrape(http, server)
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert names == {running, waiting, kv}
    assert len(full) > 4 * len(text)


@pytest.mark.parametrize("engine", ["tgi", "trtllm"])
async def test_other_engines_ignore_name_filters(engine: str, http: aiohttp.ClientSession) -> None:
    async with FakeServer(engine) as server:
        assert await scrape(http, server, "?name[]=tgi_queue_size") == await scrape(http, server)


async def test_prometheus_client_engines_gzip_on_request(http: aiohttp.ClientSession) -> None:
    gzip = {"accept-encoding": "gzip"}
    async with FakeServer("vllm") as server:
        async with http.get(f"{server.url}/metrics", headers=gzip) as resp:
            assert resp.headers["content-encoding"] == "gzip"
            zipped = await resp.text()  # the client decompresses
        assert zipped == await scrape(http, server)
    async with FakeServer("tgi") as server, http.get(f"{server.url}/metrics", headers=gzip) as resp:
        assert "content-encoding" not in resp.headers


async def test_metrics_requests_are_counted(http: aiohttp.ClientSession) -> None:
    async with FakeServer("sglang") as server:
        for _ in range(3):
            await scrape(http, server)
        assert server.served["metrics"] == 3


async def test_unattended_requests_move_the_gauges_and_finish(http: aiohttp.ClientSession) -> None:
    """``admit_unattended`` (a benchmark's busy fleet): the requests show on the page as running and waiting
    with their KV blocks, though no client holds a connection, and leave it when their tokens are done."""
    params = LoadParams(max_num_seqs=1, max_batched_tokens=64)
    async with FakeServer("vllm", load=params, time_scale=0.01) as server:
        running_name, waiting_name, kv_name = KEYS["vllm"]
        for _ in range(3):
            server.admit_unattended(prompt_tokens=40, output_tokens=100)
        text = await scrape(http, server)
        assert values(text, running_name) == [1.0]
        assert values(text, waiting_name) == [2.0]
        assert values(text, kv_name)[0] > 0.0
        for _ in range(200):  # 3 x 100 tokens at 0.01 wall s per model s: well under 10 s
            text = await scrape(http, server)
            if values(text, running_name) == [0.0]:
                break
            await asyncio.sleep(0.05)
        assert values(text, running_name) == [0.0]
        assert values(text, waiting_name) == [0.0]
        assert values(text, kv_name) == [0.0]
