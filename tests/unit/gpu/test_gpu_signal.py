"""GPU signal: PromQL default, sample → pod mapping, and "unknown" when Prometheus misbehaves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

import pytest
from aiohttp import web

from picker.scrape.gpu import GpuUtilizationSource, default_query, utilization_by_pod
from picker.testing.web import start_app


class Sink:
    def __init__(self) -> None:
        self.calls: list[Mapping[str, float] | None] = []

    def set_gpu_utilization(self, by_pod: Mapping[str, float] | None) -> None:
        self.calls.append(None if by_pod is None else dict(by_pod))


def sample(pod: str | None, value: str, namespace: str | None = "ns") -> dict[str, object]:
    metric = {k: v for k, v in (("pod", pod), ("namespace", namespace)) if v is not None}
    return {"metric": metric, "value": [1700000000.0, value]}


def test_default_query():
    assert (
        default_query("team-a") == 'avg by (namespace, pod) (DCGM_FI_DEV_GPU_UTIL{namespace="team-a"}) / 100'
    )
    assert default_query("ns", pod_label="exported_pod", namespace_label="exported_namespace") == (
        'avg by (exported_namespace, exported_pod) (DCGM_FI_DEV_GPU_UTIL{exported_namespace="ns"}) / 100'
    )
    assert 'namespace="a\\"b"' in default_query('a"b')


def test_samples_map_to_pods():
    values, above = utilization_by_pod(
        [
            sample("a", "0.25"),
            sample("b", "0.5"),
            sample("b", "0.7"),  # a second GPU of the same pod: averaged
            sample("c", "NaN"),
            sample("d", "1.7"),  # clamped, and flagged
            sample("e", "-0.2"),
            sample("f", "0.9", namespace="other"),  # another namespace's pod with a colliding name
            sample(None, "0.3"),
            sample("g", "not-a-number"),
            {"metric": {"pod": "h"}},
        ],
        namespace="ns",
    )
    assert values == pytest.approx({"a": 0.25, "b": 0.6, "d": 1.0, "e": 0.0})
    assert above


async def _serve(handler: web.RequestHandler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/api/v1/query", handler)
    runner, port = await start_app(app)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def stalling_url() -> AsyncIterator[str]:
    """Accepts connections and never answers (an overloaded Prometheus)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_a_slow_prometheus_makes_the_signal_unknown_with_one_log_line(stalling_url, caplog):
    caplog.set_level(logging.INFO, logger="picker.scrape.gpu")
    sink = Sink()
    source = GpuUtilizationSource(sink, url=stalling_url, namespace="ns", timeout_s=0.2)
    client = source.make_client()
    try:
        for _ in range(3):
            assert await source.poll_once(client) is False
    finally:
        client.close()
    assert sink.calls == [None, None, None]
    assert source.available is False
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


async def test_errors_and_garbage_are_unknown_and_recovery_is_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="picker.scrape.gpu")
    answers = [
        web.json_response({"status": "error", "error": "boom"}, status=503),
        web.Response(text="<html>proxy error</html>", content_type="text/html"),
        web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": [sample("a", "0.4")]}}
        ),
        web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": [sample("a", "0.6")]}}
        ),
    ]

    async def handler(_request: web.Request) -> web.Response:
        return answers.pop(0)

    async for url in _serve(handler):
        sink = Sink()
        source = GpuUtilizationSource(sink, url=url, namespace="ns", timeout_s=1.0)
        client = source.make_client()
        try:
            results = [await source.poll_once(client) for _ in range(4)]
        finally:
            client.close()
    assert results == [False, False, True, True]
    assert sink.calls == [None, None, {"a": 0.4}, {"a": 0.6}]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1
    assert sum("available (" in m for m in messages) == 1


async def test_run_polls_until_closed(stalling_url):
    sink = Sink()
    source = GpuUtilizationSource(sink, url=stalling_url, namespace="ns", interval_s=0.05, timeout_s=0.05)
    task = asyncio.create_task(source.run())
    for _ in range(200):
        if source.polls >= 2:
            break
        await asyncio.sleep(0.02)
    await source.close()
    await asyncio.wait_for(task, 5)
    assert source.polls >= 2
    assert all(c is None for c in sink.calls)
