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


# Why a flush may fail while a live gateway or worker is still writing: a deadlock, or (rows of a
# tenant the flush deleted, committed by the writer after the flush read their table) a foreign
# key checked at the flush's commit.
_RETRIED = {"40P01", "23503"}


def _crossed_a_writer(exc: BaseException | None) -> bool:
    """Whether ``exc`` was caused, anywhere down its chain, by a write the flush crossed."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "sqlstate", None) in _RETRIED:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# The tables a test's flush leaves: Django's flush empties them and has them rewritten, the same
# rows, by its post_migrate handlers (the only ones this project has).
_KEPT = {"django_content_type", "auth_permission"}


def _rows_delete(database: str) -> None:
    """Empty every other table with DELETE, in one transaction whose foreign keys (deferrable, as
    Django makes them) are checked at its commit."""
    from django.db import connections, transaction

    connection = connections[database]
    tables = sorted(set(connection.introspection.django_table_names(only_existing=True, include_views=False))
                    - _KEPT)
    statements = ["SET CONSTRAINTS ALL DEFERRED"] + [f"DELETE FROM {connection.ops.quote_name(t)}"  # noqa: S608
                                                     for t in tables]
    with transaction.atomic(using=database), connection.cursor() as cursor:
        cursor.execute("; ".join(statements))


@pytest.fixture(scope="session", autouse=True)
def quick_flush():
    """A transactional test ends with ``flush``, which Django runs as one TRUNCATE of every table
    and then rewrites the content types and permissions: about 0.25 s a test here, as TRUNCATE
    makes each table's and index's files anew. A test leaves a few rows, and a DELETE of them takes
    about 2 ms; so the flush deletes (sequences are not reset either way).

    A live gateway or worker still writing (a usage COPY, a circuit's row, an alert) may cross the
    flush: a deadlock, or rows committed for a tenant the flush deleted. Nothing in production
    empties tables under traffic, so the flush is tried again (the write it crossed has then
    finished) instead of failing and leaving this test's rows to the next."""
    from django.core.management.commands import flush

    original = flush.Command.handle

    def handle(self, **options):
        if options.get("interactive", True) or options.get("reset_sequences"):
            return original(self, **options)
        for attempt in range(5):
            try:
                return _rows_delete(options.get("database") or "default")
            except Exception as exc:
                if attempt == 4 or not _crossed_a_writer(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))
        return None

    flush.Command.handle = handle
    yield
    flush.Command.handle = original


@pytest.fixture(scope="session", autouse=True)
def quick_passwords():
    """Users made by the tests get passwords hashed at few rounds (``tests.hashers``)."""
    from django.conf import settings
    from django.test import override_settings

    with override_settings(PASSWORD_HASHERS=["tests.hashers.QuickPBKDF2", *settings.PASSWORD_HASHERS]):
        yield


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

