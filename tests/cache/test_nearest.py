"""The tenant-filtered HNSW search finds a small tenant's neighbour beside a big tenant,
through the index when its scan reaches the small tenant's rows and through the exact fallback
when the scan gives up first."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

from apps.cache.models import LOCAL_MODEL
from apps.cache.store import CacheStore
from apps.gateway.database import conninfo

DIMS = 384


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _load(rng, tenant_a, tenant_b, *, b_elsewhere: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4,000 rows for tenant A and 10 for tenant B in the context "" (plus ``b_elsewhere`` rows
    of B in another conversation context); returns A's and B's vectors in that context."""
    big = _unit(rng.standard_normal((4_000, DIMS)).astype(np.float32))
    small = _unit(rng.standard_normal((10, DIMS)).astype(np.float32))
    expires = datetime.now(UTC) + timedelta(days=1)
    rows = [(tenant_a.pk, f"a{i:063d}", "", f"a {i}", v) for i, v in enumerate(big)]
    rows += [(tenant_b.pk, f"b{i:063d}", "", f"b {i}", v) for i, v in enumerate(small)]
    rows += [(tenant_b.pk, f"c{i:063d}", "other-context", f"c {i}", v)
             for i, v in enumerate(_unit(rng.standard_normal((b_elsewhere, DIMS)).astype(np.float32)))]
    with psycopg.connect(conninfo(), autocommit=True) as conn:
        register_vector(conn)
        # The rows go in with the HNSW index dropped, and the index (its definition read back from
        # Postgres, so the same one) is built again over them, all in one transaction: one bulk
        # build costs about a quarter of inserting thousands of rows into the graph one by one.
        with conn.transaction():
            index = conn.execute("SELECT pg_get_indexdef('cache_entry_embedding_hnsw'::regclass)").fetchone()[0]
            conn.execute("DROP INDEX cache_entry_embedding_hnsw")
            with conn.cursor() as cursor, cursor.copy(
                    "COPY cache_cacheentry (tenant_id, namespace, request_hash, context_hash, prompt_text, embedding, "
                    "response, model_name, input_tokens, output_tokens, cost, created_at, expires_at, hit_count) "
                    "FROM STDIN") as copy:
                for tenant_id, request_hash, context_hash, text, vector in rows:
                    copy.write_row([tenant_id, "", request_hash, context_hash, text, vector, "{}", "", 0, 0, 0,
                                    datetime.now(UTC), expires, 0])
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # CREATE INDEX refuses pending foreign-key checks
            conn.execute("SET LOCAL maintenance_work_mem = '256MB'")  # the whole graph is built in memory
            conn.execute(index)
        conn.execute("ANALYZE cache_cacheentry")
    return big, small


def _search(tenant, queries, **store_options):
    async def run():
        store = CacheStore(conninfo(), max_size=2, **store_options)
        await store.open()
        try:
            return [await store.nearest(tenant_id=tenant.pk, namespace="", context_hash="", vector=query,
                                        embedding_model=LOCAL_MODEL, max_age=None) for query in queries]
        finally:
            await store.close()

    return asyncio.run(run())


def _assert_own_rows(results) -> None:
    for index, candidates in enumerate(results):
        assert candidates, f"query {index} found nothing"
        assert candidates[0].prompt_text == f"b {index}"
        assert all(c.prompt_text.startswith("b ") for c in candidates)


@pytest.mark.django_db(transaction=True)
def test_it_finds_a_small_tenants_neighbour_beside_a_big_tenant(tenant_a, tenant_b):
    rng = np.random.default_rng(3)
    _big, small = _load(rng, tenant_a, tenant_b)
    queries = _unit(small + 0.05 * rng.standard_normal(small.shape).astype(np.float32))
    _assert_own_rows(_search(tenant_b, queries))


@pytest.mark.django_db(transaction=True)
def test_it_falls_back_to_an_exact_search_when_the_index_scan_gives_up(tenant_a, tenant_b):
    rng = np.random.default_rng(4)
    # B's rows in another context make the planner expect many matches for (B, context ""), so
    # it picks the HNSW index, where B's 10 rows in that context are a needle among 7,010.
    big, small = _load(rng, tenant_a, tenant_b, b_elsewhere=3_000)
    # Each query sits nearer one of A's rows than any of B's, yet its closest row of B's is
    # B's row i. A scan that gives up after 50 index tuples meets only A's rows.
    queries = _unit(0.95 * big[:10] + 0.3 * small)
    sql = ("SELECT prompt_text FROM cache_cacheentry WHERE tenant_id = %s AND namespace = '' AND context_hash = '' "
           "AND expires_at > now() AND embedding IS NOT NULL ORDER BY embedding <=> %s LIMIT 5")
    with psycopg.connect(conninfo(), autocommit=True, prepare_threshold=None) as conn:
        register_vector(conn)
        conn.execute("SET hnsw.iterative_scan = 'relaxed_order'")
        conn.execute("SET hnsw.ef_search = 10")
        conn.execute("SET hnsw.max_scan_tuples = 50")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, [tenant_b.pk, queries[0]]).fetchall())
        assert "cache_entry_embedding_hnsw" in plan, plan
        by_index = [conn.execute(sql, [tenant_b.pk, query]).fetchall() for query in queries]
    # The index alone brings fewer than the 5 rows asked for, and for some queries not the right
    # one (or none): without the fallback those would miss or serve a farther entry.
    assert all(len(rows) < 5 for rows in by_index), by_index
    assert any(rows[:1] != [(f"b {i}",)] for i, rows in enumerate(by_index)), by_index
    _assert_own_rows(_search(tenant_b, queries, ef_search=10, hnsw_max_scan_tuples=50))
