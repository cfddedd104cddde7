"""``--workers 2`` with two ``--pool``: each pool's tenant budget and external endpoints' budget is that
pool's alone, one across both workers, and nothing of one pool's reaches the other's: with the memory
backend (the supervisor holds each pool's budget) and with a real ``redis-server`` shared by both pools
(each pool's keys under its own prefix, ``picker.tenants.service.TenantService.redis_config``).

The supervisor holds each pool's budgets for the workers (``picker.workers.hosts.PoolHost``), every worker
serves both pools' ports. Both pools limit the same tenant (``acme``) and name an external endpoint
``managed`` for the same objective (``offload``), with different limits, so a budget shared across pools,
or split per worker, shows as a wrong admission: alpha allows acme 2 requests at once and its external
endpoint 1, beta 3 and 2. Each pool's requests are sent from a client of each worker, and each pool's
``/debug/tenants`` must show where its budget is (each worker's share; with Redis, the pool's keys hold its
reservations). Leases are off with Redis (``fraction: 0``): a lease would let one worker's share refuse
the other's request early (documented), and the point here is exactness per pool. Alpha's document also
asks for more buffered bodies than ``--max-buffered-body-bytes``: the supervisor says so, for alpha only.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from picker.testing.envoy import EnvoyClient, RawStream
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import config_map
from picker.testing.poll import eventually
from picker.testing.redis_server import RedisServer
from tests.integration.conftest import Spawn
from tests.integration.kube_e2e.conftest import NS, Admin
from tests.integration.kube_e2e.test_e2e_pools import KEY, Pool, launch_pools, open_pools
from tests.integration.workers.test_workers import _destination, _first_reply_kind, client_per_worker, finish

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCUMENT = """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
request: {{maxBufferedBytes: {buffered}}}
externalEndpoints:
- name: managed
  address: '{external}'
  price: {{inputPer1M: 1, outputPer1M: 4}}
  limits: {{concurrent: {external_limit}}}
spillover: {{objectives: [offload]}}
tenants:
  tenants: [{{id: acme, limits: {{concurrent: {tenant_limit}}}}}]
"""
#: the tenants' backend with Redis (appended to the tenants section)
REDIS = """  backend: {{type: redis, redis: {{url: "{url}", timeout: 2s, lease: {{fraction: 0}}}}}}
"""
#: per pool: its external endpoint, that endpoint's concurrency limit, acme's, and the buffered-body share
LIMITS: dict[str, dict[str, Any]] = {
    "alpha": {"external": "127.0.0.9:9", "external_limit": 1, "tenant_limit": 2, "buffered": "1Gi"},
    "beta": {"external": "127.0.0.10:9", "external_limit": 2, "tenant_limit": 3, "buffered": "16Mi"},
}


@pytest.fixture
async def pools(emulator: KubeApiEmulator) -> AsyncIterator[dict[str, Pool]]:  # closed before the emulator
    async with open_pools(LIMITS) as made:
        yield made


async def _reserved(admin: Admin, pool: str, requests: int) -> bool:
    row = await _tenant_row(admin, pool, "acme")
    return row is not None and row["meters"]["concurrent"]["reserved"] == requests


async def _where_each_budget_is(admin: Admin, backend: RedisServer | None) -> None:
    """Acme holds 2 of alpha's budget (a request on each worker) and 3 of beta's (1 and 2): each pool's
    /debug/tenants shows its own, and with Redis each pool's keys hold its own."""
    for name, shares in (("alpha", {0: 1, 1: 1}), ("beta", {0: 1, 1: 2})):
        total = sum(shares.values())
        if backend is not None:  # the shared meters reach the supervisor within about a second
            await eventually(functools.partial(_reserved, admin, name, total), what=f"{name}'s meters")
        row = await _tenant_row(admin, name, "acme")
        assert row is not None
        assert row["meters"]["concurrent"]["limit"] == LIMITS[name]["tenant_limit"]
        assert row["meters"]["concurrent"]["reserved"] == total
        if backend is None:  # with Redis and no leases the holds are Redis's, not a worker's
            assert {w["worker"]: w["requests"] for w in row["workers"]} == shares
    if backend is None:
        return
    client = aioredis.Redis.from_url(backend.url)
    try:
        for name, open_requests in (("alpha", 2), ("beta", 3)):
            assert int(await client.hget(f"picker:tenants:{name}:{{acme}}:m", "r3") or -1) == open_requests
        assert not await client.exists("picker:tenants:{acme}:m")  # no budget shared by the pools
    finally:
        await client.aclose()


async def _tenant_row(admin: Admin, pool: str, tenant: str) -> dict[str, Any] | None:
    doc = await admin.json(f"/pools/{pool}/debug/tenants")
    return next((r for r in doc["tenants"] if r["tenant"] == tenant), None)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[RedisServer | None]:
    """The tenants' backend: None for memory, else a running redis-server."""
    if request.param == "memory":
        yield None
        return
    yield request.getfixturevalue("redis_server")


