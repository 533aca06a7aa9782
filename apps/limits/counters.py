"""The two counter stores. Each reservation and each settlement is one atomic step.

    RedisCounters      Lua scripts (``REDIS_URL`` set): each script runs alone on the server,
                       sent over one pipelined connection per process (``apps.limits.resp``);
                       a settlement waits up to ``settle_delay`` to share a write with the next
                       reservation, and Redis runs them in the order sent
    PostgresCounters   SQL functions (migration 0002) that lock the scope's counter rows in one
                       fixed order, check every limit, then update, in one statement

Both see only integers: requests, tokens, nano-dollars, epoch milliseconds. A reservation is
admitted while every counter of every scope is below its limit (``used < limit``), and then
adds its own amount: however many processes race, a window or a budget ends at most one
request above its limit, and exactly at it for requests and concurrency.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from apps.limits.resp import RedisLink, Script, encode_args
from apps.limits.spec import ScopeLimits

REQUESTS, TOKENS, BUDGET, CONCURRENCY = 1, 2, 3, 4
KIND_NAMES = {REQUESTS: "requests", TOKENS: "tokens", BUDGET: "budget", CONCURRENCY: "concurrency"}
_NONE = -1  # "no limit of this kind" in the scripts' arguments


@dataclass(slots=True)
class Check:
    """One scope's share of a reservation."""

    limits: ScopeLimits
    period: int  # budget period start, epoch seconds
    period_end: float


@dataclass(slots=True)
class Usage:
    """A scope's counters as the reservation left them (or found them, when refused)."""

    requests: int
    tokens: int
    spent: int
    reserved: int
    inflight: int


class Counters(Protocol):
    async def reserve(self, *, request_id: str, now_ms: int, window: int, lease_ms: int, checks: list[Check],
                      tokens: int, cost: int) -> tuple[int, int, list[Usage]]: ...

    async def settle(self, *, request_id: str, window: int, checks: list[Check], tokens_delta: int,
                     reserved: int, actual: int) -> list[tuple[int, int]]: ...

    async def close(self) -> None: ...


def _limit(value: int | None) -> int:
    return _NONE if value is None else value


# --- Redis ---------------------------------------------------------------------------------

_RESERVE_LUA = """
local now, rid, lease, wttl = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, cost = tonumber(ARGV[5]), tonumber(ARGV[6])
local n = #KEYS / 6
local seen, denied, kind = {}, 0, 0
for i = 0, n - 1 do
  local a, k = 7 + i * 5, i * 6
  local rpm, tpm, budget, conc = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local req, tok = 0, 0
  if rpm >= 0 then req = tonumber(redis.call('GET', KEYS[k + 1]) or '0') end
  if tpm >= 0 then tok = tonumber(redis.call('GET', KEYS[k + 2]) or '0') end
  if budget >= 0 then
    -- Reservations whose request never settled (its process died) are given back.
    local gone = redis.call('ZRANGEBYSCORE', KEYS[k + 5], '-inf', now)
    if #gone > 0 then
      local freed = 0
      for _, member in ipairs(gone) do
        freed = freed + tonumber(redis.call('HGET', KEYS[k + 6], member) or '0')
        redis.call('HDEL', KEYS[k + 6], member)
      end
      redis.call('ZREMRANGEBYSCORE', KEYS[k + 5], '-inf', now)
      if redis.call('HINCRBY', KEYS[k + 3], 'reserved', -freed) < 0 then
        redis.call('HSET', KEYS[k + 3], 'reserved', 0)
      end
    end
  end
  local spent, reserved, fresh = 0, 0, false
  if budget >= 0 then
    local b = redis.call('HMGET', KEYS[k + 3], 'spent', 'reserved')
    spent, reserved, fresh = tonumber(b[1] or '0'), tonumber(b[2] or '0'), not b[1] and not b[2]
  end
  local inflight = 0
  if conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', now)
    inflight = redis.call('ZCARD', KEYS[k + 4])
  end
  if denied == 0 then
    if rpm >= 0 and req >= rpm then denied, kind = i + 1, 1
    elseif tpm >= 0 and tok >= tpm then denied, kind = i + 1, 2
    elseif budget >= 0 and spent + reserved >= budget then denied, kind = i + 1, 3
    elseif conc >= 0 and inflight >= conc then denied, kind = i + 1, 4 end
  end
  seen[i + 1] = {req, tok, spent, reserved, inflight, fresh}
end
local out = {denied, kind}
for i = 0, n - 1 do
  local a, k = 7 + i * 5, i * 6
  local rpm, tpm, budget, conc, pend = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
    tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  -- A budget period's counters outlive its end by a day; a lifetime budget's (pend 0) never expire.
  local bttl = 0
  if pend > 0 then bttl = pend - now + 86400000 end
  local s = seen[i + 1]
  if denied == 0 then
    if rpm >= 0 then
      s[1] = redis.call('INCR', KEYS[k + 1])
      if s[1] == 1 then redis.call('PEXPIRE', KEYS[k + 1], wttl) end
    end
    if tpm >= 0 then
      s[2] = redis.call('INCRBY', KEYS[k + 2], tokens)
      -- New (or at zero, when a new expiry does no harm): it expires after its minute.
      if s[2] == tokens then redis.call('PEXPIRE', KEYS[k + 2], wttl) end
    end
    if budget >= 0 then
      s[4] = redis.call('HINCRBY', KEYS[k + 3], 'reserved', cost)
      redis.call('ZADD', KEYS[k + 5], now + lease, rid)
      redis.call('HSET', KEYS[k + 6], rid, cost)
      if bttl > 0 then
        if s[6] then redis.call('PEXPIRE', KEYS[k + 3], bttl) end  -- the period's first reservation
        redis.call('PEXPIRE', KEYS[k + 5], bttl)
        redis.call('PEXPIRE', KEYS[k + 6], bttl)
      end
    end
    if conc >= 0 then
      redis.call('ZADD', KEYS[k + 4], now + lease, rid)
      redis.call('PEXPIRE', KEYS[k + 4], lease)
      s[5] = s[5] + 1
    end
  end
  for j = 1, 5 do out[#out + 1] = s[j] end
end
return out
"""

