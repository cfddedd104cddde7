"""A proxy that freezes (TCP up, nothing moving) loses its streams to the server's keepalive pings, so
their in-flight counts return to 0 in about ping interval + timeout instead of gRPC's two hours."""

from __future__ import annotations

import pytest

from picker.testing.envoy import EnvoyClient, HttpRequest
from picker.testing.freeze import FreezingProxy
from picker.testing.poll import eventually
from tests.integration.service.conftest import P0, StartService, completion, hold

pytestmark = pytest.mark.integration


async def test_streams_of_a_frozen_proxy_are_released(start_service: StartService) -> None:
    # a ping every second, 2 s to answer it: a loaded machine's stalls of a second or so do not count as
    # a frozen proxy before the freeze (the held stream must count first), and release still comes in
    # seconds, not gRPC's two hours
    svc = await start_service(pods=1, grpc_keepalive_time=1.0, grpc_keepalive_timeout=2.0)
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

        await eventually(released, what="the frozen proxy's stream to be released", within=30.0)
        stream.cancel()
    finally:
        await proxy.stop()
        await client.close()
