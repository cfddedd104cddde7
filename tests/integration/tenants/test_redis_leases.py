"""Leases on a real redis-server: admission without a round trip, the budget still never passed.

Each backend is one replica; its lease loop runs (``run()``), so leases are granted, refilled, reported
and given back in the background as in a serving EPP. Requests use exactly what they reserve (the
arithmetic is exact): whatever the interleaving, Redis's ``used + reserved`` stays within every limit and
the requests admitted fit the limit.

Two things outside that promise are kept out of the tests that check it, so a loaded machine cannot fail
them: a window ending mid-test (``used`` restarts, so a per-minute limit admits its budget again; the
replicas' wall clock starts at a UTC day's start, so no minute, hour or day window ends during a test),
and a lease lapsing while its replica cannot sync for ``ttl`` (Redis drops the hold with the unreported
usage it covered: the documented ``lost`` case; the limit tests lease with the default 30 s ``ttl``, the
2 s ``ttl`` of the other tests lapses when a starved event loop misses its renewals).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine

import pytest
import redis
import redis.asyncio as aioredis

from picker.config.tenants import LeaseConfig, RedisConfig
from picker.tenants.backend import Settlement, Verdict
from picker.tenants.lease import LEASED, Lease
from picker.tenants.ledger import Limits, Vector, actual_vector, reservation_vector
from picker.tenants.redis_backend import RedisBackend
from picker.testing.clocks import from_the_day_start
from picker.testing.poll import eventually
from picker.testing.redis_server import RedisServer

pytestmark = [pytest.mark.integration]

PREFIX = "t:"
#: the lease TTL of the tests that check the limit: the default, far above a loaded machine's stalls
LIMIT_TTL = 30.0


@pytest.fixture
def clock() -> Callable[[], float]:
    return from_the_day_start()


def config(server: RedisServer, **lease: float) -> RedisConfig:
    settings = {"fraction": 0.1, "report": 0.05, "ttl": 2.0, "idle": 5.0} | lease
    return RedisConfig(url=server.url, key_prefix=PREFIX, timeout=5.0, lease=LeaseConfig(**settings))


@pytest.fixture
async def replicas(
    redis_server: RedisServer, clock: Callable[[], float]
) -> AsyncIterator[Callable[..., RedisBackend]]:
    made: list[tuple[RedisBackend, asyncio.Task[None]]] = []

    def make(**lease: float) -> RedisBackend:
        b = RedisBackend(config(redis_server, **lease), clock=clock)
        made.append((b, asyncio.create_task(b.run())))
        return b

    yield make
    for b, task in made:
        await stop(task)
        await b.close()


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def verdict(v: Verdict | Awaitable[Verdict]) -> tuple[Verdict, bool]:
    """The verdict, and whether it came without waiting (on the lease)."""
    if isinstance(v, Verdict):
        return v, True
    return await v, False


async def meters(server: RedisServer, tenant: str) -> tuple[list[int], list[int]]:
    client = aioredis.Redis.from_url(server.url)
    try:
        raw = await client.hgetall(f"{PREFIX}{{{tenant}}}:m")
    finally:
        await client.aclose()
    used = [int(raw.get(f"u{i}".encode(), 0)) for i in range(6)]
    reserved = [int(raw.get(f"r{i}".encode(), 0)) for i in range(6)]
    return used, reserved


async def lease_settled(b: RedisBackend, tenant: str) -> None:
    """The sync the request path asked for (if any) ran: the tenant is not due and its lease not syncing.
    (The loop takes a due tenant and marks its lease syncing in one step.)"""

    def settled() -> bool:
        lease = b._leases.get(tenant)
        return tenant not in b._lease_due and (lease is None or not lease.syncing)

    await eventually(lambda: _true(settled()), f"{tenant}'s lease synced")


def settlement(tenant: str, amounts: Vector, hold: str) -> Settlement:
    return Settlement(
        tenant, "m", amounts, actual_vector(amounts[0], amounts[4]), 1, 1, amounts[4], hold=hold
    )


async def test_after_the_first_request_admission_does_not_wait_for_redis(
    redis_server: RedisServer, replicas: Callable[..., RedisBackend]
) -> None:
    b = replicas(ttl=LIMIT_TTL)  # a 2 s lease lapses when a loaded machine starves its renewals
    limits: Limits = (100_000, None, None, None, None, None)
    amounts = reservation_vector(100, 0)
    first, at_once = await verdict(b.reserve("acme", limits, amounts))
    assert first.granted
    assert not at_once, "no lease yet: asked Redis, and a lease was asked for in the background"
    await eventually(lambda: _true(b._leases["acme"].free()[0] >= 100), "a lease")
    results = [await verdict(b.reserve("acme", limits, amounts)) for _ in range(50)]
    assert all(v.granted and v.hold == LEASED for v, _ in results)
    assert sum(at_once for _, at_once in results) >= 45, "refills run ahead of the requests"
    for v, _ in results:
        b.settle(settlement("acme", amounts, v.hold))
    # settled usage reaches Redis in the background
    await eventually(lambda: _eq(meters(redis_server, "acme"), 5000), "usage reported")


async def _true(value: bool) -> bool:
    return value


async def _eq(pair: Awaitable[tuple[list[int], list[int]]], used: int) -> bool:
    return (await pair)[0][0] == used


async def test_one_replica_reaches_the_limit_exactly(replicas: Callable[..., RedisBackend]) -> None:
    """Near the limit the lease shrinks to one request, then stops; a request the lease cannot cover gives
    the lease's free part back in its own reservation: one replica admits exactly what fits."""
    b = replicas(ttl=LIMIT_TTL)
    limits: Limits = (1000, None, None, None, None, None)
    amounts = reservation_vector(101, 0)
    granted = 0
    for _ in range(15):
        v, _ = await verdict(b.reserve("acme", limits, amounts))
        if v.granted:
            granted += 1
            b.settle(settlement("acme", amounts, v.hold))
        await lease_settled(b, "acme")  # the lease loop runs between requests
    assert granted == 9  # 9 x 101 <= 1000 < 10 x 101


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_three_replicas_never_pass_the_limit_together(
    redis_server: RedisServer, replicas: Callable[..., RedisBackend], seed: int
) -> None:
    """Random requests, settlements and pauses on three replicas sharing a tenant: Redis's used + reserved
    (leases included) stays within each limit at every check, and everything admitted fits the limit."""
    rng = random.Random(seed)
    backends = [replicas(idle=0.3, ttl=LIMIT_TTL) for _ in range(3)]
    limits: Limits = (None, 20_000, 400, 12, 50_000, None)
    running: list[tuple[RedisBackend, Vector, str]] = []
    admitted_tokens = 0
    admitted_cost = 0
    for step in range(300):
        b = rng.choice(backends)
        roll = rng.random()
        if roll < 0.55:
            amounts = reservation_vector(rng.randint(10, 400), rng.randint(0, 800))
            v, _ = await verdict(b.reserve("shared", limits, amounts))
            if v.granted:
                running.append((b, amounts, v.hold))
                admitted_tokens += amounts[0]
                admitted_cost += amounts[4]
        elif running and roll < 0.9:
            owner, amounts, hold = running.pop(rng.randrange(len(running)))
            owner.settle(settlement("shared", amounts, hold))
        else:
            await asyncio.sleep(rng.choice([0.0, 0.01, 0.06]))
        if step % 10 == 0:
            used, reserved = await meters(redis_server, "shared")
            for i, limit in enumerate(limits):
                if limit is not None:
                    assert used[i] + reserved[i] <= limit, (step, i, used, reserved)
    assert admitted_tokens <= 20_000
    assert admitted_cost <= 50_000
    assert sum(b.local_admissions for b in backends) > 0
    for owner, amounts, hold in running:
        owner.settle(settlement("shared", amounts, hold))

    async def settled_and_given_back() -> bool:
        used, reserved = await meters(redis_server, "shared")
        return used[1] == admitted_tokens and reserved == [0] * 6

    await eventually(settled_and_given_back, "usage reported and idle leases given back")


