"""The cache's reads and writes on the hot path, through a psycopg async connection pool: no
thread hop per lookup, which ``database_sync_to_async`` would cost.

Every query names the tenant and namespace in its WHERE clause. The nearest-neighbour query
uses the HNSW index with pgvector's iterative scan (``hnsw.iterative_scan``), so a tenant
with ten rows still finds its neighbour when another tenant owns a million.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import orjson
from django.conf import settings
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from apps.cache import purges
from apps.cache.waiting import WaitingEntries
from apps.core.flushing import flush_timer_stop

logger = logging.getLogger(__name__)

EXACT_FALLBACK_ROWS = 20_000
UNSAVED_LIMIT = 20_000  # entries waiting in a batch worker's memory (their answers and vectors)
# Entries per transaction when they are written: a purge of their tenant waits for one at most
# (about a second; apps.cache.purges).
UNSAVED_WRITE_CHUNK = 500


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    id: int
    response: dict
    cost: Decimal
    model_name: str
    created_at: datetime
    similarity: float | None
    prompt_text: str
    min_similarity: float | None = None  # the entry's own bar, raised by feedback on a wrong hit


# How far above a wrong semantic hit's similarity an entry's bar goes. The int8 graph quantises
# activations per batch, so the same prompt embedded beside other prompts scores a little
# differently against an entry: up to 0.013 apart in a measurement of four pairs, each embedded
# alone and in six batches of eight; the bar stays clear of that.
WRONG_HIT_MARGIN = 0.02


def fresh_for(answer: CachedAnswer, max_age: int | None, now: float | None = None) -> bool:
    """Whether ``answer`` is younger than ``max_age`` seconds (None: any age will do), as the
    lookups' SQL has it for saved entries; ``now``: a ``time.time()`` already read."""
    return max_age is None or answer.created_at.timestamp() > (time.time() if now is None else now) - max_age


@dataclass(frozen=True, slots=True)
class Lookup:
    """What :meth:`CacheStore.lookup` found: the exact entry, or whether the context has entries."""

    exact: CachedAnswer | None
    context_has_entries: bool


_INSERT = ("INSERT INTO cache_cacheentry (tenant_id, namespace, request_hash, context_hash, prompt_text, embedding, "
           "embedding_model, response, model_id, model_name, input_tokens, output_tokens, cost, created_at, "
           "expires_at, hit_count) ")
_VALUES = "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0)"
_UPSERT = (" ON CONFLICT (tenant_id, namespace, request_hash) DO UPDATE SET response = EXCLUDED.response, "
           "embedding = EXCLUDED.embedding, embedding_model = EXCLUDED.embedding_model, cost = EXCLUDED.cost, "
           "model_id = EXCLUDED.model_id, model_name = EXCLUDED.model_name, input_tokens = EXCLUDED.input_tokens, "
           "output_tokens = EXCLUDED.output_tokens, created_at = EXCLUDED.created_at, "
           "expires_at = EXCLUDED.expires_at")
# A live save, unless a purge of its tenant, or of its model's entries there, was recorded since
# the request asked (its answer may be one the purge meant to remove). The function (migration
# cache 0009) first waits for a purge of the tenant in progress: apps.cache.purges. Typed
# parameters: a SELECT list, unlike VALUES, does not take the columns' types.
_UNLESS_PURGED = ("SELECT %s::bigint, %s::varchar, %s::varchar, %s::varchar, %s::text, %s::vector, %s::varchar, "
                  "%s::jsonb, %s::bigint, %s::varchar, %s::integer, %s::integer, %s::numeric, %s::timestamptz, "
                  "%s::timestamptz, 0 WHERE cache_save_allowed(%s, %s, %s)")
SAVE = _INSERT + _VALUES + _UPSERT
SAVE_UNLESS_PURGED = _INSERT + _UNLESS_PURGED + _UPSERT

# Only these constant clauses are formatted into the SQL below; every value is a parameter.
EXACT_COLUMNS = "id, response, cost, model_name, created_at, prompt_text"
NEAR_COLUMNS = "id, response, cost, model_name, created_at, prompt_text, min_similarity"


