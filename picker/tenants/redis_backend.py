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

Failures: a command that fails or takes longer than ``timeout`` marks Redis down. Then ``failMode: open``
admits requests unchecked (their usage is still counted locally and queued, up to
:data:`MAX_PENDING` settlements, for Redis when it is back) and ``closed`` refuses them with 503; each
change of state logs one line saying which, and ``picker_tenant_backend_up`` /
``picker_tenant_backend_failures_total{fail_mode}`` count it. While down, a probe pings every
:data:`PROBE_S`; redis-py reconnects, and scripts are reloaded if the server lost them (a restart).

Why one module: the Lua scripts and the client code that packs their arguments and reads their replies
share one positional layout (a field added to a reply, like the version, is read three places below);
split, neither half can be read or changed without the other open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from picker.config.tenants import RedisConfig
from picker.errors import ConfigError, TenantUnavailable
from picker.tenants.backend import AccountView, NullSink, Settlement, UsageSink, Verdict
from picker.tenants.ledger import (
    COST_MONTH,
    N_METERS,
    Denial,
    Limits,
    Vector,
    now_wall,
    window_end,
    window_ids,
)

__all__ = ["MAX_PENDING", "PROBE_S", "RedisBackend"]

log = logging.getLogger(__name__)

MAX_PENDING: Final = 10_000
#: tenants whose last seen meters are kept (``/debug/tenants`` and the window gauges)
MAX_SEEN: Final = 100_000
PROBE_S: Final = 1.0
ACCOUNT_TTL_S: Final = 40 * 86400
RESERVATION_TTL_S: Final = 900.0
_ZERO: Final = (0, 0, 0, 0, 0, 0)

# Shared by both scripts: load the meters (rolled to the current windows) and drop expired reservations.
_LOAD: Final = """
local m, h, z = KEYS[1], KEYS[2], KEYS[3]
local A = {}
for x in string.gmatch(ARGV[1], '[^,]+') do A[#A + 1] = x end
local now = tonumber(A[1])
local w, u, r = {}, {}, {}
local raw = redis.call('HMGET', m, 'w0','u0','r0','w1','u1','r1','w2','u2','r2',
                                   'w3','u3','r3','w4','u4','r4','w5','u5','r5')
for i = 1, 6 do
  w[i] = tonumber(raw[3*i-2]) or -1
  u[i] = tonumber(raw[3*i-1]) or 0
  r[i] = tonumber(raw[3*i]) or 0
  local id = tonumber(A[1 + i])
  if w[i] ~= id then w[i] = id; u[i] = 0 end
end
local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
for _, hold in ipairs(expired) do
  local amounts = redis.call('HGET', h, hold)
  if amounts then
    local i = 1
    for a in string.gmatch(amounts, '[^,]+') do r[i] = math.max(0, r[i] - tonumber(a)); i = i + 1 end
    redis.call('HDEL', h, hold)
  end
  redis.call('ZREM', z, hold)
end
local version = 0
local function save(ttl)
  local args = {}
  for i = 1, 6 do
    local k = i - 1
    table.insert(args, 'w'..k); table.insert(args, w[i])
    table.insert(args, 'u'..k); table.insert(args, u[i])
    table.insert(args, 'r'..k); table.insert(args, r[i])
  end
  redis.call('HSET', m, unpack(args))
  version = redis.call('HINCRBY', m, 'v', 1)
  redis.call('EXPIRE', m, ttl)
end
local function state(code, meter)
  local out = {code, meter}
  for i = 1, 6 do out[#out + 1] = string.format('%d', u[i]) end
  for i = 1, 6 do out[#out + 1] = string.format('%d', r[i]) end
  out[#out + 1] = string.format('%d', version)
  return table.concat(out, ',')
end
"""

#: KEYS m h z; ARGV[1] = "now,ids[6],amounts[6],limits[6] (-1 = none),hold id,hold expiry,ttl"
_RESERVE: Final = (
    _LOAD
    + """
local a, limit = {}, {}
for i = 1, 6 do
  a[i] = tonumber(A[7 + i])
  limit[i] = tonumber(A[13 + i])
end
for i = 1, 6 do
  if limit[i] >= 0 and u[i] + r[i] + a[i] > limit[i] then
    save(tonumber(A[22]))
    return state(0, i - 1)
  end
end
local amounts = {}
for i = 1, 6 do r[i] = r[i] + a[i]; amounts[i] = a[i] end
redis.call('HSET', h, A[20], table.concat(amounts, ','))
redis.call('ZADD', z, tonumber(A[21]), A[20])
redis.call('EXPIRE', h, tonumber(A[22]))
redis.call('EXPIRE', z, tonumber(A[22]))
save(tonumber(A[22]))
return state(1, -1)
"""
)

#: KEYS m h z; ARGV[1] = "now,ids[6],actual[6],hold id (- = nothing held),ttl"
_SETTLE: Final = (
    _LOAD
    + """
local hold = A[14]
if hold ~= '-' then
  local amounts = redis.call('HGET', h, hold)
  if amounts then
    local i = 1
    for x in string.gmatch(amounts, '[^,]+') do r[i] = math.max(0, r[i] - tonumber(x)); i = i + 1 end
    redis.call('HDEL', h, hold)
    redis.call('ZREM', z, hold)
  end
end
for i = 1, 6 do u[i] = u[i] + tonumber(A[7 + i]) end
save(tonumber(A[15]))
return state(1, -1)
"""
)


#: used, reserved, limits, window ids, and the version of the account the script reply showed
_Seen = tuple[tuple[int, ...], tuple[int, ...], Limits | None, tuple[int, ...], int]


