"""Many fake servers in one process, misbehaving servers for scraper tests, restarts and the CLI entry."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker.testing.fake_load import LoadParams
from picker.testing.fake_server import FakeFleet, FakeServer, Fault, run_fake_server
from picker.testing.poll import eventually

pytestmark = pytest.mark.integration

QUERY = "?name[]=vllm:num_requests_waiting&name[]=vllm:kv_cache_usage_perc"


async def test_a_fleet_of_64_answers_in_one_process(http: aiohttp.ClientSession) -> None:
    async with FakeFleet.uniform(64, "vllm", time_scale=0.01) as fleet:
        assert len(fleet) == 64
        assert len(set(fleet.addresses)) == 64

        async def probe(server: FakeServer) -> tuple[int, int, list[str]]:
            async with http.get(f"{server.url}/health") as health:
                health_status = health.status
            async with http.get(f"{server.url}/metrics{QUERY}") as metrics:
                text = await metrics.text()
            names = sorted(s.name for f in text_string_to_metric_families(text) for s in f.samples)
            return health_status, metrics.status, names

        results = await asyncio.gather(*(probe(s) for s in fleet))
        assert results == [(200, 200, ["vllm:kv_cache_usage_perc", "vllm:num_requests_waiting"])] * 64

        payload = {"model": fleet[0].models[0], "prompt": "hello", "max_tokens": 4}

        async def complete(server: FakeServer) -> int:
            async with http.post(f"{server.url}/v1/completions", json=payload) as resp:
                return int((await resp.json())["usage"]["completion_tokens"])

        assert await asyncio.gather(*(complete(s) for s in fleet)) == [4] * 64
        assert all(s.snapshot().finished_length == 1 for s in fleet)


async def test_fleet_start_failure_stops_the_started_servers() -> None:
    blocker = FakeServer("vllm")
    await blocker.start()
    try:
        fleet = FakeFleet([FakeServer("vllm"), FakeServer("vllm", port=blocker.bound_port)])
        with pytest.raises(OSError, match=r"(?i)in use"):  # the second port is taken
            await fleet.start()
        assert not fleet[0].running
    finally:
        await blocker.stop()


async def test_garbage_metrics_do_not_parse(http: aiohttp.ClientSession) -> None:
    async with FakeServer("vllm", fault=Fault.METRICS_GARBAGE) as server:
        async with http.get(f"{server.url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text(errors="replace")
        with pytest.raises(ValueError):  # noqa: PT011 - the parser's own error type
            list(text_string_to_metric_families(text))
        async with http.get(f"{server.url}/health") as resp:
            assert resp.status == 200  # only the metrics page is broken


async def test_metrics_500_then_recovery(http: aiohttp.ClientSession) -> None:
    async with FakeServer("sglang", fault=Fault.METRICS_500) as server:
        async with http.get(f"{server.url}/metrics") as resp:
            assert resp.status == 500
        server.fault = Fault.NONE
        async with http.get(f"{server.url}/metrics") as resp:
            assert resp.status == 200


async def test_held_metrics_are_answered_once_released(http: aiohttp.ClientSession) -> None:
    """``hold_metrics``: a metrics request arrives (counted) and is not answered while other routes are;
    ``release_metrics`` answers it with the page as it is then (here the fault set meanwhile), and new
    requests are answered at once."""
    async with FakeServer("vllm") as server:
        server.hold_metrics()

        async def status() -> int:
            async with http.get(f"{server.url}/metrics") as resp:
                return resp.status

        held = asyncio.create_task(status())
        await eventually(lambda: server.served["metrics"], "the held metrics request arrived")
        assert server.served["metrics"] == 1
        async with http.get(f"{server.url}/health") as resp:
            assert resp.status == 200, "the other routes behave"
        assert not held.done()
        server.fault = Fault.METRICS_500
        server.release_metrics()
        assert await held == 500
        server.fault = Fault.NONE
        assert await status() == 200


async def test_a_server_holding_metrics_stops(http: aiohttp.ClientSession) -> None:
    server = FakeServer("vllm")
    await server.start()
    server.hold_metrics()
    held = asyncio.create_task(http.get(f"{server.url}/metrics"))
    await eventually(lambda: server.served["metrics"], "the held metrics request arrived")
    await server.stop()
    with pytest.raises(aiohttp.ClientError):
        await held


async def test_error_500_breaks_every_route(http: aiohttp.ClientSession) -> None:
    async with FakeServer("vllm", fault=Fault.ERROR_500) as server:
        payload = {"model": server.models[0], "prompt": "x"}
        async with http.post(f"{server.url}/v1/completions", json=payload) as resp:
            assert resp.status == 500
            assert (await resp.json())["error"]["type"] == "server_error"
        async with http.get(f"{server.url}/health") as resp:
            assert resp.status == 500


async def test_a_hanging_server_makes_the_client_time_out(http: aiohttp.ClientSession) -> None:
    async with FakeServer("vllm", fault=Fault.HANG) as server:
        with pytest.raises(asyncio.TimeoutError):
            await http.get(f"{server.url}/metrics", timeout=aiohttp.ClientTimeout(total=0.3))
        server.fault = Fault.NONE
        async with http.get(f"{server.url}/metrics") as resp:  # a new connection is served again
            assert resp.status == 200


async def test_a_resetting_server_drops_the_connection(http: aiohttp.ClientSession) -> None:
    async with FakeServer("tgi", fault=Fault.RESET) as server:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{server.url}/metrics")


async def test_a_slow_server_still_answers(http: aiohttp.ClientSession) -> None:
    server = FakeServer("trtllm", fault=Fault.SLOW, fault_delay_s=0.05)
    async with server, http.get(f"{server.url}/metrics") as resp:
        assert resp.status == 200
        assert "nv_trt_llm_request_metrics" in await resp.text()


async def test_a_stopped_server_refuses_and_a_restarted_one_serves_on_the_same_port(
    http: aiohttp.ClientSession,
) -> None:
    server = FakeServer("vllm")
    await server.start()
    port = server.bound_port
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"http://127.0.0.1:{port}/health")
    await server.start()
    try:
        assert server.bound_port == port
        async with http.get(f"{server.url}/health") as resp:
            assert resp.status == 200
    finally:
        await server.stop()


async def test_stop_aborts_requests_in_flight(http: aiohttp.ClientSession) -> None:
    server = FakeServer("vllm")
    await server.start()
    payload = {"model": server.models[0], "prompt": "x", "max_tokens": 5000, "stream": True}
    stream = await http.post(f"{server.url}/v1/completions", json=payload)
    await stream.content.readuntil(b"\n\n")
    await server.stop()
    with pytest.raises(aiohttp.ClientPayloadError):
        await stream.read()
    assert server.snapshot().finished_abort == 1
    assert server.snapshot().running == 0


async def test_run_fake_server_serves_until_cancelled(http: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(run_fake_server(FakeServer("sglang", port=port)))
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            async with http.get(f"{url}/metrics") as resp:
                assert "sglang:num_queue_reqs" in await resp.text()
                break
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.01)
    else:
        pytest.fail("run_fake_server never listened")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"{url}/health")


def test_constructing_a_server_does_nothing_and_checks_its_arguments() -> None:
    server = FakeServer("triton-tensorrt-llm")
    assert server.engine == "trtllm"
    assert not server.running
    with pytest.raises(RuntimeError):
        _ = server.url
    with pytest.raises(ValueError, match="unknown engine"):
        FakeServer("ollama")
    with pytest.raises(ValueError, match="max_lora"):
        FakeServer("vllm", lora_adapters=("a",), load=LoadParams(max_lora=0))
    with pytest.raises(ValueError, match="time_scale"):
        FakeServer("vllm", time_scale=0)


def test_the_fake_runs_on_uvloop_as_the_cli_does() -> None:
    """uvloop hands back plain handles for timers already due; the engine clock must cope."""
    import uvloop

    async def scenario() -> list[int]:
        async with (
            FakeServer("vllm", time_scale=0.001) as server,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        ):
            payload = {"model": server.models[0], "prompt": "x" * 100, "max_tokens": 20}

            async def one() -> int:
                async with http.post(f"{server.url}/v1/completions", json=payload) as resp:
                    return int((await resp.json())["usage"]["completion_tokens"])

            return await asyncio.gather(*(one() for _ in range(30)))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == [20] * 30


async def test_error_503_fails_completions_only_and_control_switches_it(http: aiohttp.ClientSession) -> None:
    async with FakeServer("vllm", time_scale=0.01) as server:
        payload = {"model": server.models[0], "prompt": "hello", "max_tokens": 2}
        control = f"{server.url}/_fake/control"
        async with http.post(control, json={"fault": "error-503"}) as resp:
            assert (resp.status, await resp.json()) == (200, {"fault": "error-503", "slowdown": 1.0})
        assert server.fault is Fault.ERROR_503
        async with http.post(f"{server.url}/v1/completions", json=payload) as resp:
            assert resp.status == 503
        async with http.get(f"{server.url}/metrics") as resp:
            assert resp.status == 200, "a 503-ing engine still serves its metrics"
        async with http.post(control, json={"fault": "none"}) as resp:
            assert resp.status == 200
        async with http.post(f"{server.url}/v1/completions", json=payload) as resp:
            assert resp.status == 200
        for bad in ({"fault": "on-fire"}, {"slowdown": 0}, [1]):
            async with http.post(control, json=bad) as resp:
                assert resp.status == 400, bad
        async with http.get(control) as resp:
            assert resp.status == 405


async def test_slowdown_makes_the_engine_slower_than_its_parameters(http: aiohttp.ClientSession) -> None:
    async with FakeServer("vllm", time_scale=0.01, load=LoadParams(jitter=0.0)) as server:
        base = server.load_params
        assert base is not None
        async with http.post(f"{server.url}/_fake/control", json={"slowdown": 3}) as resp:
            assert (await resp.json())["slowdown"] == 3.0
        slowed = server.load_params
        assert slowed is not None
        assert slowed.step_base_s == pytest.approx(3 * base.step_base_s)
        assert slowed.decode_s_per_seq == pytest.approx(3 * base.decode_s_per_seq)
        server.set_slowdown(1.0)
        assert server.load_params == base
