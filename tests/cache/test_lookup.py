"""The cache's one-statement lookup (``CacheStore.lookup``): the exact entry, or whether the
context has entries, or (with the prompt's vector) the nearest candidates, as the separate
queries would find them, one tenant's rows only."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import numpy as np
import pytest

from apps.cache.models import LOCAL_MODEL
from apps.cache.store import CacheStore
from apps.gateway.database import conninfo
from tests.cache.test_nearest import _assert_own_rows, _load, _unit

DIMS = 384


def _store_run(work, **store_options):
    async def run():
        store = CacheStore(conninfo(), max_size=2, **store_options)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


async def _save(store, tenant, request_hash: str, context_hash: str, text: str, vector, *, ttl: int = 60):
    await store.save(tenant_id=tenant.pk, namespace="", request_hash=request_hash, context_hash=context_hash,
                     prompt_text=text, vector=vector, embedding_model=LOCAL_MODEL, response={"text": text},
                     model_id=None, model_name="", input_tokens=0, output_tokens=0, cost=Decimal("0.5"),
                     ttl_seconds=ttl)


def _vectors(count: int, seed: int) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((count, DIMS)).astype(np.float32))


def _lookup(store, tenant, request_hash: str, context_hash: str = "ctx", vector=None):
    return store.lookup(tenant_id=tenant.pk, namespace="", request_hash=request_hash, context_hash=context_hash,
                        max_age=None, vector=vector, embedding_model=LOCAL_MODEL if vector is not None else "")


@pytest.mark.django_db(transaction=True)
def test_it_finds_the_exact_entry_with_or_without_the_vector(tenant_a):
    vectors = _vectors(8, 1)

    async def work(store):
        for i, vector in enumerate(vectors):
            await _save(store, tenant_a, f"{i:064d}", "ctx", f"prompt {i}", vector)
        return [await _lookup(store, tenant_a, f"{3:064d}"), await _lookup(store, tenant_a, f"{3:064d}",
                                                                            vector=vectors[5])]

    for found in _store_run(work):
        assert found.exact is not None and found.exact.prompt_text == "prompt 3"
        assert found.exact.response == {"text": "prompt 3"} and found.exact.cost == Decimal("0.5")
        assert found.exact.similarity is None
        assert found.candidates is None  # the search did not run


@pytest.mark.django_db(transaction=True)
def test_it_returns_what_the_separate_queries_return_when_the_exact_entry_is_missing(tenant_a):
    vectors = _vectors(12, 2)
    query = _unit(vectors[4] + 0.3 * _vectors(1, 3)[0])

    async def work(store):
        for i, vector in enumerate(vectors):
            await _save(store, tenant_a, f"{i:064d}", "ctx", f"prompt {i}", vector)
        separate = await store.nearest(tenant_id=tenant_a.pk, namespace="", context_hash="ctx", vector=query,
                                       embedding_model=LOCAL_MODEL, max_age=None)
        return (await _lookup(store, tenant_a, "f" * 64), await _lookup(store, tenant_a, "f" * 64, vector=query),
                await _lookup(store, tenant_a, "f" * 64, context_hash="other"),
                await _lookup(store, tenant_a, "f" * 64, context_hash="other", vector=query), separate)

    without, with_vector, other, other_with_vector, separate = _store_run(work)
    assert without.exact is None and without.context_has_entries and without.candidates is None
    assert with_vector.exact is None and with_vector.context_has_entries
    assert [c.prompt_text for c in with_vector.candidates] == [c.prompt_text for c in separate]
    assert with_vector.candidates[0].prompt_text == "prompt 4"
    assert [c.similarity for c in with_vector.candidates] == pytest.approx([c.similarity for c in separate])
    assert len(with_vector.candidates) == 5
    assert (other.exact, other.context_has_entries) == (None, False)
    assert (other_with_vector.exact, other_with_vector.context_has_entries, other_with_vector.candidates) == \
        (None, False, [])


@pytest.mark.django_db(transaction=True)
def test_it_never_finds_another_tenants_entries(tenant_a, tenant_b):
    vectors = _vectors(6, 5)

    async def work(store):
        for i, vector in enumerate(vectors):
            await _save(store, tenant_a, f"{i:064d}", "ctx", f"prompt {i}", vector)
        return [await _lookup(store, tenant_b, f"{2:064d}"), await _lookup(store, tenant_b, f"{2:064d}",
                                                                            vector=vectors[2])]

    without, with_vector = _store_run(work)
    assert (without.exact, without.context_has_entries) == (None, False)
    assert (with_vector.exact, with_vector.context_has_entries, with_vector.candidates) == (None, False, [])


@pytest.mark.django_db(transaction=True)
def test_it_skips_expired_entries(tenant_a):
    vectors = _vectors(2, 6)

    async def work(store):
        await _save(store, tenant_a, "e" * 64, "ctx", "expired", vectors[0], ttl=-1)
        return [await _lookup(store, tenant_a, "e" * 64), await _lookup(store, tenant_a, "e" * 64, vector=vectors[0])]

    without, with_vector = _store_run(work)
    assert (without.exact, without.context_has_entries) == (None, False)
    assert (with_vector.exact, with_vector.candidates) == (None, [])


@pytest.mark.django_db(transaction=True)
def test_it_falls_back_to_an_exact_search_when_the_index_scan_gives_up(tenant_a, tenant_b):
    # The case of tests/cache/test_nearest.py, through the one-statement lookup.
    rng = np.random.default_rng(4)
    big, small = _load(rng, tenant_a, tenant_b, b_elsewhere=3_000)
    queries = _unit(0.95 * big[:10] + 0.3 * small)

    async def work(store):
        return [(await _lookup(store, tenant_b, "f" * 64, context_hash="", vector=query)).candidates
                for query in queries]

    _assert_own_rows(_store_run(work, ef_search=10, hnsw_max_scan_tuples=50))
