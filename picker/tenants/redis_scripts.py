"""The Lua scripts of the Redis backend, and the positional layout of their arguments and replies.

Every script takes ``KEYS = m h z l`` (``<prefix>{<tenant>}:`` + ``m`` meters, ``h`` holds, ``z`` hold
expiries, ``l`` leases; one tenant's keys share a Redis Cluster slot) and one argument: the fields below
joined with commas (one string to encode instead of 40); it answers one comma-joined string. The client
side, which packs and reads these layouts, is :mod:`picker.tenants.redis_backend`; a field added here is
read there (the index constants below are shared).

Reply (every script): ``code, detail, used[6], reserved[6], version, replicas, lease hold[6], had``:

* RESERVE: ``code`` 1 granted / 0 refused, ``detail`` the refusing meter (-1);
* SETTLE: 1, -1;
* LEASE: ``code`` 1 unless a refill was asked and refused, ``detail`` 1 if the lease's hold was still
  there (0: expired, or lost in a restart);
* ``replicas``: live leases of the tenant counting the caller's (LEASE only, else 0); ``lease hold``: the
  caller's lease hold after the script (RESERVE gives its free part back, LEASE moves it).

Numbers are Lua doubles, exact to 2**53; every number written back or answered goes through ``%d``
(Lua's default formatting keeps 14 digits).
"""

from __future__ import annotations

from typing import Final

__all__ = ["LEASE", "REPLY_HAD", "REPLY_HOLD", "REPLY_REPLICAS", "RESERVE", "SETTLE"]

REPLY_REPLICAS: Final = 15
REPLY_HOLD: Final = slice(16, 22)
REPLY_HAD: Final = 22

# Shared by every script: load the meters (rolled to the current windows) and drop expired holds.
_LOAD: Final = """
local m, h, z, l = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
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
local function ints(v)
  local out = {}
  for i = 1, #v do out[i] = string.format('%d', v[i]) end
  return table.concat(out, ',')
end
local function hold_of(id)
  local cur, had = {0, 0, 0, 0, 0, 0}, 0
  local amounts = redis.call('HGET', h, id)
  if amounts then
    had = 1
    local i = 1
    for x in string.gmatch(amounts, '[^,]+') do cur[i] = tonumber(x); i = i + 1 end
  end
  return cur, had
end
local function put_hold(id, cur)
  for i = 1, 6 do
    if cur[i] > 0 then redis.call('HSET', h, id, ints(cur)); return true end
  end
  redis.call('HDEL', h, id); redis.call('ZREM', z, id); redis.call('ZREM', l, id)
  return false
end
local function reply(code, detail, replicas, cur, had)
  return string.format('%d,%d,', code, detail) .. ints(u) .. ',' .. ints(r) ..
    string.format(',%d,%d,', version, replicas) .. ints(cur) .. string.format(',%d', had)
end
"""

#: ARGV[1] = "now, ids[6], amounts[6], limits[6] (-1 = none), hold id, hold expiry, ttl,
#: lease id (- = none), lease give-back[6]"
RESERVE: Final = (
    _LOAD
    + """
local a, limit = {}, {}
for i = 1, 6 do
  a[i] = tonumber(A[7 + i])
  limit[i] = tonumber(A[13 + i])
end
local lease, had = {0, 0, 0, 0, 0, 0}, 0
if A[23] ~= '-' then
  lease, had = hold_of(A[23])
  for i = 1, 6 do
    local back = math.min(lease[i], tonumber(A[23 + i]))
    lease[i] = lease[i] - back
    r[i] = math.max(0, r[i] - back)
  end
  if had == 1 then put_hold(A[23], lease) end
end
for i = 1, 6 do
  if limit[i] >= 0 and u[i] + r[i] + a[i] > limit[i] then
    save(tonumber(A[22]))
    return reply(0, i - 1, 0, lease, had)
  end
end
for i = 1, 6 do r[i] = r[i] + a[i] end
redis.call('HSET', h, A[20], ints(a))
redis.call('ZADD', z, tonumber(A[21]), A[20])
redis.call('EXPIRE', h, tonumber(A[22]))
redis.call('EXPIRE', z, tonumber(A[22]))
save(tonumber(A[22]))
return reply(1, -1, 0, lease, had)
"""
)

#: ARGV[1] = "now, ids[6], actual[6], hold id (- = nothing held), ttl"
SETTLE: Final = (
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
return reply(1, -1, 0, {0, 0, 0, 0, 0, 0}, 0)
"""
)

#: ARGV[1] = "now, ids[6], spent[6], give-back[6], want[6], need[6], limits[6] (-1 = none), lease id,
#: lease expiry, ttl, leave[6]". Usage ``spent`` moves from the lease into ``used``; ``give-back`` leaves
#: the lease; then, on every limited meter asked for,
#: ``g = min(want, floor((limit - used - reserved - leave) / replicas))`` is added to it, unless some
#: ``g < need`` (then nothing is: the budget is too near its limit to lease one more request, and requests
#: go to RESERVE one by one). ``leave``: what the replica's RESERVEs in flight ask, so a lease that Redis
#: runs first does not take the room of the requests its replica sent to Redis.
LEASE: Final = (
    _LOAD
    + """
local id = A[38]
local cur, had = hold_of(id)
for i = 1, 6 do
  local s = tonumber(A[7 + i])
  u[i] = u[i] + s
  local back = math.min(cur[i], s + tonumber(A[13 + i]))
  cur[i] = cur[i] - back
  r[i] = math.max(0, r[i] - back)
end
redis.call('ZREMRANGEBYSCORE', l, '-inf', now)
local n = redis.call('ZCARD', l)
if not redis.call('ZSCORE', l, id) then n = n + 1 end
local ok = 1
local g = {0, 0, 0, 0, 0, 0}
for i = 1, 6 do
  local limit, want = tonumber(A[31 + i]), tonumber(A[19 + i])
  if limit >= 0 and want > 0 then
    g[i] = math.max(0, math.min(want, math.floor((limit - u[i] - r[i] - tonumber(A[40 + i])) / n)))
    if g[i] < tonumber(A[25 + i]) then ok = 0 end
  end
end
if ok == 1 then
  for i = 1, 6 do cur[i] = cur[i] + g[i]; r[i] = r[i] + g[i] end
end
local ttl = tonumber(A[40])
if put_hold(id, cur) then
  redis.call('ZADD', z, tonumber(A[39]), id)
  redis.call('ZADD', l, tonumber(A[39]), id)
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', z, ttl)
  redis.call('EXPIRE', l, ttl)
end
save(ttl)
return reply(ok, had, n, cur, had)
"""
)
