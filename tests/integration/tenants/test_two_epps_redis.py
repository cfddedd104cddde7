"""Two EPP processes (``picker serve``) sharing one budget in a real redis-server, and a Redis restart.

Each process is a real ``python -m picker serve`` with the same config file (Redis backend); requests of
one tenant alternate between them through Envoy-like clients. The model server's answer is played by the
client (a JSON body whose usage equals the reservation), so the arithmetic is exact: with a 1,000-token
hour and 101 tokens per request, exactly 9 requests are admitted whichever EPP they reach. Then Redis
stops: both EPPs fail open (admit, say so in their log and metric) and recover when it is back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from picker.testing.clocks import clear_of_the_hour
from picker.testing.envoy import EnvoyClient, ExchangeResult, HttpRequest, UpstreamResponse
from picker.testing.poll import eventually
from picker.testing.redis_server import RedisServer
from tests.integration.conftest import LOCAL, PICKER, Process, Spawn, serving_ports

#: the budgets count per UTC hour (and day) in ``picker serve`` processes, on the real clock: each test starts
#: with this much of the hour left (about 10x what it takes on a quiet machine), waiting for the next hour
#: in 1 run of 60; the timeout leaves room for that wait on top of the usual 120 s
CLEAR_S = 60.0
#: Redis back after a restart: each EPP's backend pings it within 1 s and then writes what it queued, a
#: second or two on a quiet machine; a bound far above that that still leaves the hour's CLEAR_S room
RECOVERY_S = 30.0
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120 + CLEAR_S)]

CONFIG = """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
tenants:
  estimation: {{learn: false}}
  defaultTier: shared
  tiers: [{{name: shared, limits: {{tokensPerHour: 1000}}}}]
  backend:
    type: redis
    redis: {{url: "{url}", timeout: 2s, failMode: open, lease: {lease}}}
"""
#: every admission asks Redis: the exact per-request arithmetic
PER_REQUEST = "{fraction: 0}"
#: leases (the default), refilled and reported often so that the test's few requests use them
LEASES = "{fraction: 0.2, report: 50ms, idle: 5s}"
# 4 characters of prompt = 1 token, plus max_tokens 100: 101 tokens reserved and (by the answer) used
BODY = json.dumps({"model": "m", "prompt": "abcd", "max_tokens": 100}).encode()
ANSWER = json.dumps(
    {"object": "text_completion", "usage": {"prompt_tokens": 1, "completion_tokens": 100}}
).encode()


class Epp:
    """One ``picker serve`` process (:class:`~tests.integration.conftest.Process`) and its ext_proc client."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.admin = 0
        self.client: EnvoyClient | None = None

    @property
    def lines(self) -> list[str]:
        return self.process.lines

    async def serving(self) -> None:
        ports = await serving_ports(self.process, deadline_s=120.0)
        self.admin = ports.admin
        self.client = EnvoyClient(f"127.0.0.1:{ports.grpc}", timeout=30.0)
        await self.client.connect()

    async def request(self, tenant: str = "t") -> ExchangeResult:
        assert self.client is not None
        return await self.client.exchange(
            HttpRequest(body=BODY, headers=[("x-tenant-id", tenant)]),
            UpstreamResponse(chunks=[ANSWER]),
        )

    async def debug(self, http: aiohttp.ClientSession) -> dict:  # type: ignore[type-arg]
        async with http.get(f"http://127.0.0.1:{self.admin}/debug/tenants") as resp:
            return await resp.json()  # type: ignore[no-any-return]

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await self.process.stop()


@pytest.fixture(params=[PER_REQUEST])
async def two_epps(
    spawn: Spawn, tmp_path: Path, redis_server: RedisServer, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[RedisServer, Epp, Epp]]:
    redis = redis_server
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(url=redis.url, lease=request.param), encoding="utf-8")
    epps = []
    for _ in range(2):
        process = await spawn(
            [
                PICKER,
                "serve",
                *LOCAL,
                "--static-endpoints=127.0.0.1:9",  # never contacted: the client plays the model server
                "--secure-serving=false",
                "--refresh-metrics-interval=1h",
                f"--config-file={config}",
            ]
        )
        epps.append(Epp(process))
    try:
        for epp in epps:
            await epp.serving()
        yield redis, epps[0], epps[1]
    finally:
        for epp in epps:
            await epp.stop()