async def test_a_dead_replicas_lease_comes_back_after_its_ttl(
    redis_server: RedisServer, replicas: Callable[..., RedisBackend], clock: Callable[[], float]
) -> None:
    limits: Limits = (None, None, None, 4, None, None)
    amounts = reservation_vector(1, 0)
    dead = RedisBackend(config(redis_server, fraction=0.5), clock=clock)
    writer = asyncio.create_task(dead.run())
    await verdict(dead.reserve("t", limits, amounts))
    await eventually(lambda: _true(sum(dead._leases["t"].granted) >= 2), "the dead replica's lease")
    await stop(writer)  # it stops syncing (dies) holding a lease of 2 slots and 1 running request
    client, dead._client = dead._client, None  # no give-back at close: as a killed process
    await client.aclose()
    alive = replicas()
    granted = [(await verdict(alive.reserve("t", limits, amounts)))[0].granted for _ in range(4)]
    assert granted.count(True) == 1, "3 of the 4 slots are the dead replica's"
    await asyncio.sleep(2.2)  # the lease's TTL (2 s); the running request's hold stays (15 min)
    later = [(await verdict(alive.reserve("t", limits, amounts)))[0].granted for _ in range(3)]
    assert later.count(True) == 2, "the lease's 2 slots came back"


async def test_a_lapsed_lease_a_request_finds_first_counts_as_lost(
    redis_server: RedisServer, clock: Callable[[], float]
) -> None:
    """The replica's wall clock jumps past its lease's TTL (as when its event loop was starved that long)
    and a request the lease does not cover reaches Redis before the lease's next sync: RESERVE finds the
    hold gone, and ``lost`` counts it (the unreported usage it covered is outside Redis's count)."""
    jump = 0.0
    b = RedisBackend(config(redis_server), clock=lambda: clock() + jump)
    writer = asyncio.create_task(b.run())
    try:
        limits: Limits = (None, 10_000, None, None, None, None)
        amounts = reservation_vector(100, 0)
        lease = await _warm_lease(b, "t", limits, amounts, 1)
        v, at_once = await verdict(b.reserve("t", limits, amounts))
        assert at_once
        b.settle(settlement("t", amounts, v.hold))  # 100 settled on the lease, not reported yet
        jump = 2.5  # past the 2 s TTL before the lease loop runs again
        big = reservation_vector(lease.free()[1] + 1, 0)
        v, at_once = await verdict(b.reserve("t", limits, big))
        assert not at_once
        assert lease.lost == 1
        assert b.lease_views()["t"]["lost"] == 1
    finally:
        await stop(writer)
        await b.close()


