"""The cache's first lookup (``CacheStore.lookup``): the exact entry or, in the same statement,
whether the conversation's context has entries, one tenant's rows only."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from apps.cache.models import LOCAL_MODEL
from apps.cache.store import CacheStore
from apps.gateway.database import conninfo


def _store_run(work):
    async def run():
        store = CacheStore(conninfo(), max_size=2)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


async def _save(store, tenant, request_hash: str, context_hash: str, text: str, *, ttl: int = 60):
    await store.save(tenant_id=tenant.pk, namespace="", request_hash=request_hash, context_hash=context_hash,
                     prompt_text=text, vector=None, embedding_model=LOCAL_MODEL, response={"text": text},
                     model_id=None, model_name="", input_tokens=0, output_tokens=0, cost=Decimal("0.5"),
                     ttl_seconds=ttl)


def _lookup(store, tenant, request_hash: str, context_hash: str = "ctx", max_age: int | None = None):
    return store.lookup(tenant_id=tenant.pk, namespace="", request_hash=request_hash, context_hash=context_hash,
                        max_age=max_age)


@pytest.mark.django_db(transaction=True)
def test_it_finds_the_exact_entry(tenant_a):
    async def work(store):
        for i in range(4):
            await _save(store, tenant_a, f"{i:064d}", "ctx", f"prompt {i}")
        return await _lookup(store, tenant_a, f"{2:064d}"), await store.exact(
            tenant_id=tenant_a.pk, namespace="", request_hash=f"{2:064d}", max_age=None)

    found, separate = _store_run(work)
    assert found.exact == separate
    assert found.exact.prompt_text == "prompt 2" and found.exact.response == {"text": "prompt 2"}
    assert found.exact.cost == Decimal("0.5") and found.exact.similarity is None
    assert found.context_has_entries


@pytest.mark.django_db(transaction=True)
def test_it_says_whether_the_context_has_entries_when_the_exact_entry_is_missing(tenant_a):
    async def work(store):
        await _save(store, tenant_a, "a" * 64, "ctx", "a prompt")
        return await _lookup(store, tenant_a, "f" * 64), await _lookup(store, tenant_a, "f" * 64, "other")

    same_context, other_context = _store_run(work)
    assert (same_context.exact, same_context.context_has_entries) == (None, True)
    assert (other_context.exact, other_context.context_has_entries) == (None, False)


@pytest.mark.django_db(transaction=True)
def test_it_never_finds_another_tenants_entries(tenant_a, tenant_b):
    async def work(store):
        await _save(store, tenant_a, "a" * 64, "ctx", "a prompt")
        return await _lookup(store, tenant_b, "a" * 64), await _lookup(store, tenant_a, "a" * 64)

    for_b, for_a = _store_run(work)
    assert (for_b.exact, for_b.context_has_entries) == (None, False)
    assert for_a.exact is not None


@pytest.mark.django_db(transaction=True)
def test_it_skips_expired_and_too_old_entries(tenant_a):
    async def work(store):
        await _save(store, tenant_a, "e" * 64, "ctx", "expired", ttl=-1)
        await _save(store, tenant_a, "a" * 64, "ctx2", "live")
        await asyncio.sleep(1.1)
        return (await _lookup(store, tenant_a, "e" * 64), await _lookup(store, tenant_a, "a" * 64, "ctx2", max_age=1),
                await _lookup(store, tenant_a, "a" * 64, "ctx2", max_age=3600))

    expired, too_old, young_enough = _store_run(work)
    assert (expired.exact, expired.context_has_entries) == (None, False)
    assert (too_old.exact, too_old.context_has_entries) == (None, True)  # the entry is live, only too old
    assert young_enough.exact is not None and young_enough.exact.prompt_text == "live"
