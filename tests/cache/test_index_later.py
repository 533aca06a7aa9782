"""A batch worker's cache store (``CacheStore(index_later=True)``): entries wait in memory, where
exact lookups find them at once, and are written (vectors, so the HNSW index, included) when the
store closes or enough of them wait."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import numpy as np
import pytest

from apps.cache import store as store_module
from apps.cache.models import LOCAL_MODEL, CacheEntry
from apps.cache.store import CacheStore
from apps.gateway.database import conninfo


def _vector(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=384).astype(np.float32)
    return vector / np.linalg.norm(vector)


async def _save(store, tenant, n: int, *, vector=None):
    await store.save(tenant_id=tenant.pk, namespace="", request_hash=f"{n:064d}", context_hash="ctx",
                     prompt_text=f"prompt {n}", vector=_vector(n) if vector is None else vector,
                     embedding_model=LOCAL_MODEL, response={"n": n}, model_id=None, model_name="",
                     input_tokens=0, output_tokens=0, cost=Decimal("0.1"), ttl_seconds=600)


async def _nearest(store, tenant, n: int):
    return await store.nearest(tenant_id=tenant.pk, namespace="", context_hash="ctx", vector=_vector(n),
                               embedding_model=LOCAL_MODEL, max_age=None)


@pytest.mark.django_db(transaction=True)
def test_it_answers_exact_lookups_at_once_and_writes_the_entries_when_closed(tenant_a, tenant_b):
    async def job():
        store = CacheStore(conninfo(), max_size=2, index_later=True)
        await store.open()
        try:
            for n in range(3):
                await _save(store, tenant_a, n)
            exact = await store.exact(tenant_id=tenant_a.pk, namespace="", request_hash=f"{1:064d}", max_age=None)
            found = await store.lookup(tenant_id=tenant_a.pk, namespace="", request_hash=f"{2:064d}",
                                       context_hash="ctx", max_age=None)
            elsewhere = await store.lookup(tenant_id=tenant_b.pk, namespace="", request_hash=f"{2:064d}",
                                           context_hash="ctx", max_age=None)
            before = await _nearest(store, tenant_a, 1)
            written = await asyncio.to_thread(CacheEntry.objects.filter(tenant=tenant_a).count)
            waiting = len(store.unsaved)
        finally:
            await store.close()
        return exact, found, elsewhere, before, written, waiting

    exact, found, elsewhere, before, written, waiting = asyncio.run(job())
    assert exact is not None and exact.response == {"n": 1}
    assert found.exact is not None and found.exact.response == {"n": 2}
    assert elsewhere.exact is None and not elsewhere.context_has_entries  # tenant B sees none of them
    assert before == [] and (written, waiting) == (0, 3)
    rows = CacheEntry.objects.filter(tenant=tenant_a)
    assert rows.count() == 3 and not rows.filter(embedding__isnull=True).exists()

    async def later():
        store = CacheStore(conninfo(), max_size=2)
        await store.open()
        try:
            return await _nearest(store, tenant_a, 1), await _nearest(store, tenant_b, 1)
        finally:
            await store.close()

    found, other_tenant = asyncio.run(later())
    assert found[0].response == {"n": 1} and found[0].similarity == pytest.approx(1.0, abs=1e-3)
    assert other_tenant == []


@pytest.mark.django_db(transaction=True)
def test_it_writes_early_once_enough_entries_wait(tenant_a, monkeypatch):
    monkeypatch.setattr(store_module, "UNSAVED_LIMIT", 2)

    async def job():
        store = CacheStore(conninfo(), max_size=2, index_later=True)
        await store.open()
        try:
            await _save(store, tenant_a, 0)
            await _save(store, tenant_a, 1)  # the second reaches the limit: both are written now
            indexed = CacheEntry.objects.filter(tenant=tenant_a, embedding__isnull=False).count
            written = await asyncio.to_thread(indexed)
            await _save(store, tenant_a, 2)
            return written, len(store.unsaved), [a.response["n"] for a in await _nearest(store, tenant_a, 0)]
        finally:
            await store.close()

    written, waiting, found = asyncio.run(job())
    assert (written, waiting) == (2, 1)
    assert found[0] == 0 and 2 not in found  # written entries are candidates; the waiting one is not yet