async def _lease(b: RedisBackend, tenant: str) -> Lease:
    await eventually(lambda: _true(tenant in b._leases), "a lease object")
    return b._leases[tenant]


async def _warm_lease(b: RedisBackend, tenant: str, limits: Limits, amounts: Vector, meter: int) -> Lease:
    """One request reserved through Redis and settled, then the tenant's lease once it holds at least that
    much free on ``meter`` and no sync is in flight: the next such request is admitted on it."""
    v, _ = await verdict(b.reserve(tenant, limits, amounts))
    b.settle(settlement(tenant, amounts, v.hold))
    lease = await _lease(b, tenant)
    need = amounts[meter]
    await eventually(lambda: _true(lease.free()[meter] >= need and not lease.syncing), "a lease, not syncing")
    return lease


async def test_a_replica_that_stops_gives_its_lease_back(
    redis_server: RedisServer, clock: Callable[[], float]
) -> None:
    limits: Limits = (10_000, None, None, None, None, None)
    b = RedisBackend(config(redis_server), clock=clock)
    writer = asyncio.create_task(b.run())
    v, _ = await verdict(b.reserve("t", limits, reservation_vector(100, 0)))
    b.settle(settlement("t", reservation_vector(100, 0), v.hold))
    await eventually(lambda: _true(b._leases["t"].free()[0] >= 100), "a lease")
    v, at_once = await verdict(b.reserve("t", limits, reservation_vector(100, 0)))
    assert at_once
    b.settle(settlement("t", reservation_vector(100, 0), v.hold))
    await stop(writer)
    await b.close()
    used, reserved = await meters(redis_server, "t")
    assert (used[0], reserved[0]) == (200, 0)