def _exact_where(tenant_id: int, namespace: str, request_hash: str, max_age: int | None) -> tuple[str, list]:
    where = "tenant_id = %s AND namespace = %s AND request_hash = %s AND expires_at > now()"
    params: list = [tenant_id, namespace, request_hash]
    if max_age is not None:
        where += " AND created_at > now() - make_interval(secs => %s)"
        params.append(max_age)
    return where, params


def _near_where(tenant_id: int, namespace: str, context_hash: str, embedding_model: str,
                max_age: int | None) -> tuple[str, list]:
    where = ("tenant_id = %s AND namespace = %s AND context_hash = %s AND expires_at > now() "
             "AND embedding IS NOT NULL AND embedding_model = %s")
    params: list = [tenant_id, namespace, context_hash, embedding_model]
    if max_age is not None:
        where += " AND created_at > now() - make_interval(secs => %s)"
        params.append(max_age)
    return where, params


def _exact_answer(row) -> CachedAnswer:
    return CachedAnswer(id=row[0], response=row[1], cost=row[2], model_name=row[3], created_at=row[4],
                        similarity=None, prompt_text=row[5])


def _candidates(rows) -> list[CachedAnswer]:
    answers = [CachedAnswer(id=r[0], response=r[1], cost=r[2], model_name=r[3], created_at=r[4],
                            similarity=float(r[7]), prompt_text=r[5], min_similarity=r[6]) for r in rows]
    # The iterative scan's relaxed order may bring a row a little out of place; callers stop at
    # the first candidate under the threshold, so they must see the closest first.
    answers.sort(key=lambda answer: answer.similarity, reverse=True)
    return answers


def _configurer(max_scan_tuples: int | None, ef_search: int):
    async def configure(conn) -> None:
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)
        await conn.execute("SET hnsw.iterative_scan = 'relaxed_order'")
        await conn.execute(f"SET hnsw.ef_search = {int(ef_search)}")
        if max_scan_tuples is not None:
            await conn.execute(f"SET hnsw.max_scan_tuples = {int(max_scan_tuples)}")

    return configure


