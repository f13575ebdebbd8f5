"""The fleet budget's lease store in Redis: one Lua script, one round trip per call.

Keys of one target (all under one hash tag, so one cluster slot)::

    <prefix>:{<target>}:h          ZSET holder -> expiry (ms, Redis TIME)
    <prefix>:{<target>}:d          HASH holder -> "floor:demand"
    <prefix>:{<target>}:l:<holder> SET  the holder's lease tokens
    <prefix>:{<target>}:seq        the fencing-token counter (INCR: never reused)

Every call first reclaims holders whose expiry has passed (a crashed or
frozen process: its leases go with it), then acts. The clock is Redis's
``TIME``, read inside the script, so hosts' clocks never matter; with
effects replication (the default since Redis 5) a replica applies the
script's writes, not a re-run with its own clock. Every key but ``seq`` gets a
PEXPIRE of a few TTLs, so a target nobody uses any more leaves one counter
behind: kept, so that a fencing token is never handed out twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from .fleet import Answer, StoreDown

# Shares are computed exactly as fleet.fair_shares: floors, then demand, water-filled with
# ties by holder id (tests/integration/test_fleet_store.py holds the two to each other).
SCRIPT = r"""
local base = KEYS[1]
local op, holder = ARGV[1], ARGV[2]
local ttl, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local floor, demand = tonumber(ARGV[5]), tonumber(ARGV[6])
local hk, dk, sk = base .. ':h', base .. ':d', base .. ':seq'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function lk(h) return base .. ':l:' .. h end

for _, h in ipairs(redis.call('ZRANGEBYSCORE', hk, '-inf', now)) do
  redis.call('DEL', lk(h)); redis.call('HDEL', dk, h); redis.call('ZREM', hk, h)
end
local alive = redis.call('ZSCORE', hk, holder) ~= false
local mine = lk(holder)

if op == 'leave' then
  redis.call('DEL', mine); redis.call('HDEL', dk, holder); redis.call('ZREM', hk, holder)
  return {1}
end
if op == 'release' then
  if alive then
    for i = 7, #ARGV do redis.call('SREM', mine, ARGV[i]) end
  end
  return {1}
end

local function fill(avail, caps, ids)
  local order = {}
  for i = 1, #ids do order[i] = ids[i] end
  table.sort(order, function(a, b)
    if caps[a] ~= caps[b] then return caps[a] < caps[b] end
    return a < b
  end)
  local out, left = {}, #order
  for _, h in ipairs(order) do
    local give = math.min(caps[h], math.floor(avail / left))
    out[h] = give; avail = avail - give; left = left - 1
  end
  return out
end

local function register()
  redis.call('ZADD', hk, now + ttl, holder)
  redis.call('HSET', dk, holder, floor .. ':' .. demand)
  local keep = ttl * 3
  redis.call('PEXPIRE', hk, keep); redis.call('PEXPIRE', dk, keep)
end

-- this holder's share, what it may keep, and the fleet's total, from every live holder
local function shares()
  local ids = redis.call('ZRANGE', hk, 0, -1)
  local floors, wants, held = {}, {}, {}
  local total = 0
  for _, h in ipairs(ids) do
    local v = redis.call('HGET', dk, h)
    local f, d = 0, 0
    if v then
      local a, b = string.match(v, '(%d+):(%d+)')
      f, d = tonumber(a), tonumber(b)
    end
    if d < f then d = f end
    floors[h] = f; wants[h] = d
    held[h] = redis.call('SCARD', lk(h))
    total = total + held[h]
  end
  local caps1 = {}
  for _, h in ipairs(ids) do caps1[h] = math.min(floors[h], wants[h]) end
  local s1 = fill(budget, caps1, ids)
  local rest = budget
  for _, h in ipairs(ids) do rest = rest - s1[h] end
  local caps2 = {}
  for _, h in ipairs(ids) do caps2[h] = math.max(wants[h] - s1[h], 0) end
  local s2 = fill(rest, caps2, ids)
  local share = s1[holder] + s2[holder]
  local unmet = 0
  for _, h in ipairs(ids) do
    if h ~= holder then unmet = unmet + math.max(s1[h] + s2[h] - held[h], 0) end
  end
  local mineheld = held[holder]
  local keep = -1
  local need = math.max(unmet - (budget - total), 0)
  if mineheld > share and need > 0 then keep = mineheld - math.min(mineheld - share, need) end
  return share, keep, total, unmet, mineheld, #ids
end

