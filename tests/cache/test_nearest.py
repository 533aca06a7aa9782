"""The tenant-filtered HNSW search finds a small tenant's neighbour beside a big tenant."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from apps.cache.store import CacheStore
from apps.gateway.database import conninfo


@pytest.mark.django_db(transaction=True)
def test_it_finds_a_small_tenants_neighbour_beside_a_big_tenant(tenant_a, tenant_b):
    rng = np.random.default_rng(3)
    dims = 384
    big = rng.standard_normal((4_000, dims)).astype(np.float32)
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    small = rng.standard_normal((10, dims)).astype(np.float32)
    small /= np.linalg.norm(small, axis=1, keepdims=True)
    expires = datetime.now(UTC) + timedelta(days=1)
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        register_vector(conn)
        with conn.cursor() as cursor, cursor.copy(
                "COPY cache_cacheentry (tenant_id, namespace, request_hash, context_hash, prompt_text, embedding, "
                "response, model_name, input_tokens, output_tokens, cost, created_at, expires_at, hit_count) "
                "FROM STDIN") as copy:
            for index, vector in enumerate(big):
                copy.write_row([tenant_a.pk, "", f"a{index:063d}", "", f"a {index}", vector, "{}", "", 0, 0, 0,
                                datetime.now(UTC), expires, 0])
            for index, vector in enumerate(small):
                copy.write_row([tenant_b.pk, "", f"b{index:063d}", "", f"b {index}", vector, "{}", "", 0, 0, 0,
                                datetime.now(UTC), expires, 0])

    async def run():
        store = CacheStore(conninfo(), max_size=2)
        await store.open()
        try:
            found = []
            for index, vector in enumerate(small):
                query = vector + 0.05 * rng.standard_normal(dims).astype(np.float32)
                candidates = await store.nearest(tenant_id=tenant_b.pk, namespace="", context_hash="",
                                                 vector=query / np.linalg.norm(query), max_age=None)
                found.append((index, candidates))
            return found
        finally:
            await store.close()

    for index, candidates in asyncio.run(run()):
        assert candidates, f"query {index} found nothing"
        assert candidates[0].prompt_text == f"b {index}"
        assert all(c.prompt_text.startswith("b ") for c in candidates)
