"""``--workers 2`` with the tenants' Redis backend: the supervisor's ``/metrics`` shows the tenants right.

Each worker talks to a real ``redis-server`` itself. What a worker counts (tokens, cost, refusals, backend
failures) is a per-process counter: the supervisor adds the workers' counts up. The window gauges
(``ai_tokens_used``, ``ai_tokens_limit``, ``ai_cost_*``) are one state shared in Redis: the supervisor shows
it once (the newest reply either worker saw), never the sum of the two workers' views of it. The model
server's answer is played by the client (usage = the reservation), so every number is exact.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from picker.testing.clocks import clear_of_the_hour
from picker.testing.envoy import HttpRequest, UpstreamResponse
from picker.testing.redis_server import RedisServer
from tests.integration.conftest import Spawn
from tests.integration.workers.test_workers import (
    Tree,
    _client_per_worker,
    _samples,
    _start_tree,
    eventually,
)

#: the budgets count per UTC hour (and day) in ``picker serve`` processes, on the real clock: each test starts
#: with this much of the hour left (about 10x what it takes on a quiet machine), waiting for the next hour
#: in 1 run of 60; the timeout leaves room for that wait on top of the usual 120 s
CLEAR_S = 60.0
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120 + CLEAR_S)]

CONFIG = """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
tenants:
  estimation: {{learn: false}}
  defaultTier: shared
  tiers: [{{name: shared, limits: {{tokensPerHour: 100000, costPerDay: 50}}}}]
  prices: [{{model: m, inputPer1M: 1000, outputPer1M: 2000}}]
  backend:
    type: redis
    redis: {{url: "{url}", timeout: 2s, failMode: open, lease: {{idle: 1s}}}}
"""
# 4 characters of prompt = 1 token, plus max_tokens 100: 101 tokens reserved and (by the answer) used
BODY = json.dumps({"model": "m", "prompt": "abcd", "max_tokens": 100}).encode()
TOO_LARGE = json.dumps({"model": "m", "prompt": "abcd", "max_tokens": 200_000}).encode()
ANSWER = UpstreamResponse(
    chunks=[
        json.dumps(
            {"object": "text_completion", "usage": {"prompt_tokens": 1, "completion_tokens": 100}}
        ).encode()
    ]
)
COST = (1 * 1000 + 100 * 2000) / 1e6  # per request, currency units


@contextlib.asynccontextmanager
async def _with_redis(
    spawn: Spawn, redis: RedisServer, config: str
) -> AsyncIterator[tuple[RedisServer, Tree]]:
    """``--workers 2`` whose tenants section (``config``) uses the real redis-server ``redis``."""
    async with _start_tree(spawn, "--config-text", config.format(url=redis.url)) as t:
        yield redis, t


@pytest.fixture
async def redis_tree(spawn: Spawn, redis_server: RedisServer) -> AsyncIterator[tuple[RedisServer, Tree]]:
    async with _with_redis(spawn, redis_server, CONFIG) as started:
        yield started


async def _status(t: Tree, tenant: str, body: bytes = BODY) -> int:
    """One exchange on a new connection (so that either worker may take it): 200 or the refusal's status."""
    client = await t.new_client()
    result = await client.exchange(HttpRequest(body=body, headers=[("x-tenant-id", tenant)]), ANSWER)
    assert result.code == grpc.StatusCode.OK, result.details  # the stream itself never fails
    return result.immediate.status if result.immediate is not None else 200


async def _value(t: Tree, name: str, **labels: str) -> list[float]:
    return [v for got, v in await _samples(t, name) if all(got.get(k) == x for k, x in labels.items())]


