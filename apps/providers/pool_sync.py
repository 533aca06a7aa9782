"""Deployment pools shared by every gateway process through Redis, off the request path.

Each process decides from its own :class:`~apps.providers.pools.Pools` (no round trip per
request) and exchanges it with Redis in one Lua script call every ``POOL_SYNC_INTERVAL``
seconds, and at once when a deployment starts cooling down:

    sends     its requests in flight per deployment (with a timestamp: a process that stops
              reporting stops counting), latency samples since the last exchange, requests sent
              this minute, new cooldowns, rate-limit headers seen
    gets      every deployment's total in flight, cooldown end, latency moving average,
              requests this minute across processes, and the latest rate-limit headers

Keys, under ``sy:pool:<deployment id>``: a hash (``cool`` ms, ``lat`` µs, ``rr``, ``rt``,
``seen`` ms), ``:if`` (in flight by process), ``:m:<minute>`` (requests that minute, kept two
minutes); ``sy:pool:syncs`` counts each process's exchanges. What a process did not hear yet
(at most one interval) it decides without: a cooldown, the only state that refuses traffic, is
sent the moment it starts. A deployment's circuit breaker that opens in one process cools the
deployment down until its probe (``GatewayRuntime._circuit_changed``), which is how the circuit's
state reaches the other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from apps.limits.resp import RedisLink, RedisReplyError, RedisUnavailable, Script
from apps.providers.pools import Pools

logger = logging.getLogger(__name__)

PREFIX = "sy:pool:"
FIELDS_IN, FIELDS_OUT = 10, 7

# ARGV: process, now (ms), liveness (ms), current minute, latency alpha, count, then per
# deployment: id, in flight, latency samples, their sum (µs), minute of the sent count, sent,
# cooldown end (ms, 0: none new), remaining requests, remaining tokens (-1: unknown), seen (ms, 0: none new).
_EXCHANGE_LUA = """
local proc, now, live, minute = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local alpha, n = tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}
redis.call('HINCRBY', 'sy:pool:syncs', proc, 1)
for i = 0, n - 1 do
  local b = 7 + i * 10
  local key = 'sy:pool:' .. ARGV[b]
  local flight = key .. ':if'
  redis.call('HSET', flight, proc, ARGV[b + 1] .. ':' .. now)
  redis.call('PEXPIRE', flight, live * 4)
  local samples = tonumber(ARGV[b + 2])
  if samples > 0 then
    local mean = tonumber(ARGV[b + 3]) / samples
    local old = tonumber(redis.call('HGET', key, 'lat'))
    local keep = (1 - alpha) ^ samples
    local new = mean
    if old then new = old * keep + mean * (1 - keep) end
    redis.call('HSET', key, 'lat', math.floor(new))
  end
  local sent = tonumber(ARGV[b + 5])
  if sent > 0 then
    local m = key .. ':m:' .. ARGV[b + 4]
    redis.call('INCRBY', m, sent)
    redis.call('EXPIRE', m, 120)
  end
  local cool = tonumber(ARGV[b + 6])
  if cool > 0 and cool > tonumber(redis.call('HGET', key, 'cool') or '0') then
    redis.call('HSET', key, 'cool', cool)
  end
  local seen = tonumber(ARGV[b + 9])
  if seen > 0 and seen >= tonumber(redis.call('HGET', key, 'seen') or '0') then
    redis.call('HSET', key, 'rr', ARGV[b + 7], 'rt', ARGV[b + 8], 'seen', seen)
  end
  redis.call('PEXPIRE', key, 86400000)
  local total = 0
  local procs = redis.call('HGETALL', flight)
  for j = 1, #procs, 2 do
    local count, at = string.match(procs[j + 1], '^(%-?%d+):(%d+)$')
    if at and tonumber(at) >= now - live then
      total = total + tonumber(count)
    else
      redis.call('HDEL', flight, procs[j])
    end
  end
  local h = redis.call('HMGET', key, 'cool', 'lat', 'rr', 'rt', 'seen')
  out[#out + 1] = total
  out[#out + 1] = tonumber(h[1] or '0')
  out[#out + 1] = tonumber(h[2] or '-1')
  out[#out + 1] = tonumber(redis.call('GET', key .. ':m:' .. minute) or '0')
  out[#out + 1] = tonumber(h[3] or '-1')
  out[#out + 1] = tonumber(h[4] or '-1')
  out[#out + 1] = tonumber(h[5] or '0')
end
return out
"""


class PoolSync:
    """Exchanges ``pools`` with Redis for the deployments ``deployments()`` lists (those of the
    current snapshot)."""

    def __init__(self, pools: Pools, *, redis_url: str, process: str, interval: float,
                 deployments: Callable[[], Iterable]) -> None:
        self.pools = pools
        self.process = process
        self.interval = interval
        self.deployments = deployments
        self._script = Script(_EXCHANGE_LUA)
        self.link = RedisLink(redis_url, scripts=(self._script,))
        self._wake: asyncio.Event | None = None
        self.exchanges = 0
        pools.on_cool = self.wake

    def wake(self) -> None:
        """Exchange now (a deployment has started cooling down)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Exchange every ``interval`` seconds (or when woken) until cancelled."""
        self._wake = asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.exchange()
            except (RedisUnavailable, RedisReplyError) as exc:
                logger.warning("deployment pools not shared this round: %s", exc)

    async def exchange(self) -> None:
        """One round trip: send this process's news, take every process's totals."""
        pools = self.pools
        now = pools._clock()
        now_ms = int(now * 1000)
        minute = int(now // 60)
        deployments = list({d.deployment_id: d for d in self.deployments()}.values())
        if not deployments:
            return
        args: list = [self.process, now_ms, int(self.interval * 4000) + 1000, minute, repr(pools.alpha),
                      len(deployments)]
        taken = []
        for deployment in deployments:
            state = pools.state(deployment)
            cool = state.cooling_until if state.cooling_until > state.cooled_pushed else 0.0
            headers = not state.headers_pushed
            args += [deployment.deployment_id, state.in_flight, state.latency_count, int(state.latency_sum * 1000),
                     state.minute, state.sent_unpushed, int(cool * 1000),
                     _known(state.remaining_requests), _known(state.remaining_tokens),
                     int(state.headers_at * 1000) if headers else 0]
            taken.append((state.in_flight, state.latency_count, state.latency_sum, state.sent_unpushed, cool, headers))
            state.latency_count, state.latency_sum, state.sent_unpushed = 0, 0.0, 0
            if cool:
                state.cooled_pushed = cool
            state.headers_pushed = True
        try:
            out = await self.link.evalsha(self._script, (), args)
        except BaseException:
            for deployment, (_f, count, total, sent, cool, headers) in zip(deployments, taken, strict=True):
                state = pools.state(deployment)  # nothing was shared: send it next time
                state.latency_count += count
                state.latency_sum += total
                state.sent_unpushed += sent
                if cool:
                    state.cooled_pushed = 0.0
                if headers:
                    state.headers_pushed = False
            raise
        for i, deployment in enumerate(deployments):
            total, cool_ms, latency_us, used, requests, tokens, seen_ms = out[i * FIELDS_OUT:(i + 1) * FIELDS_OUT]
            state = pools.state(deployment)
            state.others_in_flight = max(total - taken[i][0], 0)
            state.cooling_until = max(state.cooling_until, cool_ms / 1000)
            state.cooled_pushed = max(state.cooled_pushed, cool_ms / 1000)
            if latency_us >= 0:
                state.latency_ms = latency_us / 1000
            if state.minute != minute:
                state.minute, state.sent = minute, state.sent_unpushed
            state.sent = used + state.sent_unpushed
            if seen_ms / 1000 > state.headers_at:
                state.headers_at = seen_ms / 1000
                state.remaining_requests = None if requests < 0 else requests
                state.remaining_tokens = None if tokens < 0 else tokens
                state.requests_peak = max(state.requests_peak, requests)
                state.tokens_peak = max(state.tokens_peak, tokens)
                state.sent_since_headers = 0
        self.exchanges += 1

    async def close(self) -> None:
        await self.link.close()


def _known(value: int | None) -> int:
    return -1 if value is None else value


def pool_state_read(redis_url: str, deployment_ids: Iterable[int], *, live_seconds: float) -> dict[int, dict]:
    """``deployment_ids`` as every process shares them in Redis (for the admin; sync); a
    process that has not reported for ``live_seconds`` no longer counts."""
    import redis  # the admin's occasional read: the general client is enough (imported only there)

    client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        now = time.time()
        result = {}
        for dep in deployment_ids:
            key = f"{PREFIX}{dep}"
            cool, lat = client.hmget(key, "cool", "lat")
            flights = client.hgetall(key + ":if")
            total = 0
            for value in flights.values():
                count, _, at = value.decode().partition(":")
                if int(at or 0) / 1000 >= now - live_seconds:
                    total += int(count)
            result[dep] = {
                "in_flight": total,
                "cooling_until": int(cool) / 1000 if cool and int(cool) / 1000 > now else None,
                "latency_ms": int(lat) / 1000 if lat is not None else None,
                "sent_this_minute": int(client.get(f"{key}:m:{int(now // 60)}") or 0),
            }
        return result
    except redis.RedisError as exc:
        raise ConnectionError(str(exc)) from exc
    finally:
        client.close()
