"""The whole service in-process for the mode-override and header-only tests: two static endpoints nobody
listens on (the Envoy-like client plays the upstream), plaintext gRPC, and readers of /metrics and
/debug/endpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker.config import load_config_text
from picker.service import Ports, Service
from picker.testing.envoy import EnvoyClient, UpstreamResponse
from picker.testing.local import local_settings, run_started

pytestmark = pytest.mark.integration

ENDPOINTS = ("127.0.0.2:8000", "127.0.0.3:8000")
BODY = b'{"model":"m","prompt":"hello"}'
RESPONSE = UpstreamResponse(
    headers=(("content-type", "application/json"),),
    chunks=(b'{"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}',),
)


class Running:
    def __init__(self, service: Service, ports: Ports, http: aiohttp.ClientSession) -> None:
        self.service = service
        self.ports = ports
        self.http = http
        self.clients: list[EnvoyClient] = []

    async def client(self, request_body_mode: str = "FULL_DUPLEX_STREAMED") -> EnvoyClient:
        """A new connection to the ext_proc port (closed by the fixture)."""
        client = EnvoyClient(
            f"127.0.0.1:{self.ports.grpc}", timeout=30.0, request_body_mode=request_body_mode
        )
        await client.connect()
        self.clients.append(client)
        return client

    async def sample(self, name: str, **labels: str) -> float:
        async with self.http.get(f"http://127.0.0.1:{self.ports.metrics}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return 0.0

    async def endpoints(self) -> list[dict[str, Any]]:
        async with self.http.get(f"http://127.0.0.1:{self.ports.admin}/debug/endpoints") as resp:
            doc: dict[str, Any] = await resp.json()
        return list(doc["endpoints"])

    async def total(self, column: str) -> float:
        return float(sum(row[column] for row in await self.endpoints()))

    async def until_total(self, column: str, value: float, *, within_s: float = 10.0) -> None:
        """Wait until ``column`` sums to ``value`` over the endpoints (an ended stream is settled a moment
        after the proxy sees its end); fail after ``within_s``."""
        deadline = asyncio.get_running_loop().time() + within_s
        while await self.total(column) != value:
            assert asyncio.get_running_loop().time() < deadline, f"{column} never summed to {value}"
            await asyncio.sleep(0.01)


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """``start(config, model_header="")``: the service on ephemeral ports with the document ``config``."""
    running: list[tuple[Running, asyncio.Task[None]]] = []

    async def _start(config: str, *, model_header: str = "") -> Running:
        settings = local_settings(
            static_endpoints=",".join(ENDPOINTS), refresh_metrics_interval=1.0, model_header=model_header
        )
        cfg = load_config_text(config, model_header=model_header)
        service = Service(settings, cfg, config_text=config, config_source="test")
        ports, task = await run_started(service)
        r = Running(service, ports, aiohttp.ClientSession())
        running.append((r, task))
        return r

    yield _start
    for r, task in running:
        for client in r.clients:
            await client.close()
        await r.http.close()
        r.service.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=15)
