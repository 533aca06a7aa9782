"""A purge reaches the entries still waiting in a batch worker's memory (``CacheStore(index_later=True)``):
they are not served from memory once the worker has read the purge, and not written after it;
another tenant's waiting entries, and entries made after the purge, stay."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from django.utils import timezone

from apps.cache import purges
from apps.cache import store as store_module
from apps.cache.models import LOCAL_MODEL, CacheEntry, CachePurge
from apps.cache.services import cache_evict_expired, cache_purge
from apps.cache.store import CacheStore
from apps.gateway.database import conninfo


async def _save(store, tenant, n: int, *, model_name: str = "sim-mini", asked_at=None) -> None:
    await store.save(tenant_id=tenant.pk, namespace="", request_hash=f"{n:064d}", context_hash="ctx",
                     prompt_text=f"prompt {n}", vector=None, embedding_model=LOCAL_MODEL, response={"n": n},
                     model_id=None, model_name=model_name, input_tokens=0, output_tokens=0, cost=Decimal("0.1"),
                     ttl_seconds=600, asked_at=asked_at)


async def _served(store, tenant, n: int) -> bool:
    """Whether an exact lookup (either of the store's two) answers request ``n`` of this tenant."""
    found = await store.lookup(tenant_id=tenant.pk, namespace="", request_hash=f"{n:064d}", context_hash="ctx",
                               max_age=None)
    exact = await store.exact(tenant_id=tenant.pk, namespace="", request_hash=f"{n:064d}", max_age=None)
    assert (found.exact is None) == (exact is None)
    return exact is not None


def _written(tenant) -> list[int]:
    return sorted(CacheEntry.objects.filter(tenant=tenant).values_list("response__n", flat=True))


@asynccontextmanager
async def _worker():
    """A batch worker's store (entries wait in memory), closed after."""
    worker = CacheStore(conninfo(), max_size=2, index_later=True)
    await worker.open()
    try:
        yield worker
    finally:
        await worker.close()


@asynccontextmanager
async def _worker_and_web():
    """A batch worker's store and a web process's (behind POST /v1/cache/clear), closed after."""
    web = CacheStore(conninfo(), max_size=2)
    async with _worker() as worker:
        await web.open()
        try:
            yield worker, web
        finally:
            await web.close()


@pytest.mark.django_db(transaction=True)
def test_it_stops_serving_a_purged_tenants_entries_from_memory_once_it_reads_the_purge(tenant_a, tenant_b,
                                                                                        monkeypatch):
    monkeypatch.setattr(purges, "REFRESH_EVERY", 3600.0)

    async def job():
        async with _worker_and_web() as (worker, web):
            await _save(worker, tenant_a, 0)
            await _save(worker, tenant_b, 0)
            before = await _served(worker, tenant_a, 0)  # the first hit from memory reads the records
            await web.clear(tenant_a.pk)
            # Read at most every REFRESH_EVERY seconds (an hour here), not per lookup: still served.
            unread = await _served(worker, tenant_a, 0)
            dropped = await worker.purges_refresh()
            return before, unread, dropped, await _served(worker, tenant_a, 0), await _served(worker, tenant_b, 0)

    before, unread, dropped, purged, other = asyncio.run(job())
    assert (before, unread, dropped) == (True, True, 1)
    assert not purged
    assert other  # tenant B's waiting entry is untouched
    assert _written(tenant_a) == [] and _written(tenant_b) == [0]


@pytest.mark.django_db(transaction=True)
def test_it_reads_the_purges_when_a_hit_from_memory_is_due_to(tenant_a, tenant_b, monkeypatch):
    monkeypatch.setattr(purges, "REFRESH_EVERY", 0.0)  # due on every hit from memory

    async def job():
        async with _worker_and_web() as (worker, web):
            await _save(worker, tenant_a, 0)
            await _save(worker, tenant_b, 0)
            before = await _served(worker, tenant_a, 0)
            await web.clear(tenant_a.pk)
            return before, await _served(worker, tenant_a, 0), await _served(worker, tenant_b, 0)

    assert asyncio.run(job()) == (True, False, True)


@pytest.mark.django_db(transaction=True)
def test_it_writes_none_of_a_purged_tenants_waiting_entries_but_every_other_tenants(tenant_a, tenant_b,
                                                                                     monkeypatch):
    monkeypatch.setattr(store_module, "UNSAVED_WRITE_CHUNK", 3)  # two transactions

    async def job():
        async with _worker() as worker:
            for n in range(3):
                await _save(worker, tenant_a, n)
            await _save(worker, tenant_b, 7)
            await _save(worker, tenant_b, 8)
            # The admin's purge (no lookup reads it first: the write does, in its transaction).
            await asyncio.to_thread(cache_purge, tenant_id=tenant_a.pk)
            return await worker.unsaved_write(), len(worker.unsaved)

    assert asyncio.run(job()) == (2, 0)
    assert _written(tenant_a) == []
    assert _written(tenant_b) == [7, 8]


@pytest.mark.django_db(transaction=True)
def test_it_drops_the_rest_of_a_write_a_purge_comes_in_the_middle_of(tenant_a, tenant_b, monkeypatch):
    monkeypatch.setattr(store_module, "UNSAVED_WRITE_CHUNK", 2)

    async def job():
        async with _worker() as worker:
            write_chunk, chunks = worker._unsaved_write_chunk, []

            async def then_purge(chunk, since):  # the purge comes between the write's transactions
                chunks.append(await write_chunk(chunk, since))
                if len(chunks) == 1:
                    await asyncio.to_thread(cache_purge, tenant_id=tenant_a.pk)
                return chunks[-1]

            worker._unsaved_write_chunk = then_purge
            for tenant, n in ((tenant_a, 0), (tenant_b, 1), (tenant_a, 2), (tenant_b, 3)):
                await _save(worker, tenant, n)
            return await worker.unsaved_write()

    assert asyncio.run(job()) == 3  # the first transaction's two, then tenant B's one
    assert _written(tenant_a) == []
    assert _written(tenant_b) == [1, 3]


@pytest.mark.django_db(transaction=True)
def test_it_drops_only_the_purged_models_waiting_entries(tenant_a, tenant_b, monkeypatch):
    monkeypatch.setattr(purges, "REFRESH_EVERY", 0.0)

    async def job():
        async with _worker() as worker:
            await _save(worker, tenant_a, 0, model_name="sim-mini")
            await _save(worker, tenant_a, 1, model_name="sim-mini")
            await _save(worker, tenant_a, 2, model_name="sim-premium")
            await _save(worker, tenant_b, 3, model_name="sim-mini")
            await asyncio.to_thread(cache_purge, tenant_id=tenant_a.pk, model_name="sim-mini")
            return [await _served(worker, tenant, n) for tenant, n in
                    ((tenant_a, 0), (tenant_a, 1), (tenant_a, 2), (tenant_b, 3))]

    assert asyncio.run(job()) == [False, False, True, True]
    assert _written(tenant_a) == [2]
    assert _written(tenant_b) == [3]


@pytest.mark.django_db(transaction=True)
def test_it_keeps_entries_made_after_the_purge(tenant_a, monkeypatch):
    monkeypatch.setattr(purges, "REFRESH_EVERY", 0.0)

    async def job():
        async with _worker_and_web() as (worker, web):
            await _save(worker, tenant_a, 0)
            await web.clear(tenant_a.pk)
            await _save(worker, tenant_a, 1)  # answered upstream after the purge
            await _save(worker, tenant_a, 0)  # and the purged request, asked again
            return await _served(worker, tenant_a, 0), await _served(worker, tenant_a, 1)

    assert asyncio.run(job()) == (True, True)
    assert _written(tenant_a) == [0, 1]


@pytest.mark.django_db(transaction=True)
def test_it_does_not_save_live_an_answer_asked_for_before_a_purge_of_its_tenant(tenant_a, tenant_b):
    """A web process's save after the upstream answered: a purge that came meanwhile keeps it out."""
    async def job():
        async with _worker_and_web() as (worker, web):
            before = timezone.now()
            await web.clear(tenant_a.pk)
            await _save(web, tenant_a, 0, asked_at=before)  # asked, then the purge, then the answer
            await _save(web, tenant_b, 1, asked_at=before)  # another tenant's, not purged
            await _save(web, tenant_a, 2)  # asked after the purge
            await _save(worker, tenant_a, 4)  # a worker's, waiting in memory
            await _save(worker, tenant_a, 3, asked_at=before)  # saved later, asked before the purge
            await worker.unsaved_write()

    asyncio.run(job())
    assert _written(tenant_a) == [2, 4]
    assert _written(tenant_b) == [1]


@pytest.mark.django_db(transaction=True)
def test_a_purge_of_one_model_keeps_out_only_that_models_live_saves(tenant_a):
    async def job():
        async with _worker_and_web() as (_worker, web):
            before = timezone.now()
            await asyncio.to_thread(cache_purge, tenant_id=tenant_a.pk, model_name="sim-mini")
            await _save(web, tenant_a, 0, asked_at=before)
            await _save(web, tenant_a, 1, model_name="sim-premium", asked_at=before)

    asyncio.run(job())
    assert _written(tenant_a) == [1]


@contextmanager
def _purge_begun(tenant):
    """A purge of ``tenant`` as ``CacheStore.clear`` runs it, up to its commit: lock held, rows
    deleted, record written and not yet visible. The caller commits it (or it is rolled back)."""
    with psycopg.connect(conninfo()) as purge:
        purge.execute(purges.LOCK, [purges.LOCK_CLASS, purges.lock_key(tenant.pk)])
        purge.execute("DELETE FROM cache_cacheentry WHERE tenant_id = %s", [tenant.pk])
        purge.execute(purges.RECORD, [tenant.pk, None])
        yield purge


def _advisory_waiters() -> int:
    with psycopg.connect(conninfo()) as conn:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]