class RedisBackend:
    """The :class:`picker.tenants.backend.Backend` of several replicas. :meth:`run` keeps the writer and
    the probe going; constructing it opens no connection."""

    def __init__(
        self,
        cfg: RedisConfig,
        *,
        sink: UsageSink | None = None,
        clock: Callable[[], float] = now_wall,
        reservation_ttl_s: float = RESERVATION_TTL_S,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._sink: UsageSink = sink if sink is not None else NullSink()
        self._reservation_ttl = reservation_ttl_s
        self._client: Any = None
        self._reserve_script: Any = None
        self._settle_script: Any = None
        self._pending: deque[Settlement] = deque()
        self._wake = asyncio.Event()
        self._up = True
        self._ids = itertools.count()
        self._replica = f"{os.getpid():x}{id(self) & 0xFFFF:x}"
        #: the meters of each tenant as the last script reply showed them
        self._seen: dict[str, _Seen] = {}
        #: tenants whose entry in ``_seen`` changed since :meth:`take_changed`
        self._changed: set[str] = set()
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
            self._reserve_script = self._client.register_script(_RESERVE)
            self._settle_script = self._client.register_script(_SETTLE)
        return self._client

    def _keys(self, tenant: str) -> list[str]:
        base = f"{self._cfg.key_prefix}{{{tenant}}}"
        return [f"{base}:m", f"{base}:h", f"{base}:z"]

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
        if not self._up:
            return self._degraded(tenant)
        return self._reserve(tenant, limits, amounts)

    async def _reserve(self, tenant: str, limits: Limits | None, amounts: Vector) -> Verdict:
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
        ]
        call = asyncio.ensure_future(self._call(self._reserve_script_or_connect(), self._keys(tenant), args))
        try:
            reply = await asyncio.shield(call)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(False, exc)
            return self._degraded(tenant)
        except asyncio.CancelledError:
            # the request went away while Redis answered: the call goes on (shielded), and if it granted,
            # the writer gives the hold back instead of leaving it to its 15-minute expiry
            call.add_done_callback(lambda done: self._give_back(done, tenant, hold))
            raise
        self._mark(True)
        granted, meter = reply[0], reply[1]
        used = tuple(reply[2:8])
        reserved = tuple(reply[8:14])
        self._remember(tenant, used, reserved, limits, ids, version=reply[14])
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

    def _give_back(self, call: asyncio.Future[list[int]], tenant: str, hold: str) -> None:
        if not call.cancelled() and call.exception() is None and call.result()[0]:
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
        """Queue the settlement for the writer (never blocks the stream); counted locally at once."""
        self._sink.settled(s)
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

    def _remember(
        self,
        tenant: str,
        used: tuple[int, ...],
        reserved: tuple[int, ...],
        limits: Limits | None,
        ids: Vector,
        *,
        version: int,
    ) -> None:
        if tenant in self._seen or len(self._seen) < MAX_SEEN:
            self._seen[tenant] = (used, reserved, limits, ids, version)
            self._changed.add(tenant)

    def accounts(self) -> Iterator[AccountView]:
        """Each tenant's meters as the last script reply showed them (Redis is not read at scrape time)."""
        ids = window_ids(self._clock())
        for tenant, (used, reserved, limits, seen_ids, _version) in self._seen.items():
            current = tuple(u if seen_ids[i] == ids[i] else 0 for i, u in enumerate(used))
            yield AccountView(tenant, current, reserved, limits, ids)

    def take_changed(self) -> list[list[Any]]:
        """The meters of every tenant whose script reply changed them since the last call, as plain data
        for :meth:`observe` in another process: ``[tenant, used, reserved, limits, windows, version]``."""
        out = []
        for tenant in self._changed:
            seen = self._seen.get(tenant)
            if seen is not None:
                used, reserved, limits, ids, version = seen
                plain_limits = None if limits is None else list(limits)
                out.append([tenant, list(used), list(reserved), plain_limits, list(ids), version])
        self._changed.clear()
        return out

    def observe(self, views: list[list[Any]]) -> None:
        """Meters another process's replies showed (a ``--workers`` worker's :meth:`take_changed`), kept
        where they are newer than what this backend saw. Redis holds one state per tenant and every reply
        shows all of it, so the newest reply of any process is the whole truth and nothing is added up.
        Newest: the later month, then the higher version (the account's change count in Redis; it
        restarts when an idle account expires, 40 days on, by when the month has changed)."""
        for tenant, used, reserved, limits, ids, version in views:
            seen = self._seen.get(tenant)
            if seen is None or (seen[3][COST_MONTH], seen[4]) <= (ids[COST_MONTH], version):
                lim = None if limits is None else tuple(limits)
                self._remember(tenant, tuple(used), tuple(reserved), lim, tuple(ids), version=int(version))

    # ------------------------------------------------------------------------------------- tasks
    async def run(self) -> None:
        """Write queued settlements; while Redis is down, probe it. Runs until cancelled."""
        while True:
            if not self._up:
                await self._probe()
                continue
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            s = self._pending[0]
            now = self._clock()
            args: list[Any] = [now, *window_ids(now), *s.actual, s.hold or "-", ACCOUNT_TTL_S]
            try:
                self._connect()
                reply = await self._call(self._settle_script, self._keys(s.tenant), args)
            except (RedisError, OSError, TimeoutError) as exc:
                self._mark(False, exc)
                continue
            self._pending.popleft()
            seen = self._seen.get(s.tenant)
            self._remember(
                s.tenant,
                tuple(reply[2:8]),
                tuple(reply[8:14]),
                seen[2] if seen else None,
                window_ids(now),
                version=reply[14],
            )

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

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def pending(self) -> int:
        return len(self._pending)
