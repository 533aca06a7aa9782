"""Deployment pools: each strategy's order, cooldowns and capacity, on a clock and a random
source the test controls; and two processes' pools shared through the real Redis."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from dataclasses import replace
from decimal import Decimal

import pytest

from apps.gateway.snapshot import ModelInfo, ProviderInfo
from apps.providers.pool_sync import PREFIX, PoolSync, pool_state_read
from apps.providers.pools import LEAST_BUSY, LOWEST_LATENCY, MOST_HEADROOM, WEIGHTED, Pools
from apps.providers.transport import UpstreamFailure, with_fallbacks

REDIS_URL = os.environ.get("REDIS_URL", "")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def provider(pid: int) -> ProviderInfo:
    return ProviderInfo(id=pid, name=f"p{pid}", kind="openai", base_url="http://127.0.0.1:9/v1", credential="",
                        timeout=5.0, max_concurrency=10)


def pooled(strategy: str = WEIGHTED, weights=(1, 1, 1), rpm=(None, None, None), first_id: int = 1) -> ModelInfo:
    base = ModelInfo(id=7, name="chat", upstream_id="chat", provider=provider(99), mode="chat", tier="moderate",
                     price_id=None, input_price=Decimal(1), cached_input_price=Decimal(1), output_price=Decimal(2),
                     context_window=1000, max_output_tokens=100, strategy=strategy)
    deployments = tuple(
        replace(base, provider=provider(i), upstream_id=f"chat-{i}", deployment_id=first_id + i,
                deployment_label=f"p{i}", weight=weight, rpm=limit)
        for i, (weight, limit) in enumerate(zip(weights, rpm, strict=True)))
    return replace(base, deployments=deployments)


def labels(order) -> list[str]:
    return [d.deployment_label for d in order]


def test_it_picks_deployments_in_proportion_to_their_weights():
    model = pooled(WEIGHTED, weights=(6, 3, 1))
    pools = Pools(clock=Clock(), rng=random.Random(7).random)
    firsts = Counter(pools.order(model)[0].deployment_label for _ in range(10_000))
    assert 0.57 < firsts["p0"] / 10_000 < 0.63
    assert 0.27 < firsts["p1"] / 10_000 < 0.33
    assert 0.08 < firsts["p2"] / 10_000 < 0.12


def test_it_tries_every_deployment_then_the_next_model():
    model = pooled()
    plain = replace(model, name="other", id=8, deployments=())
    chain = Pools(clock=Clock()).expand((model, plain))
    assert sorted(labels(chain[:3])) == ["p0", "p1", "p2"]
    assert chain[3] is plain


def test_it_sends_to_the_least_busy_deployment():
    model = pooled(LEAST_BUSY)
    pools = Pools(clock=Clock())
    d0, d1, _d2 = model.deployments
    pools.sent(d0)
    pools.sent(d0)
    pools.sent(d1)
    assert labels(pools.order(model)) == ["p2", "p1", "p0"]
    pools.done(d0)
    pools.done(d0)
    assert labels(pools.order(model))[-1] == "p1"


def test_it_sends_to_the_fastest_deployment_and_measures_the_unknown_first():
    model = pooled(LOWEST_LATENCY)
    pools = Pools(clock=Clock(), alpha=0.5)
    d0, d1, _d2 = model.deployments
    pools.measured(d0, 300.0)
    pools.measured(d1, 100.0)
    assert labels(pools.order(model)) == ["p2", "p1", "p0"]
    pools.measured(model.deployments[2], 200.0)
    pools.measured(d1, 500.0)  # moving average: 300
    pools.measured(d0, 100.0)  # 200
    assert labels(pools.order(model))[0] in ("p0", "p2")
    assert labels(pools.order(model))[-1] == "p1"


def test_it_sends_where_the_most_rate_limit_is_left():
    model = pooled(MOST_HEADROOM, rpm=(100, 100, None))
    pools = Pools(clock=Clock())
    d0, d1, d2 = model.deployments
    for _ in range(30):
        pools.sent(d0)
        pools.done(d0)
    pools.headers_seen(d1, {"x-ratelimit-remaining-requests": "50", "x-ratelimit-remaining-tokens": "9000"})
    pools.headers_seen(d2, {"x-ratelimit-remaining-requests": "1000", "x-ratelimit-remaining-tokens": "100000"})
    # d2 has shown no more than it has now: all its limit is left; d0 has 70 of 100; d1 50 of 100.
    assert labels(pools.order(model)) == ["p2", "p0", "p1"]
    pools.headers_seen(d2, {"x-ratelimit-remaining-requests": "100", "x-ratelimit-remaining-tokens": "100000"})
    assert labels(pools.order(model)) == ["p0", "p1", "p2"]


def test_a_rate_limit_header_refills_at_the_limits_pace():
    clock = Clock()
    clock.now = 1_800_000_000.0 - 1_800_000_000.0 % 60  # the start of a minute
    model = pooled(MOST_HEADROOM, rpm=(100, 100, 100))
    pools = Pools(clock=clock)
    d0, d1, d2 = model.deployments
    pools.headers_seen(d0, {"x-ratelimit-remaining-requests": "10"})
    pools.headers_seen(d1, {"x-ratelimit-remaining-requests": "50"})
    pools.headers_seen(d2, {"x-ratelimit-remaining-requests": "60"})
    assert labels(pools.order(model)) == ["p2", "p1", "p0"]
    clock.now += 30  # d0: 10 + 50 = 60 of 100 (the others capped at the limit)
    assert pools.headroom(d0, pools.state(d0), clock.now) == pytest.approx(0.6)
    assert pools.headroom(d1, pools.state(d1), clock.now) == pytest.approx(1.0)


def test_a_deployment_at_its_rpm_goes_last_until_the_next_minute():
    clock = Clock()
    model = pooled(WEIGHTED, weights=(100, 1, 1), rpm=(2, None, None))
    pools = Pools(clock=clock, rng=random.Random(1).random)
    d0 = model.deployments[0]
    pools.sent(d0)
    pools.sent(d0)
    assert all(labels(pools.order(model))[-1] == "p0" for _ in range(50))
    clock.now += 60
    assert Counter(labels(pools.order(model))[0] for _ in range(50))["p0"] > 40


def test_a_deployment_that_answered_429_cools_down_for_its_retry_after():
    clock = Clock()
    model = pooled()
    pools = Pools(clock=clock, cooldown=60)
    d0, d1, _d2 = model.deployments
    pools.cool(d0, 5)
    pools.cool(d1, None)
    assert labels(pools.order(model)) == ["p2"]
    assert pools.retry_in([model]) == 0.0
    clock.now += 5.5
    assert sorted(labels(pools.order(model))) == ["p0", "p2"]
    clock.now += 60
    assert len(pools.order(model)) == 3


def test_a_429_moves_the_request_to_the_next_deployment_at_once():
    model = pooled(WEIGHTED, weights=(1000, 1, 1))
    pools = Pools(clock=Clock(), rng=random.Random(3).random)
    calls = []

    async def attempt(deployment):
        calls.append(deployment.deployment_label)
        if deployment.deployment_label == "p0":
            raise UpstreamFailure("status 429", status=429, retry_after=30)
        return "answer"

    answered, result, failures = asyncio.run(with_fallbacks(
        pools.expand([model]), attempt, retries=2, backoff=0.0, pools=pools))
    assert calls[0] == "p0" and len(calls) == 2  # never retried: it cools down
    assert result == "answer" and answered.deployment_label == calls[1]
    assert failures == ["chat@p0: status 429"]
    assert pools.cooling(model.deployments[0]) == pytest.approx(30)
    assert "p0" not in labels(pools.expand([model]))


@pytest.fixture
def redis_pools():
    if not REDIS_URL:
        pytest.skip("needs Redis (REDIS_URL)")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.delete(*client.keys(PREFIX + "*") or ["none"])
    yield
    client.delete(*client.keys(PREFIX + "*") or ["none"])
    client.close()


def test_two_processes_share_cooldowns_in_flight_and_latency(redis_pools):
    model = pooled(LEAST_BUSY, first_id=900_001)
    clock = Clock()
    clock.now = __import__("time").time()  # Redis keeps the cooldown's end: wall time
    one, two = Pools(clock=clock, alpha=0.5), Pools(clock=clock, alpha=0.5)
    deployments = model.deployments
    sync_one = PoolSync(one, redis_url=REDIS_URL, process="one", interval=1.0, deployments=lambda: deployments)
    sync_two = PoolSync(two, redis_url=REDIS_URL, process="two", interval=1.0, deployments=lambda: deployments)
    d0, d1, d2 = deployments

    async def scenario():
        one.sent(d0)
        one.sent(d0)
        one.measured(d1, 100.0)
        one.cool(d2, 30)
        await sync_one.exchange()
        await sync_two.exchange()
        try:
            return two.order(model), two.state(d0).others_in_flight, two.state(d1).latency_ms
        finally:
            await sync_one.close()
            await sync_two.close()

    order, others, latency = asyncio.run(scenario())
    # The other process's cooldown leaves d2 out; its two requests in flight put d0 behind d1.
    assert labels(order) == ["p1", "p0"]
    assert others == 2
    assert latency == pytest.approx(100.0)
    live = pool_state_read(REDIS_URL, [d.deployment_id for d in deployments], live_seconds=60)
    assert live[d0.deployment_id]["in_flight"] == 2
    assert live[d0.deployment_id]["sent_this_minute"] == 2
    assert live[d2.deployment_id]["cooling_until"] == pytest.approx(clock.now + 30, abs=0.01)
    assert live[d1.deployment_id]["cooling_until"] is None