def _until_waiting() -> None:
    deadline = time.monotonic() + 30
    while not _advisory_waiters():
        assert time.monotonic() < deadline, "nobody waits on the purge lock"
        time.sleep(0.02)


@pytest.mark.django_db(transaction=True)
def test_it_does_not_write_a_purged_tenants_entries_while_the_purge_commits(tenant_a, tenant_b):
    """A purge in progress (its rows deleted, its record not yet visible) holds the write back."""

    async def job():
        async with _worker() as worker:
            await _save(worker, tenant_a, 0)
            await _save(worker, tenant_b, 1)
            with _purge_begun(tenant_a) as purge:
                write = asyncio.get_running_loop().create_task(worker.unsaved_write())
                await asyncio.to_thread(_until_waiting)
                purge.commit()
            return await write

    assert asyncio.run(job()) == 1
    assert _written(tenant_a) == []
    assert _written(tenant_b) == [1]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["endpoint", "service"])
def test_it_purges_the_rows_a_write_in_progress_commits(tenant_a, tenant_b, path):
    """A write in progress (holding its tenants' locks, its rows not yet visible) holds the purge back."""
    async def job():
        web = CacheStore(conninfo(), max_size=2)
        await web.open()
        try:
            with psycopg.connect(conninfo()) as write:  # the worker's write, as CacheStore.unsaved_write runs it
                keys = purges.lock_keys([tenant_a.pk, tenant_b.pk])
                write.execute(purges.LOCK_SHARED, [purges.LOCK_CLASS, keys])
                for tenant in (tenant_a, tenant_b):
                    write.execute("INSERT INTO cache_cacheentry (tenant_id, namespace, request_hash, context_hash, "
                                  "prompt_text, embedding_model, response, model_name, input_tokens, output_tokens, "
                                  "cost, created_at, expires_at, hit_count, wrong_hits) VALUES (%s, '', %s, '', 'p', "
                                  "%s, '{\"n\": 5}', '', 0, 0, 0, now(), now() + interval '1 hour', 0, 0)",
                                  [tenant.pk, "5" * 64, LOCAL_MODEL])
                if path == "endpoint":
                    purge = asyncio.get_running_loop().create_task(web.clear(tenant_a.pk))
                else:
                    purge = asyncio.get_running_loop().create_task(
                        asyncio.to_thread(cache_purge, tenant_id=tenant_a.pk))
                await asyncio.to_thread(_until_waiting)
                write.commit()
            return await purge
        finally:
            await web.close()

    assert asyncio.run(job()) == 1  # the committed row was seen and deleted
    assert _written(tenant_a) == []
    assert _written(tenant_b) == [5]