async def test_each_pools_budgets_are_its_own_across_both_workers(
    emulator: KubeApiEmulator,
    pools: dict[str, Pool],
    kubeconfig: Path,
    backend: RedisServer | None,
    spawn: Spawn,
) -> None:
    for pool in pools.values():
        await pool.add(emulator, f"{pool.name}-1")
        document = DOCUMENT.format(**LIMITS[pool.name])
        if backend is not None:
            document += REDIS.format(url=backend.url)
        emulator.create(config_map(f"{pool.name}-epp", NS, data={KEY: document}))
    documents = {name: f"{name}-epp" for name in pools}
    epp = await launch_pools(spawn, emulator, pools, kubeconfig, "--workers=2", documents=documents)
    try:
        admin = epp.admin

        await eventually(epp.ready, within=120, what="ready for both pools")

        async def loaded() -> bool:
            for name in pools:
                doc = await admin.json(f"/pools/{name}/config")
                if doc["source"] != f"configmap/{NS}/{name}-epp":
                    return False
            return True

        await eventually(loaded, within=30, what="each pool's ConfigMap applied")

        async def scraped() -> bool:
            # client_per_worker's probes (no objective) must stay in the pool, or no worker shows them;
            # they do before the pod's first scrape (a pool never scraped does not spill:
            # picker.routing.external) and after it (idle); the wait starts them on settled pools
            for name in pools:
                rows = (await admin.json(f"/pools/{name}/debug/endpoints"))["endpoints"]
                if not rows or any(row["stale"] for row in rows):
                    return False
            return True

        await eventually(scraped, within=30, what="each pool's pod scraped")
        # a client of each worker on each pool's port
        clients: dict[str, tuple[EnvoyClient, EnvoyClient]] = {}
        for name, pool in pools.items():

            async def new_client(pool: Pool = pool) -> EnvoyClient:
                client = EnvoyClient(
                    f"127.0.0.1:{pool.port}", timeout=30.0, options=[("grpc.use_local_subchannel_pool", 1)]
                )
                await client.connect()
                pool.extra.append(client)
                return client

            async def workers(name: str = name) -> list[dict[str, Any]]:
                return list((await admin.json(f"/pools/{name}/debug/workers"))["workers"])

            clients[name] = await client_per_worker(new_client, workers)

        # Tenants: acme's limit in each pool, reached from both workers, alpha's use not counted in beta
        held: dict[str, list[RawStream]] = {name: [] for name in pools}
        refused: dict[str, int] = dict.fromkeys(pools, 0)
        for name in ("alpha", "beta"):
            w0, w1 = clients[name]
            limit = int(LIMITS[name]["tenant_limit"])
            for client in [w0, w1, w1][:limit]:
                stream, kind = await _first_reply_kind(client, "acme")
                assert kind == "request_headers", f"{name} refused acme below its limit of {limit}"
                held[name].append(stream)
            for client in (w0, w1):
                _stream, kind = await _first_reply_kind(client, "acme")
                assert kind == "immediate_response", f"{name} admitted acme past its limit of {limit}"
                refused[name] += 1
        await _where_each_budget_is(admin, backend)

        async def rejections() -> bool:
            counted = {
                name: await admin.metric("picker_tenant_rejections_total", pool=name, tenant="acme")
                for name in pools
            }
            return counted == refused

        await eventually(rejections, what="each pool's refusals counted under its pool label only")

        # External endpoints: each pool's own endpoint and limit, reached from both workers
        for name in ("alpha", "beta"):
            w0, w1 = clients[name]
            external, limit = LIMITS[name]["external"], int(LIMITS[name]["external_limit"])
            firsts = []
            for client in [w0, w1, w0][: limit + 1]:
                stream, where = await _destination(client)
                held[name].append(stream)
                firsts.append(where)
            assert firsts == [external] * limit + [firsts[-1]], (name, firsts)
            assert firsts[-1] in pools[name].addresses(), f"{name}: past its external limit, the pool's pod"
            (row,) = (await admin.json(f"/pools/{name}/debug/external"))["external"]
            assert row["address"] == external
            assert row["reserved"]["concurrent"] == limit

        # alpha's requests end: alpha's budgets are free again, beta's are as they were
        for stream in held["alpha"]:
            await finish(stream)

        async def alpha_released() -> bool:
            row = await _tenant_row(admin, "alpha", "acme")
            (external,) = (await admin.json("/pools/alpha/debug/external"))["external"]
            return (
                row is not None
                and row["meters"]["concurrent"]["reserved"] == 0
                and row.get("workers") == []
                and external["reserved"]["concurrent"] == 0
            )

        await eventually(alpha_released, what="alpha's reservations given back")
        row = await _tenant_row(admin, "beta", "acme")
        assert row is not None
        assert row["meters"]["concurrent"]["reserved"] == 3
        (external,) = (await admin.json("/pools/beta/debug/external"))["external"]
        assert external["reserved"]["concurrent"] == 2
        w0, _w1 = clients["beta"]
        _stream, kind = await _first_reply_kind(w0, "acme")
        assert kind == "immediate_response", "beta's budget is still full"
        stream, kind = await _first_reply_kind(clients["alpha"][1], "acme")
        assert kind == "request_headers", "alpha's budget is free"
        stream.cancel()
        for stream in held["beta"]:
            stream.cancel()

    finally:
        code = await epp.stop()
    assert code == 0, epp.output[-3000:]
    # the body budget: alpha's document asks for more than the flag, the supervisor says so once for alpha
    log = epp.output
    capped = [line for line in log.splitlines() if "request.maxBufferedBytes" in line]
    assert len(capped) == 1, capped
    assert "pool alpha: request.maxBufferedBytes (1073741824 bytes) is above" in capped[0]
    assert "capped at 268435456 bytes" in capped[0]