async def _alternate(a: Epp, b: Epp, n: int, *, tenant: str = "t", pause_s: float = 0.0) -> list[int]:
    """``n`` requests of ``tenant``, alternating between the two EPPs; each one's status (200: routed)."""
    statuses = []
    for i in range(n):
        result = await (a if i % 2 == 0 else b).request(tenant)
        statuses.append(result.immediate.status if result.immediate is not None else 200)
        if pause_s:
            await asyncio.sleep(pause_s)
    return statuses


async def test_two_epps_share_one_budget_and_survive_a_redis_restart(
    two_epps: tuple[RedisServer, Epp, Epp],
) -> None:
    redis, a, b = two_epps
    await clear_of_the_hour(CLEAR_S)
    statuses = await _alternate(a, b, 14)
    assert statuses.count(200) == 9, statuses  # 9 x 101 <= 1000 < 10 x 101, across both processes
    assert set(statuses[9:]) == {429}
    async with aiohttp.ClientSession() as http:
        for epp in (a, b):
            doc = await epp.debug(http)
            assert doc["backend"] == "redis"
            assert doc["backendUp"] is True

        # Redis goes away mid-run: both EPPs fail open (admit), and say so
        redis.stop()
        degraded = [await epp.request("t2") for epp in (a, b, a, b)]
        assert all(r.immediate is None for r in degraded)
        for epp in (a, b):
            assert any(
                "admitting requests without enforcing budgets (failMode open)" in line for line in epp.lines
            )

        # back (empty: no persistence): both reconnect, reload the scripts and enforce again, and the
        # usage both counted while Redis was down is written back: 4 x 101 tokens of tenant t2
        redis.start()
        client = aioredis.Redis.from_url(redis.url)

        async def recovery() -> dict[str, object]:
            docs = [await epp.debug(http) for epp in (a, b)]
            used = await client.hget("picker:tenants:{t2}:m", "u1")
            return {"backendUp": [d["backendUp"] for d in docs], "t2 used": used and int(used)}

        try:
            await eventually(
                recovery,
                done=lambda seen: seen == {"backendUp": [True, True], "t2 used": 404},
                interval=0.05,
                within=RECOVERY_S,
                what="both EPPs enforcing again, t2's usage while Redis was down written back",
                explain=lambda: f"the EPPs' last lines: {[epp.lines[-5:] for epp in (a, b)]}",
            )
        finally:
            await client.aclose()
    # usage queued while Redis was down was replayed: t2 used 4 x 101 of its 1,000 already
    statuses = await _alternate(a, b, 8, tenant="t2")
    assert statuses.count(200) == 5, statuses  # (1000 - 404) // 101 = 5


@pytest.mark.parametrize("two_epps", [LEASES], indirect=True)
async def test_two_epps_with_leases_never_pass_the_shared_budget(
    two_epps: tuple[RedisServer, Epp, Epp],
) -> None:
    redis, a, b = two_epps
    await clear_of_the_hour(CLEAR_S)
    statuses = await _alternate(a, b, 14, pause_s=0.1)  # the leases refill between requests
    admitted = statuses.count(200)
    assert 7 <= admitted <= 9, statuses  # never past 1,000 tokens; at most a lease parked per process
    async with aiohttp.ClientSession() as http:
        docs = [await epp.debug(http) for epp in (a, b)]
    assert sum(d["leases"]["admittedLocally"] for d in docs) > 0, "some requests were admitted on a lease"
    client = aioredis.Redis.from_url(redis.url)
    try:
        for _ in range(300):
            used = int(await client.hget("picker:tenants:{t}:m", "u1") or 0)
            if used == 101 * admitted:
                break
            await asyncio.sleep(0.05)
        assert used == 101 * admitted, "the leases reported every admitted request's usage"
        reserved = int(await client.hget("picker:tenants:{t}:m", "r1") or 0)
        assert used + reserved <= 1000
    finally:
        await client.aclose()
