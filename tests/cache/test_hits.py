"""Cache hit counts are written in bulk, and none is lost when the store closes mid-flush."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from apps.cache.models import CacheEntry
from apps.cache.store import CacheStore
from apps.gateway.database import conninfo
from tests.live import await_until


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_hit_counts_of_a_flush_under_way_when_the_store_closes(tenant_a):
    entry = CacheEntry.objects.create(tenant_id=tenant_a.pk, namespace="", request_hash="h" * 64, prompt_text="q",
                                      response={}, model_name="m", cost=0,
                                      expires_at=datetime.now(UTC) + timedelta(days=1))

    async def run():
        store = CacheStore(conninfo(), max_size=1)
        await store.open()
        for _ in range(3):
            store.hit(entry.pk)
        async with store.pool.connection():  # the pool's only connection: the flush waits for it
            store.hits_flush_start(0.01)
            assert await await_until(lambda: not store._hits, interval=0.01)  # the timer's flush took the counts
            closing = asyncio.ensure_future(store.close())
            await asyncio.sleep(0.2)
            assert not closing.done()  # it waits for the flush under way
        await asyncio.wait_for(closing, 10)

    asyncio.run(run())
    entry.refresh_from_db()
    assert entry.hit_count == 3
    assert entry.last_hit_at is not None