async def test_a_lease_admits_while_redis_restarts_and_is_leased_again(
    redis_server: RedisServer, replicas: Callable[..., RedisBackend]
) -> None:
    """Redis goes away: the lease still admits (for up to half its TTL); Redis comes back empty (no
    persistence): the lease's hold is gone (counted as lost), a new one is granted, and the usage settled
    meanwhile is reported.

    The restart blocks the event loop (stopping and starting the server) and the backend notices it
    only by a failed command and a probe: seconds on a loaded machine. So the lease is leased for the
    default TTL (valid 15 s unrenewed, not 1 s) and unused for an hour before it counts as idle (with
    the 5 s of the other tests, a restart that slow found it idle and gave it back for good: no new
    lease came)."""
    b = replicas(ttl=LIMIT_TTL, idle=3600.0)
    limits: Limits = (10_000, None, None, None, None, None)
    amounts = reservation_vector(100, 0)
    first, _ = await verdict(b.reserve("t", limits, amounts))
    b.settle(settlement("t", amounts, first.hold))  # asked Redis (no lease yet): settled by the writer
    await eventually(lambda: _true(b._leases["t"].free()[0] >= 200), "a lease")
    # written and answered before the restart (which empties Redis): not replayed after it
    await eventually(lambda: _true(not b.pending()), "the first request's usage written")
    redis_server.stop()
    during, at_once = await verdict(b.reserve("t", limits, amounts))
    assert at_once
    assert during.hold == LEASED, "admitted on the lease without Redis"
    b.settle(settlement("t", amounts, during.hold))
    redis_server.start()
    await eventually(lambda: _true(b.up and b._leases["t"].lost == 1), "the lost lease noticed")

    async def reported() -> bool:
        used, reserved = await meters(redis_server, "t")
        return used[0] == 100 and reserved[0] > 0  # the request admitted meanwhile, and a new lease

    await eventually(reported, "usage reported and a new lease")
    again, _ = await verdict(b.reserve("t", limits, amounts))
    assert again.granted


async def test_a_tenant_at_its_limit_does_not_starve_other_leases_renewals(
    replicas: Callable[..., RedisBackend],
) -> None:
    """A tenant at its limit sends every request to RESERVE, and each flags its lease for a sync, so the
    lease loop is woken far more often than its tick: the other tenants' leases are still renewed (every
    ``ttl / 4``), or they would lapse with the running requests they cover."""
    b = replicas(report=2.0, ttl=8.0)  # the loop's round of all leases every 1 s, a renewal every 2 s
    quiet: Limits = (None, 10_000, None, None, None, None)
    amounts = reservation_vector(100, 0)
    lease = await _warm_lease(b, "quiet", quiet, amounts, 1)
    running, at_once = await verdict(b.reserve("quiet", quiet, amounts))
    assert at_once  # a request running on the lease: only the lease's hold covers it
    busy: Limits = (None, 100, None, None, None, None)
    synced = lease.last_sync
    refused = 0
    for _ in range(3000):  # "busy" at its limit, a request every 2 ms or so; bounded (6 s and more)
        if lease.last_sync != synced:
            break
        v, _ = await verdict(b.reserve("busy", busy, amounts))
        refused += not v.granted
        await asyncio.sleep(0.002)
    assert lease.last_sync != synced, "the quiet lease was renewed"
    assert refused > 0
    b.settle(settlement("quiet", amounts, running.hold))


