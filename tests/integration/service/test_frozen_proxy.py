"""A proxy that freezes (TCP up, nothing moving) loses its streams to the server's keepalive pings, so
their in-flight counts return to 0 in about ping interval + timeout instead of gRPC's two hours."""

from __future__ import annotations

import pytest

from picker.testing.envoy import EnvoyClient, HttpRequest
from picker.testing.freeze import FreezingProxy
from tests.integration.service.conftest import P0, StartService, completion, eventually, hold

pytestmark = pytest.mark.integration


async def test_streams_of_a_frozen_proxy_are_released(start_service: StartService) -> None:
    svc = await start_service(pods=1, grpc_keepalive_time=0.5, grpc_keepalive_timeout=0.5)
    proxy = FreezingProxy("127.0.0.1", svc.ports.grpc)
    await proxy.start()
    client = EnvoyClient(proxy.address, tls=False, timeout=60.0)
    await client.connect()
    try:
        stream, destination = await hold(client, HttpRequest(body=completion("held")))
        assert destination == P0

        async def held() -> bool:
            return await svc.inflight() == {P0: 1.0}

        await eventually(held, what="the held stream to count")
        proxy.freeze()

        async def released() -> bool:
            return await svc.inflight() == {P0: 0.0}

        await eventually(released, what="the frozen proxy's stream to be released", deadline_s=30.0)
        stream.cancel()
    finally:
        await proxy.stop()
        await client.close()
