"""The Redis counters' connection when Redis fails: requests are refused with
``limits_unavailable`` (the limits fail closed), a Redis that stops answering is given up on, a
lost connection is opened again, and a script Redis does not know is sent in full."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from apps.core.errors import LimitsUnavailable
from apps.limits.counters import RedisCounters
from apps.limits.enforce import Limiter
from apps.limits.resp import RedisLink, RedisReplyError, Script
from tests.limits.conftest import REDIS_URL
from tests.limits.test_enforce import rid, scope
from tests.live import DEADLINE, await_until, free_port

pytestmark = pytest.mark.redis


@pytest.fixture
def redis_url():
    if not REDIS_URL:
        pytest.skip("needs REDIS_URL")
    return REDIS_URL


class Proxy:
    """A TCP relay in front of the real Redis that can stop relaying replies (a network that
    drops them) or cut every connection (Redis restarting)."""

    def __init__(self, target: str) -> None:
        link = RedisLink(target)
        self.host, self.port, self.db = link.host, link.port, link.db
        self.frozen = False
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/{self.db}"

    async def _serve(self, client_reader, client_writer) -> None:
        redis_reader, redis_writer = await asyncio.open_connection(self.host, self.port)
        self.writers += [client_writer, redis_writer]

        async def pipe(reader, writer, replies: bool) -> None:
            while data := await reader.read(65536):
                if not (replies and self.frozen):
                    writer.write(data)
            writer.close()

        await asyncio.gather(pipe(client_reader, redis_writer, False), pipe(redis_reader, client_writer, True),
                             return_exceptions=True)

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        self.server.close()
        await self.server.wait_closed()


async def test_it_refuses_with_limits_unavailable_when_redis_cannot_be_reached():
    limiter = Limiter(RedisCounters(f"redis://127.0.0.1:{free_port()}/0", timeout=5), lease_seconds=60)
    try:
        with pytest.raises(LimitsUnavailable) as refused:
            await limiter.reserve((scope(rpm=5),), request_id=rid(), tokens=0, cost=0)
        assert refused.value.status == 503 and refused.value.code == "limits_unavailable"
    finally:
        await limiter.close()


async def test_it_gives_up_on_a_redis_that_stops_answering_then_reconnects(redis_url):
    proxy = Proxy(redis_url)
    counters = RedisCounters(await proxy.start(), timeout=2)
    limiter = Limiter(counters, lease_seconds=60)
    lim = scope(rpm=5, concurrency=3)
    # Requests are counted per minute of the clock: start well clear of a minute's end, so that
    # every reservation below falls in one minute (a freeze takes the link's 2 s timeout).
    seconds_left = 60 - time.time() % 60
    if seconds_left < 25:
        await asyncio.sleep(seconds_left + 0.1)
    try:
        first = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0)
        assert first.usages[0].requests == 1
        proxy.frozen = True
        with pytest.raises(LimitsUnavailable):  # not a wait for ever (nor for the test's deadline)
            await asyncio.wait_for(limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0), DEADLINE)
        proxy.frozen = False
        # The stuck connection was dropped; the next request opens a new one. The refused
        # request's outcome was unknown: Redis did count it.
        again = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0)
        assert again.usages[0].requests == 3
        await limiter.settle(first, tokens=0, cost=0)
        proxy.cut()  # as when Redis restarts
        assert await await_until(lambda: not counters.link.connected)
        after = await limiter.reserve((lim,), request_id=rid(), tokens=0, cost=0)
        # Four requests counted; the settled one's slot came back, the refused one's is held.
        assert (after.usages[0].requests, after.usages[0].inflight) == (4, 3)
    finally:
        await limiter.close()
        await proxy.close()


async def test_it_sends_a_script_redis_does_not_know_in_full(redis_url):
    link = RedisLink(redis_url)
    unknown = Script(f"-- {uuid.uuid4()}\nreturn {{1, 'two', {{3}}, ARGV[1]}}")
    failing = Script(f"-- {uuid.uuid4()}\nreturn redis.error_reply('ERR refused on purpose')")
    try:
        assert await link.evalsha(unknown, [], ["four"]) == [1, b"two", [3], b"four"]
        assert await link.evalsha(unknown, [], ["five"]) == [1, b"two", [3], b"five"]  # now known by its SHA1
        with pytest.raises(RedisReplyError, match="refused on purpose"):
            await link.evalsha(failing, [], [])
        assert await link.evalsha(unknown, [], ["six"]) == [1, b"two", [3], b"six"]  # an error spoils nothing
    finally:
        await link.close()


async def test_it_refuses_with_limits_unavailable_when_redis_refuses_the_password(redis_url):
    with_password = redis_url.replace("redis://", "redis://:not-the-password@", 1)
    limiter = Limiter(RedisCounters(with_password), lease_seconds=60)
    try:
        with pytest.raises(LimitsUnavailable):
            await limiter.reserve((scope(rpm=5),), request_id=rid(), tokens=0, cost=0)
    finally:
        await limiter.close()


def test_it_opens_a_connection_for_each_event_loop_that_uses_it(redis_url):
    """A batch worker runs each job in its own event loop."""
    link = RedisLink(redis_url)
    script = Script("return tonumber(ARGV[1]) + 1")
    assert asyncio.run(link.evalsha(script, [], [1])) == 2
    assert asyncio.run(link.evalsha(script, [], [2])) == 3