# ------------------------------------------------------------------------------ a lease never refuses its own
async def test_a_request_the_store_has_room_for_is_admitted_though_its_lease_was_empty(
    redis_server: RedisServer, replicas: Callable[..., RedisBackend]
) -> None:
    """A tenant's first request finds no lease and asks Redis (RESERVE), and flags its lease for a refill
    sized for at least that request, which the lease loop sends at once: whichever script Redis runs
    first, the refill leaves the room of the RESERVE its replica has in flight, and the request is
    admitted. (It was refused: the refill ran first and took the room.) Redis is paused while both are
    written, so it finds both waiting when it resumes, as on a busy server."""
    b = replicas(ttl=LIMIT_TTL)
    await warm_up(b)
    limits: Limits = (1000, None, None, None, None, None)
    amounts = reservation_vector(600, 0)
    redis_server.pause()
    try:
        request = asyncio.create_task(verdict(b.reserve("acme", limits, amounts)))
        await asyncio.sleep(0.05)  # the RESERVE and the refill it flagged are written, unanswered
        assert b._leases["acme"].syncing, "the refill is on its way"
    finally:
        redis_server.resume()
    v, at_once = await request
    assert not at_once
    assert v.granted, "600 of 1000 free: the request's own lease must not take its room"


async def test_a_request_refused_while_its_lease_was_refilled_is_admitted_on_the_refill(
    redis_server: RedisServer, replicas: Callable[..., RedisBackend]
) -> None:
    """The refill was sent before the request fell back, so it could not leave the request's room, and
    Redis runs it first: RESERVE finds no room. The request waits for the refill's answer and is admitted
    on the lease it filled. Order made certain: Redis is paused while the refill is written, so it is the
    only command Redis has when it resumes; the event loop is then held (a blocking wait, no await) until
    Redis has run it, so the request falls back with the refill's answer still unread."""
    b = replicas(ttl=600.0, report=60.0)  # the lease loop's own rounds: every 30 s, none in the test
    await warm_up(b)
    before = counts(b)
    cfg = b.lease_config
    assert cfg is not None
    limits: Limits = (1000, None, None, None, None, None)
    amounts = reservation_vector(600, 0)
    lease = b._leases["acme"] = Lease(limits, time.monotonic(), cfg.fraction)
    lease.last_request = amounts  # as after a request the lease could not cover: a refill of >= 600
    plan = lease.plan(time.monotonic(), report_s=cfg.report, ttl_s=cfg.ttl, idle_s=cfg.idle)
    assert plan is not None
    assert plan.want[0] == 600
    redis_server.pause()
    try:
        refill = asyncio.create_task(b._sync("acme", lease, plan, cfg))
        for _ in range(10):
            await asyncio.sleep(0.01)  # written on an open connection, unanswered
        assert lease.syncing
    finally:
        redis_server.resume()
    _hold_until_leased(redis_server, "acme", b._lease_id)  # Redis ran the refill: 600 of 1000 leased
    v, at_once = await verdict(b.reserve("acme", limits, amounts))
    assert not at_once
    assert await refill
    assert v.granted, "the room RESERVE missed is in the request's own lease"
    assert v.hold == LEASED
    used, reserved = await meters(redis_server, "acme")
    assert used[0] + reserved[0] == 600, "admitted once: on the lease, not also by RESERVE"
    asked_once = (before[0], before[1], before[2] + 1)
    assert counts(b) == asked_once, "it asked Redis (once), then its lease admitted it"


async def warm_up(b: RedisBackend) -> None:
    """Scripts loaded and connections open, idle: a command sent while Redis is paused is written at
    once (a new connection's handshake would wait for Redis), and no lease of the warm-up is syncing."""
    warm = await asyncio.gather(
        *(
            verdict(b.reserve(f"warm{i}", (None, None, None, 4, None, None), reservation_vector(1, 0)))
            for i in range(4)
        )
    )
    assert all(v.granted for v, _ in warm)
    await eventually(
        lambda: _true(not any(lease.syncing for lease in b._leases.values())), "warm leases synced"
    )