local function grant()
  local tok = redis.call('INCR', sk)
  redis.call('SADD', mine, tok)
  redis.call('PEXPIRE', mine, ttl * 3)
  return tok
end

if op == 'acquire' then
  local held_client = tonumber(ARGV[7])
  if not alive and held_client > 0 then return {-1, 0, -1, 0, 0} end
  register()
  local share, keep, total, unmet, held, n = shares()
  if total < budget and (held < share or total + unmet < budget) then
    local tok = grant()
    return {tok, share, keep, total + 1, n}
  end
  return {0, share, keep, total, n}
end

if op == 'sync' then
  local want = tonumber(ARGV[7])
  local lost = {}
  if alive then
    local client = {}
    for i = 8, #ARGV do
      client[ARGV[i]] = true
      if redis.call('SISMEMBER', mine, ARGV[i]) == 0 then lost[#lost + 1] = ARGV[i] end
    end
    for _, tok in ipairs(redis.call('SMEMBERS', mine)) do
      if not client[tok] then redis.call('SREM', mine, tok) end
    end
  else
    redis.call('DEL', mine)
    for i = 8, #ARGV do lost[#lost + 1] = ARGV[i] end
  end
  register()
  if #ARGV >= 8 or want > 0 then redis.call('PEXPIRE', mine, ttl * 3) end
  want = want + #lost
  local share, keep, total = shares()
  local out = {alive and 1 or 0, share, keep, 0, 0, #lost}
  for _, tok in ipairs(lost) do out[#out + 1] = tonumber(tok) end
  local granted = 0
  while granted < want and total < budget do
    out[#out + 1] = grant()
    granted = granted + 1
    total = total + 1
  end
  local s2, k2, t2, _, _, n2 = shares()
  out[2] = s2; out[3] = k2; out[4] = t2; out[5] = n2
  return out
end
return redis.error_reply('smartpool fleet: unknown op ' .. tostring(op))
"""


def base_key(prefix: str, target: str) -> str:
    """``<prefix>:{<target>}``: one hash tag, so every key of a target is in one cluster slot."""
    return f"{prefix}:{{{target}}}"


class RedisLeaseStore:
    """:class:`~.fleet.LeaseStore` over redis-py; every method is one EVALSHA (EVAL on a miss)."""

    def __init__(
        self, url: str, *, prefix: str, target: str, budget: int, ttl: float, timeout: float
    ) -> None:
        import redis  # the ``redis`` extra; checked when the pool is built

        self._redis = redis
        self._client: Any = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            max_connections=8,
            client_name="smartpool-fleet",
        )
        self._script = self._client.register_script(SCRIPT)
        self._key = base_key(prefix, target)
        self._budget = budget
        self._ttl_ms = max(int(ttl * 1000), 1)
        #: round trips sent (the benchmark reports them per connect and per checkout)
        self.calls = 0

    def _run(self, op: str, holder: str, floor: int, demand: int, *extra: int) -> Any:
        self.calls += 1
        args: list[str | int] = [op, holder, self._ttl_ms, self._budget, floor, demand, *extra]
        try:
            return self._script(keys=[self._key], args=args)
        except (self._redis.ConnectionError, self._redis.TimeoutError, OSError) as err:
            raise StoreDown(str(err)) from err
        except self._redis.ResponseError as err:
            if "LOADING" in str(err) or "READONLY" in str(err) or "MASTERDOWN" in str(err):
                raise StoreDown(str(err)) from err  # a restarting or failing-over server
            raise

    def acquire(self, holder: str, *, held: int, floor: int, demand: int) -> Answer:
        tok, share, keep, total, n = (int(x) for x in self._run("acquire", holder, floor, demand, held))
        if tok < 0:
            return Answer(share=0, stale=True, alive=False)
        return Answer(share=share, keep=keep, total=total, token=tok, holders=n)

    def sync(self, holder: str, *, tokens: Sequence[int], unleased: int, floor: int, demand: int) -> Answer:
        out = [int(x) for x in self._run("sync", holder, floor, demand, unleased, *tokens)]
        alive, share, keep, total, n, nlost = out[:6]
        lost = tuple(out[6 : 6 + nlost])
        granted = tuple(out[6 + nlost :])
        return Answer(
            share=share, keep=keep, total=total, lost=lost, granted=granted, alive=bool(alive), holders=n
        )

    def release(self, holder: str, tokens: Sequence[int]) -> None:
        self._run("release", holder, 0, 0, *tokens)

    def leave(self, holder: str) -> None:
        self._run("leave", holder, 0, 0)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a client of a server that is gone: nothing to give back
            self._client.close()
