"""Counter stores for in-process tests: Postgres always, Redis when REDIS_URL is set."""

from __future__ import annotations

import os

import pytest

REDIS_URL = os.environ.get("REDIS_URL", "")


@pytest.fixture(params=["postgres", pytest.param("redis", marks=pytest.mark.redis)])
async def limiter(request, transactional_db):
    from apps.gateway.database import conninfo
    from apps.limits.counters import PostgresCounters, RedisCounters
    from apps.limits.enforce import Limiter

    if request.param == "redis":
        if not REDIS_URL:
            pytest.skip("needs REDIS_URL")
        counters = RedisCounters(REDIS_URL)
    else:
        counters = PostgresCounters(conninfo())
    limiter = Limiter(counters, lease_seconds=60)
    yield limiter
    await limiter.close()