_SETTLE_LUA = """
local rid, delta, actual = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local n = #KEYS / 5
local out = {}
for i = 0, n - 1 do
  local a, k = 5 + i * 3, i * 5
  local tpm, budget, conc = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if tpm >= 0 and delta ~= 0 and redis.call('EXISTS', KEYS[k + 1]) == 1 then
    redis.call('INCRBY', KEYS[k + 1], delta)
  end
  local before, after = -1, -1
  if budget >= 0 and redis.call('EXISTS', KEYS[k + 2]) == 1 then
    after = redis.call('HINCRBY', KEYS[k + 2], 'spent', actual)
    before = after - actual
    -- What this request still holds (nothing if its lease expired and was given back).
    if redis.call('ZREM', KEYS[k + 4], rid) == 1 then
      local held = tonumber(redis.call('HGET', KEYS[k + 5], rid) or '0')
      redis.call('HDEL', KEYS[k + 5], rid)
      if redis.call('HINCRBY', KEYS[k + 2], 'reserved', -held) < 0 then
        redis.call('HSET', KEYS[k + 2], 'reserved', 0)
      end
    end
  end
  if conc >= 0 then redis.call('ZREM', KEYS[k + 3], rid) end
  out[#out + 1] = before
  out[#out + 1] = after
end
return out
"""

REDIS_PREFIX = "sy:lim:"


def redis_keys(scope: str, *, window: int, period: int) -> tuple[str, str, str, str, str, str]:
    """A scope's keys: requests and tokens of the minute, the budget hash (spent, reserved),
    concurrency leases, and the budget's reservation leases (expiry and cost by request)."""
    base = REDIS_PREFIX + scope
    return (f"{base}:r:{window}", f"{base}:t:{window}", f"{base}:b:{period}", f"{base}:c",
            f"{base}:b:{period}:z", f"{base}:b:{period}:h")


@dataclass(slots=True)
class _RedisPlan:
    checks: list[Check]
    reserve_keys: bytes  # key count and keys, encoded
    reserve_args: bytes  # each scope's limits and budget period end, encoded
    reserve_count: int
    settle_keys: bytes
    settle_args: bytes
    settle_count: int


def _bulk(value: int | str) -> bytes:
    data = b"%d" % value if type(value) is int else value.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


_WINDOW_TTL = _bulk(120_000)  # a minute's counters live two minutes


