"""Lookups and saves of requests in flight together go as one statement each: every request
still sees only its own tenant's entries, and a save that fails fails alone."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import numpy as np
import pytest

from apps.cache.models import CacheEntry
from apps.cache.store import CacheStore
from apps.gateway.database import conninfo


def _save(store: CacheStore, tenant_id: int, request_hash: str, answer: str, *, context_hash: str = "ctx"):
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)
    return store.save(tenant_id=tenant_id, namespace="", request_hash=request_hash, context_hash=context_hash,
                      prompt_text=answer, vector=vector, response={"answer": answer}, model_id=None, model_name="m",
                      input_tokens=1, output_tokens=1, cost=Decimal("0.001"), ttl_seconds=3600)


def _run(body):
    async def run():
        store = CacheStore(conninfo(), max_size=2)
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.mark.django_db(transaction=True)
def test_it_keeps_each_tenants_answers_apart_when_lookups_and_saves_go_together(tenant_a, tenant_b):
    async def body(store: CacheStore):
        await asyncio.gather(_save(store, tenant_a.pk, "same", "a's answer"),
                             _save(store, tenant_b.pk, "same", "b's answer", context_hash="b-only"))
        found = await asyncio.gather(
            store.lookup(tenant_id=tenant_a.pk, namespace="", request_hash="same", context_hash="ctx", max_age=None),
            store.lookup(tenant_id=tenant_b.pk, namespace="", request_hash="same", context_hash="ctx", max_age=None),
            store.lookup(tenant_id=tenant_b.pk, namespace="", request_hash="other", context_hash="ctx", max_age=None),
            store.lookup(tenant_id=tenant_b.pk, namespace="", request_hash="other", context_hash="b-only",
                         max_age=None),
            store.lookup(tenant_id=tenant_a.pk, namespace="", request_hash="same", context_hash=None, max_age=0))
        return found, store._saves.sizes, store._lookups.sizes

    (a, b, b_other, b_own_context, a_too_old), save_sizes, lookup_sizes = _run(body)
    assert save_sizes == [2] and lookup_sizes == [5]  # one statement each
    assert a[0].response == {"answer": "a's answer"} and a[1] is True
    assert b[0].response == {"answer": "b's answer"}
    assert b[1] is False  # the context "ctx" has entries, but only tenant A's
    assert b_other == (None, False)
    assert b_own_context == (None, True)
    assert a_too_old == (None, False)  # max-age=0: no entry is young enough


@pytest.mark.django_db(transaction=True)
def test_it_stores_the_other_answers_when_one_save_of_a_statement_fails(tenant_a):
    async def body(store: CacheStore):
        return await asyncio.gather(_save(store, tenant_a.pk, "first", "one"),
                                    _save(store, tenant_a.pk + 1000, "gone", "tenant deleted"),
                                    _save(store, tenant_a.pk, "second", "two"),
                                    _save(store, tenant_a.pk, "first", "one, again"), return_exceptions=True)

    results = _run(body)
    assert results[0] is None and results[2] is None and results[3] is None
    assert isinstance(results[1], Exception)
    rows = dict(CacheEntry.objects.values_list("request_hash", "response"))
    assert rows == {"first": {"answer": "one, again"}, "second": {"answer": "two"}}
