"""The Redis backend on a real redis-server: the memory backend's decisions, shared, surviving a restart.

These tests ask Redis for every admission (leases off, ``lease.fraction: 0``): the per-request path, which
is also the fallback of a replica whose lease does not cover a request. Leases: ``test_redis_leases.py``.
Every backend's wall clock starts at the current UTC day's start (``from_the_day_start``): the per-minute
limits' counts must not restart mid-test, and both backends of a comparison must see the same windows."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from picker.config.tenants import LeaseConfig, RedisConfig
from picker.errors import TenantUnavailable
from picker.tenants.backend import MemoryBackend, Settlement, Verdict
from picker.tenants.ledger import actual_vector, reservation_vector
from picker.tenants.metrics import TenantMetrics
from picker.tenants.redis_backend import RedisBackend
from picker.testing.clocks import from_the_day_start
from picker.testing.net import free_port
from picker.testing.poll import eventually
from picker.testing.redis_server import RedisServer
from picker.testing.tools import tool

pytestmark = [pytest.mark.integration]

LIMITS = (1000, None, 10, 3, None, 5_000)
#: Redis back after a restart: the backend's probe pings within PROBE_S (1 s) and the writer then writes
#: what was queued, a second or two on a quiet machine; a bound far above that, and within the test's
#: timeout so a recovery that never comes fails saying what the backend was doing
RECOVERY_S = 60.0
Wall = Callable[[], float]


def backend(
    server: RedisServer, *, fail_mode: str = "open", prefix: str = "t:", clock: Wall | None = None
) -> RedisBackend:
    # generous: the suite shares two cores; a slow answer would count as Redis being down
    cfg = RedisConfig(
        url=server.url, fail_mode=fail_mode, key_prefix=prefix, timeout=5.0, lease=LeaseConfig(fraction=0)
    )
    sink = TenantMetrics(CollectorRegistry(), list)
    return RedisBackend(cfg, sink=sink, clock=clock or from_the_day_start())


def metrics(b: RedisBackend) -> TenantMetrics:
    sink = b._sink
    assert isinstance(sink, TenantMetrics)
    return sink


async def reserve(b: RedisBackend, tenant: str, amounts: tuple[int, ...]) -> Verdict:
    v = b.reserve(tenant, LIMITS, amounts)  # type: ignore[arg-type]
    return v if isinstance(v, Verdict) else await v


async def test_redis_and_memory_backends_agree_on_every_decision(redis_server: RedisServer) -> None:
    clock = from_the_day_start()
    r = backend(redis_server, clock=clock)
    m = MemoryBackend(clock=clock)
    writer = asyncio.create_task(r.run())
    try:
        held = []
        for step in range(40):
            amounts = reservation_vector(40 + step * 7, 100 + step)
            a = await reserve(r, "acme", amounts)
            b = m.reserve("acme", LIMITS, amounts)  # type: ignore[arg-type]
            assert (a.granted, a.remaining) == (b.granted, b.remaining), step
            if a.granted:
                held.append((amounts, a.hold))
            if step % 3 == 2 and held:
                amounts, hold = held.pop(0)
                s = Settlement(
                    "acme", "m", amounts, actual_vector(amounts[0] // 2, amounts[4] // 2), 1, 1, 1, hold=hold
                )
                r.settle(s)
                m.settle(s)
                for _ in range(200):
                    if not r.pending():
                        break
                    await asyncio.sleep(0.005)
    finally:
        writer.cancel()
        await r.close()


async def test_meters_stay_exact_up_to_2_to_the_53(redis_server: RedisServer) -> None:
    """The scripts take their arguments and answer as one comma-joined string: amounts past the 14
    significant digits Lua's default number formatting keeps (a cost meter in nano-units reaches them
    at about $100,000) must come back exactly, in the remaining-budget figures and the meters."""
    b = backend(redis_server)
    big = 2**53 - 12_345  # the largest integers a Lua number holds exactly
    limits = (None, None, None, None, None, big + 7)
    try:
        v = b.reserve("rich", limits, (1, 0, 1, 1, 0, 1_234_567_890_123_456))  # type: ignore[arg-type]
        verdict = v if isinstance(v, Verdict) else await v
        assert verdict.granted
        assert verdict.remaining[5] == big + 7 - 1_234_567_890_123_456
        v = b.reserve("rich", limits, (1, 0, 1, 1, 0, big + 8))  # type: ignore[arg-type]
        refused = v if isinstance(v, Verdict) else await v
        assert not refused.granted
        assert refused.denial is not None
        assert refused.denial.in_use == 1_234_567_890_123_456  # exact, not 1.2345678901235e+15
        # settled: the amount moves from reserved to used, and comes back exactly from there too
        amounts = (1, 0, 1, 1, 0, 1_234_567_890_123_456)
        writer = asyncio.create_task(b.run())
        try:
            b.settle(Settlement("rich", "m", amounts, amounts, 1, 1, 1, hold=verdict.hold))
            for _ in range(400):
                if not b.pending():
                    break
                await asyncio.sleep(0.005)
        finally:
            writer.cancel()
        v = b.reserve("rich", limits, (1, 0, 1, 1, 0, big + 8))  # type: ignore[arg-type]
        again = v if isinstance(v, Verdict) else await v
        assert again.denial is not None
        assert again.denial.in_use == 1_234_567_890_123_456
    finally:
        await b.close()


async def test_two_clients_share_one_budget_without_double_spending(redis_server: RedisServer) -> None:
    """Two backends (as two EPP replicas) race for the last room: exactly the limit is granted."""
    a, b = backend(redis_server), backend(redis_server)
    try:
        amounts = reservation_vector(100, 0)
        for x in (a, b):  # connected and the scripts loaded before the race
            assert not (await reserve(x, "warm-up", amounts)).degraded
        verdicts = await asyncio.gather(*(reserve(x, "shared", amounts) for _ in range(15) for x in (a, b)))
        assert not any(v.degraded for v in verdicts)
        granted = sum(v.granted for v in verdicts)
        assert granted == 3  # concurrent limit 3 (tokens: 1000 would allow 10)
    finally:
        await a.close()
        await b.close()


async def test_expired_reservations_of_a_dead_replica_are_given_back(redis_server: RedisServer) -> None:
    cfg = RedisConfig(url=redis_server.url, key_prefix="t:", timeout=2.0, lease=LeaseConfig(fraction=0))
    dead = RedisBackend(cfg, reservation_ttl_s=0.2, clock=from_the_day_start())
    alive = backend(redis_server)
    try:
        for _ in range(3):
            assert (await reserve(dead, "t", reservation_vector(10, 0))).granted
        assert not (await reserve(alive, "t", reservation_vector(10, 0))).granted  # 3 concurrent held
        for _ in range(200):  # their 0.2 s expiry passes (a refused request holds nothing); bounded: 10 s
            if (await reserve(alive, "t", reservation_vector(10, 0))).granted:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the dead replica's reservations never expired")
    finally:
        await dead.close()
        await alive.close()


async def test_restart_fails_open_then_recovers_and_replays_settlements(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="picker.tenants.redis_backend")
    r = backend(redis_server)
    writer = asyncio.create_task(r.run())
    try:
        first = await reserve(r, "acme", reservation_vector(100, 0))
        assert first.granted
        redis_server.stop()
        down = await reserve(r, "acme", reservation_vector(100, 0))
        assert down.granted
        assert down.degraded
        assert metrics(r).backend_up_gauge._value.get() == 0
        assert "admitting requests without enforcing budgets (failMode open)" in caplog.text
        # usage while down is queued
        r.settle(Settlement("acme", "m", reservation_vector(0, 0), actual_vector(70, 0), 50, 20, 0))
        assert r.reserve("acme", LIMITS, reservation_vector(1, 0)).degraded  # type: ignore[union-attr]
        redis_server.start()  # empty again: a restart without persistence
        # reconnected (the probe's ping answered) and the queued settlement written back (scripts reloaded)
        await eventually(
            lambda: {"up": r.up, "queued": r.pending()},
            done=lambda seen: seen == {"up": True, "queued": 0},
            interval=0.05,
            within=RECOVERY_S,
            what="the backend up again with the usage queued meanwhile written",
        )
        assert "answers again" in caplog.text
        after = await reserve(r, "acme", reservation_vector(100, 0))
        assert after.granted
        assert not after.degraded
        assert after.remaining[0] == 1000 - 70 - 100  # the replayed usage counts; scripts were reloaded
    finally:
        writer.cancel()
        await r.close()


async def test_fail_closed_refuses_with_503(redis_server: RedisServer) -> None:
    r = backend(redis_server, fail_mode="closed")
    try:
        redis_server.stop()
        with pytest.raises(TenantUnavailable) as caught:
            await reserve(r, "acme", reservation_vector(1, 0))
        assert caught.value.http_status == 503
        with pytest.raises(TenantUnavailable):
            r.reserve("acme", LIMITS, reservation_vector(1, 0))  # type: ignore[arg-type]
        assert metrics(r).backend_failures.labels("closed")._value.get() == 2
    finally:
        await r.close()


async def test_a_reservation_cancelled_while_redis_answers_is_given_back(redis_server: RedisServer) -> None:
    """The request goes away while its script is in flight (Redis paused: the command is sent, the
    answer is not back): the script runs anyway, and its hold is given back by the writer, not left
    to its 15-minute expiry."""
    r = backend(redis_server)
    writer = asyncio.create_task(r.run())
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        assert (await reserve(r, "warm-up", reservation_vector(1, 0))).granted  # connected, scripts loaded
        await admin.execute_command("CLIENT", "PAUSE", "300", "ALL")
        asked = r.remote_admissions
        asking = asyncio.ensure_future(reserve(r, "acme", reservation_vector(10, 0)))
        for _ in range(400):  # counted in the step that sends the RESERVE (bounded: 2 s)
            if r.remote_admissions > asked:
                break
            await asyncio.sleep(0.005)
        assert r.remote_admissions > asked, "the RESERVE was never sent"
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        for _ in range(400):
            if not r.pending() and await admin.hlen("t:{acme}:h") == 0:
                break
            await asyncio.sleep(0.01)
        assert await admin.exists("t:{acme}:m"), "the script ran after the request had gone"
        assert int(await admin.hget("t:{acme}:m", "r3") or 0) == 0, "the concurrency slot came back"
        assert await admin.hlen("t:{acme}:h") == 0
    finally:
        writer.cancel()
        await admin.aclose()
        await r.close()


def test_a_server_whose_port_was_taken_meanwhile_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port a RedisServer picks up front can be bound by another process before redis-server starts
    (other tests run in parallel): it starts on a new port instead of failing the test."""
    tool("redis-server", apt="redis-server")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr("picker.testing.redis_server.free_port", lambda: next(picks, None) or free_port())
        server = RedisServer(tmp_path)
        assert server.port == taken
        server.start()
        try:
            assert server.port != taken
            assert server.url == f"redis://127.0.0.1:{server.port}/0"
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"PING\r\n")
                assert sock.recv(16).startswith(b"+PONG")
        finally:
            server.stop()


def test_a_restart_whose_port_was_taken_meanwhile_fails_saying_so(tmp_path: Path) -> None:
    """A restart comes back on the same address or not at all: its clients (an EPP given its URL) know
    only that one, so moving to another port would leave them waiting on the old one for good."""
    tool("redis-server", apt="redis-server")
    server = RedisServer(tmp_path)
    server.start()
    port, url = server.port, server.url
    server.stop()
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(RuntimeError, match=f"port {port} taken"):
            server.start()
    server.stop()
    assert (server.port, server.url) == (port, url)