def _hold_until_leased(server: RedisServer, tenant: str, lease_id: str) -> None:
    """Block the calling thread (and so the event loop) until the lease's hold is in Redis (bounded, well
    below the command timeout)."""
    client = redis.Redis.from_url(server.url)
    try:
        for _ in range(600):
            if client.hexists(f"{PREFIX}{{{tenant}}}:h", lease_id):
                return
            time.sleep(0.005)
    finally:
        client.close()
    raise AssertionError("Redis never ran the refill")


async def test_a_request_that_waits_before_asking_redis_is_admitted_on_the_refill_meanwhile(
    replicas: Callable[..., RedisBackend],
) -> None:
    """The request path may wait between the lease's no and the RESERVE (the stream sends its waiting
    replies first): the refill the request flagged runs meanwhile and takes the room, and the request is
    admitted on it instead of being refused by RESERVE."""
    b = replicas(ttl=LIMIT_TTL)
    limits: Limits = (1000, None, None, None, None, None)
    amounts = reservation_vector(600, 0)
    pending = b.reserve("acme", limits, amounts)
    assert not isinstance(pending, Verdict)
    lease = b._leases["acme"]
    await eventually(lambda: _true(lease.granted[0] >= 600 and not lease.syncing), "the refill")
    v = await pending
    assert v.granted
    assert v.hold == LEASED


def counts(b: RedisBackend) -> tuple[int, int, int]:
    """How the backend's requests were admitted: on the lease at once, on it after a refill, by RESERVE."""
    return b.local_admissions, b.refill_admissions, b.remote_admissions


async def test_the_counts_say_how_each_request_was_admitted(replicas: Callable[..., RedisBackend]) -> None:
    """``/debug/tenants`` ``leases``: a request its lease covers at once, one a refill covered by the time
    its fallback started (no RESERVE sent: it was counted as asking Redis), one that asked Redis, and one
    that went away before its fallback started (it asked nothing: it was counted as asking Redis)."""
    b = replicas(ttl=LIMIT_TTL)
    limits: Limits = (10_000, None, None, None, None, None)
    small = reservation_vector(100, 0)
    first, at_once = await verdict(b.reserve("acme", limits, small))  # no lease yet
    assert first.granted
    assert not at_once
    assert first.hold != LEASED
    assert counts(b) == (0, 0, 1)
    lease = b._leases["acme"]
    await eventually(lambda: _true(lease.free()[0] >= 100 and not lease.syncing), "a lease")
    hit, at_once = await verdict(b.reserve("acme", limits, small))
    assert at_once
    assert hit.hold == LEASED
    assert counts(b) == (1, 0, 1)
    # more than twice the lease's free 900: below its low-water mark for this request, so it is refilled
    big = reservation_vector(2000, 0)
    gone = b.reserve("acme", limits, big)
    assert isinstance(gone, Coroutine)
    gone.close()
    assert counts(b) == (1, 0, 1)
    pending = b.reserve("acme", limits, big)  # the lease's no flags a refill sized for this request
    assert isinstance(pending, Coroutine)
    await eventually(lambda: _true(lease.free()[0] >= big[0] and not lease.syncing), "the refill")
    refilled = await pending
    assert refilled.granted
    assert refilled.hold == LEASED
    assert counts(b) == (1, 1, 1)
    for v, amounts in ((first, small), (hit, small), (refilled, big)):
        b.settle(settlement("acme", amounts, v.hold))


