"""Budgets in Redis, shared by every EPP replica: the same arithmetic as the memory backend, in Lua.

Why scripts: a reservation reads six meters, checks six limits and writes six reservations; two replicas
doing that as separate commands could both see room for the last request and both admit it. A Lua script
runs atomically in Redis, so replicas cannot double-spend. The arithmetic is
:mod:`picker.tenants.ledger`'s (integers; Lua numbers are doubles, exact to 2**53: 9 million currency
units in nano-units, 9e15 tokens).

Keys (``keyPrefix``, default ``picker:tenants:``; ``{tenant}`` hash-tags keep one tenant's keys in one
Redis Cluster slot):

* ``<prefix>{<tenant>}:m`` - a hash of the six meters: ``w<i>`` window id, ``u<i>`` used, ``r<i>``
  reserved, and ``v``, a version every script's change increments (so the replies of several processes can
  be put in order). Expires 40 days after its last change (longer than the monthly window).
* ``<prefix>{<tenant>}:h`` + ``:z`` - the open reservations: amounts by reservation id, and the id's expiry
  time (``reservationTtl`` after admission, 15 min). A replica that dies with streams open cannot leak
  their reservations: every admission first releases expired ones. A settlement subtracts its reservation
  only if it is still held, so an expired one is never given back twice.
* ``<prefix>{<tenant>}:l`` - the replicas' leases of the tenant and their expiry (the lease TTL, 30 s,
  renewed by every sync): how many replicas share what is left.

Leases (``lease``, on by default; :mod:`picker.tenants.lease`): a request its replica's lease covers is
admitted without I/O; the LEASE script refills the lease below its low-water mark, reports settled usage
(every ``lease.report``), gives an idle lease back, all in :meth:`RedisBackend.run`'s background. A request
the lease does not cover is reserved by RESERVE as without leases, giving the lease's free part back in the
same script; a lease never refuses its own replica's request (:meth:`RedisBackend._reserve`). Redis
down: a lease keeps admitting until half its TTL passes without a sync, then the fail mode applies.

Failures: a command that fails or takes longer than ``timeout`` marks Redis down. Then ``failMode: open``
admits requests unchecked (their usage is still counted locally and queued, up to
:data:`MAX_PENDING` settlements, for Redis when it is back) and ``closed`` refuses them with 503; each
change of state logs one line saying which, and ``picker_tenant_backend_up`` /
``picker_tenant_backend_failures_total{fail_mode}`` count it. While down, a probe pings every
:data:`PROBE_S`; redis-py reconnects, and scripts are reloaded if the server lost them (a restart).

Why one module: the client side of the three scripts (:mod:`picker.tenants.redis_scripts`: packing their
arguments, reading their replies, the writer and the lease loop that call them) shares one connection, one
up/down state and one view of each tenant's meters; split, each half would reach into the other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from picker.config.tenants import LeaseConfig, RedisConfig
from picker.errors import ConfigError, TenantUnavailable
from picker.tenants.backend import AccountView, NullSink, Settlement, UsageSink, Verdict
from picker.tenants.inflight import Inflight
from picker.tenants.lease import LEASED, Lease, LeasePlan, vector
from picker.tenants.ledger import (
    N_METERS,
    Denial,
    Limits,
    Vector,
    now_wall,
    window_end,
    window_ids,
)
from picker.tenants.redis_meters import MAX_SEEN, SeenMeters
from picker.tenants.redis_scripts import LEASE, REPLY_HAD, REPLY_HOLD, REPLY_REPLICAS, RESERVE, SETTLE

__all__ = ["MAX_PENDING", "PROBE_S", "RedisBackend"]

log = logging.getLogger(__name__)

MAX_PENDING: Final = 10_000
PROBE_S: Final = 1.0
ACCOUNT_TTL_S: Final = 40 * 86400
RESERVATION_TTL_S: Final = 900.0
_ZERO: Final = (0, 0, 0, 0, 0, 0)
_NONE: Final = (None, None, None, None, None, None)


class RedisBackend:
    """The :class:`picker.tenants.backend.Backend` of several replicas. :meth:`run` keeps the writer and
    the probe going; constructing it opens no connection."""

    def __init__(
        self,
        cfg: RedisConfig,
        *,
        sink: UsageSink | None = None,
        clock: Callable[[], float] = now_wall,
        monotonic: Callable[[], float] = time.monotonic,
        reservation_ttl_s: float = RESERVATION_TTL_S,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._monotonic = monotonic
        self._lease_cfg = cfg.lease if cfg.lease.enabled else None
        #: this replica's lease of each active tenant's budget (:mod:`picker.tenants.lease`)
        self._leases: dict[str, Lease] = {}
        self._lease_wake = asyncio.Event()
        #: tenants whose lease the request path wants synced soon
        self._lease_due: set[str] = set()
        self._lease_script: Any = None
        #: RESERVEs in flight per tenant (a sync leaves their room), requests waiting for a lease's hold
        self._inflight = Inflight()
        #: requests admitted on their lease at once; on it once their fallback started (a refill, or a
        #: settlement, made it cover them meanwhile: no RESERVE); and those that sent a RESERVE (the
        #: fallback, or leases off; counted once when a refused one is tried again). A request is in one at
        #: most (in none: admitted unchecked while Redis was down, or gone before its fallback started).
        self.local_admissions = 0
        self.refill_admissions = 0
        self.remote_admissions = 0
        self._sink: UsageSink = sink if sink is not None else NullSink()
        self._reservation_ttl = reservation_ttl_s
        self._client: Any = None
        self._reserve_script: Any = None
        self._settle_script: Any = None
        self._pending: deque[Settlement] = deque()
        self._wake = asyncio.Event()
        self._up = True
        self._ids = itertools.count()
        # random, not the pid and address: in identical containers the workers' pids are the same, and
        # the low bits of an address repeat with the allocation order, so two replicas would share ids
        self._replica = f"{os.getpid():x}{secrets.token_hex(6)}"
        #: the id of this replica's leases (one per tenant, each in its tenant's keys)
        self._lease_id = f"L{self._replica}"
        #: the meters of each tenant as the last script reply showed them
        self._seen = SeenMeters(clock)
        self._sink.backend_up(up=True)

    # ------------------------------------------------------------------------------------- plumbing
    def set_sink(self, sink: UsageSink) -> None:
        self._sink = sink

    def _connect(self) -> Any:
        if self._client is None:
            password = None
            if self._cfg.password_file:
                try:
                    password = Path(self._cfg.password_file).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"tenants.backend.redis.passwordFile: {exc}") from exc
            self._client = aioredis.Redis.from_url(
                self._cfg.url,
                password=password,
                socket_timeout=self._cfg.timeout,
                socket_connect_timeout=self._cfg.timeout,
                health_check_interval=0,
            )
            self._reserve_script = self._client.register_script(RESERVE)
            self._settle_script = self._client.register_script(SETTLE)
            self._lease_script = self._client.register_script(LEASE)
        return self._client

    def _keys(self, tenant: str) -> list[str]:
        base = f"{self._cfg.key_prefix}{{{tenant}}}"
        return [f"{base}:m", f"{base}:h", f"{base}:z", f"{base}:l"]

    def _mark(self, up: bool, error: BaseException | None = None) -> None:
        if up == self._up:
            return
        self._up = up
        self._sink.backend_up(up=up)
        self._wake.set()
        if up:
            log.warning("tenants: Redis %s answers again; enforcing budgets", self._cfg.url)
        else:
            what = (
                "admitting requests without enforcing budgets (failMode open)"
                if self._cfg.fail_mode == "open"
                else ("refusing requests with 503 (failMode closed)")
            )
            log.error("tenants: Redis %s is unavailable (%s); %s", self._cfg.url, type(error).__name__, what)

    @property
    def lease_config(self) -> LeaseConfig | None:
        """The leases' settings; None when leases are off (every admission asks Redis)."""
        return self._lease_cfg

    @property
    def up(self) -> bool:
        return self._up

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> list[int]:
        """One script call. The arguments travel as one comma-joined string and the reply comes back as
        one (the scripts split and join): on the client that is one argument to encode and one bulk
        string to parse instead of 28 and 14, about a third of the call's CPU in redis-py."""
        client = self._connect()
        packed = [",".join(map(str, args))]
        async with asyncio.timeout(self._cfg.timeout * 2):
            try:
                reply = await script(keys=keys, args=packed, client=client)
            except NoScriptError:  # pragma: no cover - redis-py's Script reloads on NOSCRIPT itself
                reply = await script(keys=keys, args=packed, client=client)
        return [int(x) for x in reply.split(b",")]

    # ------------------------------------------------------------------------------------- backend
    def reserve(self, tenant: str, limits: Limits | None, amounts: Vector) -> Verdict | Any:
        """On this replica's lease when it covers the request (no I/O); else one RESERVE script (which
        gives the lease's free part back), awaited; Redis down: the fail mode."""
        lease_cfg = self._lease_cfg
        lease: Lease | None = None
        if lease_cfg is not None:
            lease = self._leases.get(tenant)
            now = self._monotonic()
            if lease is None:
                if len(self._leases) < MAX_SEEN:
                    lease = self._leases[tenant] = Lease(limits, now, lease_cfg.fraction)
            elif lease.limits != limits:
                lease.change_limits(limits)
            if lease is not None:
                if lease.admit(amounts, now):
                    self.local_admissions += 1
                    if lease.limited and lease.low():
                        self._lease_due.add(tenant)
                        self._lease_wake.set()
                    return self._leased(tenant, lease, limits)
                self._lease_due.add(tenant)
                self._lease_wake.set()
        if not self._up:
            return self._degraded(tenant)
        return self._reserve(tenant, limits, amounts, lease)

    def _leased(self, tenant: str, lease: Lease, limits: Limits | None) -> Verdict:
        """The verdict of a request admitted on the lease (:meth:`SeenMeters.remaining`)."""
        ids = window_ids(self._clock())
        if limits is None:
            return Verdict(None, _NONE, ids, hold=LEASED)
        return Verdict(None, self._seen.remaining(tenant, limits, lease), ids, hold=LEASED)

    async def _reserve(
        self, tenant: str, limits: Limits | None, amounts: Vector, lease: Lease | None, *, again: bool = True
    ) -> Verdict:
        """The fallback, decided when it starts (the request may have waited since :meth:`reserve`, and a
        coroutine closed before it starts must have taken nothing): on the lease if a refill made it cover
        the request meanwhile, else one RESERVE, which gives the lease's free part back unless another
        change of the lease's hold is in flight (one at a time). A RESERVE refused while such a change was
        in flight (a sync, another request's give-back) may have looked while the room was in the lease (a
        sync Redis ran first took it) or on its way out: once the change is answered the request tries all
        this once more. So a request is refused only when what it asks is neither free in Redis nor free in
        its replica's lease. (A sync sent while this RESERVE is in flight leaves room for it: ``_sync``.)"""
        give_back: Vector | None = None
        if lease is not None:
            if lease.admit(amounts, self._monotonic()):
                if again:  # (else: counted when its first RESERVE was sent)
                    self.refill_admissions += 1
                return self._leased(tenant, lease, limits)
            if not lease.syncing and any(lease.granted):
                lease.syncing = True
                give_back = lease.take_free()
        raced = lease is not None and give_back is None and lease.syncing
        if again:
            self.remote_admissions += 1
        verdict = await self._ask(tenant, limits, amounts, lease, give_back)
        if lease is None or not raced or not again or verdict.granted or verdict.degraded:
            return verdict
        settled = await self._inflight.settled(tenant, lease, self._cfg.timeout * 4)
        if not settled or self._leases.get(tenant) is not lease:
            return verdict
        return await self._reserve(tenant, limits, amounts, lease, again=False)

    async def _ask(
        self,
        tenant: str,
        limits: Limits | None,
        amounts: Vector,
        lease: Lease | None,
        give_back: Vector | None,
    ) -> Verdict:
        """One RESERVE; with ``give_back``, the free part of ``lease`` it gives back (the lease's change of
        its hold, ended when answered)."""
        turn = lease if give_back is not None else None
        now = self._clock()
        ids = window_ids(now)
        hold = f"{self._replica}:{next(self._ids)}"
        args: list[Any] = [
            now,
            *ids,
            *amounts,
            *(-1 if limits is None or x is None else x for x in (limits or (None,) * N_METERS)),
            hold,
            now + self._reservation_ttl,
            ACCOUNT_TTL_S,
            self._lease_id if give_back is not None else "-",
            *(give_back or _ZERO),
        ]
        call = asyncio.ensure_future(self._call(self._reserve_script_or_connect(), self._keys(tenant), args))
        if lease is not None:  # (leases off: no LEASE to leave room, nothing to count)
            self._inflight.add(tenant, amounts, 1)
            call.add_done_callback(lambda _done: self._inflight.add(tenant, amounts, -1))
        try:
            reply = await asyncio.shield(call)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(False, exc)
            self._gave_back(tenant, turn, give_back, None)
            return self._degraded(tenant)
        except asyncio.CancelledError:
            # the request went away while Redis answered: the call goes on (shielded), and if it granted,
            # the writer gives the hold back instead of leaving it to its 15-minute expiry
            call.add_done_callback(lambda done: self._give_back(done, tenant, hold, turn, give_back))
            raise
        self._mark(True)
        self._gave_back(tenant, turn, give_back, reply)
        granted, meter = reply[0], reply[1]
        used = tuple(reply[2:8])
        reserved = tuple(reply[8:14])
        self._seen.remember(tenant, used, reserved, limits, ids, version=reply[14])
        remaining = tuple(
            None if limits is None or limits[i] is None else max(0, limits[i] - used[i] - reserved[i])  # type: ignore[operator]
            for i in range(N_METERS)
        )
        if granted:
            return Verdict(None, remaining, ids, hold=hold)
        limit = limits[meter] if limits is not None else None
        assert limit is not None
        denial = Denial(
            meter, limit, used[meter] + reserved[meter], amounts[meter], window_end(meter, ids[meter])
        )
        return Verdict(denial, remaining, ids)

    def _gave_back(
        self, tenant: str, turn: Lease | None, give_back: Vector | None, reply: list[int] | None
    ) -> None:
        """A RESERVE that gave the lease's free part back was answered (or failed: then the hold is as it
        was, and the free part stays unused until the lease's next sync)."""
        if turn is None:
            return
        if reply is not None and give_back is not None:
            turn.gave_back(vector(reply[REPLY_HOLD]), had=bool(reply[REPLY_HAD]))
        self._inflight.changed(tenant, turn)

    def _give_back(
        self,
        call: asyncio.Future[list[int]],
        tenant: str,
        hold: str,
        turn: Lease | None,
        give_back: Vector | None,
    ) -> None:
        failed = call.cancelled() or call.exception() is not None
        self._gave_back(tenant, turn, give_back, None if failed else call.result())
        if not failed and call.result()[0]:
            self._queue(Settlement(tenant, "", _ZERO, _ZERO, 0, 0, 0, hold=hold))

    def _reserve_script_or_connect(self) -> Any:
        self._connect()
        return self._reserve_script

    def _degraded(self, tenant: str) -> Verdict:
        self._sink.backend_failure(self._cfg.fail_mode)
        if self._cfg.fail_mode == "closed":
            raise TenantUnavailable(
                f"the budget store is unavailable; request for tenant {tenant} refused (failMode closed)",
                reason="backend_unavailable",
                headers=(("retry-after", "1"),),
            )
        return Verdict(None, (None,) * N_METERS, window_ids(self._clock()), degraded=True)

    def settle(self, s: Settlement) -> None:
        """Queue the settlement for the writer (never blocks the stream); counted locally at once. A
        request admitted on the lease settles on it (reported with the lease's next sync)."""
        self._sink.settled(s)
        if s.hold == LEASED:
            lease = self._leases.get(s.tenant)
            if lease is not None:
                lease.settle(s.reserved, s.actual)
                return
            s = s._replace(hold="")  # (cannot happen: a lease with a running request is kept)
        self._queue(s)

    def _queue(self, s: Settlement) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            log.warning(
                "tenants: more than %d settlements waiting for Redis; dropping the oldest", MAX_PENDING
            )
        self._pending.append(s)
        self._wake.set()

    def rejected(self, tenant: str, reason: str) -> None:
        self._sink.rejected(tenant, reason)

    def accounts(self) -> Iterator[AccountView]:
        """Each tenant's meters as the last script reply showed them (Redis is not read at scrape time)."""
        return self._seen.accounts()

    def take_changed(self) -> list[list[Any]]:
        """:meth:`SeenMeters.take_changed`: what a ``--workers`` worker passes to the supervisor."""
        return self._seen.take_changed()

    def observe(self, views: list[list[Any]]) -> None:
        """:meth:`SeenMeters.observe`: the meters a ``--workers`` worker passed on."""
        self._seen.observe(views)

    # ------------------------------------------------------------------------------------- tasks
    async def run(self) -> None:
        """Write queued settlements (while Redis is down, probe it) and keep the leases synced. Runs until
        cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._write(), name="tenants-redis-writer")
            if self._lease_cfg is not None:
                tasks.create_task(self._lease_loop(self._lease_cfg), name="tenants-redis-leases")

    async def _lease_loop(self, cfg: LeaseConfig) -> None:
        """Sync the leases that need it: those the request path flagged (below the low-water mark, or
        not covering a request) at once, all of them every half report interval. The round of all is
        timed, not run on a quiet tick: a tenant at its limit flags its lease at every request, and
        woken that often the loop would never renew the other tenants' leases, which then lapse with
        the running requests and unreported usage they cover."""
        tick = cfg.report / 2
        last_round = self._monotonic()
        while True:
            if not self._lease_due:
                self._lease_wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, last_round + tick - self._monotonic())):
                        await self._lease_wake.wait()
            if not self._up:
                self._lease_due.clear()
                await asyncio.sleep(tick)
                continue
            now = self._monotonic()
            if now - last_round >= tick:
                last_round = now
                tenants = list(self._leases)
            else:
                tenants = list(self._lease_due)
            self._lease_due.clear()
            for tenant in tenants:
                lease = self._leases.get(tenant)
                if lease is None:
                    continue
                plan = lease.plan(now, report_s=cfg.report, ttl_s=cfg.ttl, idle_s=cfg.idle)
                if plan is None:
                    if lease.idle() and now - lease.last_used >= cfg.idle:
                        del self._leases[tenant]
                    continue
                synced = await self._sync(tenant, lease, plan, cfg)
                _stop_if_cancelled()
                if not synced:
                    break

    async def _sync(self, tenant: str, lease: Lease, plan: LeasePlan, cfg: LeaseConfig) -> bool:
        """One LEASE script for one lease; False when Redis did not answer (usage stays to report)."""
        wall = self._clock()
        ids = window_ids(wall)
        limits = lease.limits
        args: list[Any] = [
            wall,
            *ids,
            *plan.spent,
            *plan.give_back,
            *plan.want,
            *plan.need,
            *(-1 if x is None else x for x in (limits or _NONE)),
            self._lease_id,
            wall + cfg.ttl,
            ACCOUNT_TTL_S,
            *self._inflight.asking(tenant),
        ]
        lease.syncing = True
        try:
            self._connect()
            reply = await self._call(self._lease_script, self._keys(tenant), args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(False, exc)
            return False
        finally:
            self._inflight.changed(tenant, lease)
        self._mark(True)
        lease.applied(
            plan,
            vector(reply[REPLY_HOLD]),
            reply[REPLY_REPLICAS],
            ok=bool(reply[0]),
            had=bool(reply[REPLY_HAD]),
            ttl_s=cfg.ttl,
        )
        self._seen.remember(tenant, tuple(reply[2:8]), tuple(reply[8:14]), limits, ids, version=reply[14])
        return True

    async def _write(self) -> None:
        while True:
            if not self._up:
                await self._probe()
                _stop_if_cancelled()
                continue
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._write_one()
            _stop_if_cancelled()

    async def _write_one(self) -> bool:
        """Write the oldest queued settlement; False when Redis did not answer (it stays queued)."""
        s = self._pending[0]
        now = self._clock()
        args: list[Any] = [now, *window_ids(now), *s.actual, s.hold or "-", ACCOUNT_TTL_S]
        try:
            self._connect()
            reply = await self._call(self._settle_script, self._keys(s.tenant), args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(False, exc)
            return False
        self._pending.popleft()
        seen = self._seen.get(s.tenant)
        self._seen.remember(
            s.tenant,
            tuple(reply[2:8]),
            tuple(reply[8:14]),
            seen[2] if seen else None,
            window_ids(now),
            version=reply[14],
        )
        return True

    async def _probe(self) -> None:
        await asyncio.sleep(PROBE_S)
        try:
            async with asyncio.timeout(self._cfg.timeout * 4):
                await self._connect().ping()
        except (RedisError, OSError, TimeoutError):
            return
        self._mark(True)

    async def probe_now(self) -> bool:
        """Ping once (tests, readiness); marks the state."""
        try:
            async with asyncio.timeout(self._cfg.timeout * 4):
                await self._connect().ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(False, exc)
            return False
        self._mark(True)
        return True

    def lease_views(self) -> dict[str, dict[str, Any]]:
        """``/debug/tenants``: this replica's lease of each tenant (:meth:`Lease.view`)."""
        now = self._monotonic()
        return {tenant: lease.view(now) for tenant, lease in list(self._leases.items())}

    async def give_back_leases(self) -> None:
        """Shutdown: report what the leases' requests used and give their free parts back, so the other
        replicas need not wait for the leases' TTL (best effort, bounded by the command timeout)."""
        cfg = self._lease_cfg
        if cfg is None or self._client is None or not self._up:
            return
        now = self._monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._cfg.timeout * 4):
                for tenant, lease in list(self._leases.items()):
                    if lease.syncing:
                        continue
                    plan = LeasePlan(vector(lease.spent), lease.take_free(), _ZERO, _ZERO, now, False)
                    if (any(plan.spent) or any(plan.give_back)) and not await self._sync(
                        tenant, lease, plan, cfg
                    ):
                        return

    async def close(self) -> None:
        """Flush what is queued for Redis and give the leases back (best effort, bounded by the command
        timeout; :meth:`run` must have stopped), then disconnect."""
        if self._client is not None and self._up:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._cfg.timeout * 4):
                    while self._pending and await self._write_one():
                        pass
        await self.give_back_leases()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def pending(self) -> int:
        return len(self._pending)


def _stop_if_cancelled() -> None:
    """A background loop was cancelled while redis-py answered: redis-py may turn the cancellation into
    a connection error (its own handling of a cancelled read), which the loop would take for Redis being
    down and go on; the task's pending cancellation is honoured here instead."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