class RedisCounters:
    def __init__(self, url: str, *, timeout: float = 5.0, settle_delay: float = 0.002) -> None:
        self._reserve, self._settle = Script(_RESERVE_LUA), Script(_SETTLE_LUA)
        self.link = RedisLink(url, scripts=(self._reserve, self._settle), timeout=timeout)
        # A settlement can wait a moment to share its write with the next reservation (one
        # write a request instead of two); Redis still runs the commands in the order sent.
        self.settle_delay = settle_delay
        self._plans: dict[tuple[int, int], _RedisPlan] = {}

    def _plan(self, checks: list[Check], window: int) -> _RedisPlan:
        """The encoded keys and limits of ``checks`` in minute ``window``: the same for every
        request of a key in that minute, so encoded once (``checks`` come from the limiter's
        cache, the same list while the limits and the budget periods stay the same)."""
        plan = self._plans.get((id(checks), window))
        if plan is not None and plan.checks is checks:
            return plan
        reserve_keys, reserve_args, settle_keys, settle_args = [], [], [], []
        for check in checks:
            lim = check.limits
            keys = redis_keys(lim.scope, window=window, period=check.period)
            reserve_keys.extend(keys)
            settle_keys.extend(keys[1:])
            period_end = 0 if check.period_end == float("inf") else int(check.period_end * 1000)
            reserve_args.extend([_limit(lim.rpm), _limit(lim.tpm), _limit(lim.budget), _limit(lim.concurrency),
                                 period_end])
            settle_args.extend([_limit(lim.tpm), _limit(lim.budget), _limit(lim.concurrency)])
        if len(self._plans) >= 4096:
            self._plans.clear()
        plan = _RedisPlan(
            checks=checks,
            reserve_keys=encode_args([len(reserve_keys), *reserve_keys]), reserve_args=encode_args(reserve_args),
            reserve_count=1 + len(reserve_keys) + 6 + len(reserve_args),
            settle_keys=encode_args([len(settle_keys), *settle_keys]), settle_args=encode_args(settle_args),
            settle_count=1 + len(settle_keys) + 4 + len(settle_args))
        self._plans[(id(checks), window)] = plan
        return plan

    async def reserve(self, *, request_id, now_ms, window, lease_ms, checks, tokens, cost):
        plan = self._plan(checks, window)
        body = b"".join((plan.reserve_keys, _bulk(now_ms), _bulk(request_id), _bulk(lease_ms), _WINDOW_TTL,
                         _bulk(tokens), _bulk(cost), plan.reserve_args))
        out = await self.link.run(self._reserve, plan.reserve_count, body)
        usages = [Usage(*out[2 + i * 5: 7 + i * 5]) for i in range(len(checks))]
        return out[0] - 1, out[1], usages

    async def settle(self, *, request_id, window, checks, tokens_delta, reserved, actual):
        plan = self._plan(checks, window)
        body = b"".join((plan.settle_keys, _bulk(request_id), _bulk(tokens_delta), _bulk(reserved), _bulk(actual),
                         plan.settle_args))
        out = await self.link.run(self._settle, plan.settle_count, body, defer=self.settle_delay)
        return [(out[i * 2], out[i * 2 + 1]) for i in range(len(checks))]

    async def close(self) -> None:
        await self.link.close()


# --- Postgres ------------------------------------------------------------------------------

_RESERVE_SQL = (
    "SELECT switchyard_limits_reserve(%s, %s, %s, %s, %s, %s, %s, %s::text[], %s::bigint[], %s::bigint[],"
    " %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])"
)
_SETTLE_SQL = (
    "SELECT switchyard_limits_settle(%s, %s, %s, %s, %s, %s::text[], %s::bigint[], %s::bigint[], %s::bigint[],"
    " %s::bigint[])"
)


class PostgresCounters:
    def __init__(self, conninfo: str, *, max_size: int = 8) -> None:
        from psycopg_pool import AsyncConnectionPool

        # Asynchronous commit: a counter update holds its row locks for the function's run, not
        # for a WAL flush as well (the hot rows of a busy tenant serialise on those locks). A
        # crash may lose the last few milliseconds of counts; the usage rows stay the record.
        self.pool = AsyncConnectionPool(conninfo, min_size=1, max_size=max_size, open=False,
                                        kwargs={"autocommit": True, "options": "-c synchronous_commit=off"})
        self._opened = False
        self._opening: asyncio.Lock | None = None

    async def open(self) -> None:
        if self._opened:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:  # the first requests all arrive together
            if not self._opened:
                await self.pool.open(wait=True, timeout=30)
                self._opened = True

    async def reserve(self, *, request_id, now_ms, window, lease_ms, checks, tokens, cost):
        await self.open()
        scopes = [c.limits.scope for c in checks]
        params = (
            now_ms, request_id, now_ms + lease_ms, window, (window + 2) * 60_000, tokens, cost, scopes,
            [_limit(c.limits.rpm) for c in checks], [_limit(c.limits.tpm) for c in checks],
            [_limit(c.limits.budget) for c in checks], [_limit(c.limits.concurrency) for c in checks],
            [c.period for c in checks],
            [_NONE if c.period_end == float("inf") else int(c.period_end * 1000) + 86_400_000 for c in checks],
        )
        async with self.pool.connection() as conn:
            cursor = await conn.execute(_RESERVE_SQL, params)
            out = (await cursor.fetchone())[0]
        usages = [Usage(*out[2 + i * 5: 7 + i * 5]) for i in range(len(checks))]
        return int(out[0]) - 1, int(out[1]), usages

    async def settle(self, *, request_id, window, checks, tokens_delta, reserved, actual):
        await self.open()
        params = (
            request_id, window, tokens_delta, reserved, actual, [c.limits.scope for c in checks],
            [_limit(c.limits.tpm) for c in checks], [_limit(c.limits.budget) for c in checks],
            [_limit(c.limits.concurrency) for c in checks], [c.period for c in checks],
        )
        async with self.pool.connection() as conn:
            cursor = await conn.execute(_SETTLE_SQL, params)
            out = (await cursor.fetchone())[0]
        return [(int(out[i * 2]), int(out[i * 2 + 1])) for i in range(len(checks))]

    async def close(self) -> None:
        if self._opened:
            await self.pool.close()
            self._opened = False