def test_it_records_each_purge_for_its_tenant_and_model_only(tenant_a, tenant_b):
    cache_purge(tenant_id=tenant_a.pk)
    cache_purge(tenant_id=tenant_b.pk, model_name="sim-mini")
    assert sorted(CachePurge.objects.values_list("tenant_id", "model_name")) == sorted(
        [(tenant_a.pk, None), (tenant_b.pk, "sim-mini")])


def test_it_prunes_purge_records_no_worker_can_still_need(db, tenant_a):
    now = timezone.now()
    old = CachePurge.objects.create(tenant=tenant_a, purged_at=now - purges.PURGES_KEEP - timedelta(minutes=1))
    recent = CachePurge.objects.create(tenant=tenant_a, purged_at=now - purges.PURGES_KEEP + timedelta(minutes=1))
    cache_evict_expired()
    assert list(CachePurge.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not CachePurge.objects.filter(pk=old.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_purge_in_progress_holds_a_live_save_back_and_then_keeps_it_out(tenant_a, tenant_b):
    """The save waits on the purge's lock (its record not yet visible), then reads the record."""
    async def job():
        async with _worker_and_web() as (_worker, web):
            before = timezone.now()
            with _purge_begun(tenant_a) as purge:
                save = asyncio.get_running_loop().create_task(_save(web, tenant_a, 0, asked_at=before))
                await asyncio.to_thread(_until_waiting)
                await _save(web, tenant_b, 1, asked_at=before)  # another tenant's lock: not held back
                assert await asyncio.to_thread(_written, tenant_b) == [1]
                assert not save.done()
                purge.commit()
            await save

    asyncio.run(job())
    assert _written(tenant_a) == []