async def test_a_fallback_closed_before_it_started_leaves_its_lease_as_it_was(
    replicas: Callable[..., RedisBackend],
) -> None:
    """A request that goes away before its RESERVE starts (``PendingTicket.cancel`` closes the coroutine)
    took nothing: its lease keeps its free part and goes on syncing. (The give-back was taken when the
    request fell back, so the lease stayed 'syncing' for good: never renewed, its free part out of use.)"""
    b = replicas(ttl=LIMIT_TTL)
    limits: Limits = (10_000, None, None, None, None, None)
    small = reservation_vector(100, 0)
    lease = await _warm_lease(b, "acme", limits, small, 0)
    free = lease.free()[0]
    pending = b.reserve("acme", limits, reservation_vector(free + 1, 0))
    assert isinstance(pending, Coroutine)
    pending.close()
    assert not lease.syncing
    assert lease.free()[0] == free
    v, at_once = await verdict(b.reserve("acme", limits, small))
    assert at_once
    assert v.hold == LEASED
    b.settle(settlement("acme", small, v.hold))


async def test_one_replica_admits_exactly_what_fits_under_concurrent_requests(
    redis_server: RedisServer, replicas: Callable[..., RedisBackend]
) -> None:
    """Waves of concurrent requests on one replica, its lease refilled, given back and raced in the
    background: every request asks the same, so exactly floor(limit / ask) are admitted, no more (the
    limit) and no fewer (a request is refused only when its room is neither in Redis nor in the lease)."""
    rng = random.Random(7)
    b = replicas(ttl=LIMIT_TTL, fraction=0.2)
    limits: Limits = (None, 2000, None, None, None, None)
    amounts = reservation_vector(97, 0)
    running: list[Verdict] = []
    refused = 0
    for _ in range(12):
        wave = await asyncio.gather(*(verdict(b.reserve("acme", limits, amounts)) for _ in range(5)))
        for v, _ in wave:
            if v.granted:
                running.append(v)
            else:
                refused += 1
        for v in rng.sample(running, k=len(running) // 3):  # some end, using what they reserved
            running.remove(v)
            b.settle(settlement("acme", amounts, v.hold))
        await asyncio.sleep(rng.choice([0.0, 0.005, 0.03]))
    admitted = 60 - refused
    assert admitted == 2000 // 97
    for v in running:
        b.settle(settlement("acme", amounts, v.hold))

    async def all_reported() -> bool:
        used, _ = await meters(redis_server, "acme")
        return used[1] == admitted * 97

    await eventually(all_reported, "usage reported")


@pytest.mark.parametrize("seed", [0, 1])
async def test_three_replicas_with_concurrent_requests_never_pass_the_limit(
    redis_server: RedisServer, replicas: Callable[..., RedisBackend], seed: int
) -> None:
    """Waves of concurrent requests on three replicas (fallbacks racing refills, give-backs and each
    other): what is admitted never passes a limit, and Redis's used + reserved stays within it."""
    rng = random.Random(seed)
    backends = [replicas(idle=0.3, ttl=LIMIT_TTL) for _ in range(3)]
    limits: Limits = (None, 6000, None, 10, 20_000, None)
    running: list[tuple[RedisBackend, Vector, str]] = []
    admitted_tokens = admitted_cost = 0
    for _ in range(15):
        asks = [
            (rng.choice(backends), reservation_vector(rng.randint(10, 500), rng.randint(0, 1500)))
            for _ in range(rng.randint(1, 8))
        ]
        wave = await asyncio.gather(*(verdict(b.reserve("shared", limits, a)) for b, a in asks))
        for (b, a), (v, _) in zip(asks, wave, strict=True):
            if v.granted:
                running.append((b, a, v.hold))
                admitted_tokens += a[1]
                admitted_cost += a[4]
        assert sum(1 for _ in running) <= 10
        for owner, a, hold in rng.sample(running, k=rng.randint(0, len(running))):
            running.remove((owner, a, hold))
            owner.settle(settlement("shared", a, hold))
        used, reserved = await meters(redis_server, "shared")
        for i, limit in enumerate(limits):
            if limit is not None:
                assert used[i] + reserved[i] <= limit, (i, used, reserved)
        await asyncio.sleep(rng.choice([0.0, 0.01, 0.05]))
    assert admitted_tokens <= 6000
    assert admitted_cost <= 20_000
    for owner, a, hold in running:
        owner.settle(settlement("shared", a, hold))