async def test_tenant_metrics_of_redis_workers_are_counted_once(
    redis_tree: tuple[RedisServer, Tree],
) -> None:
    redis, t = redis_tree
    await clear_of_the_hour(CLEAR_S)
    sent = 0
    while sent < 64:
        assert await _status(t, "acme") == 200
        sent += 1
        if sent >= 6 and all(w["picks"] >= 2 for w in await t.workers()):
            break
    assert all(w["picks"] >= 2 for w in await t.workers()), await t.workers()
    assert [await _status(t, "huge", TOO_LARGE) for _ in range(2)] == [429, 429]

    async def counted() -> bool:
        return await _value(t, "ai_tokens_total", tenant="acme", kind="output") == [100.0 * sent]

    await eventually(counted, "both workers' tokens on the supervisor's /metrics")
    assert await _value(t, "ai_tokens_total", tenant="acme", model="m", kind="input") == [1.0 * sent]
    (cost,) = await _value(t, "ai_cost_total", tenant="acme", model="m")
    assert cost == pytest.approx(COST * sent)
    assert await _value(t, "picker_tenant_rejections_total", tenant="huge") == [2.0]

    async def shared_state() -> bool:
        return await _value(t, "ai_tokens_used", tenant="acme", window="hour") == [101.0 * sent]

    await eventually(shared_state, "the tokens used in Redis, once")
    client = aioredis.Redis.from_url(redis.url)
    try:
        assert int(await client.hget("picker:tenants:{acme}:m", "u1")) == 101 * sent
    finally:
        await client.aclose()
    assert await _value(t, "ai_tokens_limit", tenant="acme", window="hour") == [100000.0]

    async def given_back() -> bool:  # the workers' leases, unused for a second, went back to Redis
        return await _value(t, "ai_tokens_reserved", tenant="acme", window="hour") == [0.0]

    await eventually(given_back, "the idle leases given back")
    (used,) = await _value(t, "ai_cost_used", tenant="acme", window="day")
    assert used == pytest.approx(COST * sent)
    assert await _value(t, "ai_cost_limit", tenant="acme", window="day") == [50.0]
    assert await _value(t, "picker_tenant_backend_up") == [1.0]
    doc = await t.get("/debug/tenants")
    (row,) = [r for r in doc["tenants"] if r["tenant"] == "acme"]
    assert row["meters"]["tokensPerHour"]["used"] == 101 * sent
    assert doc["backend"] == "redis"

    # Redis goes away: the workers admit unchecked (failMode open), each failure counted once
    redis.stop()
    for _ in range(4):
        assert await _status(t, "acme") == 200

    async def down() -> bool:
        failures = await _value(t, "picker_tenant_backend_failures_total", fail_mode="open")
        return failures == [4.0] and await _value(t, "picker_tenant_backend_up") == [0.0]

    await eventually(down, "the failures and the backend down on the supervisor's /metrics")
    assert (await t.get("/debug/tenants"))["backendUp"] is False
    redis.start()

    async def up() -> bool:
        return await _value(t, "picker_tenant_backend_up") == [1.0]

    await eventually(up, "every worker's backend up again")


async def test_each_workers_lease_is_shown_next_to_the_shared_meter(
    spawn: Spawn, redis_server: RedisServer
) -> None:
    """Each worker leases a share of the tenant's budget from Redis; the supervisor's /debug/tenants shows
    the shared meter (leases counted as reserved) and, next to it, what each worker leases, holds and has
    not reported yet, and how many admissions each made on its lease or by asking Redis."""
    async with _with_redis(spawn, redis_server, CONFIG.replace("idle: 1s", "idle: 1h")) as (_redis, t):
        await clear_of_the_hour(CLEAR_S)
        a, b = await _client_per_worker(t)  # worker 0, worker 1
        sent = 0
        for client in (a, b, a, b, a, b):
            result = await client.exchange(HttpRequest(body=BODY, headers=[("x-tenant-id", "acme")]), ANSWER)
            assert result.immediate is None, result.immediate
            sent += 1
        seen: dict[str, object] = {}

        async def where() -> bool:
            doc = await t.get("/debug/tenants")
            rows = [r for r in doc["tenants"] if r["tenant"] == "acme"]
            if not rows:
                return False
            meter = rows[0]["meters"]["tokensPerHour"]
            leases = {w["worker"]: w["lease"]["meters"]["tokensPerHour"] for w in rows[0].get("workers", [])}
            counts = doc["leases"]
            seen.update(meter=meter, leases=leases, counts=counts)
            return (
                set(leases) == {0, 1}
                # every request ended and was reported: what Redis holds is the two leases, nothing else
                and all(x["held"] == 0 and x["unreported"] == 0 and x["leased"] > 0 for x in leases.values())
                and meter["used"] == 101 * sent
                and meter["reserved"] == sum(x["leased"] for x in leases.values())
                # (the probes that found a client per worker were admitted too, as tenant "probe")
                and counts["admittedLocally"] + counts["admittedAfterRefill"] + counts["askedRedis"] >= sent
                and [w["worker"] for w in counts["workers"]] == [0, 1]
                and all(
                    counts[k] == sum(w[k] for w in counts["workers"])
                    for k in ("admittedLocally", "admittedAfterRefill", "askedRedis")
                )
            )

        with contextlib.suppress(AssertionError):
            await eventually(where, "each worker's lease next to the shared meter")
        assert await where(), json.dumps(seen)
        doc = await t.get("/debug/tenants")
        (row,) = [r for r in doc["tenants"] if r["tenant"] == "acme"]
        for held in row["workers"]:
            assert held["lease"]["replicas"] == 2  # the two workers lease the tenant
            assert held["reportedSecondsAgo"] < 30
            assert held["lease"]["meters"]["costPerDay"]["leased"] > 0  # in currency units, as the meter
        assert doc["leases"]["admittedLocally"] >= sent - 2  # each worker's first acme request asked Redis
