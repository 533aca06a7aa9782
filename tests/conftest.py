"""Shared fixtures: two tenants (one must never see the other's data) and a small catalog."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from apps.catalog.models import Model, Provider
from apps.tenants.services import key_create, tenant_create
from tests.live import REPO, Simulator, free_port, stop_process, wait_http


@pytest.fixture
def tenant_a(db):
    return tenant_create(name="Acme", slug="acme")


@pytest.fixture
def tenant_b(db):
    return tenant_create(name="Globex", slug="globex")


@pytest.fixture
def key_a(tenant_a):
    return key_create(tenant=tenant_a, name="acme-main")


@pytest.fixture
def key_b(tenant_b):
    return key_create(tenant=tenant_b, name="globex-main")


@pytest.fixture
def provider(db):
    return Provider.objects.create(
        name="sim", kind=Provider.Kind.SIMULATED, base_url="http://127.0.0.1:9/v1", credential="sk-upstream-secret"
    )


@pytest.fixture
def cheap_model(provider):
    return Model.objects.create(
        name="sim-mini",
        upstream_id="sim-mini",
        provider=provider,
        input_price_per_million=Decimal("0.15"),
        cached_input_price_per_million=Decimal("0.075"),
        output_price_per_million=Decimal("0.60"),
        tier=Model.Tier.SIMPLE,
    )


@pytest.fixture
def premium_model(provider):
    return Model.objects.create(
        name="sim-premium",
        upstream_id="sim-premium",
        provider=provider,
        input_price_per_million=Decimal("2.50"),
        cached_input_price_per_million=Decimal("1.25"),
        output_price_per_million=Decimal("10.00"),
        tier=Model.Tier.COMPLEX,
    )


@pytest.fixture(scope="session")
def simulator_process():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps.simulator.server", "--host", "127.0.0.1", "--port", str(port),
         "--ttft-ms", "5", "--chunks", "12"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", proc=proc)
    yield Simulator(base)
    stop_process(proc)


@pytest.fixture
def simulator(simulator_process):
    simulator_process.reset()
    yield simulator_process
    simulator_process.reset()


def _deadlocked(exc: BaseException | None) -> bool:
    """Whether ``exc`` was caused, anywhere down its chain, by Postgres detecting a deadlock."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "sqlstate", None) == "40P01":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.fixture(scope="session", autouse=True)
def flush_survives_deadlocks():
    """A transactional test ends with ``flush``: one TRUNCATE of every table, taking their locks
    in an order that changes from run to run. A live gateway or worker still writing (a usage
    COPY, a circuit's row, an alert) takes some of the same locks in its own order, and Postgres
    then ends one of the two as a deadlock; when it picks the flush, the next test starts on a
    database still holding this one's rows. Nothing in production truncates under traffic, so
    the flush is tried again (the write it crossed has then finished) instead of failing."""
    from django.core.management.commands import flush

    original = flush.Command.handle

    def handle(self, **options):
        for attempt in range(5):
            try:
                return original(self, **options)
            except Exception as exc:
                if attempt == 4 or not _deadlocked(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))
        return None

    flush.Command.handle = handle
    yield
    flush.Command.handle = original


@pytest.fixture(scope="session", autouse=True)
def limits_counters_fresh():
    """Ids restart with each test database: forget the Redis limit counters and deployment pool
    state of earlier runs (a deployment an earlier run cooled down for ten minutes would otherwise
    be skipped by this run's deployment of the same id)."""
    url = os.environ.get("REDIS_URL")
    if url:
        import redis

        from apps.limits.counters import REDIS_PREFIX
        from apps.providers.pool_sync import PREFIX as POOL_PREFIX

        client = redis.Redis.from_url(url)
        for prefix in (REDIS_PREFIX, POOL_PREFIX):
            for name in client.scan_iter(prefix + "*", count=1000):
                client.delete(name)
        client.close()


@pytest.fixture
def celery_worker(transactional_db, tmp_path):
    """A real Celery worker (solo pool) on the test database and the configured broker."""
    import os

    from django.conf import settings

    from tests.live import REPO, database_url_for_tests, stop_process

    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo",
                                 "--loglevel", "INFO"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        yield proc
        stop_process(proc, timeout=20)