class CacheStore:
    def __init__(self, conninfo: str, *, max_size: int = 8, hnsw_max_scan_tuples: int | None = None,
                 ef_search: int | None = None, index_later: bool = False) -> None:
        """``ef_search`` defaults to the ``CACHE_EF_SEARCH`` setting.

        ``index_later`` (a batch worker's store): saved entries wait in memory, where exact
        lookups find them at once, and are written together (vectors and so the HNSW index
        included) at :meth:`close`, or whenever ``UNSAVED_LIMIT`` wait. Putting a vector into the
        graph is most of what saving an entry costs the database (a graph search per insert),
        and a batch job saves one per line: the job no longer waits on it. Until then its
        entries are not semantic candidates, for the job's own later lines either. A purge
        reaches the waiting entries too (:mod:`apps.cache.purges`)."""
        ef_search = settings.CACHE_EF_SEARCH if ef_search is None else ef_search
        # No server-side prepared statements: the planner then sees each query's tenant and
        # vector (a generic plan cannot), which decides between the HNSW and the b-tree index.
        self.pool = AsyncConnectionPool(conninfo, min_size=1, max_size=max_size, open=False,
                                        configure=_configurer(hnsw_max_scan_tuples, ef_search),
                                        kwargs={"autocommit": True, "prepare_threshold": None})
        self._hits: dict[int, int] = {}
        self._hits_lock = asyncio.Lock()
        self._hits_task: asyncio.Task | None = None
        self.index_later = index_later
        self.unsaved = WaitingEntries()
        self._save_lock = asyncio.Lock()
        self._purges_due = 0.0  # monotonic time of the next read of the purge records

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    def hits_flush_start(self, interval: float = 1.0) -> None:
        """Write the hit counts every ``interval`` seconds until :meth:`close`."""
        self._hits_task = asyncio.get_running_loop().create_task(self._hits_flush_every(interval), name="cache-hits")

    async def _hits_flush_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.hits_flush()
            except Exception:
                logger.exception("cache hit counts not written; they are dropped")

    async def close(self) -> None:
        if self._hits_task is not None:
            await flush_timer_stop(self._hits_task, self._hits_lock)
            self._hits_task = None
        await self.hits_flush()
        if self.index_later:
            await self.unsaved_write()
        await self.pool.close()

    async def lookup(self, *, tenant_id: int, namespace: str, request_hash: str, context_hash: str,
                     max_age: int | None) -> Lookup:
        """The exact entry for ``request_hash`` and, when there is none, whether any live entry
        shares the context (without one, embedding the prompt is wasted), in one round trip."""
        if self.unsaved.entries:  # a batch worker's store (a dict's truth: no call on the live path)
            waiting = await self._unsaved_answer(tenant_id, namespace, request_hash, max_age)
            if waiting is not None:
                return Lookup(exact=waiting, context_has_entries=True)
        exact_where, exact_params = _exact_where(tenant_id, namespace, request_hash, max_age)
        # CASE: the context's subquery runs only when the exact lookup found no row.
        query = ("SELECT e.id, e.response, e.cost, e.model_name, e.created_at, e.prompt_text, "  # noqa: S608  # nosec B608
                 "CASE WHEN e.id IS NULL THEN EXISTS (SELECT 1 FROM cache_cacheentry WHERE tenant_id = %s "
                 "AND namespace = %s AND context_hash = %s AND expires_at > now()) END "
                 f"FROM (SELECT) AS one LEFT JOIN LATERAL (SELECT {EXACT_COLUMNS} FROM cache_cacheentry "
                 f"WHERE {exact_where}) AS e ON true")
        async with self.pool.connection() as conn:
            row = await (await conn.execute(query, [tenant_id, namespace, context_hash, *exact_params])).fetchone()
        if row[0] is not None:
            return Lookup(exact=_exact_answer(row), context_has_entries=True)
        return Lookup(exact=None, context_has_entries=row[6])

    async def _unsaved_answer(self, tenant_id: int, namespace: str, request_hash: str,
                              max_age: int | None) -> CachedAnswer | None:
        key = (tenant_id, namespace, request_hash)
        waiting = self.unsaved.get(key)
        if waiting is None:
            return None
        if time.monotonic() >= self._purges_due:
            await self.purges_refresh()
            waiting = self.unsaved.get(key)
            if waiting is None:
                return None
        _params, answer, expires = waiting
        now = time.time()
        if now >= expires or not fresh_for(answer, max_age, now):
            return None
        return answer

    async def exact(self, *, tenant_id: int, namespace: str, request_hash: str,
                    max_age: int | None) -> CachedAnswer | None:
        if self.unsaved.entries:
            waiting = await self._unsaved_answer(tenant_id, namespace, request_hash, max_age)
            if waiting is not None:
                return waiting
        where, params = _exact_where(tenant_id, namespace, request_hash, max_age)
        async with self.pool.connection() as conn:
            row = await (await conn.execute(
                f"SELECT {EXACT_COLUMNS} FROM cache_cacheentry WHERE {where}", params)).fetchone()  # noqa: S608  # nosec B608
        return None if row is None else _exact_answer(row)

    async def nearest(self, *, tenant_id: int, namespace: str, context_hash: str, vector: np.ndarray,
                      embedding_model: str, max_age: int | None, limit: int = 5) -> list[CachedAnswer]:
        """The closest live entries of this tenant, namespace and context whose vectors
        ``embedding_model`` made (as ``vector``), closest first.

        The HNSW index answers first. Its iterative scan gives up after ``hnsw.max_scan_tuples``
        index tuples, so when another tenant owns most of the table a small tenant's search can
        come back empty, or with a few far rows met on the way. When it brings fewer than
        ``limit`` rows, an exact search over at most ``EXACT_FALLBACK_ROWS`` of the context's
        own rows (found through the b-tree index) answers instead; a context that small is cheap
        to scan.
        """
        where, params = _near_where(tenant_id, namespace, context_hash, embedding_model, max_age)
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(
                f"SELECT {NEAR_COLUMNS}, 1 - (embedding <=> %s) FROM cache_cacheentry WHERE {where} "  # noqa: S608  # nosec B608
                "ORDER BY embedding <=> %s LIMIT %s", [vector, *params, vector, limit])).fetchall()
            if len(rows) < limit:
                rows = await self._nearest_exact(conn, where, params, vector, limit)
        return _candidates(rows)

    @staticmethod
    async def _nearest_exact(conn, where: str, params: list, vector: np.ndarray, limit: int) -> list:
        """The exact search over the context's own rows (see :meth:`nearest`)."""
        return await (await conn.execute(
            f"SELECT {NEAR_COLUMNS}, 1 - (embedding <=> %s) FROM (SELECT {NEAR_COLUMNS}, embedding "  # noqa: S608  # nosec B608
            f"FROM cache_cacheentry WHERE {where} LIMIT %s) AS own ORDER BY embedding <=> %s LIMIT %s",
            [vector, *params, EXACT_FALLBACK_ROWS, vector, limit])).fetchall()

    async def save(self, *, tenant_id: int, namespace: str, request_hash: str, context_hash: str,
                   prompt_text: str, vector: np.ndarray | None, embedding_model: str, response: dict,
                   model_id: int | None, model_name: str, input_tokens: int, output_tokens: int, cost: Decimal,
                   ttl_seconds: int, asked_at: datetime | None = None) -> None:
        """Save an answer. ``asked_at``: when the request that got it asked (default: now); a purge
        of its tenant or model recorded since then keeps it out (:mod:`apps.cache.purges`)."""
        now = datetime.now(UTC)
        asked = min(asked_at or now, now)
        params = [tenant_id, namespace, request_hash, context_hash, prompt_text, vector, embedding_model,
                  Jsonb(response), model_id, model_name, input_tokens, output_tokens, cost, now,
                  now + timedelta(seconds=ttl_seconds)]
        if self.index_later:
            answer = CachedAnswer(id=0, response=response, cost=cost, model_name=model_name,
                                  created_at=asked, similarity=None, prompt_text=prompt_text)
            self.unsaved.add(params, answer, now.timestamp() + ttl_seconds)
            if len(self.unsaved) >= UNSAVED_LIMIT:
                await self.unsaved_write()
            return
        async with self.pool.connection() as conn:
            await conn.execute(SAVE_UNLESS_PURGED, [*params, tenant_id, asked, model_name])

    async def unsaved_write(self) -> int:
        """Write the entries waiting in memory (``index_later``) but those a purge covers
        (:mod:`apps.cache.purges`), ``UNSAVED_WRITE_CHUNK`` per transaction; how many were written."""
        async with self._save_lock:
            waiting, since = self.unsaved.snapshot()
            written = 0
            for start in range(0, len(waiting), UNSAVED_WRITE_CHUNK):
                chunk = waiting[start:start + UNSAVED_WRITE_CHUNK]
                written += await self._unsaved_write_chunk(chunk, since)
                self.unsaved.remove(chunk)  # entries saved meanwhile stay for the next write
            return written

    async def _unsaved_write_chunk(self, chunk: list, since: datetime) -> int:
        tenants = sorted({params[0] for params, _answer, _expires in chunk})
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            await cursor.execute(purges.LOCK_SHARED, [purges.LOCK_CLASS, purges.lock_keys(tenants)])
            await cursor.execute(purges.SINCE, [tenants, since])
            kept = self.unsaved.uncovered(chunk, await cursor.fetchall())
            if kept:
                await cursor.executemany(SAVE, kept)
        return len(kept)

    async def purges_refresh(self) -> int:
        """Read the purge records of the waiting entries' tenants and drop the entries a purge
        covers; how many went. Lookups call it at most every ``purges.REFRESH_EVERY`` seconds."""
        self._purges_due = time.monotonic() + purges.REFRESH_EVERY  # meanwhile, lookups use what is known
        if not self.unsaved:
            return 0
        tenants, since = list(self.unsaved.tenants), self.unsaved.since
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(purges.SINCE, [tenants, since])).fetchall()
        return self.unsaved.drop_covered(rows)

    async def embed_later(self, *, tenant_id: int, namespace: str, request_hash: str, vector: np.ndarray,
                          embedding_model: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE cache_cacheentry SET embedding = %s, embedding_model = %s WHERE tenant_id = %s "
                               "AND namespace = %s AND request_hash = %s AND embedding IS NULL",
                               [vector, embedding_model, tenant_id, namespace, request_hash])

    def hit(self, entry_id: int) -> None:
        """Count a hit in memory; :meth:`hits_flush` writes the counts in one statement.

        One UPDATE per hit would rewrite a row (and, without room on its page, its HNSW entry)
        on every hit of a popular answer. Id 0 (an entry still in a batch worker's memory) has
        no row to count on."""
        if entry_id:
            self._hits[entry_id] = self._hits.get(entry_id, 0) + 1

    async def hits_flush(self) -> int:
        async with self._hits_lock:
            if not self._hits:
                return 0
            counts, self._hits = self._hits, {}
            ids, increments = list(counts), list(counts.values())
            async with self.pool.connection() as conn:
                await conn.execute(
                    "UPDATE cache_cacheentry AS e SET hit_count = e.hit_count + h.n, last_hit_at = now() "
                    "FROM unnest(%s::bigint[], %s::int[]) AS h(id, n) WHERE e.id = h.id", [ids, increments])
            return len(ids)

    async def stats(self, tenant_id: int) -> dict:
        async with self.pool.connection() as conn:
            entries, valid, hits = await (await conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE expires_at > now()), coalesce(sum(hit_count), 0) "
                "FROM cache_cacheentry WHERE tenant_id = %s", [tenant_id])).fetchone()
            outcomes = dict(await (await conn.execute(
                "SELECT cache_outcome, count(*) FROM usage_requestlog WHERE tenant_id = %s "
                "AND endpoint = '/v1/chat/completions' GROUP BY cache_outcome", [tenant_id])).fetchall())
            saved = (await (await conn.execute(
                "SELECT coalesce(sum(saved_cost), 0) FROM usage_requestlog WHERE tenant_id = %s",
                [tenant_id])).fetchone())[0]
        exact, semantic, misses = outcomes.get("exact", 0), outcomes.get("semantic", 0), outcomes.get("miss", 0)
        looked_up = exact + semantic + misses
        return {
            "object": "cache.stats", "entries": entries, "valid": valid, "expired": entries - valid,
            "hits": exact + semantic, "hits_exact": exact, "hits_semantic": semantic, "misses": misses,
            "bypassed": outcomes.get("bypass", 0), "entry_hit_count": int(hits),
            "hit_rate": round((exact + semantic) / looked_up, 4) if looked_up else 0.0,
            "hit_rate_exact": round(exact / looked_up, 4) if looked_up else 0.0,
            "hit_rate_semantic": round(semantic / looked_up, 4) if looked_up else 0.0,
            "saved_cost": str(saved),
        }

    async def wrong_hit(self, *, tenant_id: int, entry_id: int, outcome: str, similarity: float | None) -> str:
        """A client says this entry's hit was wrong; what was done (one tenant's entry only).

        An exact hit served the entry's own prompt, so its answer is bad: the entry is removed (the
        next request goes upstream and stores a new one). A semantic hit served a prompt the entry
        does not answer: the entry stays for its own prompt and closer rewordings, and its bar
        rises just above the wrong hit's similarity, so that prompt and anything further away
        never get it again."""
        async with self.pool.connection() as conn:
            if outcome == "exact" or similarity is None:
                cursor = await conn.execute("DELETE FROM cache_cacheentry WHERE id = %s AND tenant_id = %s",
                                            [entry_id, tenant_id])
                return "entry_removed" if cursor.rowcount else "entry_gone"
            cursor = await conn.execute(
                "UPDATE cache_cacheentry SET min_similarity = GREATEST(coalesce(min_similarity, 0), %s), "
                "wrong_hits = wrong_hits + 1 WHERE id = %s AND tenant_id = %s",
                [min(similarity + WRONG_HIT_MARGIN, 1.0 + WRONG_HIT_MARGIN), entry_id, tenant_id])
            return "entry_demoted" if cursor.rowcount else "entry_gone"

    async def clear(self, tenant_id: int) -> int:
        """Delete the tenant's entries and record the purge, which batch workers' memories heed
        (:mod:`apps.cache.purges`); how many rows went."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(purges.LOCK, [purges.LOCK_CLASS, purges.lock_key(tenant_id)])
            cursor = await conn.execute("DELETE FROM cache_cacheentry WHERE tenant_id = %s", [tenant_id])
            await conn.execute(purges.RECORD, [tenant_id, None])
            return cursor.rowcount


def response_json(answer: CachedAnswer) -> bytes:
    return orjson.dumps(answer.response)
